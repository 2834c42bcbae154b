"""``ilvr fid`` and ``ilvr niqe``: the seed's metrics over folders of images (docs/metrics.md).

The command functions are registered by ``cli/app.py``; torch and the metric modules are imported inside
them so ``ilvr --help`` stays fast.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ilvr_cli.cli.common import counting_progress, err, handle_errors, out
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.errors import InputError, UsageError

if TYPE_CHECKING:
    from ilvr_cli.io.scan import InputItem
    from ilvr_cli.metrics.fid import FIDStatistics, Mode
    from ilvr_cli.metrics.images import FolderScan

#: The task commands' default pixel limit (``ilvr_cli.io.load.DEFAULT_MAX_PIXELS``, not imported: numpy).
DEFAULT_MAX_MEGAPIXELS = 50.0

MaxMegapixelsOpt = Annotated[
    float,
    typer.Option(
        "--max-megapixels",
        help="Refuse larger images, from their header before decoding (decompression-bomb guard).",
    ),
]


class FidMode(str, Enum):
    """Preprocessing of ``ilvr fid``."""

    legacy = "legacy"
    clean = "clean"


def _print_json(data: dict[str, Any]) -> None:
    out.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Show Python warnings raised inside (e.g. a singular covariance) as yellow lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for seen in {str(w.message): w for w in caught}.values():
        err.print(f"[yellow]warning:[/] {seen.message}", highlight=False, soft_wrap=True)


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{path} does not exist")


def _max_pixels(megapixels: float) -> int:
    """``--max-megapixels`` as a pixel count; a UsageError unless it is a positive number."""
    if not (math.isfinite(megapixels) and megapixels > 0):
        raise UsageError(f"--max-megapixels must be a positive number, got {megapixels:g}")
    return max(1, int(megapixels * 1_000_000))


def _unsupported(item: InputItem) -> str:
    """Why a file of a known image format we do not read (gif, heic, ...) is not scored."""
    return f"unsupported image format {item.path.suffix.lower()}; convert {item.rel} to PNG, JPEG, WebP, BMP or TIFF"


def _warn_skipped(name: str, reason: str) -> None:
    err.print(
        f"[yellow]warning:[/] skipped {escape(name)}: {escape(reason)}", highlight=False, soft_wrap=True
    )


# --------------------------------------------------------------------------------------------------
# ilvr fid
# --------------------------------------------------------------------------------------------------


def _resolve_device(device: str | None) -> str:
    """``--device``, checked to exist here (a UsageError otherwise); default cuda if available, else cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(
                f"--device {device}: there are {count} CUDA device(s) here, cuda:0 to cuda:{count - 1}"
            )
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"--device {device}: Apple MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise UsageError(f"--device {device}: use cpu, cuda, cuda:N or mps")
    return device


@dataclass
class _Folder:
    """A folder of ``ilvr fid``: its images and the files that failed (relative name -> reason)."""

    scan: FolderScan
    failed: dict[str, str]

    @property
    def total(self) -> int:
        return len(self.scan.images) + len(self.scan.unsupported)


def _folder_files(folder: Path) -> _Folder:
    """The images of a folder (the task commands' scan rules); known formats we do not read fail here."""
    from ilvr_cli.metrics.images import IMAGE_EXTENSIONS, scan_folder

    scan = scan_folder(folder)
    if len(scan.images) < 2:
        raise InputError(
            f"{folder} holds {len(scan.images)} image(s) with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}; "
            "FID needs at least 2"
        )
    failed = {}
    for item in scan.unsupported:
        failed[item.rel.as_posix()] = _unsupported(item)
        _warn_skipped(f"{folder}/{item.rel}", failed[item.rel.as_posix()])
    return _Folder(scan, failed)


def _describe(path: Path, stats: FIDStatistics, failed: dict[str, str] | None = None) -> dict[str, Any]:
    return {"path": str(path), "num_images": stats.num_images, "dims": stats.dims, "failed": failed or {}}


