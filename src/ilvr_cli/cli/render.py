"""How the commands draw what the library reports: progress on stderr, summaries on stdout.

One place for the rich renderers: the registry's downloads (:class:`RichDownloadProgress`), the task runs
(:class:`RichTaskProgress`, :func:`task_summary`), training (:class:`RichTrainProgress`,
:func:`train_summary`), the metrics' counted bars (:class:`RichMetricProgress`), and the one-line warnings
every command prints. Each is duck-typed against its library's progress protocol rather than subclassed,
so that importing this module imports no library module (and no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ilvr_cli.cli.common import counting_progress, err, out

if TYPE_CHECKING:
    from ilvr_cli.tasks.progress import RunStart
    from ilvr_cli.tasks.result import TaskResult
    from ilvr_cli.training import RunInfo, StepUpdate, TrainResult


# --------------------------------------------------------------------------------------------- metrics
def warn(message: str) -> None:
    """One yellow ``warning:`` line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


class RichMetricProgress:
    """A metric run's events (:class:`~ilvr_cli.metrics.progress.MetricProgress`) as counted bars on stderr,
    one per stage, started at the first stage and removed when the ``with`` block ends; skipped inputs as
    warnings."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> RichMetricProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def begin(self, label: str, total: int) -> None:
        if self.progress is None:
            self.progress = counting_progress()
            self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self, count: int = 1) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, count)

    def skipped(self, name: str, reason: str) -> None:
        warn(f"skipped {name}: {reason}")


# --------------------------------------------------------------------------------------------- downloads
class RichDownloadProgress:
    """Renders registry download events as a rich progress bar on stderr (bytes, speed, ETA)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> RichDownloadProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        if self.task is None:
            self.task = self.progress.add_task(label, total=total, completed=completed)
        else:
            self.progress.reset(self.task, total=total, completed=completed, description=label)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def finish(self) -> None:
        self.task = None

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- tasks
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


def task_summary(result: TaskResult) -> None:
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


# --------------------------------------------------------------------------------------------- train
class RichTrainProgress:
    """Renders training progress on stderr: step / total, smoothed loss, images/s, elapsed time and ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
        )
        self.task: TaskID | None = None

    def start(self, info: RunInfo) -> None:
        what = "resuming" if info.resumed else "training"
        self.progress.console.print(
            f"[dim]{what} {escape(str(info.run_dir))}: {info.params / 1e6:.2f}M parameters, {info.num_images} "
            f"images, global batch {info.global_batch} on {info.world_size} x {escape(info.device)}, "
            f"steps {info.start_step}..{info.total_steps}[/]",
            highlight=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=info.total_steps, completed=info.start_step, loss="-", speed="-"
        )

    def step(self, update: StepUpdate) -> None:
        if self.task is None:
            return
        loss = "-" if update.loss is None else f"{update.loss:.4f}"
        self.progress.update(self.task, completed=update.step, loss=loss, speed=f"{update.images_per_s:.1f}")

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)

    def finish(self, result: TrainResult) -> None:
        self.progress.stop()


def train_summary(result: TrainResult) -> None:
    """What the run did and how to use its weights."""
    loss = "-" if result.last_loss is None else f"{result.last_loss:.4f}"
    state = "stopped at" if result.stopped else "reached"
    out.print(
        f"{state} step {result.step}/{result.total_steps} in {result.elapsed_s / 60:.1f} min "
        f"({result.images_per_s:.1f} img/s, loss {loss})",
        highlight=False,
    )
    out.print(
        f"EMA weights: {escape(str(result.ema_path))}  (use --model {escape(str(result.ema_path))})",
        highlight=False,
    )
    if result.stopped:
        out.print(
            f"continue with: ilvr train DATA_DIR --out {escape(str(result.run_dir))} --resume",
            highlight=False,
        )
