"""How each task reads its reference: the image the ILVR hook is given, at the size the model needs.

- ``upscale``: the hook gets the thumbnail l = down_N(y) itself (``ILVRHook(low_res=l)``). A square input of
  (S/N)^2 pixels for a model of S^2 *is* l, so N = S / input size. An input already at model size is a
  high-resolution reference and is shrunk by N first (the seed's Table A protocol: the reference image
  is down-sampled by N with MATLAB's bicubic imresize, the same D as the filter's). Other sizes need
  ``--fit``.
- ``translate``, ``paint2img``, ``edit``: the full-resolution reference y at model size (``--fit`` for
  other sizes); ``edit`` may add a mask (white = may change).

``--fit``: ``crop`` scales the shorter side to the target and centre-crops (no distortion, loses the
edges); ``resize`` stretches to the target (keeps everything, distorts the aspect ratio); ``pad`` scales
the longer side to the target and pads with white (masks: with black, i.e. keep). Resampling is MATLAB's
``imresize`` (antialiased cubic), the filter's own resampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ilvr_cli.errors import InputError
from ilvr_cli.ilvr.lowpass import Kernel, LowPass, resize_matrix
from ilvr_cli.io.load import ImageData
from ilvr_cli.io.scan import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Reference:
    """What the hook of one input gets: ``image`` (3, h, w) in [-1, 1], the thumbnail when ``low_res``;
    ``mask`` (1, S, S) in [0, 1] or None."""

    image: torch.Tensor
    factor: int
    low_res: bool
    mask: torch.Tensor | None = None


def resize_pixels(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) with MATLAB's antialiased bicubic ``imresize``, clipped to [0, 1]."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    rows, cols = resize_matrix(h, height), resize_matrix(w, width)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float64)).permute(2, 0, 1)
    out = torch.matmul(torch.matmul(rows, x), cols.T).permute(1, 2, 0)
    return out.clamp(0.0, 1.0).numpy().astype(np.float32)


def fit_pixels(pixels: np.ndarray, size: int, policy: str, fill: float = 1.0) -> np.ndarray:
    """(H, W, C) -> (size, size, C) by ``policy`` (crop, resize or pad; see the module docstring)."""
    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return pixels
    if policy == "resize":
        return resize_pixels(pixels, size, size)
    if policy == "crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        scaled = resize_pixels(pixels, nh, nw)
        top, left = (nh - size) // 2, (nw - size) // 2
        return np.ascontiguousarray(scaled[top : top + size, left : left + size])
    if policy == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
        scaled = resize_pixels(pixels, nh, nw)
        canvas = np.full((size, size, pixels.shape[2]), fill, dtype=np.float32)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top : top + nh, left : left + nw] = scaled
        return canvas
    raise InputError(f"{w}x{h} does not fit {size}x{size} without --fit")


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) in [0, 1] -> (C, H, W) float32 in [-1, 1] (guided-diffusion's ``x / 127.5 - 1``)."""
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1) * 2.0 - 1.0


def _fit_hint(size: int) -> str:
    return f"use --fit crop|resize|pad to bring other sizes to {size}x{size}"


def _check_not_too_small(label: str, h: int, w: int, needed: int, factor: int) -> None:
    if min(h, w) < needed:
        raise InputError(
            f"{label}: {w}x{h} is too small for N={factor}: the filter keeps a {needed}x{needed} "
            "thumbnail, more than the image has; use a larger --factor or a larger image"
        )


def is_thumbnail(height: int, width: int, model_size: int) -> bool:
    """A square input whose side divides the model size: its own size decides N (model size / side)."""
    return height == width and height < model_size and model_size % height == 0


