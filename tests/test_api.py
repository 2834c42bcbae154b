"""The one-call API (``ilvr_cli.upscale`` ...): the CLI's pixels, inputs as paths or PIL images, the order
of the results, the default models, the model given as a handle, and how a failed input is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

import ilvr_cli
from ilvr_cli.api import ImagesFailedError, _png_ready, input_name
from ilvr_cli.cli.app import app
from ilvr_cli.errors import DownloadError, InputError, UsageError
from ilvr_cli.io.load import load_image, load_mask
from ilvr_cli.io.write import read_png_params
from ilvr_cli.registry import load_model, open_model
from test_tasks_support import oracle_model, smooth_image, stand_in_model, write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The built-in model, tiny step counts: a few seconds per call on a CPU.
DEMO = {"model": "demo", "steps": "5", "device": "cpu"}


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No download, ever, and never the user's cache: the demo model ships in the package."""
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    monkeypatch.setenv("ILVR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def cli(*args: object) -> None:
    result = CliRunner().invoke(
        app, [str(a) for a in args], env={"ILVR_CACHE_DIR": os.environ["ILVR_CACHE_DIR"]}
    )
    assert result.exit_code == 0, result.output


def test_import_ilvr_cli_stays_free_of_torch() -> None:
    code = (
        "import ilvr_cli, sys; assert 'torch' not in sys.modules; "
        "assert callable(ilvr_cli.upscale) and 'torch' not in sys.modules; "
        "assert {'upscale', 'translate', 'edit', 'paint2img', 'sample'} <= set(dir(ilvr_cli))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_upscale_equals_the_cli_pixel_for_pixel(tmp_path: Path) -> None:
    """ILVR upscaling (Choi et al., Algorithm 1) through the API is the command's run: same PNG bytes' pixels,
    same recorded parameters, for a path and for a PIL image, given the name input_name(0) documents."""
    source = write_png(tmp_path / "in" / input_name(0), smooth_image(0, 8))
    cli(
        "upscale",
        source,
        tmp_path / "out",
        "--model",
        "demo",
        "--steps",
        "5",
        "--seed",
        "0",
        "--device",
        "cpu",
    )
    expected = Image.open(tmp_path / "out" / "000000.png")

    from_path = ilvr_cli.upscale(source, seed=0, **DEMO)
    from_pil = ilvr_cli.upscale([Image.open(source)], seed=0, **DEMO)
    assert len(from_path) == len(from_pil) == 1
    for result in (from_path[0], from_pil[0]):
        assert result.size == (32, 32)
        np.testing.assert_array_equal(pixels(result), pixels(expected))
    params = read_png_params(tmp_path / "out" / "000000.png")
    assert from_path[0].info["ilvr-cli"] == expected.info["ilvr-cli"]
    assert params["key"] == "000000.png#0" and params["factor"] == 4


def test_samples_are_grouped_by_input_in_input_order(tmp_path: Path) -> None:
    """``result[i * k + j]`` is sample j of input i, as the command writes ``{i:06d}_{j}.png`` for a folder."""
    images = [Image.fromarray(smooth_image(seed, 8)) for seed in (1, 2)]
    for i, image in enumerate(images):
        write_png(tmp_path / "in" / input_name(i), np.asarray(image))
    cli("upscale", tmp_path / "in", tmp_path / "out", "--samples", "2", "--model", "demo", "--steps", "5",
        "--device", "cpu")  # fmt: skip
    results = ilvr_cli.upscale(images, samples=2, **DEMO)
    assert len(results) == 4
    for index, result in enumerate(results):
        i, j = divmod(index, 2)
        np.testing.assert_array_equal(
            pixels(result), pixels(Image.open(tmp_path / "out" / f"{i:06d}_{j}.png"))
        )
    assert not np.array_equal(pixels(results[0]), pixels(results[1]))  # two samples, two noise keys


def test_a_path_is_read_as_the_command_reads_it(tmp_path: Path) -> None:
    """A JPEG stored sideways (EXIF orientation 6): the path, the opened file and the upright image give
    the same result (the loader's normalisation), a single image in gives a list of one."""
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth_image(3, 8)).save(path, exif=exif, quality=95)
    model = stand_in_model()
    options = {"model": model, "steps": 3, "device": "cpu"}
    results = [
        ilvr_cli.upscale(path, **options),
        ilvr_cli.upscale(str(path), **options),
        ilvr_cli.upscale(Image.open(path), **options),
        ilvr_cli.upscale([ImageOps.exif_transpose(Image.open(path))], **options),
    ]
    assert all(len(r) == 1 for r in results)
    for result in results[1:]:
        np.testing.assert_array_equal(pixels(result[0]), pixels(results[0][0]))
    unrotated = ilvr_cli.upscale(Image.fromarray(np.asarray(Image.open(path))), **options)
    assert not np.array_equal(pixels(unrotated[0]), pixels(results[0][0]))


@pytest.mark.parametrize(
    "mode",
    [
        "RGB",
        "RGBA",
        "L",
        "LA",
        "La",
        "1",
        "P",
        "PA",
        "RGBa",
        "I;16",
        "I;16B",
        "I",
        "F",
        "CMYK",
        "YCbCr",
        "LAB",
    ],
)
def test_inputs_keep_what_the_loader_reads(mode: str, tmp_path: Path) -> None:
    """Every Pillow mode is stored so that the engine reads what it would read from the image saved as a
    file: PNG's modes as they are, the others converted as the loader converts them (same pixels, and the
    same mask values, where transparency counts as black)."""
    rgba = Image.fromarray(np.dstack([smooth_image(4, 8), smooth_image(5, 8)[..., 0]]), "RGBA")
    grey = np.asarray(rgba)[..., 0]
    special = {
        "I": lambda: Image.fromarray(grey.astype(np.int32) * 300),  # over 65535: clipped, as the loader does
        "F": lambda: Image.fromarray(grey.astype(np.float32) / 255),
    }
    image = special[mode]() if mode in special else rgba.convert(mode)
    assert image.mode == mode
    if mode in ("RGB", "RGBA", "L", "LA", "1", "P", "I;16"):
        assert _png_ready(image) is image
        return
    _png_ready(image).save(tmp_path / "stored.png")
    tolerance = 1e-5 if mode == "F" else 0.0  # float grey is stored with 16 bits
    np.testing.assert_allclose(
        load_image(tmp_path / "stored.png").pixels, _loader_pixels(image), atol=tolerance
    )
    np.testing.assert_allclose(
        load_mask(tmp_path / "stored.png"), _loader_pixels(image, 0.0).mean(axis=2), atol=tolerance + 1e-7
    )


def _loader_pixels(image: Image.Image, background: float = 1.0) -> np.ndarray:
    from ilvr_cli.io.load import to_rgb_float

    return to_rgb_float(image, background)


def test_sample_returns_count_images_in_the_commands_order(tmp_path: Path) -> None:
    model = stand_in_model()
    results = ilvr_cli.sample(3, model=model, steps=3, device="cpu", seed=7)
    assert [r.size for r in results] == [(32, 32)] * 3
    assert [read_key(r) for r in results] == ["sample/000000", "sample/000001", "sample/000002"]
    again = ilvr_cli.sample(2, model=model, steps=3, device="cpu", seed=7)
    np.testing.assert_array_equal(pixels(again[1]), pixels(results[1]))  # keys, not batches, decide


def read_key(image: Image.Image) -> str:
    import json

    return json.loads(image.info["ilvr-cli"])["key"]


@pytest.mark.parametrize(
    ("function", "name"),
    [
        (ilvr_cli.upscale, "ffhq"),
        (ilvr_cli.translate, "afhq-dog"),
        (ilvr_cli.edit, "ffhq"),
        (ilvr_cli.paint2img, "church"),
        (ilvr_cli.sample, "ffhq"),
    ],
)
def test_model_none_is_the_tasks_default_model(function, name: str, offline_cache: Path) -> None:
    """Offline with an empty cache, the default model is the one the download error names."""
    args = (2,) if function is ilvr_cli.sample else (Image.fromarray(smooth_image(0, 32)),)
    extra = {} if function is ilvr_cli.sample else {"fit": "resize"}
    with pytest.raises(DownloadError, match=name):
        function(*args, steps=2, device="cpu", **extra)
    assert not any(offline_cache.rglob("*.safetensors"))


def test_a_handle_is_loaded_once_and_reused() -> None:
    handle = open_model("demo")
    image = Image.fromarray(smooth_image(6, 8))
    first = ilvr_cli.upscale(image, model=handle, steps=2, device="cpu")
    network = handle.load()
    second = ilvr_cli.upscale(image, model=handle, steps=2, device="cpu")
    assert handle.load() is network
    np.testing.assert_array_equal(pixels(first[0]), pixels(second[0]))
    loaded = ilvr_cli.upscale(image, model=load_model("demo"), steps=2, device="cpu")
    np.testing.assert_array_equal(pixels(loaded[0]), pixels(first[0]))  # the same weights, the same pixels


def test_a_bad_input_fails_before_the_model_loads_naming_it() -> None:
    handle = open_model("demo")
    good, bad = Image.fromarray(smooth_image(0, 8)), Image.new("RGB", (7, 9))
    with pytest.raises(ImagesFailedError) as caught:
        ilvr_cli.upscale([good, bad], model=handle, steps=2, device="cpu")
    assert not handle.is_loaded
    assert isinstance(caught.value, InputError)
    assert str(caught.value).startswith("image 1 (a 7x9 RGB PIL image): ")
    assert "'fit'" in str(caught.value) and "000000" not in str(caught.value)
    assert [index for index, _ in caught.value.failures] == [1]
    with pytest.raises(ImagesFailedError, match=r"^image 0 \(a 7x9 RGB PIL image\)"):
        ilvr_cli.upscale(bad, model=handle, steps=2, device="cpu")  # every input bad: the same error


def test_an_unreadable_path_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImagesFailedError) as caught:
        ilvr_cli.translate([tmp_path / "missing.png", broken], model=stand_in_model(), device="cpu")
    message = str(caught.value)
    assert message.startswith("image 0: ") and "missing.png" in message and "1 more" in message
    assert [index for index, _ in caught.value.failures] == [0, 1]
    assert str(broken) in caught.value.failures[1][1]


