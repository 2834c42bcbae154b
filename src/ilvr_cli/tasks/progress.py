"""How a task run reports what it does: a callback object the caller passes in (the library never prints).

Subclass :class:`TaskProgress` and override what you need; every method is a no-op by default. The CLI
renders these events as a rich progress display; tests record them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ilvr_cli.registry import DownloadProgress, NullProgress


@dataclass(frozen=True)
class RunStart:
    """Sent once the work of this rank is known: ``images``/``samples`` still to do, ``skipped`` samples
    whose outputs already exist, ``total_images`` in INPUT (all ranks)."""

    task: str
    images: int
    samples: int
    skipped: int
    total_images: int
    rank: int
    world_size: int
    output_dir: Path


class TaskProgress:
    """Events of a run, in order: ``start``, then per batch ``batch_start``, ``step`` x steps, then
    ``image_done`` / ``image_failed`` per image; ``note`` any time. No method may raise."""

    def start(self, info: RunStart) -> None:
        """The work of this rank is known (model not loaded yet)."""

    def model_loading(self, name: str) -> None:
        """The model is being resolved (downloaded on first use) and loaded."""

    def batch_start(self, labels: Sequence[str], steps: int) -> None:
        """A batch of samples (``labels``: their output names) starts ``steps`` sampler steps."""

    def step(self, done: int, steps: int) -> None:
        """``done`` of the current batch's ``steps`` sampler steps are finished."""

    def image_done(self, label: str, outputs: Sequence[Path], seconds: float) -> None:
        """All samples of one input image (or one ``sample`` output) are written."""

    def image_failed(self, label: str, message: str) -> None:
        """An input could not be processed; the run goes on with the others."""

    def note(self, message: str) -> None:
        """A one-line remark (ignored files, a default that was applied, ...)."""

    def downloads(self) -> DownloadProgress:
        """Where model download events go (:mod:`ilvr_cli.registry`); silent by default."""
        return NullProgress()
