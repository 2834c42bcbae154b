"""Atomic image writing: PNG with a text chunk of parameters, animated GIF; 8-bit quantisation.

Every file is written to a hidden temporary name in its final folder (``.NAME.XXXX.tmp``), flushed to
disk, and renamed into place (``os.replace``, atomic on one file system). So a file at its final name is
always complete, and an interrupted run leaves at most a hidden temporary file, never a half image:
that is what makes "rerun the same command to resume" safe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, PngImagePlugin

from ilvr_cli.atomic import atomic_write

#: The PNG text chunk that holds an output's parameters as JSON (read back with :func:`read_png_params`).
PARAMS_KEY = "ilvr-cli"


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 by rounding to nearest (values outside are clipped).

    Rounding (not truncation as guided-diffusion's ``.to(th.uint8)``) makes an 8-bit input survive the
    round trip [0, 255] -> [-1, 1] -> [0, 255] exactly; ``ilvr edit --mask`` relies on it.
    """
    return np.clip(np.rint(np.asarray(pixels, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _as_image(pixels: np.ndarray) -> Image.Image:
    array = pixels if pixels.dtype == np.uint8 else to_uint8(pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def save_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    params: Mapping[str, Any] | None = None,
    text: Mapping[str, str] | None = None,
) -> Path:
    """Write (H, W, 3) uint8 (or float in [0, 1]) as PNG, atomically.

    ``params`` go into the ``ilvr-cli`` text chunk as JSON; ``text`` adds plain text chunks (e.g.
    ``Software``).
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    if params is not None:
        info.add_text(PARAMS_KEY, json.dumps(dict(params), sort_keys=True, separators=(",", ":")))
    image = _as_image(pixels)
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def read_png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks of a PNG."""
    with Image.open(path) as image:
        image.load()
        return dict(getattr(image, "text", {}) or {})


def read_png_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parameters an output PNG was made with (its ``ilvr-cli`` chunk), or {} if it has none."""
    raw = read_png_text(path).get(PARAMS_KEY)
    return {} if raw is None else json.loads(raw)


def save_gif(
    path: str | os.PathLike[str],
    frames: Sequence[np.ndarray],
    duration_ms: int = 80,
    last_frame_ms: int = 1000,
) -> Path:
    """An animated GIF (looping) of (H, W, 3) frames, atomically; the last frame is held longer."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    images = [_as_image(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=256) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [last_frame_ms]

    def write(handle: BinaryIO) -> None:
        images[0].save(
            handle,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,
            disposal=1,
            optimize=False,
        )

    return atomic_write(path, write)