def _report_failures(folders: dict[int, _Folder]) -> None:
    """Exit 1 (after the result was printed) when some images of the folders failed."""
    failed = sum(len(folder.failed) for folder in folders.values())
    if failed:
        total = sum(folder.total for folder in folders.values())
        err.print(f"[yellow]{failed} of {total} images failed; the others were scored[/]", highlight=False)
        raise typer.Exit(ExitCode.PARTIAL_FAILURE)


@handle_errors
def fid_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Two folders of images (searched recursively) or .npz statistics (pytorch-fid's format); "
            "one folder with --save-stats.",
            show_default=False,
        ),
    ],
    save_stats: Annotated[
        Path | None,
        typer.Option("--save-stats", help="Save the statistics of the one folder given to this .npz file."),
    ] = None,
    dims: Annotated[
        int | None,
        typer.Option(
            "--dims",
            help="Inception feature size: 64, 192, 768 or 2048 (default: 2048, or that of a .npz given).",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        FidMode,
        typer.Option(
            "--mode", help="legacy: pytorch-fid's preprocessing; clean: clean-fid's bicubic resize."
        ),
    ] = FidMode.legacy,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per network call.")] = 50,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="cpu, cuda, cuda:N or mps (default: cuda if available).", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Image-loading processes (default: 0 on CPU, else min(8, CPUs)).",
            show_default=False,
        ),
    ] = None,
    inception_weights: Annotated[
        Path | None,
        typer.Option(
            "--inception-weights",
            help="Local copy of pt_inception-2015-12-05-6726825d.pth (else the model registry).",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON object instead of the number.")
    ] = False,
    max_megapixels: MaxMegapixelsOpt = DEFAULT_MAX_MEGAPIXELS,
) -> None:
    """Frechet Inception Distance between two image sets, equal to pytorch-fid's on the same inputs."""
    from ilvr_cli.metrics import fid as fidlib

    max_pixels = _max_pixels(max_megapixels)
    _check_fid_arguments(paths, save_stats)
    loaded, folders = _classify_sources(paths)
    dims = _resolve_dims(dims, loaded, folders, paths)
    stats = dict(loaded)
    if folders:
        options = _FeatureOptions(mode.value, batch_size, workers, device, max_pixels)
        stats.update(_folder_statistics(folders, paths, dims, inception_weights, options))
    failed = {index: folder.failed for index, folder in folders.items()}

    if save_stats is not None:
        _save_stats(stats[0], paths[0], save_stats, mode.value, json_output, failed.get(0))
        _report_failures(folders)
        return
    with _warnings_to_stderr():
        value = fidlib.fid_from_statistics(stats[0], stats[1])
    if json_output:
        _print_json(
            {
                "fid": value,
                "dims": dims,
                "mode": mode.value,
                "a": _describe(paths[0], stats[0], failed.get(0)),
                "b": _describe(paths[1], stats[1], failed.get(1)),
            }
        )
    else:
        out.print(f"{value:.6f}", highlight=False)
    _report_failures(folders)


def _check_fid_arguments(paths: list[Path], save_stats: Path | None) -> None:
    """Two paths, or one folder with ``--save-stats FILE.npz``; all existing. Before any heavy import."""
    expected = 1 if save_stats is not None else 2
    if len(paths) != expected:
        hint = "one folder with --save-stats" if save_stats else "two paths (folders or .npz files)"
        raise UsageError(f"expected {hint}, got {len(paths)}")
    for path in paths:
        _require_exists(path)
    if save_stats is not None and not paths[0].is_dir():
        raise UsageError(f"--save-stats needs a folder of images, got {paths[0]}")
    if save_stats is not None and save_stats.suffix.lower() != ".npz":
        raise UsageError(f"--save-stats must name a .npz file (pytorch-fid's format), got {save_stats}")


