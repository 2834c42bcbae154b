"""``ilvr upscale | translate | edit | paint2img | sample``: the ILVR tasks over image folders (docs/tasks.md).

Thin: each command parses its options into a :class:`~ilvr_cli.tasks.config.TaskConfig`, runs
:func:`ilvr_cli.tasks.run_task` with a rich progress display (rank 0 only under torchrun), and prints a
summary table (or ``--json``). The task library and torch are imported inside the command functions, so
``ilvr --help`` stays light. Registered by ``cli/app.py`` with :func:`register`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.markup import escape
from rich.progress import (
    Progress,
    TaskID,
)
from rich.table import Table

from ilvr_cli.cli.common import counting_progress, err, handle_errors, out
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.tasks.config import TaskConfig, TaskName, parse_range
from ilvr_cli.tasks.presets import PRESETS

if TYPE_CHECKING:
    from ilvr_cli.tasks.progress import RunStart, TaskProgress
    from ilvr_cli.tasks.result import TaskResult


class Kernel(str, Enum):
    cubic = "cubic"
    linear = "linear"
    lanczos2 = "lanczos2"
    lanczos3 = "lanczos3"


class Fit(str, Enum):
    none = "none"
    crop = "crop"
    resize = "resize"
    pad = "pad"


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Sampler(str, Enum):
    ddpm = "ddpm"
    ddim = "ddim"


# --------------------------------------------------------------------------------------------- options
InputArg = Annotated[
    str, typer.Argument(help="An image, a folder of images (recursive) or a glob such as 'faces/*.png'.")
]
OutputArg = Annotated[
    Path | None,
    typer.Argument(
        help="Output folder (mirrors INPUT's relative paths). Default: '<input name>-<task>' beside INPUT.",
        show_default=False,
    ),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Catalog name (ilvr models list), checkpoint file or diffusers folder."
    ),
]
FactorOpt = Annotated[
    int | None,
    typer.Option(
        "--factor", "-N", help="Low-pass factor N: phi_N keeps an (S/N)x(S/N) thumbnail.", show_default=False
    ),
]
FilterOpt = Annotated[Kernel, typer.Option("--filter", help="Resampling kernel of phi_N (MATLAB imresize).")]
ExactOpt = Annotated[
    bool,
    typer.Option("--exact", help="Exact low-pass (pseudo-inverse up-sampler): down_N(result) = down_N(y)."),
]
StepsOpt = Annotated[
    str | None,
    typer.Option(
        "--steps",
        help="Respacing: '100' (default; the paper used 1000), 'ddim50', '10,10,10'.",
        show_default=False,
    ),
]
RangeOpt = Annotated[
    str | None,
    typer.Option(
        "--range",
        help="Conditioned part of the trajectory, T_START:T_STOP in the paper's time (e.g. 1000:200), or 'all'.",
        show_default=False,
    ),
]
SamplesOpt = Annotated[int, typer.Option("--samples", "-k", help="Results per reference (named NAME_k.png).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Run seed; each sample's noise comes from (seed, key).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Samples per network call.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda (cuda:N) or mps.")]
PrecisionOpt = Annotated[
    PrecisionChoice, typer.Option("--precision", help="Network autocast dtype; bf16/fp16 on CUDA only.")
]
SamplerOpt = Annotated[Sampler, typer.Option("--sampler", help="DDPM ancestral steps, or DDIM.")]
EtaOpt = Annotated[float, typer.Option("--eta", help="DDIM noise (0 = deterministic given x_T).")]
FitOpt = Annotated[Fit, typer.Option("--fit", help="Bring other sizes to the model's: crop, resize or pad.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Redo outputs that exist (default: skip them).")
]
GridOpt = Annotated[
    bool, typer.Option("--grid", help="Contact sheet per batch: reference, phi_N(y), samples.")
]
AnimateOpt = Annotated[
    bool, typer.Option("--animate", help="Animated GIF of the predicted x_0 over the steps.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary table.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Model cache root (default: $ILVR_CACHE_DIR, else the user cache dir).",
        show_default=False,
    ),
]
MaxPixelsOpt = Annotated[
    float, typer.Option("--max-megapixels", help="Refuse larger inputs (decompression-bomb guard).")
]


# --------------------------------------------------------------------------------------------- progress
class _DownloadBridge:
    """Registry download events as a bar in the task's progress display."""

    def __init__(self, display: RichTaskProgress) -> None:
        self.display = display
        self.task: TaskID | None = None

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        progress = self.display.progress
        if progress is None:
            return
        if self.task is None:
            self.task = progress.add_task(f"download {label}", total=total, completed=completed)
        else:
            progress.reset(self.task, total=total, completed=completed, description=f"download {label}")

    def advance(self, nbytes: int) -> None:
        if self.display.progress is not None and self.task is not None:
            self.display.progress.advance(self.task, nbytes)

    def finish(self) -> None:
        if self.display.progress is not None and self.task is not None:
            self.display.progress.remove_task(self.task)
        self.task = None

    def note(self, message: str) -> None:
        self.display.note(message)


