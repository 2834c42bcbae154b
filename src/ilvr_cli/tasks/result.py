"""What a task run returns: the outputs written, the ones skipped, the failures, and the timings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Failure:
    """One input that could not be processed, and why (a one-line message)."""

    input: str
    error: str


@dataclass
class Timings:
    """Seconds: the whole run, loading the model, and sampling (+ writing) the batches."""

    total: float = 0.0
    model_load: float = 0.0
    sampling: float = 0.0


@dataclass
class TaskResult:
    """The outcome of :func:`ilvr_cli.tasks.run_task` (merged over ranks under torchrun).

    ``done``/``skipped``: output paths relative to ``output_dir``; ``images_done``: inputs whose samples
    were all written in this run.
    """

    task: str
    output_dir: Path
    manifest: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    images_done: int = 0
    timings: Timings = field(default_factory=Timings)
    world_size: int = 1
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    @property
    def seconds_per_image(self) -> float | None:
        """Sampling time per input image done (None when none was done)."""
        return self.timings.sampling / self.images_done if self.images_done else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``--json`` prints)."""
        return {
            "task": self.task,
            "output_dir": str(self.output_dir),
            "manifest": str(self.manifest),
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "images_done": self.images_done,
            "outputs": sorted(self.done),
            "skipped_outputs": sorted(self.skipped),
            "failures": [{"input": f.input, "error": f.error} for f in self.failed],
            "seconds": {
                "total": round(self.timings.total, 3),
                "model_load": round(self.timings.model_load, 3),
                "sampling": round(self.timings.sampling, 3),
                "per_image": None if self.seconds_per_image is None else round(self.seconds_per_image, 3),
            },
            "world_size": self.world_size,
            "settings": self.settings,
        }

    @classmethod
    def merge(cls, results: Sequence[TaskResult]) -> TaskResult:
        """Combine the results of all ranks: lists are joined, times are the slowest rank's (wall clock)."""
        first = results[0]
        merged = cls(first.task, first.output_dir, first.manifest, world_size=len(results))
        merged.settings = first.settings
        for r in results:
            merged.done += r.done
            merged.skipped += r.skipped
            merged.failed += r.failed
            merged.images_done += r.images_done
        merged.done.sort()
        merged.skipped.sort()
        merged.failed.sort(key=lambda f: f.input)
        merged.timings = Timings(
            total=max(r.timings.total for r in results),
            model_load=max(r.timings.model_load for r in results),
            sampling=sum(r.timings.sampling for r in results),
        )
        return merged