def _classify_sources(paths: list[Path]) -> tuple[dict[int, FIDStatistics], dict[int, _Folder]]:
    """Statistics read from ``.npz`` files and the images of folders, by position."""
    from ilvr_cli.metrics.fid import FIDStatistics

    loaded: dict[int, FIDStatistics] = {}
    folders: dict[int, _Folder] = {}
    for index, path in enumerate(paths):
        if path.is_dir():
            folders[index] = _folder_files(path)
        elif path.suffix.lower() == ".npz":
            loaded[index] = FIDStatistics.load(path)
        else:
            raise UsageError(f"{path} is neither a folder of images nor a .npz statistics file")
    return loaded, folders


def _resolve_dims(
    dims: int | None, loaded: dict[int, FIDStatistics], folders: dict[int, _Folder], paths: list[Path]
) -> int:
    """``--dims``, else that of a ``.npz`` given, else 2048; every ``.npz`` must match it."""
    from ilvr_cli.metrics.inception import check_dims

    if dims is None:
        dims = next(iter(loaded.values())).dims if loaded else 2048
    if folders:
        check_dims(dims)
    for index, stats in loaded.items():
        if stats.dims != dims:
            raise UsageError(f"{paths[index]} holds {stats.dims}-d statistics but --dims is {dims}")
    return dims


@dataclass(frozen=True)
class _FeatureOptions:
    """How ``ilvr fid`` extracts features: preprocessing mode, batch size, loader processes, device,
    pixel limit."""

    mode: Mode
    batch_size: int
    workers: int | None
    device: str | None
    max_pixels: int


def _folder_statistics(
    folders: dict[int, _Folder],
    paths: list[Path],
    dims: int,
    weights: Path | None,
    options: _FeatureOptions,
) -> dict[int, FIDStatistics]:
    """Load the network once, then the features and statistics of each folder under a progress bar.

    An image that cannot be read is named in a warning, recorded in its folder's ``failed`` and left
    out; a folder left with fewer than 2 readable images is an InputError.
    """
    from ilvr_cli.metrics import fid as fidlib
    from ilvr_cli.metrics.inception import load_fid_inception

    device = _resolve_device(options.device)
    model = load_fid_inception(weights, device, dims=dims)
    workers = options.workers
    if workers is None:  # on CPU the network needs every core; loader processes only compete
        workers = 0 if device.split(":")[0] == "cpu" else fidlib.default_workers()
    result = {}
    with counting_progress() as progress:
        for index, folder in folders.items():
            files = [item.path for item in folder.scan.images]
            names = {item.path: item.rel.as_posix() for item in folder.scan.images}
            task = progress.add_task(
                f"Inception features of {paths[index].name or paths[index]}", total=len(files)
            )

            def failed(
                path: Path,
                message: str,
                folder: _Folder = folder,
                names: dict[Path, str] = names,
                index: int = index,
            ) -> None:
                folder.failed[names[path]] = message
                _warn_skipped(f"{paths[index]}/{names[path]}", message)

            features = fidlib.extract_features(
                files,
                model,
                mode=options.mode,
                batch_size=options.batch_size,
                num_workers=workers,
                progress=functools.partial(progress.advance, task),
                max_pixels=options.max_pixels,
                on_error=failed,
            )
            if len(features) < 2:
                raise InputError(
                    f"only {len(features)} of the {folder.total} images in {paths[index]} could be read; FID "
                    "needs at least 2 (see the warnings above)"
                )
            result[index] = fidlib.FIDStatistics.from_features(features)
    return result


def _save_stats(
    stats: FIDStatistics,
    folder: Path,
    target: Path,
    mode: str,
    json_output: bool,
    failed: dict[str, str] | None,
) -> None:
    saved = stats.save(target)
    if stats.num_images is not None and stats.num_images <= stats.dims:
        err.print(
            f"[yellow]warning:[/] {stats.num_images} images for {stats.dims} features: the covariance is "
            "singular and FIDs against these statistics are unreliable",
            highlight=False,
            soft_wrap=True,
        )
    if json_output:
        _print_json({"saved": str(saved), "mode": mode, **_describe(folder, stats, failed)})
    else:
        out.print(f"saved {stats.dims}-d statistics of {stats.num_images} images to {saved}", highlight=False)