class RichTaskProgress:
    """The :class:`~ilvr_cli.tasks.progress.TaskProgress` events as a rich display: images done / total with
    ETA, and the steps of the current batch; only rank 0 draws. Failures are printed by every rank (they
    name the file); notes by rank 0. (Duck-typed rather than subclassed, so that importing this module does
    not import the task library.)"""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.images: TaskID | None = None
        self.steps: TaskID | None = None
        self.rank = 0
        self.world_size = 1

    # lifecycle -------------------------------------------------------------------------------------
    def start(self, info: RunStart) -> None:
        self.rank, self.world_size = info.rank, info.world_size
        if info.skipped and self.rank == 0 and not self.quiet:
            self.note(f"skipping {info.skipped} sample(s) whose output exists (--overwrite redoes them)")
        if self.quiet or self.rank != 0 or info.samples == 0:
            return
        self.progress = counting_progress()
        self.progress.start()
        suffix = f" (rank 0 of {info.world_size})" if info.world_size > 1 else ""
        self.images = self.progress.add_task(f"{info.task}: images{suffix}", total=info.images)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # events ----------------------------------------------------------------------------------------
    def model_loading(self, name: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[dim]loading model {escape(name)}[/]", highlight=False)

    def batch_start(self, labels: Sequence[str], steps: int) -> None:
        if self.progress is None:
            return
        first = labels[0] + (f" +{len(labels) - 1}" if len(labels) > 1 else "")
        if self.steps is None:
            self.steps = self.progress.add_task("", total=steps)
        self.progress.reset(self.steps, total=steps, completed=0, description=f"  steps: {escape(first)}")

    def step(self, done: int, steps: int) -> None:
        if self.progress is not None and self.steps is not None:
            self.progress.update(self.steps, completed=done)

    def image_done(self, label: str, outputs: Sequence[Path], seconds: float) -> None:
        if self.progress is not None and self.images is not None:
            self.progress.advance(self.images)

    def image_failed(self, label: str, message: str) -> None:
        if self.progress is not None and self.images is not None:
            self.progress.advance(self.images)
        where = f"rank {self.rank}: " if self.world_size > 1 else ""
        console = self.progress.console if self.progress is not None else err
        console.print(
            f"[yellow]warning:[/] {where}{escape(message)}",
            highlight=False,
            soft_wrap=True,
        )

    def note(self, message: str) -> None:
        if self.quiet or self.rank != 0:
            return
        console = self.progress.console if self.progress is not None else err
        console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)

    def downloads(self) -> Any:
        return _DownloadBridge(self)


# --------------------------------------------------------------------------------------------- summary
def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 120 else f"{value / 60:.1f} min"


def _summary(result: TaskResult) -> None:
    table = Table(title=f"ilvr {result.task}: {escape(str(result.output_dir))}", title_justify="left")
    for column in ("done", "skipped", "failed", "time / image", "model load", "total"):
        table.add_column(column, justify="right")
    failed = f"[red]{len(result.failed)}[/]" if result.failed else "0"
    table.add_row(
        str(len(result.done)),
        str(len(result.skipped)),
        failed,
        _seconds(result.seconds_per_image),
        _seconds(result.timings.model_load),
        _seconds(result.timings.total),
    )
    out.print(table)
    for failure in result.failed:
        out.print(
            f"[red]failed:[/] {escape(failure.error)}",
            highlight=False,
            soft_wrap=True,
        )
    settings = result.settings
    if settings.get("factor") is not None or settings.get("range"):
        pieces = [
            f"{key}={settings[key]} ({settings['sources'].get(key, '')})"
            for key in ("factor", "range", "steps")
            if key in settings and settings[key] is not None
        ]
        out.print("[dim]" + escape("; ".join(pieces)) + "[/]", highlight=False, soft_wrap=True)


def _is_main_rank() -> bool:
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def _execute(config: TaskConfig, quiet: bool, as_json: bool) -> None:
    """Run ``config``, render progress and the summary, and exit 1 if any input failed."""
    from ilvr_cli.tasks.runner import run_task

    display = RichTaskProgress(quiet)
    try:
        result = run_task(config, cast("TaskProgress", display))  # duck-typed: see RichTaskProgress
    except KeyboardInterrupt:
        display.stop()
        err.print("[yellow]interrupted:[/] finished results are kept; rerun the same command to continue")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    finally:
        display.stop()
    if _is_main_rank():
        if as_json:
            out.print(json.dumps(result.to_dict(), indent=2), markup=False, highlight=False, soft_wrap=True)
        elif not quiet:
            _summary(result)
    if result.failed:
        raise typer.Exit(ExitCode.PARTIAL_FAILURE)


