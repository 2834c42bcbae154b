"""FID between folders of images and/or ``.npz`` statistics: the pipeline behind ``ilvr fid``.

Two steps, so that a caller can check its own things (e.g. the device) only when the network is needed:

1. :func:`open_fid_inputs` reads each ``.npz`` and scans each folder (known formats we do not read, such
   as gif, are recorded as failed), and settles the feature size;
2. :func:`compute_fid` loads the FID Inception once (if a folder was given), extracts the features and
   statistics of each folder (an unreadable image is recorded as failed and left out) and, for two
   inputs, computes the distance.

The result, :class:`FIDRun`, holds the value, each input's statistics and failed images, and the warnings
the distance raised (e.g. a singular covariance), for the caller to show.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.metrics import fid as fidlib
from ilvr_cli.metrics import inception
from ilvr_cli.metrics.fid import FIDStatistics, Mode
from ilvr_cli.metrics.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    FolderScan,
    scan_folder,
    unsupported_reason,
)
from ilvr_cli.metrics.progress import MetricProgress, NoProgress


@dataclass
class FIDInput:
    """One side of an FID: a ``.npz`` (``statistics`` read from it) or a folder (``scan``; its statistics
    once computed), with the images that failed (relative name -> reason)."""

    path: Path
    statistics: FIDStatistics | None = None
    scan: FolderScan | None = None
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Image files found in the folder (0 for a ``.npz``)."""
        return 0 if self.scan is None else len(self.scan.images) + len(self.scan.unsupported)

    def describe(self) -> dict[str, object]:
        """``{"path", "num_images", "dims", "failed"}`` (``ilvr fid --json``)."""
        stats = self.statistics
        assert stats is not None, "describe() needs the statistics (compute_fid)"
        return {
            "path": str(self.path),
            "num_images": stats.num_images,
            "dims": stats.dims,
            "failed": self.failed,
        }


@dataclass
class FIDInputs:
    """What :func:`open_fid_inputs` found: the inputs, by position, and the feature size."""

    inputs: list[FIDInput]
    dims: int

    @property
    def needs_network(self) -> bool:
        """Whether some input is a folder (its features need the Inception network)."""
        return any(item.scan is not None for item in self.inputs)


@dataclass
class FIDRun:
    """The result of :func:`compute_fid`."""

    inputs: list[FIDInput]
    dims: int
    mode: Mode
    #: The distance (None with one input: only its statistics were wanted).
    value: float | None
    #: Messages of the warnings the distance raised (deduplicated), e.g. a singular covariance.
    warnings: list[str]

    @property
    def failed_count(self) -> int:
        return sum(len(item.failed) for item in self.inputs)

    @property
    def total(self) -> int:
        """Image files found in the folders."""
        return sum(item.total for item in self.inputs)


def _folder(path: Path, progress: MetricProgress) -> FIDInput:
    """A folder's images (the task commands' scan rules); known formats we do not read fail here."""
    scan = scan_folder(path)
    if len(scan.images) < 2:
        raise InputError(
            f"{path} holds {len(scan.images)} image(s) with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}; "
            "FID needs at least 2"
        )
    source = FIDInput(path, scan=scan)
    for item in scan.unsupported:
        source.failed[item.rel.as_posix()] = unsupported_reason(item)
        progress.skipped(f"{path}/{item.rel}", source.failed[item.rel.as_posix()])
    return source


def open_fid_inputs(
    paths: list[Path], dims: int | None = None, progress: MetricProgress | None = None
) -> FIDInputs:
    """Read the ``.npz`` statistics and scan the folders of ``paths``, and settle the feature size:
    ``dims``, else that of a ``.npz`` given, else 2048; every ``.npz`` must match it (a UsageError)."""
    progress = progress or NoProgress()
    inputs = []
    for path in paths:
        if path.is_dir():
            inputs.append(_folder(path, progress))
        elif path.suffix.lower() == ".npz":
            inputs.append(FIDInput(path, statistics=FIDStatistics.load(path)))
        else:
            raise UsageError(f"{path} is neither a folder of images nor a .npz statistics file")
    loaded = [item for item in inputs if item.scan is None]
    if dims is None:
        dims = loaded[0].statistics.dims if loaded and loaded[0].statistics is not None else 2048
    if len(loaded) < len(inputs):
        inception.check_dims(dims)
    for item in loaded:
        if item.statistics is not None and item.statistics.dims != dims:
            raise UsageError(f"{item.path} holds {item.statistics.dims}-d statistics but --dims is {dims}")
    return FIDInputs(inputs, dims)


def _folder_statistics(
    item: FIDInput,
    model: inception.FIDInception,
    *,
    mode: Mode,
    batch_size: int,
    workers: int,
    max_pixels: int,
    progress: MetricProgress,
) -> FIDStatistics:
    """Features and statistics of a folder; unreadable images are recorded and left out."""
    assert item.scan is not None
    files = [image.path for image in item.scan.images]
    names = {image.path: image.rel.as_posix() for image in item.scan.images}
    progress.begin(f"Inception features of {item.path.name or item.path}", len(files))

    def failed(path: Path, message: str) -> None:
        item.failed[names[path]] = message
        progress.skipped(f"{item.path}/{names[path]}", message)

    features = fidlib.extract_features(
        files,
        model,
        mode=mode,
        batch_size=batch_size,
        num_workers=workers,
        progress=progress.advance,
        max_pixels=max_pixels,
        on_error=failed,
    )
    if len(features) < 2:
        raise InputError(
            f"only {len(features)} of the {item.total} images in {item.path} could be read; FID "
            "needs at least 2 (see the warnings above)"
        )
    return FIDStatistics.from_features(features)


def compute_fid(
    inputs: FIDInputs,
    *,
    mode: Mode = "legacy",
    batch_size: int = 50,
    device: str = "cpu",
    workers: int | None = None,
    weights: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: MetricProgress | None = None,
) -> FIDRun:
    """Statistics of every folder of ``inputs`` (the network is loaded once, on ``device``, from
    ``weights`` or the model registry), then, for two inputs, their FID.

    ``workers`` (image-loading processes) defaults to 0 on CPU, where the network needs every core, else
    :func:`~ilvr_cli.metrics.fid.default_workers`. A folder left with fewer than 2 readable images is an
    InputError.
    """
    progress = progress or NoProgress()
    fidlib.check_mode(mode)
    folders = [item for item in inputs.inputs if item.scan is not None]
    if folders:
        model = inception.load_fid_inception(weights, device, dims=inputs.dims)
        if workers is None:
            workers = 0 if device.split(":")[0] == "cpu" else fidlib.default_workers()
        for item in folders:
            item.statistics = _folder_statistics(
                item,
                model,
                mode=mode,
                batch_size=batch_size,
                workers=workers,
                max_pixels=max_pixels,
                progress=progress,
            )
    value = None
    messages: list[str] = []
    if len(inputs.inputs) == 2:
        a, b = (item.statistics for item in inputs.inputs)
        assert a is not None and b is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = fidlib.fid_from_statistics(a, b)
        messages = list({str(w.message): None for w in caught})
    return FIDRun(inputs.inputs, inputs.dims, mode, value, messages)


__all__ = ["FIDInput", "FIDInputs", "FIDRun", "compute_fid", "open_fid_inputs"]
