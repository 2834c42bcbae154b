"""The output writer of a run: each result as a PNG with its parameters, its manifest line, and the extras
(``--animate`` GIFs, ``--grid`` contact sheets); failures as manifest lines.

Every file is written atomically (:mod:`ilvr_cli.io.write`); a result's manifest line is appended after its
PNG is in place, and :mod:`~ilvr_cli.tasks.outputs` repairs the one case a kill can leave between them. A
result that cannot be written is an :class:`~ilvr_cli.errors.OutputError` (disk full, read-only): it ends
the run, and what was written before stays recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilvr_cli import __version__
from ilvr_cli.errors import OutputError
from ilvr_cli.io.grid import make_grid
from ilvr_cli.io.manifest import append_record
from ilvr_cli.io.scan import GRID_DIR
from ilvr_cli.io.write import save_gif, save_png, to_uint8
from ilvr_cli.tasks.plan import WorkUnit


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) float in [0, 1] on the CPU."""
    return ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) / 2.0).permute(1, 2, 0).numpy()


def output_params(
    made: dict[str, Any], *, model_sha256: str, unit: WorkUnit, num_steps: int, mask: str | None, size: int
) -> dict[str, Any]:
    """The parameters an output records (PNG ``ilvr-cli`` chunk and manifest): ``made``, the recipe of
    :func:`~ilvr_cli.tasks.plan.recipe` (what a rerun compares), and the facts of this one sample."""
    return {
        "tool": "ilvr-cli",
        "version": __version__,
        **made,
        "model_sha256": model_sha256,
        "input": unit.item.rel.as_posix() if unit.item is not None else None,
        "sample": unit.k,
        "key": unit.key,
        "num_steps": num_steps,
        "mask": mask,
        "size": [size, size],
    }


class OutputWriter:
    """Writes into ``output_dir`` and its manifest, as rank ``rank`` of the run."""

    def __init__(self, output_dir: Path, manifest: Path, rank: int, task: str, animate: bool) -> None:
        self.output_dir, self.manifest, self.rank, self.task, self.animate = (
            output_dir,
            manifest,
            rank,
            task,
            animate,
        )

    def write(
        self, unit: WorkUnit, pixels: np.ndarray, params: dict[str, Any], frames: list[np.ndarray], done: int
    ) -> Path:
        """The result PNG (and GIF), then its ``done`` manifest line; ``done``: results written so far
        (for the message if writing fails)."""
        try:
            target = save_png(
                self.output_dir / unit.output, pixels, params, text={"Software": f"ilvr-cli {__version__}"}
            )
            if self.animate:
                save_gif(target.with_suffix(".gif"), frames)
        except OSError as error:
            raise OutputError(
                f"cannot write {self.output_dir / unit.output}: {error.strerror or error}; "
                f"{done} result(s) of this run were written and are kept; "
                "free space or fix the folder's permissions, then rerun the same command to continue"
            ) from None
        append_record(
            self.manifest,
            {
                "status": "done",
                "output": unit.output.as_posix(),
                "input": params["input"],
                "sample": unit.k,
                "key": unit.key,
                "rank": self.rank,
                "params": params,
            },
        )
        return target

    def failed(self, label: str, message: str) -> None:
        """The ``failed`` manifest line of an input."""
        record = {"status": "failed", "input": label, "error": message, "rank": self.rank, "task": self.task}
        append_record(self.manifest, record)

    def grid(self, units: Sequence[WorkUnit], rows: list[list[np.ndarray]]) -> None:
        """A contact sheet of a batch, named after its first output, in ``_grids/``."""
        save_png(self.output_dir / GRID_DIR / units[0].output, make_grid(rows))


__all__ = ["OutputWriter", "output_params", "to_pixels", "to_uint8"]