def _range(text: str | None) -> tuple[int, int] | None:
    return None if text is None else parse_range(text)


def _config(task: TaskName, **options: Any) -> TaskConfig:
    options["kernel"] = options.pop("kernel").value
    options["fit"] = options.pop("fit").value
    options["precision"] = options.pop("precision").value
    options["method"] = options.pop("method").value
    options["max_pixels"] = int(options.pop("max_megapixels") * 1_000_000)
    options["t_range"] = _range(options.pop("t_range"))
    return TaskConfig(task=task, **options)


def _help(task: str, text: str) -> str:
    p = PRESETS[task]
    return f"{text}\n\nDefaults: {p.reasoning}"


# --------------------------------------------------------------------------------------------- commands
def _conditioned_command(task: TaskName, text: str):
    """One of upscale / translate / paint2img: the same options, a different preset."""

    @handle_errors
    def command(
        input: InputArg,
        output: OutputArg = None,
        model: ModelOpt = ...,  # type: ignore[assignment]  # Typer's marker for a required option
        factor: FactorOpt = None,
        kernel: FilterOpt = Kernel.cubic,
        exact: ExactOpt = False,
        steps: StepsOpt = None,
        t_range: RangeOpt = None,
        samples: SamplesOpt = 1,
        seed: SeedOpt = 0,
        batch_size: BatchOpt = 4,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = PrecisionChoice.fp32,
        method: SamplerOpt = Sampler.ddpm,
        eta: EtaOpt = 0.0,
        fit: FitOpt = Fit.none,
        overwrite: OverwriteOpt = False,
        grid: GridOpt = False,
        animate: AnimateOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
        cache_dir: CacheDirOpt = None,
        max_megapixels: MaxPixelsOpt = 50.0,
    ) -> None:
        options = {k: v for k, v in locals().items() if k not in ("task", "text", "quiet", "as_json")}
        _execute(_config(task, **options), quiet, as_json)

    command.__doc__ = _help(task, text)
    command.__name__ = task
    return command


@handle_errors
def edit(
    input: InputArg,
    output: OutputArg = None,
    model: ModelOpt = ...,  # type: ignore[assignment]  # Typer's marker for a required option
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="White = may change. One mask for every input, or a folder of masks mirroring INPUT.",
            show_default=False,
        ),
    ] = None,
    factor: FactorOpt = None,
    kernel: FilterOpt = Kernel.cubic,
    exact: ExactOpt = False,
    steps: StepsOpt = None,
    t_range: RangeOpt = None,
    samples: SamplesOpt = 1,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.fp32,
    method: SamplerOpt = Sampler.ddpm,
    eta: EtaOpt = 0.0,
    fit: FitOpt = Fit.none,
    overwrite: OverwriteOpt = False,
    grid: GridOpt = False,
    animate: AnimateOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    max_megapixels: MaxPixelsOpt = 50.0,
) -> None:
    options = {k: v for k, v in locals().items() if k not in ("quiet", "as_json")}
    _execute(_config("edit", **options), quiet, as_json)


edit.__doc__ = _help(
    "edit",
    "Images with scribbles -> realistic images that keep the edit. With --mask, only the white part of the "
    "mask is regenerated (ILVR inside); outside it the original is kept.",
)


@handle_errors
def sample(
    output: Annotated[Path, typer.Argument(help="Output folder: 000000.png, 000001.png, ...")],
    model: ModelOpt = ...,  # type: ignore[assignment]  # Typer's marker for a required option
    count: Annotated[int, typer.Option("--count", "-n", help="How many samples.")] = 8,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.fp32,
    method: SamplerOpt = Sampler.ddpm,
    eta: EtaOpt = 0.0,
    overwrite: OverwriteOpt = False,
    grid: GridOpt = False,
    animate: AnimateOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Unconditional samples from the model (no reference): see what a model or a training run produces."""
    config = TaskConfig(
        task="sample",
        model=model,
        output=output,
        count=count,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        device=device,
        precision=precision.value,
        method=method.value,
        eta=eta,
        overwrite=overwrite,
        grid=grid,
        animate=animate,
        cache_dir=cache_dir,
    )
    _execute(config, quiet, as_json)


COMMANDS: dict[TaskName, str] = {
    "upscale": "Low-resolution images -> model-resolution images whose down_N matches them.",
    "translate": "References from any domain -> images of the model's domain with their layout and colours.",
    "paint2img": "Paintings or flat-colour drawings -> photo-realistic images.",
}


def register(app: typer.Typer) -> None:
    """Add the task commands to the root app."""
    for name, text in COMMANDS.items():
        app.command(name)(_conditioned_command(name, text))
    app.command("edit")(edit)
    app.command("sample")(sample)