def test_usage_errors_name_the_keyword_not_the_option() -> None:
    with pytest.raises(UsageError, match="'fit' 'stretch' is not one of"):
        ilvr_cli.upscale(Image.new("RGB", (8, 8)), model=stand_in_model(), fit="stretch")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="no images given"):
        ilvr_cli.upscale([], model=stand_in_model())
    with pytest.raises(UsageError, match=r"images\[0\] is a int"):
        ilvr_cli.upscale([3], model=stand_in_model())  # type: ignore[list-item]


def test_edit_with_masks_keeps_the_outside_and_reports_a_late_failure(tmp_path: Path) -> None:
    """The oracle model, every step conditioned: outside the mask the result is the input (docs/tasks.md);
    a mask of the wrong size fails its image after the others were made, which come with the error."""
    images = [Image.fromarray(smooth_image(seed, 32)) for seed in (8, 9)]
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    kept = ilvr_cli.edit(images, mask=Image.fromarray(mask), model=oracle_model(), steps=4, device="cpu")
    for image, result in zip(images, kept, strict=True):
        np.testing.assert_array_equal(pixels(result)[mask == 0], pixels(image)[mask == 0])
    masks = [Image.fromarray(mask), Image.fromarray(mask).resize((16, 20))]
    with pytest.raises(ImagesFailedError, match=r"^image 1 .*its mask is 16x20") as caught:
        ilvr_cli.edit(images, mask=masks, model=oracle_model(), steps=4, device="cpu")
    assert caught.value.images[1] is None
    np.testing.assert_array_equal(pixels(caught.value.images[0]), pixels(kept[0]))
    with pytest.raises(UsageError, match="one mask for every image"):
        ilvr_cli.edit(images, mask=masks[:1], model=oracle_model())


def test_options_accept_their_natural_python_types() -> None:
    model = stand_in_model()
    image = Image.fromarray(smooth_image(10, 32))
    a = ilvr_cli.translate(image, model=model, steps=3, t_range="1000:200", factor=8, device="cpu")
    b = ilvr_cli.translate(image, model=model, steps="3", t_range=(1000, 200), factor=8, device="cpu")
    np.testing.assert_array_equal(pixels(a[0]), pixels(b[0]))
