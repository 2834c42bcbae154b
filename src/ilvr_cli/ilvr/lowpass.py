"""The low-pass filter phi_N of ILVR (Choi et al. 2021, Eq. 8): down-sample by N, then up-sample by N.

The resampling is MATLAB's ``imresize`` (the ``Resizer`` that ilvr_adm ships): for a scale s = out/in the
output sample x (1-based) sits at input position u = x/s + 0.5 (1 - 1/s); the kernel is Keys' cubic
(a = -0.5) by default; when shrinking with antialiasing the kernel is stretched by 1/s and scaled by s;
each row of weights is normalised to sum to 1, and taps outside the image are folded back by symmetric
(mirror) padding. Resampling one axis is a linear map, so it is built once as a dense matrix and the 2-D
operator is matmuls over the last two dimensions: ``phi(x) = U_h D_h x D_w^T U_w^T = P_h x P_w^T`` with
``P = U D`` per axis (evaluated as up(down(x)), the cheaper order for N >= 2).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import numpy as np
import torch

from ilvr_cli.errors import UsageError
from ilvr_cli.imresize import KERNELS, contributions

Kernel = Literal["cubic", "linear", "lanczos2", "lanczos3"]


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise UsageError(f"unknown resampling kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


@functools.lru_cache(maxsize=128)
def _resize_matrix_np(in_len: int, out_len: int, kernel: str, antialias: bool) -> np.ndarray:
    """MATLAB ``imresize`` ``contributions`` for one axis as a dense (out_len, in_len) float64 matrix."""
    weights, indices = contributions(in_len, out_len, kernel, antialias)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    np.add.at(matrix, (rows, indices), weights)
    matrix.setflags(write=False)
    return matrix


def resize_matrix(
    in_len: int, out_len: int, kernel: Kernel = "cubic", antialias: bool = True
) -> torch.Tensor:
    """Resampling matrix (out_len, in_len), float64, of MATLAB ``imresize`` along one axis.

    ``resize_matrix(n, m) @ v`` equals ``imresize`` of the column vector ``v`` to length m (scale m/n),
    including the antialiased kernel stretch when shrinking and symmetric border padding.
    """
    _check_kernel(kernel)
    if in_len < 1 or out_len < 1:
        raise UsageError(f"resize lengths must be positive, got {in_len} -> {out_len}")
    return torch.from_numpy(_resize_matrix_np(int(in_len), int(out_len), kernel, bool(antialias)).copy())


class AxisOperators(NamedTuple):
    """Float64 matrices for one axis of length L and factor N: down (L/N, L), up (L, L/N), phi = up @ down."""

    down: torch.Tensor
    up: torch.Tensor
    phi: torch.Tensor


@functools.lru_cache(maxsize=64)
def axis_operators(length: int, factor: int, kernel: str = "cubic", exact: bool = False) -> AxisOperators:
    """Build (once per key) the down, up and low-pass matrices of one axis.

    ``exact=False``: up is ``imresize`` by N (the paper's phi_N). ``exact=True``: up is the Moore-Penrose
    pseudo-inverse of down, ``U = D^T (D D^T)^-1``, so ``phi = U D`` is the orthogonal projection onto the
    row space of D (idempotent and symmetric) and ``D phi = D``.
    """
    low = length // factor
    down = torch.from_numpy(_resize_matrix_np(length, low, kernel, True).copy())
    if exact:
        up = torch.linalg.solve(down @ down.T, down).T.contiguous()
    else:
        up = torch.from_numpy(_resize_matrix_np(low, length, kernel, True).copy())
    return AxisOperators(down, up, up @ down)


def _check_factor(height: int, width: int, factor: int) -> None:
    for name, value in (("height", height), ("width", width), ("factor", factor)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UsageError(f"{name} must be an integer, got {value!r}")
    if height < 1 or width < 1:
        raise UsageError(f"image size must be positive, got {height}x{width}")
    if factor < 1:
        raise UsageError(f"down-sampling factor N must be >= 1, got {factor}")
    if height % factor or width % factor:
        raise UsageError(
            f"factor N={factor} must divide the image size {height}x{width}; "
            f"pick N among the common divisors of {height} and {width}"
        )


def _fused_is_cheaper(height: int, width: int, factor: int) -> bool:
    """Multiply-adds per channel of ``P_h x P_w^T`` versus ``U_h (D_h x D_w^T) U_w^T``."""
    h, w = height // factor, width // factor
    fused = height * height * width + height * width * width
    split = h * height * width + h * width * w + height * h * w + height * w * width
    return fused <= split


class LowPass:
    """phi_N of ILVR: ``down`` (imresize by 1/N), ``up`` (imresize by N) and ``phi = up o down``.

    Works on any tensor whose last two dimensions are (height, width), e.g. (B, C, H, W). The float64
    matrices are shared by all instances with the same key; their casts to a tensor's device and dtype
    are cached per instance, so repeated calls do no host work.
    """

    def __init__(
        self,
        height: int,
        width: int,
        factor: int,
        kernel: Kernel = "cubic",
        exact: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_kernel(kernel)
        _check_factor(height, width, factor)
        self.height, self.width, self.factor = int(height), int(width), int(factor)
        self.kernel, self.exact = kernel, bool(exact)
        self.rows = axis_operators(self.height, self.factor, kernel, self.exact)
        self.cols = axis_operators(self.width, self.factor, kernel, self.exact)
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[AxisOperators, AxisOperators]] = {}
        self.fused = _fused_is_cheaper(self.height, self.width, self.factor)
        if device is not None:
            self._operators(torch.device(device), dtype)

    @property
    def low_size(self) -> tuple[int, int]:
        """(H/N, W/N): the size of ``down(x)``."""
        return self.height // self.factor, self.width // self.factor

    def __repr__(self) -> str:
        return (
            f"LowPass({self.height}x{self.width}, factor={self.factor}, kernel={self.kernel!r}, "
            f"exact={self.exact})"
        )

    def _operators(self, device: torch.device, dtype: torch.dtype) -> tuple[AxisOperators, AxisOperators]:
        key = (device, dtype)
        ops = self._cast.get(key)
        if ops is None:
            rows, cols = (
                AxisOperators(*(m.to(device=device, dtype=dtype) for m in axis))
                for axis in (self.rows, self.cols)
            )
            ops = (rows, cols)
            self._cast[key] = ops
        return ops

    def _ops_for(
        self, x: torch.Tensor, size: tuple[int, int], what: str
    ) -> tuple[AxisOperators, AxisOperators]:
        if x.dim() < 2 or tuple(x.shape[-2:]) != size:
            raise UsageError(f"{what} must end in size {size[0]}x{size[1]}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise UsageError(f"{what} must be a floating-point tensor, got {x.dtype}")
        return self._operators(x.device, x.dtype)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, W) -> (..., H/N, W/N): ``D_h x D_w^T`` (imresize by 1/N, antialiased)."""
        rows, cols = self._ops_for(x, (self.height, self.width), "input of down()")
        return torch.matmul(torch.matmul(rows.down, x), cols.down.T)

    def up(self, low: torch.Tensor) -> torch.Tensor:
        """(..., H/N, W/N) -> (..., H, W): ``U_h l U_w^T`` (imresize by N, or the pseudo-inverse if exact)."""
        rows, cols = self._ops_for(low, self.low_size, "input of up()")
        return torch.matmul(torch.matmul(rows.up, low), cols.up.T)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """phi_N(x) = up(down(x)) = ``P_h x P_w^T`` with ``P = U D`` per axis.

        Uses the fused H x H and W x W matrices when that takes fewer multiply-adds (N = 1), else the four
        thin matmuls of up(down(x)) (fewer flops for every N >= 2: about 4/N of the fused count).
        """
        rows, cols = self._ops_for(x, (self.height, self.width), "input of the low-pass filter")
        if self.fused:
            return torch.matmul(torch.matmul(rows.phi, x), cols.phi.T)
        low = torch.matmul(torch.matmul(rows.down, x), cols.down.T)
        return torch.matmul(torch.matmul(rows.up, low), cols.up.T)