# --------------------------------------------------------------------------------------------------
# ilvr niqe
# --------------------------------------------------------------------------------------------------


def _niqe_inputs(path: Path) -> tuple[list[tuple[str, Path, str | None]], bool]:
    """([(name, file, reason it cannot be scored or None)], is_folder): one file (anything that is not a
    folder: reading it says what is wrong), or a folder's images named by their relative path."""
    from ilvr_cli.metrics.images import scan_folder

    _require_exists(path)
    if not path.is_dir():
        return [(path.name, path, None)], False
    scan = scan_folder(path)
    if not scan.items:
        raise InputError(f"no images found in {path}")
    return [
        (item.rel.as_posix(), item.path, None if item.supported else _unsupported(item))
        for item in scan.items
    ], True


def _niqe_score(file: Path, max_pixels: int) -> float:
    """``niqe_file(file)``; running out of memory on a large image is that image's failure."""
    from ilvr_cli.metrics.niqe import niqe_file

    try:
        return float(niqe_file(file, max_pixels))
    except MemoryError:
        raise InputError(
            f"{file}: out of memory (NIQE needs about 70 bytes per pixel); shrink the image or lower "
            "--max-megapixels"
        ) from None


def _write_csv(target: Path, scores: dict[str, float], failed: dict[str, str]) -> None:
    try:
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "niqe", "error"])
            for name, score in scores.items():
                writer.writerow([name, repr(score), ""])
            for name, message in failed.items():
                writer.writerow([name, "", message])
    except OSError as error:
        raise InputError(f"cannot write {target}: {error.strerror or error}") from None


def _summary(scores: dict[str, float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the scores."""
    values = list(scores.values())
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _niqe_table(scores: dict[str, float], mean: float, std: float, per_image: bool) -> Table:
    table = Table(caption="lower is more natural", caption_justify="left")
    table.add_column("image")
    table.add_column("NIQE", justify="right")
    if per_image:
        for name, score in scores.items():
            table.add_row(name, f"{score:.4f}")
        table.add_section()
    table.add_row(f"mean of {len(scores)}", f"{mean:.4f}")
    table.add_row("std", f"{std:.4f}")
    return table


@handle_errors
def niqe_command(
    path: Annotated[Path, typer.Argument(help="An image, or a folder of images (searched recursively).")],
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the per-image scores to this CSV file.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON object instead of the table.")
    ] = False,
    max_megapixels: MaxMegapixelsOpt = DEFAULT_MAX_MEGAPIXELS,
) -> None:
    """NIQE of images (Mittal et al.), equal to the MATLAB release's; lower is more natural."""
    max_pixels = _max_pixels(max_megapixels)
    files, is_folder = _niqe_inputs(path)
    scores: dict[str, float] = {}
    failed: dict[str, str] = {}
    with counting_progress() as progress:
        task = progress.add_task("NIQE", total=len(files))
        for name, file, reason in files:
            try:
                if reason is not None:
                    raise InputError(reason)
                scores[name] = _niqe_score(file, max_pixels)
            except InputError as error:
                if not is_folder:
                    raise
                failed[name] = str(error)
                _warn_skipped(name, str(error))
            progress.advance(task)
    if csv_path is not None:
        _write_csv(csv_path, scores, failed)
    if not scores:
        raise InputError(f"NIQE failed on all {len(files)} images in {path}; see the warnings above")

    mean, std = _summary(scores)
    if json_output:
        _print_json(
            {
                "path": str(path),
                "count": len(scores),
                "mean": mean,
                "std": std,
                "scores": scores,
                "failed": failed,
            }
        )
    else:
        out.print(_niqe_table(scores, mean, std, per_image=len(scores) <= 20))
    if failed:
        err.print(f"[yellow]{len(failed)} of {len(files)} images failed[/]", highlight=False)
        raise typer.Exit(ExitCode.PARTIAL_FAILURE)
