"""NIQE, the Naturalness Image Quality Evaluator (Mittal, Soundararajan and Bovik 2012), as released.

A port of the MATLAB release (``computequality.m``, ``computefeature.m``, ``estimateaggdparam.m``) with
its pristine model (``modelparameters.mat``, shipped as ``ilvr_cli/data/niqe_params.npz`` under the
release's notice in ``NIQE_LICENSE.txt``). Lower is more natural. Steps, as in ``computequality``:

1. grey image as MATLAB's ``rgb2gray`` on uint8 (rounded to uint8), as double, cropped to whole 96x96 blocks;
2. at two scales: MSCN coefficients (I - mu) / (sigma + 1), mu and sigma from a 7x7 Gaussian window
   (sigma 7/6, replicated borders); 18 features per block (96x96, then 48x48, no overlap): the AGGD fit of
   the coefficients and of their products with 4 shifted copies; the second scale is MATLAB's
   ``imresize(im, 0.5)`` (bicubic, antialiased) of the grey image;
3. a Gaussian fitted to the block features (``nanmean``, ``nancov`` over complete rows) and its distance to
   the pristine one: sqrt((mu_p - mu)^T pinv((S_p + S) / 2) (mu_p - mu)).

Needs numpy only (no scipy, no torch).
"""

from __future__ import annotations

import functools
import math
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from ilvr_cli.errors import InputError
from ilvr_cli.imresize import contributions
from ilvr_cli.metrics.images import DEFAULT_MAX_PIXELS, load_rgb_or_gray

BLOCK_SIZE = 96
#: Smallest side accepted: two blocks per side, so the fitted covariance has some support.
MIN_SIDE = 2 * BLOCK_SIZE
#: MATLAB ``rgb2gray`` weights (the exact values it uses, from the inverse of the NTSC YIQ matrix).
RGB2GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
#: ``computefeature``'s shifts for the pairwise products (``circshift`` offsets, rows then columns).
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@functools.cache
def load_niqe_params() -> tuple[np.ndarray, np.ndarray]:
    """The release's pristine model: mean (36,) and covariance (36, 36), float64, read-only."""
    source = resources.files("ilvr_cli").joinpath("data").joinpath("niqe_params.npz")
    with source.open("rb") as handle, np.load(handle, allow_pickle=False) as data:
        mu, cov = np.array(data["mu"]), np.array(data["cov"])
    mu.setflags(write=False)
    cov.setflags(write=False)
    return mu, cov


# --------------------------------------------------------------------------------------------------
# MATLAB building blocks
# --------------------------------------------------------------------------------------------------


