"""Image loading: every stored form is normalised to float RGB in [0, 1]; bad files are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_images import png_bytes
from ilvr_cli.errors import InputError
from ilvr_cli.io.load import load_image, load_mask


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgb_8bit_is_divided_by_255(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = load_image(save(Image.fromarray(pixels), tmp_path / "a.png"))
    assert data.pixels.dtype == np.float32 and data.size == (5, 7)
    np.testing.assert_allclose(data.pixels, pixels / 255.0, atol=1e-7)


def test_grey_is_repeated_over_three_channels(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    data = load_image(save(Image.fromarray(grey, "L"), tmp_path / "g.png"))
    assert data.pixels.shape == (3, 4, 3) and data.mode == "L"
    for c in range(3):
        np.testing.assert_allclose(data.pixels[..., c], grey / 255.0, atol=1e-7)


def test_one_bit_is_black_and_white(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    data = load_image(save(image, tmp_path / "b.png"))
    np.testing.assert_array_equal(data.pixels[..., 0], [[0.0, 1.0], [1.0, 0.0]])


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
    rgba[1, 0] = (0, 0, 0, 102)  # black at alpha 0.4 -> grey 0.6
    data = load_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    np.testing.assert_allclose(data.pixels[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(data.pixels[0, 1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(data.pixels[1, 0], [0.6, 0.6, 0.6], atol=1e-6)


def test_grey_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    la = np.array([[[0, 0], [0, 255]]], dtype=np.uint8)  # transparent black, opaque black
    data = load_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    np.testing.assert_allclose(data.pixels[0, :, 0], [1.0, 0.0], atol=1e-6)


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255, 10, 20, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    data = load_image(save(image, tmp_path / "p.png", transparency=1))
    np.testing.assert_allclose(data.pixels[0, 0], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(data.pixels[0, 1], [1, 1, 1], atol=1e-6)


def test_palette_without_transparency_reads_its_colours(tmp_path: Path) -> None:
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0] * 765)
    data = load_image(save(image, tmp_path / "p.bmp"))
    np.testing.assert_allclose(data.pixels[0, 0], np.array([10, 20, 30]) / 255.0, atol=1e-6)


def test_16_bit_grey_keeps_its_precision(tmp_path: Path) -> None:
    values = np.array([[0, 1, 257, 65535]], dtype=np.uint16)
    data = load_image(save(Image.fromarray(values), tmp_path / "d.png"))
    assert data.mode.startswith("I")
    np.testing.assert_allclose(data.pixels[0, :, 0], values[0] / 65535.0, rtol=1e-6)
    assert 0 < data.pixels[0, 1, 0] < 1 / 255  # finer than 8 bits


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    data = load_image(save(image, tmp_path / "c.tiff"))
    assert data.mode == "CMYK"
    np.testing.assert_allclose(data.pixels[0, 0], [1, 0, 0], atol=1e-6)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 tall
    pixels[0, 0] = 255  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = load_image(save(Image.fromarray(pixels), tmp_path / "r.png", exif=exif))
    assert data.size == (4, 2)  # now 2 wide, 4 tall
    assert data.pixels[0, 1].tolist() == [1.0, 1.0, 1.0]  # the marker moved to the top-right


def test_broken_exif_leaves_the_image_as_stored(tmp_path: Path) -> None:
    path = save(
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)), tmp_path / "e.png", exif=b"Exif\x00\x00garbage"
    )
    assert load_image(path).size == (2, 3)


def test_mask_treats_transparent_as_keep(tmp_path: Path) -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)  # white stroke: may change
    rgba[0, 1] = (255, 255, 255, 0)  # transparent: keep
    rgba[0, 2] = (128, 128, 128, 255)  # grey: blend
    mask = load_mask(save(Image.fromarray(rgba, "RGBA"), tmp_path / "m.png"))
    np.testing.assert_allclose(mask[0], [1.0, 0.0, 128 / 255], atol=1e-6)


# --------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("zero.png", b"", "empty file"),
        ("text.png", b"hello, I am not an image\n" * 10, "not an image"),
        ("huge.png", png_bytes(30_000, 30_000), "decompression bomb"),
        ("big.png", png_bytes(9_000, 6_000), "megapixel limit"),
    ],
)
def test_bad_files_are_refused_by_name(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as caught:
        load_image(path)
    assert name in str(caught.value)


def test_truncated_image_is_refused(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = save(Image.fromarray(pixels), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as caught:
        load_image(path)
    assert "cut.png" in str(caught.value)


def test_unsupported_format_is_refused_even_with_an_image_extension(tmp_path: Path) -> None:
    path = save(Image.new("P", (2, 2)), tmp_path / "really-a-gif.png", format="GIF")
    with pytest.raises(InputError, match="unsupported image format GIF"):
        load_image(path)


def test_pixel_limit_can_be_raised(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (100, 100)), tmp_path / "ok.png")
    with pytest.raises(InputError, match="megapixel limit"):
        load_image(path, max_pixels=9_999)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