def upscale_factor(
    label: str, height: int, width: int, *, model_size: int, factor: int | None, default_factor: int, fit: str
) -> int:
    """The N that ``ilvr upscale`` uses for an input of ``height`` x ``width`` (module docstring): the
    option's or the default for a model-size reference, model size / input size for a thumbnail, the
    option's or the default after ``--fit``. Raises :class:`InputError` for a size that cannot be used.
    Needs only the image's size, so it runs on headers before any model is loaded."""
    h, w = height, width
    if h == w == model_size:
        return factor or default_factor
    if is_thumbnail(h, w, model_size):
        inferred = model_size // h
        if factor is not None and factor != inferred:
            raise InputError(
                f"{label}: {w}x{h} is the input size for N={inferred} on this {model_size}x{model_size} "
                f"model, but --factor {factor} needs {model_size // factor}x{model_size // factor} "
                f"(or {model_size}x{model_size} to shrink); drop --factor or use --fit"
            )
        return inferred
    n = factor or default_factor
    if fit == "none":
        raise InputError(
            f"{label}: upscale needs square inputs whose size divides {model_size} (e.g. "
            f"{model_size // 8}x{model_size // 8} for N=8) or {model_size}x{model_size}, got {w}x{h}; "
            + _fit_hint(model_size // n)
        )
    _check_not_too_small(label, h, w, model_size // n, n)
    return n


def full_size_check(label: str, height: int, width: int, *, model_size: int, factor: int, fit: str) -> None:
    """Raise :class:`InputError` if a full-resolution reference of this size cannot be used (needs only
    the size: runs on headers before any model is loaded)."""
    if (height, width) != (model_size, model_size):
        if fit == "none":
            raise InputError(
                f"{label}: {width}x{height} but the model is {model_size}x{model_size}; "
                + _fit_hint(model_size)
            )
        _check_not_too_small(label, height, width, model_size // factor, factor)


def upscale_reference(
    label: str,
    data: ImageData,
    *,
    model_size: int,
    factor: int | None,
    default_factor: int,
    fit: str,
    kernel: Kernel,
) -> Reference:
    """The thumbnail l = down_N(y) for ``ilvr upscale`` (module docstring: inferred N, Table A, --fit)."""
    h, w = data.size
    n = upscale_factor(
        label, h, w, model_size=model_size, factor=factor, default_factor=default_factor, fit=fit
    )
    if h == w == model_size:
        y = to_tensor(data.pixels).unsqueeze(0)
        return Reference(LowPass(model_size, model_size, n, kernel).down(y)[0], n, True)
    if (h, w) == (model_size // n, model_size // n):
        return Reference(to_tensor(data.pixels), n, True)
    return Reference(to_tensor(fit_pixels(data.pixels, model_size // n, fit)), n, True)


def full_reference(
    label: str,
    data: ImageData,
    *,
    model_size: int,
    factor: int,
    fit: str,
    mask: np.ndarray | None = None,
) -> Reference:
    """The reference y at model size (``translate``, ``paint2img``, ``edit``), and the edit mask, fitted
    with the same policy so they stay aligned."""
    h, w = data.size
    full_size_check(label, h, w, model_size=model_size, factor=factor, fit=fit)
    pixels = fit_pixels(data.pixels, model_size, fit)
    mask_tensor = None
    if mask is not None:
        mask_tensor = torch.from_numpy(_fit_mask(label, mask, (h, w), model_size, fit)).unsqueeze(0)
    return Reference(to_tensor(pixels), factor, False, mask_tensor)


def _fit_mask(
    label: str, mask: np.ndarray, image_size: tuple[int, int], model_size: int, fit: str
) -> np.ndarray:
    """A mask the size of its image (fitted like it) or of the model (used as is)."""
    size = tuple(mask.shape[:2])
    if size == (model_size, model_size):
        return np.ascontiguousarray(mask, dtype=np.float32)
    if size != image_size:
        raise InputError(
            f"{label}: its mask is {size[1]}x{size[0]}, neither the image's {image_size[1]}x{image_size[0]} "
            f"nor the model's {model_size}x{model_size}"
        )
    return np.ascontiguousarray(
        fit_pixels(mask[..., None], model_size, fit, fill=0.0)[..., 0], dtype=np.float32
    )


def find_mask(masks: Path, rel: PurePosixPath) -> Path | None:
    """The mask of input ``rel``: ``masks`` itself if it is a file, else the file of the same relative
    path and stem under the ``masks`` folder, with any image extension (None if there is none)."""
    if masks.is_file():
        return masks
    folder = masks / rel.parent
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.iterdir()):
        if (
            candidate.stem == rel.stem
            and candidate.suffix.lower() in IMAGE_EXTENSIONS
            and candidate.is_file()
        ):
            return candidate
    return None
