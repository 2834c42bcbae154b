"""MATLAB ``imresize`` weights for one axis, shared by ILVR's low-pass filter and NIQE (numpy only).

For a scale s = out/in the output sample x (1-based) sits at input position u = x/s + 0.5 (1 - 1/s);
when shrinking with antialiasing the kernel is stretched by 1/s and scaled by s; each row of weights is
normalised to sum to 1; taps outside the image are folded back by symmetric (mirror) padding, MATLAB's
``[1:in, in:-1:1]`` index. This is MATLAB's ``contributions`` and ilvr_adm's ``Resizer``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

__all__ = ["KERNELS", "contributions"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize`` 'cubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def _linear(x: np.ndarray) -> np.ndarray:
    """Triangle kernel (MATLAB 'triangle' / 'bilinear')."""
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _lanczos(a: int) -> Callable[[np.ndarray], np.ndarray]:
    """Lanczos kernel sinc(x) sinc(x/a) on |x| < a (MATLAB 'lanczos2' / 'lanczos3')."""

    def kernel(x: np.ndarray) -> np.ndarray:
        return np.sinc(x) * np.sinc(x / a) * (np.abs(x) < a)

    return kernel


#: name -> (kernel function, support width in input samples at scale 1)
KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "cubic": (_cubic, 4.0),
    "linear": (_linear, 2.0),
    "lanczos2": (_lanczos(2), 4.0),
    "lanczos3": (_lanczos(3), 6.0),
}


@functools.lru_cache(maxsize=128)
def contributions(
    in_len: int, out_len: int, kernel: str = "cubic", antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(weights, indices), both (out_len, taps): output i is ``sum_k weights[i, k] * in[indices[i, k]]``
    with 0-based, mirror-folded ``indices``. Read-only arrays (cached)."""
    func, width = KERNELS[kernel]
    scale = out_len / in_len
    if scale < 1.0 and antialias:

        def scaled(d: np.ndarray) -> np.ndarray:
            return scale * func(scale * d)

        weight: Callable[[np.ndarray], np.ndarray] = scaled
        width = width / scale
    else:
        weight = func
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    positions = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input positions
    weights = weight(u[:, None] - positions)
    sums = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(sums == 0.0, 1.0, sums)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(positions.astype(np.int64) - 1, 2 * in_len)]
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices
