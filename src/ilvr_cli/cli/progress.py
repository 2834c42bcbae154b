"""Progress on stderr: live rich bars in a terminal, plain periodic lines in a log.

Each display is duck-typed against its library's progress protocol (registry downloads, task runs,
training, metrics) rather than subclassed, so importing this module imports no library module (and no
torch). When stderr is not a terminal (a file, a pipe, a CI or ``nohup`` log) the bars are not drawn and a
:class:`PlainTicker` prints one plain line per tenth of the work or every 30 s instead. The task runs' and
training's displays are in :mod:`ilvr_cli.cli.run_progress`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ilvr_cli.cli.common import counting_progress, err, interactive


def plain(message: str) -> None:
    """One line on stderr, printed as is (no markup, never wrapped)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """One yellow ``warning:`` line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_size(n: float | None) -> str:
    """Bytes as a human-readable size (the registry's format; imported on use: the registry package is
    not needed to draw other progress)."""
    from ilvr_cli.registry.progress import format_bytes

    return format_bytes(n)


def announce_line(model: str, file_name: str, size: int | None, source: str, target: Path) -> str:
    """The registry's one-line announcement of a first download (what, how big, from where, to where)."""
    from ilvr_cli.registry.progress import announce_line as registry_line

    return registry_line(model, file_name, size, source, target)


class PlainTicker:
    """Plain progress lines for logs: ``label: done/total (p%), elapsed, ETA`` each time another tenth of
    ``total`` is done, or ``every_s`` seconds after the last line, and once at the end."""

    def __init__(
        self,
        label: str,
        total: float | None,
        *,
        show: Callable[[float], str] = lambda n: f"{n:g}",
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        start: float = 0.0,
    ) -> None:
        self.label, self.total, self.show, self.every_s, self.clock = label, total, show, every_s, clock
        self.started = self.last = clock()
        self.start_done = self.done = start
        self.tenth = self._tenth(start)

    def _tenth(self, done: float) -> int:
        return int(10 * done / self.total) if self.total else 0

    def advance(self, count: float = 1, detail: str = "") -> None:
        """``count`` more units done (:meth:`update` with the running total)."""
        self.update(self.done + count, detail)

    def update(self, done: float, detail: str = "") -> None:
        """Report ``done`` units; prints a line when a new tenth is reached or ``every_s`` has passed."""
        self.done = done
        now, tenth = self.clock(), self._tenth(done)
        if tenth <= self.tenth and now - self.last < self.every_s:
            return
        self.tenth, self.last = max(tenth, self.tenth), now
        elapsed = now - self.started
        line = f"{self.label}: {self.show(done)}"
        if self.total:
            line += f"/{self.show(self.total)} ({100 * done / self.total:.0f}%)"
        line += f", {_duration(elapsed)} elapsed"
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0 and done < self.total:
            line += f", ETA {_duration((self.total - done) / rate)}"
        plain(line + (f", {detail}" if detail else ""))


# --------------------------------------------------------------------------------------------- metrics
class RichMetricProgress:
    """A metric run's events (:class:`~ilvr_cli.metrics.progress.MetricProgress`) as counted bars on stderr,
    one per stage, removed when the ``with`` block ends; skipped inputs as warnings; ``quiet``: warnings
    only."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.ticker: PlainTicker | None = None

    def __enter__(self) -> RichMetricProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def begin(self, label: str, total: int) -> None:
        if self.quiet:
            return
        if not interactive():
            self.ticker = PlainTicker(label, total)
            return
        if self.progress is None:
            self.progress = counting_progress()
            self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self, count: int = 1) -> None:
        if self.ticker is not None:
            self.ticker.advance(count)
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, count)

    def skipped(self, name: str, reason: str) -> None:
        warn(f"skipped {name}: {reason}")


# --------------------------------------------------------------------------------------------- downloads
class RichDownloadProgress:
    """Registry download events as a bar on stderr (bytes, speed, ETA), or plain lines in a log; each first
    download announced by one line; ``quiet``: errors only (notes and bars hidden)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=quiet or not interactive(),
        )
        self.task: TaskID | None = None
        self.ticker: PlainTicker | None = None

    def __enter__(self) -> RichDownloadProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def announce(self, model: str, file_name: str, size: int | None, source: str, target: Path) -> None:
        if not self.quiet:
            self.progress.console.print(
                escape(announce_line(model, file_name, size, source, target)), highlight=False, soft_wrap=True
            )

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        if not interactive() and not self.quiet:
            self.ticker = PlainTicker(label, total, show=format_size, start=completed)
        if self.task is None:
            self.task = self.progress.add_task(label, total=total, completed=completed)
        else:
            self.progress.reset(self.task, total=total, completed=completed, description=label)

    def advance(self, nbytes: int) -> None:
        if self.ticker is not None:
            self.ticker.advance(nbytes)
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def finish(self) -> None:
        self.task, self.ticker = None, None

    def note(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)
