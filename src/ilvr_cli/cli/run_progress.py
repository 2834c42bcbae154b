"""Progress of the long runs on stderr: task runs (:class:`RichTaskProgress`) and training
(:class:`RichTrainProgress`), as live bars in a terminal and plain lines in a log (see
:mod:`ilvr_cli.cli.progress`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ilvr_cli.cli.common import counting_progress, err, interactive
from ilvr_cli.cli.progress import PlainTicker, announce_line, format_size

if TYPE_CHECKING:
    from ilvr_cli.tasks.progress import RunStart
    from ilvr_cli.training import RunInfo, StepUpdate, TrainResult


# --------------------------------------------------------------------------------------------- tasks
class _DownloadBridge:
    """Registry download events inside a task's display: a bar (or plain lines), and the announcement."""

    def __init__(self, display: RichTaskProgress) -> None:
        self.display = display
        self.task: TaskID | None = None
        self.ticker: PlainTicker | None = None

    def announce(self, model: str, file_name: str, size: int | None, source: str, target: Path) -> None:
        self.display.note(announce_line(model, file_name, size, source, target), style="")

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        if self.display.ticking:
            self.ticker = PlainTicker(f"download {label}", total, show=format_size, start=completed)
        progress = self.display.progress
        if progress is None:
            return
        if self.task is None:
            self.task = progress.add_task(f"download {label}", total=total, completed=completed)
        else:
            progress.reset(self.task, total=total, completed=completed, description=f"download {label}")

    def advance(self, nbytes: int) -> None:
        if self.ticker is not None:
            self.ticker.advance(nbytes)
        if self.display.progress is not None and self.task is not None:
            self.display.progress.advance(self.task, nbytes)

    def finish(self) -> None:
        if self.display.progress is not None and self.task is not None:
            self.display.progress.remove_task(self.task)
        self.task, self.ticker = None, None

    def note(self, message: str) -> None:
        self.display.note(message)


class RichTaskProgress:
    """The :class:`~ilvr_cli.tasks.progress.TaskProgress` events: images done / total with ETA and the steps
    of the current batch (live bars in a terminal, plain lines in a log); only rank 0 draws. Failures are
    printed by every rank (they name the file); notes by rank 0; ``quiet`` prints failures only."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.images: TaskID | None = None
        self.steps: TaskID | None = None
        self.rank = 0
        self.world_size = 1
        #: Plain lines instead of bars (stderr is not a terminal).
        self.ticking = False
        self.image_ticker: PlainTicker | None = None
        self.step_ticker: PlainTicker | None = None
        self.batch = ""

    # lifecycle -------------------------------------------------------------------------------------
    def start(self, info: RunStart) -> None:
        self.rank, self.world_size = info.rank, info.world_size
        if info.skipped and self.rank == 0 and not self.quiet:
            self.note(f"skipping {info.skipped} sample(s) whose output exists (--overwrite redoes them)")
        if self.quiet or self.rank != 0 or info.samples == 0:
            return
        suffix = f" (rank 0 of {info.world_size})" if info.world_size > 1 else ""
        if not interactive():
            self.ticking = True
            self.image_ticker = PlainTicker(f"{info.task}: images{suffix}", info.images)
            return
        self.progress = counting_progress()
        self.progress.start()
        self.images = self.progress.add_task(f"{info.task}: images{suffix}", total=info.images)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # events ----------------------------------------------------------------------------------------
    def model_loading(self, name: str) -> None:
        if self.progress is not None or self.ticking:
            self.note(f"loading model {name}")

    def batch_start(self, labels: Sequence[str], steps: int) -> None:
        self.batch = labels[0] + (f" +{len(labels) - 1}" if len(labels) > 1 else "")
        if self.ticking:
            self.step_ticker = PlainTicker(f"  steps ({self.batch})", steps)
            self.step_ticker.tenth = 10  # only the 30 s lines: a batch's tenths would flood the log
        if self.progress is None:
            return
        if self.steps is None:
            self.steps = self.progress.add_task("", total=steps)
        self.progress.reset(
            self.steps, total=steps, completed=0, description=f"  steps: {escape(self.batch)}"
        )

    def step(self, done: int, steps: int) -> None:
        if self.step_ticker is not None and done < steps:
            self.step_ticker.update(done)
        if self.progress is not None and self.steps is not None:
            self.progress.update(self.steps, completed=done)

    def _image_finished(self) -> None:
        if self.image_ticker is not None:
            self.image_ticker.advance()
        if self.progress is not None and self.images is not None:
            self.progress.advance(self.images)

    def image_done(self, label: str, outputs: Sequence[Path], seconds: float) -> None:
        self._image_finished()

    def image_failed(self, label: str, message: str) -> None:
        self._image_finished()
        where = f"rank {self.rank}: " if self.world_size > 1 else ""
        console = self.progress.console if self.progress is not None else err
        console.print(f"[yellow]warning:[/] {where}{escape(message)}", highlight=False, soft_wrap=True)

    def note(self, message: str, style: str = "dim") -> None:
        if self.quiet or self.rank != 0:
            return
        console = self.progress.console if self.progress is not None else err
        text = escape(message)
        console.print(f"[{style}]{text}[/]" if style else text, highlight=False, soft_wrap=True)

    def downloads(self) -> Any:
        return _DownloadBridge(self)


# --------------------------------------------------------------------------------------------- train
class RichTrainProgress:
    """Training progress on stderr: step / total, smoothed loss, images/s, elapsed time and ETA as a bar (a
    plain line every tenth or 30 s in a log), and each ``--log-every`` record as a line; ``quiet``: notes
    and warnings only."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
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
            disable=quiet or not interactive(),
        )
        self.task: TaskID | None = None
        self.ticker: PlainTicker | None = None

    def start(self, info: RunInfo) -> None:
        what = "resuming" if info.resumed else "training"
        if not self.quiet:
            self.progress.console.print(
                f"[dim]{what} {escape(str(info.run_dir))}: {info.params / 1e6:.2f}M parameters, "
                f"{info.num_images} images, global batch {info.global_batch} on {info.world_size} x "
                f"{escape(info.device)} ({info.precision}), steps {info.start_step}..{info.total_steps}[/]",
                highlight=False,
                soft_wrap=True,
            )
            if not interactive():
                self.ticker = PlainTicker("train", info.total_steps, start=info.start_step)
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=info.total_steps, completed=info.start_step, loss="-", speed="-"
        )

    def step(self, update: StepUpdate) -> None:
        if self.task is None:
            return
        loss = "-" if update.loss is None else f"{update.loss:.4f}"
        if self.ticker is not None:
            self.ticker.update(update.step, f"loss {loss}, {update.images_per_s:.1f} img/s")
        self.progress.update(self.task, completed=update.step, loss=loss, speed=f"{update.images_per_s:.1f}")

    def logged(self, record: Mapping[str, Any]) -> None:
        """One ``--log-every`` line: the step and what loss.jsonl records, as ``key value`` pairs."""
        if self.quiet:
            return
        pieces = [f"step {record.get('step')}"]
        for key, value in record.items():
            if key != "step":
                pieces.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        self.progress.console.print(escape(", ".join(pieces)), highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)

    def finish(self, result: TrainResult) -> None:
        self.progress.stop()
