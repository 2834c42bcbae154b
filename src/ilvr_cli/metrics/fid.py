"""Frechet Inception Distance (Heusel et al. 2017) as pytorch-fid 0.3.0 computes it.

FID = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)), with (mu, S) the mean and covariance
of the Inception features of each image set (pytorch-fid's ``calculate_frechet_distance``).

Preprocessing modes (what turns a file into the network's 299x299 input):

- ``legacy`` (default): pytorch-fid's. PIL ``convert("RGB")``, ``ToTensor`` ([0, 1]), bilinear resize to
  299 (``align_corners=False``, no antialiasing), [0, 1] -> [-1, 1] in the network.
- ``clean``: clean-fid's ``clean`` resize. Each channel as float32 through PIL's bicubic (antialiased)
  resize to 299, clipped to [0, 255], never quantised; then the same network. (clean-fid itself feeds
  its own TorchScript Inception, so its numbers differ from both modes; see docs/metrics.md.)

Statistics files are ``.npz`` with ``mu`` and ``sigma``, pytorch-fid's format, readable both ways.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.metrics.images import load_rgb
from ilvr_cli.metrics.inception import INPUT_SIZE, FIDInception

Mode = Literal["legacy", "clean"]
MODES: tuple[Mode, ...] = ("legacy", "clean")


class SingularCovarianceWarning(UserWarning):
    """A covariance is singular (fewer images than feature dimensions): the FID is unreliable."""


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


def check_mode(mode: str) -> Mode:
    """``mode`` if known, else a UsageError naming the choices."""
    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def clean_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's ``make_resizer("PIL", False, "bicubic", (size, size))``: (H, W, 3) uint8 -> float32.

    Each channel goes through PIL's bicubic resize in mode ``F`` (32-bit float, antialiased when
    shrinking), so nothing is quantised; the result is clipped to [0, 255].
    """
    channels = [  # a float32 array becomes a mode "F" image
        np.asarray(
            Image.fromarray(image[:, :, c].astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.float32)


def preprocess(image: np.ndarray, mode: Mode = "legacy") -> Tensor:
    """(H, W, 3) uint8 -> (3, 299, 299) float32 in [0, 1]: the network input of one image."""
    if mode == "clean":
        return torch.from_numpy(clean_resize(image)).permute(2, 0, 1).div(255.0)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).div(255)
    if tuple(x.shape[1:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)[0]
    return x


class ImageDataset(torch.utils.data.Dataset):
    """Files -> preprocessed tensors; a file that cannot be read yields its error message instead."""

    def __init__(self, files: Sequence[Path], mode: Mode = "legacy") -> None:
        self.files = list(files)
        self.mode = check_mode(mode)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor | str:
        try:
            return preprocess(load_rgb(self.files[index]), self.mode)
        except InputError as error:
            return str(error)


def _collate(items: list[Tensor | str]) -> Tensor | str:
    """Stack a batch, or pass on the first error message (exceptions lose their text across workers)."""
    for item in items:
        if isinstance(item, str):
            return item
    return torch.stack(cast("list[Tensor]", items))  # no str left: the loop returned the first


def default_workers() -> int:
    """pytorch-fid's default: one loader process per available CPU, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def extract_features(
    files: Sequence[Path],
    model: FIDInception,
    *,
    mode: Mode = "legacy",
    batch_size: int = 50,
    num_workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """FID features (N, dims) float64 of image files, as pytorch-fid's ``get_activations``.

    Images may have any size (each is resized on its own before batching). ``progress(n)`` is called
    after each batch with the number of images it held.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {num_workers}")
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        ImageDataset(files, mode),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    features = np.empty((len(files), model.dims), dtype=np.float64)
    start = 0
    with torch.inference_mode():
        for batch in loader:
            if isinstance(batch, str):
                raise InputError(batch)
            out = model(batch.to(device, non_blocking=True))
            features[start : start + len(out)] = out.cpu().numpy()
            start += len(out)
            if progress is not None:
                progress(len(out))
    return features


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FIDStatistics:
    """Mean ``mu`` (d,) and covariance ``sigma`` (d, d) of FID features, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int | None = None

    @property
    def dims(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray) -> FIDStatistics:
        """pytorch-fid's ``calculate_activation_statistics``: mean and unbiased covariance (``np.cov``)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise InputError(f"FID needs the features of at least 2 images, got {len(features)}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))

    def save(self, path: Path) -> Path:
        """Write pytorch-fid's ``.npz`` (keys ``mu`` and ``sigma``) atomically; return the path."""
        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise UsageError(f"statistics files end in .npz (pytorch-fid's format), got {path.name}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, mu=self.mu, sigma=self.sigma)
            os.replace(tmp, path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write statistics to {path}: {error.strerror or error}") from None
        return path

    @classmethod
    def load(cls, path: Path) -> FIDStatistics:
        """Read a ``.npz`` with ``mu`` (d,) and ``sigma`` (d, d), e.g. one written by pytorch-fid."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"mu", "sigma"} - set(data.files)
                if missing:
                    raise InputError(f"{path} lacks {', '.join(sorted(missing))}: not an FID statistics file")
                mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read FID statistics {path}: {error}") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise InputError(
                f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; expected (d,) and (d, d)"
            )
        return cls(mu, sigma)


# --------------------------------------------------------------------------------------------------
# The distance
# --------------------------------------------------------------------------------------------------


_EPS = float(np.finfo(np.float64).eps)


def _cholesky_or_none(sigma: Tensor) -> Tensor | None:
    """Lower Cholesky factor of a covariance, or None when it is (numerically) singular."""
    factor, info = torch.linalg.cholesky_ex(sigma)
    if int(info) != 0:
        return None
    pivots = torch.diagonal(factor) ** 2
    tolerance = sigma.shape[0] * _EPS * float(torch.diagonal(sigma).max())
    return factor if float(pivots.min()) > tolerance else None


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric square root of the positive semi-definite part of ``sigma`` (negative eigenvalues -> 0)."""
    values, vectors = torch.linalg.eigh(sigma)  # reads the lower triangle
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def _lower_congruence(sigma: Tensor, factor: Tensor) -> Tensor:
    """L^T S L for a lower-triangular L, correct in its lower triangle (what ``eigvalsh`` reads).

    Done in column blocks that skip L's zero blocks and M's upper triangle: about half the work of two
    full matrix products (0.1 s instead of 0.2 s at 2048 dims on 2 CPU cores).
    """
    n = sigma.shape[0]
    blocks = max(1, min(8, n // 256))
    edges = [round(k * n / blocks) for k in range(blocks + 1)]
    product = torch.empty_like(sigma)  # S L, column block j only needs L's rows from block j on
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        product[:, start:stop] = sigma[:, start:] @ factor[start:, start:stop]
    result = torch.zeros_like(sigma)  # row block i of L^T S L, left of the diagonal block included
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        result[start:stop, :stop] = factor[start:, start:stop].T @ product[start:, :stop]
    return result


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(S_1 S_2)), in float64, always real.

    With S_1 = L L^T (Cholesky), S_1 S_2 = L (L^T S_2 L) L^-1 is similar to the symmetric PSD matrix
    L^T S_2 L, whose eigenvalues come from ``eigvalsh``: one Cholesky, one congruence and one symmetric
    eigenvalue problem, an order of magnitude faster than ``scipy.linalg.sqrtm(S_1 S_2)``. S_2 is singular
    exactly when L^T S_2 L is. If S_1 is singular the roles swap; if both are, sqrt(S_1) S_2 sqrt(S_1)
    over S_1's PSD part is used. A singular covariance gives a :class:`SingularCovarianceWarning`.
    """
    s1 = torch.from_numpy(np.ascontiguousarray(sigma1, dtype=np.float64))
    s2 = torch.from_numpy(np.ascontiguousarray(sigma2, dtype=np.float64))
    singular = []
    l1 = _cholesky_or_none(s1)
    if l1 is not None:
        inner = _lower_congruence(s2, l1)
    else:
        singular.append("first")
        l2 = _cholesky_or_none(s2)
        if l2 is not None:
            inner = _lower_congruence(s1, l2)
        else:
            singular.append("second")
            root = _psd_sqrt(s1)
            inner = root @ s2 @ root
    with _one_thread():
        eigenvalues = torch.linalg.eigvalsh(inner)  # ascending; reads the lower triangle only
    if l1 is not None and float(eigenvalues[0]) <= s1.shape[0] * _EPS * float(eigenvalues[-1].abs()):
        singular.append("second")
    if singular:
        _warn_singular(" and ".join(singular), s1.shape[0])
    return float(eigenvalues.clamp_min(0).sqrt().sum())


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread for the block (restored after).

    ``eigvalsh``'s tridiagonal reduction is memory-bound: at 2048 dims a second thread saves 15% on an
    idle 2-core machine (0.25 s instead of 0.29 s) but makes it 3-5x slower when other processes share
    the cores, as OpenMP threads then wait for each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _warn_singular(which: str, dims: int) -> None:
    warnings.warn(
        f"the {which} covariance is singular (fewer images than the {dims} feature dimensions?); the FID "
        "is computed on its positive semi-definite part but is unreliable: use more images than "
        "dimensions (the standard protocol uses 50,000)",
        SingularCovarianceWarning,
        stacklevel=4,
    )


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 (pytorch-fid's formula)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UsageError(
            f"the two statistics have different dimensions ({mu1.shape[0]} and {mu2.shape[0]}); "
            "compute both with the same --dims"
        )
    if sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise UsageError(f"sigma has shape {sigma1.shape} but mu has {mu1.shape[0]} entries")
    diff = mu1 - mu2
    trace_term = np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + trace_term)


def fid_from_statistics(a: FIDStatistics, b: FIDStatistics) -> float:
    """FID between two sets of statistics."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


__all__ = [
    "MODES",
    "FIDStatistics",
    "ImageDataset",
    "Mode",
    "SingularCovarianceWarning",
    "check_mode",
    "clean_resize",
    "default_workers",
    "extract_features",
    "fid_from_statistics",
    "frechet_distance",
    "preprocess",
    "trace_sqrt_product",
]
