"""``ilvr upscale | translate | edit | paint2img | sample``: the ILVR tasks over image folders (docs/tasks.md).

Thin: each command parses its options into a :class:`~ilvr_cli.tasks.config.TaskConfig`, runs
:func:`ilvr_cli.tasks.run_task` with a rich progress display (rank 0 only under torchrun), and prints a
summary table (or ``--json``). The task library and torch are imported inside the command functions, so
``ilvr --help`` stays light. Registered by ``cli/app.py`` with :func:`register`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import typer

from ilvr_cli.cli.common import err, handle_errors, out
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.options import choice_value, examples, task_parameters, with_parameters
from ilvr_cli.cli.render import task_summary
from ilvr_cli.cli.run_progress import RichTaskProgress
from ilvr_cli.tasks.config import TaskConfig, TaskName, parse_range
from ilvr_cli.tasks.presets import PRESETS

if TYPE_CHECKING:
    from ilvr_cli.tasks.progress import TaskProgress


def _is_main_rank() -> bool:
    from ilvr_cli.runtime import read_ranks

    return read_ranks().is_main


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
            task_summary(result)
    if result.failed:
        raise typer.Exit(ExitCode.PARTIAL_FAILURE)


def _config(task: TaskName, options: dict[str, Any]) -> TaskConfig:
    """The parsed options of a task command as its :class:`TaskConfig`."""
    for name in ("kernel", "fit", "precision", "method"):
        if name in options:
            options[name] = choice_value(options[name])
    if "max_megapixels" in options:
        options["max_pixels"] = int(options.pop("max_megapixels") * 1_000_000)
    if "t_range" in options:
        text = options.pop("t_range")
        options["t_range"] = None if text is None else parse_range(text)
    return TaskConfig(task=task, **options)


def _help(task: str, text: str) -> str:
    p = PRESETS[task]
    return f"{text}\n\nDefaults: {p.reasoning}"


# --------------------------------------------------------------------------------------------- commands
COMMANDS: dict[TaskName, str] = {
    "upscale": "Low-resolution images -> model-resolution images whose down_N matches them.",
    "translate": "References from any domain -> images of the model's domain with their layout and colours.",
    "paint2img": "Paintings or flat-colour drawings -> photo-realistic images.",
    "edit": "Images with scribbles -> realistic images that keep the edit. With --mask, only the white part of "
    "the mask is regenerated (ILVR inside); outside it the original is kept.",
    "sample": "Unconditional samples from the model (no reference): see what a model or a training run produces.",
}


def _task_command(task: TaskName, text: str) -> Callable[..., None]:
    """The command of one task: its options (cli/options.py) parsed into a TaskConfig and run."""

    @with_parameters(task_parameters(task))
    @handle_errors
    def command(**options: Any) -> None:
        quiet, as_json = options.pop("quiet"), options.pop("as_json")
        _execute(_config(task, options), quiet, as_json)

    # sample has no preset reasoning to show (no reference, no low-pass)
    command.__doc__ = text if task == "sample" else _help(task, text)
    command.__name__ = task
    return command


#: The example block at the end of each task command's help.
EXAMPLES: dict[TaskName, str] = {
    "upscale": examples(
        "ilvr upscale lr/ out/ --factor 16  # 16x16 thumbnails -> 256x256 faces (ffhq)",
        "ilvr upscale lr/ out/ --samples 4 --grid  # 4 results each, contact sheets",
        "ilvr upscale thumbs/ out/ --model demo  # offline: built-in 32x32 digits",
    ),
    "translate": examples(
        "ilvr translate cats/ dogs/  # cats -> dogs (model afhq-dog)",
        "ilvr translate faces/ out/ --model metfaces --factor 16 --range 1000:400",
    ),
    "paint2img": examples(
        "ilvr paint2img paintings/ photos/  # landscapes -> photos (model church)",
        "ilvr paint2img rooms/ out/ --model lsun-bedroom --range 1000:500",
    ),
    "edit": examples(
        "ilvr edit scribbled/ out/  # scribbled faces -> realistic faces (ffhq)",
        "ilvr edit photo.png out/ --mask mask.png  # redo only the white part",
    ),
    "sample": examples(
        "ilvr sample out/ --model demo --count 16",
        "ilvr sample out/ --model runs/faces/ema.safetensors --steps ddim50",
    ),
}


def register(app: typer.Typer) -> None:
    """Add the task commands to the root app."""
    for name, text in COMMANDS.items():
        app.command(name, epilog=EXAMPLES[name])(_task_command(name, text))
