"""Read one image as float32 RGB in [0, 1], whatever it was stored as; refuse what cannot be trusted.

Normalisation, in order:

1. EXIF orientation is applied (a phone photo stored sideways is read upright: ``ImageOps.exif_transpose``).
2. Transparency (RGBA, LA, palette with a transparent index) is composited on white: out = a c + (1 - a).
3. Grey (1-bit, 8-bit, 16-bit) is repeated over three channels; 16-bit values are divided by 65535,
   so their precision survives; CMYK, YCbCr, LAB and HSV are converted to RGB by Pillow.
4. Multi-frame files (TIFF pages, animated WebP) give their first frame.

Refused with an :class:`~ilvr_cli.errors.InputError` naming the file: zero-byte, not an image, a format
outside PNG/JPEG/WebP/BMP/TIFF, truncated or corrupt data, and images over ``max_pixels`` (decompression
bombs: the size is checked from the header, before anything is decoded).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ilvr_cli.errors import InputError
from ilvr_cli.io.files import DECODE_ERRORS, check_regular_file

#: Pillow format names we read (what :data:`~ilvr_cli.io.scan.IMAGE_EXTENSIONS` promise).
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "TIFF"})

#: Default decompression-bomb guard: 50 megapixels (an 8660 x 5773 photo); raise it per call if needed.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ImageData:
    """``pixels``: (H, W, 3) float32 in [0, 1]; ``mode``/``format``: what the file held (for metadata)."""

    pixels: np.ndarray
    mode: str
    format: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def open_header(
    path: Path, max_pixels: int, formats: frozenset[str] | None = SUPPORTED_FORMATS
) -> Image.Image:
    """Open lazily (header only) and check: a regular file, an image, one of ``formats`` (None: whatever
    Pillow reads, as the metrics' reference implementations do), at most ``max_pixels`` (the
    decompression-bomb guard, from the header). Nothing is decoded. Every refusal is an InputError."""
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise InputError(f"{path}: refused as a possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (or a format Pillow cannot identify)") from None
    except DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot read the image header ({error})") from None
    if formats is not None and image.format not in formats:
        image.close()
        raise InputError(
            f"{path}: unsupported image format {image.format}; convert it to PNG, JPEG, WebP, BMP or TIFF"
        )
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InputError(
            f"{path}: {width}x{height} is {width * height / 1e6:g} megapixels, over the {max_pixels / 1e6:g} "
            "megapixel limit (decompression-bomb guard); shrink it or raise --max-megapixels"
        )
    if width < 1 or height < 1:
        image.close()
        raise InputError(f"{path}: image has no pixels ({width}x{height})")
    return image


def open_decoded(
    path: Path, max_pixels: int, formats: frozenset[str] | None = SUPPORTED_FORMATS
) -> Image.Image:
    """Open with :func:`open_header`'s checks, then decode; truncated or corrupt data is an InputError
    (the image is closed). The tasks, the Python API and the metrics read files through it."""
    image = open_header(path, max_pixels, formats)
    try:
        image.load()
    except DECODE_ERRORS as error:
        image.close()
        raise InputError(f"{path}: truncated or corrupt image data ({error})") from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF must not fail an otherwise good image
        return image


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: float) -> np.ndarray:
    """Composite straight (non-premultiplied) colour over a flat background (1.0 = white)."""
    a = alpha[..., None]
    return rgb * a + background * (1.0 - a)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def to_rgb_float(image: Image.Image, background: float = 1.0) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from any Pillow mode (see the module docstring for the rules);
    transparent pixels are composited over ``background`` (1.0 = white)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("PA", "RGBa", "La"):
        image = image.convert("RGBA" if mode != "La" else "LA")
        mode = image.mode
    if mode == "RGBA":
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return _composite(arr[..., :3], arr[..., 3], background).astype(np.float32)
    if mode == "LA":
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return _grey_to_rgb(_composite(arr[..., :1], arr[..., 1], background)[..., 0]).astype(np.float32)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image).astype(np.float32) / 65535.0
        return _grey_to_rgb(np.clip(arr, 0.0, 1.0))
    if mode == "F":
        return _grey_to_rgb(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0))
    if mode in ("1", "L"):
        return _grey_to_rgb(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    if mode != "RGB":
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    return np.asarray(image, dtype=np.float32) / 255.0


def read_image_size(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the image as it will be read (EXIF rotation applied), from its header only:
    the checks that need no pixels, for planning before a model is loaded. Same errors as :func:`load_image`."""
    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = open_header(p, max_pixels)
        try:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
            except Exception:  # noqa: BLE001 - malformed EXIF is ignored on reading too
                orientation = 1
        finally:
            image.close()
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, background: float = 1.0
) -> ImageData:
    """Read ``path`` as (H, W, 3) float32 RGB in [0, 1], upright, opaque on white (module docstring)."""
    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own bomb and palette warnings: we check for ourselves
        image = open_decoded(p, max_pixels)
        try:
            source_mode, source_format = image.mode, str(image.format)
            try:
                pixels = to_rgb_float(_upright(image), background)
            except DECODE_ERRORS as error:
                raise InputError(f"{p}: cannot convert the image ({error})") from None
        finally:
            image.close()
    return ImageData(np.ascontiguousarray(pixels, dtype=np.float32), source_mode, source_format)


def load_mask(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask as (H, W) float32 in [0, 1]: white (1) = may change, black (0) = keep; grey blends.

    The image is normalised like any input, except that transparent pixels count as black (keep): white
    strokes on a transparent layer mark exactly the strokes. Channels are averaged.
    """
    data = load_image(path, max_pixels=max_pixels, background=0.0)
    return data.pixels.mean(axis=2).astype(np.float32)
