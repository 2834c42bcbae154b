"""The little image I/O the metrics need: scan a folder, read an image as uint8 RGB or grey.

Folders are listed by the task commands' scanner (:func:`ilvr_cli.io.scan.scan_inputs`: the same
extensions; hidden entries, ``_grids/`` contact sheets and subfolders holding a ``manifest.jsonl`` skipped). Images are read exactly as the
reference implementations read them (PIL's ``convert("RGB")``, grey kept grey for NIQE), not through
:mod:`ilvr_cli.io.load`'s normalisation, but refused on the same grounds: not a regular file, empty,
not an image, truncated or corrupt, over a pixel limit checked from the header before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.io.files import DECODE_ERRORS, check_regular_file, not_regular_file
from ilvr_cli.io.load import DEFAULT_MAX_PIXELS, open_decoded
from ilvr_cli.io.scan import GRID_DIR, IMAGE_EXTENSIONS, InputItem, scan_inputs

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "GRID_DIR",
    "IMAGE_EXTENSIONS",
    "FolderScan",
    "check_regular_file",
    "list_images",
    "load_rgb",
    "not_regular_file",
    "load_rgb_or_gray",
    "scan_folder",
    "unsupported_reason",
]


@dataclass(frozen=True)
class FolderScan:
    """The image files under ``root``: ``images`` we read, ``unsupported`` known formats we do not (gif, ...)."""

    root: Path
    images: tuple[InputItem, ...]
    unsupported: tuple[InputItem, ...]

    @property
    def items(self) -> tuple[InputItem, ...]:
        """Both, sorted by relative path: each one is scored or fails with a reason."""
        return tuple(sorted(self.images + self.unsupported, key=lambda item: item.rel.as_posix()))


def scan_folder(folder: Path) -> FolderScan:
    """The images of a folder by the task commands' rules (module docstring).

    The folder itself may hold a ``manifest.jsonl``: scoring an output folder is the point. An empty
    result is not an error here; the caller says what it needed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images")
    try:
        found = scan_inputs(folder)
    except UsageError:  # the folder exists, so this is scan_inputs' "no image is under FOLDER"
        return FolderScan(folder, (), ())
    return FolderScan(
        folder,
        tuple(item for item in found.items if item.supported),
        tuple(item for item in found.items if not item.supported),
    )


def list_images(folder: Path) -> list[Path]:
    """Readable image files under ``folder`` (:func:`scan_folder`), sorted by their relative path."""
    return [item.path for item in scan_folder(folder).images]


def _convert(image: Image.Image, mode: str, path: Path) -> np.ndarray:
    try:
        return np.array(image if image.mode == mode else image.convert(mode))
    except DECODE_ERRORS as error:
        raise InputError(f"cannot read image {path}: cannot convert it to {mode} ({error})") from None
    finally:
        image.close()


def load_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 array of an image, through PIL's ``convert("RGB")`` (as pytorch-fid and clean-fid).

    Images over ``max_pixels`` are refused from their header, before anything is decoded.
    """
    path = Path(path)
    return _convert(open_decoded(path, max_pixels, formats=None), "RGB", path)


def load_rgb_or_gray(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 (H, W) for single-channel 8-bit images, else (H, W, 3) through ``convert("RGB")``.

    MATLAB's ``imread`` keeps a grey image grey, so NIQE must not turn it into RGB and back.
    """
    path = Path(path)
    image = open_decoded(path, max_pixels, formats=None)
    return _convert(image, "L" if image.mode == "L" else "RGB", path)


def unsupported_reason(item: InputItem) -> str:
    """Why a file of a known image format the metrics do not read (gif, heic, ...) is not scored."""
    return f"unsupported image format {item.path.suffix.lower()}; convert {item.rel} to PNG, JPEG, WebP, BMP or TIFF"
