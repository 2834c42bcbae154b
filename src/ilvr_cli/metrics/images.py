"""The little image I/O the metrics need: scan a folder, read an image as uint8 RGB or grey.

Reads images exactly as the reference implementations do (PIL's ``convert("RGB")``, grey kept grey for
NIQE), not through :mod:`ilvr_cli.io`'s normalisation; the extensions are the task commands' own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ilvr_cli.errors import InputError
from ilvr_cli.io.scan import IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by their path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images")
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {error}") from None
    return image


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 array of an image, through PIL's ``convert("RGB")`` (as pytorch-fid and clean-fid)."""
    return np.array(_open(path).convert("RGB"))


def load_rgb_or_gray(path: Path) -> np.ndarray:
    """uint8 (H, W) for single-channel 8-bit images, else (H, W, 3) through ``convert("RGB")``.

    MATLAB's ``imread`` keeps a grey image grey, so NIQE must not turn it into RGB and back.
    """
    image = _open(path)
    return np.array(image if image.mode == "L" else image.convert("RGB"))
