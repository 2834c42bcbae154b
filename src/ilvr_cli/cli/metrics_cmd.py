"""``ilvr fid`` and ``ilvr niqe``: the seed's metrics over folders of images (docs/metrics.md).

Thin: the options are checked here, the work is :mod:`ilvr_cli.metrics.fid_run` and
:mod:`ilvr_cli.metrics.niqe_run`, and this module renders their progress and results. The command
functions are registered by ``cli/app.py``; torch and the metric modules are imported inside them so
``ilvr --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ilvr_cli.cli.common import err, handle_errors, out
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.options import (
    DEFAULT_MAX_MEGAPIXELS,
    FidMode,
    QuietOpt,
    choice_value,
    examples,
    json_flag,
    max_megapixels_option,
)
from ilvr_cli.cli.progress import RichMetricProgress, warn
from ilvr_cli.cli.render import print_json
from ilvr_cli.errors import UsageError

if TYPE_CHECKING:
    from ilvr_cli.metrics.fid_run import FIDRun
    from ilvr_cli.metrics.niqe_run import NIQERun

MaxMegapixelsOpt = Annotated[
    float,
    max_megapixels_option(
        "Refuse larger images, from their header before decoding (decompression-bomb guard)."
    ),
]


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{path} does not exist")


def _max_pixels(megapixels: float) -> int:
    """``--max-megapixels`` as a pixel count; a UsageError unless it is a positive number."""
    if not (math.isfinite(megapixels) and megapixels > 0):
        raise UsageError(f"--max-megapixels must be a positive number, got {megapixels:g}")
    return max(1, int(megapixels * 1_000_000))


# --------------------------------------------------------------------------------------------------
# ilvr fid
# --------------------------------------------------------------------------------------------------


def _resolve_device(device: str | None) -> str:
    """``--device`` (default ``auto``), checked to exist here by the one runtime rule (a UsageError otherwise)."""
    from ilvr_cli.runtime import resolve_device

    return str(resolve_device(device or "auto"))


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
    ] = "legacy",
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
    as_json: Annotated[bool, json_flag("Print a JSON object instead of the number.")] = False,
    quiet: QuietOpt = False,
    max_megapixels: MaxMegapixelsOpt = DEFAULT_MAX_MEGAPIXELS,
) -> None:
    """Frechet Inception Distance between two image sets, equal to pytorch-fid's on the same inputs."""
    max_pixels = _max_pixels(max_megapixels)
    _check_fid_arguments(paths, save_stats)
    from ilvr_cli.metrics.fid_run import compute_fid, open_fid_inputs

    progress = RichMetricProgress(quiet)
    inputs = open_fid_inputs(paths, dims, progress)
    resolved = _resolve_device(device) if inputs.needs_network else "cpu"
    with progress:
        run = compute_fid(
            inputs,
            mode=choice_value(mode),
            batch_size=batch_size,
            device=resolved,
            workers=workers,
            weights=inception_weights,
            max_pixels=max_pixels,
            progress=progress,
        )
    if save_stats is not None:
        _save_stats(run, save_stats, as_json)
    else:
        _show_fid(run, as_json)
    if run.failed_count:
        err.print(
            f"[yellow]{run.failed_count} of {run.total} images failed; the others were scored[/]",
            highlight=False,
        )
        raise typer.Exit(ExitCode.PARTIAL_FAILURE)


def _show_fid(run: FIDRun, as_json: bool) -> None:
    for message in run.warnings:
        warn(message)
    assert run.value is not None
    if as_json:
        a, b = run.inputs
        print_json(
            {"fid": run.value, "dims": run.dims, "mode": run.mode, "a": a.describe(), "b": b.describe()}
        )
    else:
        out.print(f"{run.value:.6f}", highlight=False)


def _save_stats(run: FIDRun, target: Path, as_json: bool) -> None:
    """Save the one folder's statistics (``--save-stats``) and say so."""
    (folder,) = run.inputs
    stats = folder.statistics
    assert stats is not None
    saved = stats.save(target)
    if stats.num_images is not None and stats.num_images <= stats.dims:
        warn(
            f"{stats.num_images} images for {stats.dims} features: the covariance is singular and FIDs "
            "against these statistics are unreliable"
        )
    if as_json:
        print_json({"saved": str(saved), "mode": run.mode, **folder.describe()})
    else:
        out.print(f"saved {stats.dims}-d statistics of {stats.num_images} images to {saved}", highlight=False)


# --------------------------------------------------------------------------------------------------
# ilvr niqe
# --------------------------------------------------------------------------------------------------


def _niqe_table(run: NIQERun, per_image: bool) -> Table:
    table = Table(caption="lower is more natural", caption_justify="left")
    table.add_column("image")
    table.add_column("NIQE", justify="right")
    if per_image:
        for name, score in run.scores.items():
            table.add_row(name, f"{score:.4f}")
        table.add_section()
    assert run.mean is not None and run.std is not None, "shown only when something was scored"
    table.add_row(f"mean of {len(run.scores)}", f"{run.mean:.4f}")
    table.add_row("std", f"{run.std:.4f}")
    return table


@handle_errors
def niqe_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Images and folders of images (searched recursively).", show_default=False),
    ],
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the per-image scores to this CSV file.")
    ] = None,
    as_json: Annotated[bool, json_flag("Print a JSON object instead of the table.")] = False,
    quiet: QuietOpt = False,
    max_megapixels: MaxMegapixelsOpt = DEFAULT_MAX_MEGAPIXELS,
) -> None:
    """NIQE of images (Mittal et al.), equal to the MATLAB release's; lower is more natural."""
    max_pixels = _max_pixels(max_megapixels)
    from ilvr_cli.metrics.niqe_run import niqe_inputs, score_niqe

    inputs = niqe_inputs(paths)
    with RichMetricProgress(quiet) as progress:
        run = score_niqe(inputs, max_pixels, progress)
    if csv_path is not None:
        run.write_csv(csv_path)
    if as_json:
        print_json(run.to_dict())  # valid even when every image failed (count 0, mean null)
    if not run.scores:
        where = " ".join(str(p) for p in inputs.paths)
        err.print(
            f"[bold red]error:[/] NIQE failed on all {run.total} images in {escape(where)}; see the warnings above",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(ExitCode.BAD_INPUT)
    if not as_json and not quiet:
        out.print(_niqe_table(run, per_image=len(run.scores) <= 20))
    if run.failed:
        err.print(f"[yellow]{len(run.failed)} of {run.total} images failed[/]", highlight=False)
        raise typer.Exit(ExitCode.PARTIAL_FAILURE)


def register(app: typer.Typer) -> None:
    """Add ``fid`` and ``niqe`` to the root app (``cli/app.py``)."""
    app.command("fid", epilog=FID_EXAMPLES)(fid_command)
    app.command("niqe", epilog=NIQE_EXAMPLES)(niqe_command)


FID_EXAMPLES = examples(
    "ilvr fid real/ generated/  # prints the FID (pytorch-fid's number)",
    "ilvr fid real/ --save-stats real.npz  # then: ilvr fid real.npz generated/",
    "ilvr fid real/ generated/ --json --dims 2048 --mode clean",
)
NIQE_EXAMPLES = examples(
    "ilvr niqe out/  # mean and std over a folder",
    "ilvr niqe a.png b.png out/ --json --csv scores.csv",
)
