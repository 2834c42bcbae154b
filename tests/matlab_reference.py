"""An independent, per-pixel statement of MATLAB ``imresize`` along one axis (no tests here).

Written from imresize.m's ``contributions`` and ``cubic``/``lanczos2`` expressions, one output sample at a
time, over an explicitly mirror-padded signal: it shares no code with ``ilvr_cli.imresize``, so the project's
vectorised matrices can be checked against it at any size, borders included.
"""

from __future__ import annotations

import math

import numpy as np


def matlab_cubic(x: np.ndarray) -> np.ndarray:
    """imresize.m's ``cubic``: Keys' kernel with a = -0.5."""
    absx = np.abs(x)
    absx2, absx3 = absx**2, absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * (
        (absx > 1) & (absx <= 2)
    )


def matlab_lanczos2(x: np.ndarray) -> np.ndarray:
    """imresize.m's ``lanczos2``, with its eps guard instead of a sinc."""
    eps = np.finfo(np.float64).eps
    f = (np.sin(np.pi * x) * np.sin(np.pi * x / 2) + eps) / (np.pi**2 * x**2 / 2 + eps)
    return f * (np.abs(x) < 2)


KERNELS = {"cubic": matlab_cubic, "lanczos2": matlab_lanczos2}


def imresize_1d(
    signal: np.ndarray, out_len: int, kernel: str = "cubic", antialias: bool = True
) -> np.ndarray:
    """Resize a 1-D float64 signal to ``out_len`` samples as MATLAB ``imresize`` does (kernel width 4)."""
    in_len = len(signal)
    func = KERNELS[kernel]
    s = out_len / in_len
    shrink = s < 1 and antialias
    width = 4.0 / s if shrink else 4.0
    pad = 4 * in_len
    padded = np.pad(signal, pad, mode="symmetric")  # MATLAB's [1:in, in:-1:1] folding, repeated
    out = np.empty(out_len)
    for x in range(out_len):
        u = (x + 1) / s + 0.5 * (1 - 1 / s)  # 1-based input coordinate of output sample x + 1
        first = math.floor(u - width / 2)
        taps = np.arange(first, first + math.ceil(width) + 2)
        w = s * func(s * (u - taps)) if shrink else func(u - taps)
        out[x] = (w * padded[taps - 1 + pad]).sum() / w.sum()
    return out


def imresize_matrix(in_len: int, out_len: int, kernel: str = "cubic", antialias: bool = True) -> np.ndarray:
    """The (out_len, in_len) matrix of :func:`imresize_1d`, one unit impulse at a time."""
    return np.stack([imresize_1d(e, out_len, kernel, antialias) for e in np.eye(in_len)], axis=1)
