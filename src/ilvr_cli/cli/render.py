"""How the commands show their results on stdout: the task and training summaries, and ``--json``.

Progress (bars, plain log lines, warnings) is drawn on stderr by :mod:`ilvr_cli.cli.progress`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from ilvr_cli.cli.common import out

if TYPE_CHECKING:
    from ilvr_cli.tasks.result import TaskResult
    from ilvr_cli.training import TrainResult


def print_json(data: Any) -> None:
    """A ``--json`` document on stdout: indented, never wrapped, no markup."""
    out.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- summary
def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 120 else f"{value / 60:.1f} min"


def task_summary(result: TaskResult) -> None:
    out.print(f"ilvr {result.task}: {result.output_dir}", markup=False, highlight=False, soft_wrap=True)
    table = Table()
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
    if settings:
        pieces = [
            f"{key}={settings[key]} ({settings['sources'].get(key, '')})"
            for key in ("factor", "range", "steps", "precision")
            if key in settings and settings[key] is not None
        ]
        out.print("[dim]" + escape("; ".join(pieces)) + "[/]", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- train
def train_result_dict(result: TrainResult) -> dict[str, Any]:
    """``ilvr train --json``: where the run stopped and what it wrote."""
    return {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "total_steps": result.total_steps,
        "stopped": result.stopped,
        "ema": str(result.ema_path),
        "model": str(result.model_path),
        "state": str(result.state_path),
        "loss": result.last_loss,
        "precision": result.precision,
        "images_per_s": round(result.images_per_s, 3),
        "seconds": round(result.elapsed_s, 3),
    }


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
            f"continue with: ilvr train DATA_DIR {escape(str(result.run_dir))} --resume",
            highlight=False,
        )