def rgb2gray(image: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray``: weighted sum of R, G, B; uint8 input is rounded (half away from 0) to uint8."""
    weighted = np.tensordot(image[..., :3].astype(np.float64), np.array(RGB2GRAY_WEIGHTS), axes=([-1], [0]))
    if image.dtype == np.uint8:
        return np.clip(np.floor(weighted + 0.5), 0, 255).astype(np.uint8)
    return weighted


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """MATLAB's ``start:step:stop``: the first half counted up from start, the second down from stop."""
    n = int(math.floor((stop - start) / step + 1e-10))
    k = np.arange(n + 1, dtype=np.float64)
    half = n // 2
    return np.where(k <= half, start + k * step, stop - (n - k) * step)


def imresize_contributions(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``imresize``'s ``contributions`` for bicubic with antialiasing: (weights, 0-based indices)."""
    return contributions(in_len, out_len, "cubic", antialias=True)


def _resize_axis0(image: np.ndarray, out_len: int) -> np.ndarray:
    """Resample along the first axis, summing the taps in order as MATLAB's ``imresizemex`` does."""
    weights, indices = imresize_contributions(image.shape[0], out_len)
    out = np.zeros((out_len,) + image.shape[1:], dtype=np.float64)
    for tap in range(weights.shape[1]):
        out += weights[:, tap, None] * image[indices[:, tap]]
    return out


def imresize_half(image: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize(im, 0.5)`` of a 2-D double image (bicubic, antialiased; rows first, then columns)."""
    rows = _resize_axis0(np.asarray(image, dtype=np.float64), math.ceil(image.shape[0] / 2))
    return _resize_axis0(rows.T, math.ceil(image.shape[1] / 2)).T


@functools.cache
def _gaussian_taps() -> np.ndarray:
    """1-D factor of ``fspecial('gaussian', 7, 7/6)``, summing to 1 (the window is its outer square)."""
    x = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def gaussian_filter(image: np.ndarray) -> np.ndarray:
    """``imfilter(im, window, 'replicate')`` with NIQE's 7x7 Gaussian window (separable)."""
    taps = _gaussian_taps()
    padded = np.pad(image, 3, mode="edge")
    height, width = image.shape
    cols = sum(t * padded[:, k : k + width] for k, t in enumerate(taps))
    return sum(t * cols[k : k + height, :] for k, t in enumerate(taps))


def mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (I - mu) / (sigma + 1) (``computequality``)."""
    mu = gaussian_filter(image)
    sigma = np.sqrt(np.abs(gaussian_filter(image * image) - mu * mu))
    return (image - mu) / (sigma + 1)


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


@functools.cache
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    """``estimateaggdparam``'s grid gam = 0.2:0.001:10 and r(gam) = G(2/g)^2 / (G(1/g) G(3/g))."""
    gam = matlab_colon(0.2, 0.001, 10)
    gamma = np.vectorize(math.gamma)
    return gam, gamma(2 / gam) ** 2 / (gamma(1 / gam) * gamma(3 / gam))


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row means of ``values`` where ``mask``; NaN for rows with no entry (MATLAB ``mean([])``)."""
    count = mask.sum(axis=1)
    total = np.where(mask, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def estimate_aggd(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``estimateaggdparam`` for each row of (n, m): the AGGD shape alpha and the scales beta_l, beta_r."""
    gam, r_gam = _aggd_table()
    squares = vectors * vectors
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(_masked_mean(squares, vectors < 0))
        right_std = np.sqrt(_masked_mean(squares, vectors > 0))
        gamma_hat = left_std / right_std
        r_hat = np.abs(vectors).mean(axis=1) ** 2 / squares.mean(axis=1)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    positions = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), 256):  # bounded memory for huge images
        chunk = (r_gam[None, :] - r_hat_norm[start : start + 256, None]) ** 2
        positions[start : start + 256] = np.argmin(np.where(np.isnan(chunk), np.inf, chunk), axis=1)
    alpha = gam[positions]  # an all-NaN row gives index 0, as MATLAB's min
    ratio = np.sqrt(np.array([math.gamma(1 / a) / math.gamma(3 / a) for a in alpha]))
    return alpha, left_std * ratio, right_std * ratio


def _blocks(image: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) non-overlapping blocks in MATLAB ``blkproc`` order (down the columns first)."""
    rows, cols = image.shape[0] // size, image.shape[1] // size
    grid = image[: rows * size, : cols * size].reshape(rows, size, cols, size)
    return grid.transpose(2, 0, 1, 3).reshape(rows * cols, size, size)


def block_features(coefficients: np.ndarray, size: int) -> np.ndarray:
    """``computefeature`` per block: (n, 18) = [alpha, mean beta] + 4 x [alpha, mean, beta_l, beta_r]."""
    blocks = _blocks(coefficients, size)
    flat = blocks.transpose(0, 2, 1).reshape(len(blocks), -1)  # MATLAB's structdis(:) (column-major)
    alpha, beta_l, beta_r = estimate_aggd(flat)
    columns = [alpha, (beta_l + beta_r) / 2]
    for shift in SHIFTS:
        shifted = np.roll(blocks, shift, axis=(1, 2)).transpose(0, 2, 1).reshape(len(blocks), -1)
        alpha, beta_l, beta_r = estimate_aggd(flat * shifted)
        gamma_ratio = np.array([math.gamma(2 / a) / math.gamma(1 / a) for a in alpha])
        columns += [alpha, (beta_r - beta_l) * gamma_ratio, beta_l, beta_r]
    return np.stack(columns, axis=1)


def _check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"NIQE needs at least {MIN_SIDE}x{MIN_SIDE} pixels ({BLOCK_SIZE}x{BLOCK_SIZE} blocks, two per "
            f"side); this image is {width}x{height}"
        )


def niqe_features(gray: np.ndarray) -> np.ndarray:
    """(n_blocks, 36) features of a grey image (2-D, values 0..255): 18 at full size, 18 at half size."""
    gray = np.asarray(gray, dtype=np.float64)
    _check_size(*gray.shape)
    rows, cols = gray.shape[0] // BLOCK_SIZE, gray.shape[1] // BLOCK_SIZE
    image = gray[: rows * BLOCK_SIZE, : cols * BLOCK_SIZE]
    per_scale = []
    for scale in (1, 2):
        per_scale.append(block_features(mscn(image), BLOCK_SIZE // scale))
        image = imresize_half(image)
    return np.concatenate(per_scale, axis=1)


def _pinv(matrix: np.ndarray) -> np.ndarray:
    """MATLAB ``pinv``: singular values below max(size) * eps(max singular value) are dropped."""
    u, s, vt = np.linalg.svd(matrix)
    keep = s > max(matrix.shape) * np.spacing(s.max())
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def quality_from_features(features: np.ndarray) -> float:
    """The distance between the features' Gaussian (``nanmean``, ``nancov``) and the pristine model."""
    mu_p, cov_p = load_niqe_params()
    with warnings.catch_warnings():  # an all-NaN column stays NaN, as MATLAB's nanmean
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) < 2:
        raise InputError("NIQE found fewer than 2 usable blocks (flat or constant image?)")
    cov = np.cov(complete, rowvar=False)
    diff = mu_p - mu
    with np.errstate(invalid="ignore"):
        value = float(np.sqrt(diff @ _pinv((cov_p + cov) / 2) @ diff))
    if not math.isfinite(value):  # MATLAB would print NaN; a score must be a number
        raise InputError("NIQE is undefined for this image (its block features give no finite distance)")
    return value


def niqe(image: np.ndarray) -> float:
    """NIQE of an image: (H, W) grey or (H, W, 3) RGB, uint8 (as ``imread``) or float in [0, 255]."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = rgb2gray(image)
    if image.ndim != 2:
        raise InputError(f"NIQE expects a grey or RGB image, got an array of shape {image.shape}")
    return quality_from_features(niqe_features(image))


def niqe_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """NIQE of an image file (grey files stay grey; other modes are converted to RGB first).

    Files over ``max_pixels`` are refused from their header (NIQE needs about 70 bytes per pixel).
    """
    image = load_rgb_or_gray(Path(path), max_pixels)
    try:
        return niqe(image)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


__all__ = [
    "BLOCK_SIZE",
    "MIN_SIDE",
    "block_features",
    "estimate_aggd",
    "gaussian_filter",
    "imresize_contributions",
    "imresize_half",
    "load_niqe_params",
    "matlab_colon",
    "mscn",
    "niqe",
    "niqe_features",
    "niqe_file",
    "quality_from_features",
    "rgb2gray",
]
