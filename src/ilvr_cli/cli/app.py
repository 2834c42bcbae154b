"""The ``ilvr`` Typer application: a root whose subcommand modules are imported only when used.

``ilvr --help`` lists every command from :data:`COMMANDS` (name, module, one-line help) without importing
the command modules, so it costs what a minimal Typer app costs (benchmarks/bench_cli_help.py);
``ilvr upscale ...`` imports ``cli/tasks_cmd.py`` alone. Each command module has a ``register(app)``
function. Keep this module free of torch imports.
"""

from __future__ import annotations

import importlib
from difflib import get_close_matches
from typing import Annotated, Any, NamedTuple

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

from ilvr_cli import __version__


class LazyCommand(NamedTuple):
    """A subcommand: the module whose ``register(app)`` adds it, and its one-line help for the root list."""

    module: str
    help: str


#: Every subcommand, in the order ``ilvr --help`` lists them. ``tests/test_cli_root.py`` checks that each
#: one-line help is the first paragraph of the command's own help.
COMMANDS: dict[str, LazyCommand] = {
    "examples": LazyCommand(
        "ilvr_cli.cli.examples_cmd",
        "Copy the built-in example inputs (digits for the demo model) into DEST, one folder per set.",
    ),
    "models": LazyCommand(
        "ilvr_cli.cli.models_cmd",
        "List, download and manage models: the built-in catalog, your additions, and the cache.",
    ),
    "upscale": LazyCommand(
        "ilvr_cli.cli.tasks_cmd",
        "Low-resolution images -> model-resolution images whose down_N matches them.",
    ),
    "translate": LazyCommand(
        "ilvr_cli.cli.tasks_cmd",
        "References from any domain -> images of the model's domain with their layout and colours.",
    ),
    "paint2img": LazyCommand(
        "ilvr_cli.cli.tasks_cmd", "Paintings or flat-colour drawings -> photo-realistic images."
    ),
    "edit": LazyCommand(
        "ilvr_cli.cli.tasks_cmd",
        "Images with scribbles -> realistic images that keep the edit. With --mask, only the white part of "
        "the mask is regenerated (ILVR inside); outside it the original is kept.",
    ),
    "sample": LazyCommand(
        "ilvr_cli.cli.tasks_cmd",
        "Unconditional samples from the model (no reference): see what a model or a training run produces.",
    ),
    "train": LazyCommand(
        "ilvr_cli.cli.train_cmd",
        "Train an unconditional diffusion model on a folder of images (or fine-tune one with --init-from).",
    ),
    "fid": LazyCommand(
        "ilvr_cli.cli.metrics_cmd",
        "Frechet Inception Distance between two image sets, equal to pytorch-fid's on the same inputs.",
    ),
    "niqe": LazyCommand(
        "ilvr_cli.cli.metrics_cmd",
        "NIQE of images (Mittal et al.), equal to the MATLAB release's; lower is more natural.",
    ),
}


class LazyGroup(TyperGroup):
    """The root group: lists :data:`COMMANDS` from their one-line help, imports a module when its command
    runs (or its own help is asked for, or the shell completes it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the root's help: the one-line help is all it shows
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name].help)
        if cmd_name not in self.commands:
            self._load(COMMANDS[cmd_name].module)
        return self.commands.get(cmd_name)

    def _load(self, module_name: str) -> None:
        """Import one command module and add every command it registers."""
        module = importlib.import_module(module_name)
        scratch = typer.Typer()
        module.register(scratch)
        for name, command in typer.main.get_group(scratch).commands.items():
            self.commands.setdefault(name, command)

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except _click.exceptions.UsageError as error:
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches and "Did you mean" not in error.message:
                error.message = f"{error.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise


app = typer.Typer(
    name="ilvr",
    cls=LazyGroup,
    help="ILVR: steer an unconditional diffusion model with a reference image "
    "(upscale, translate, edit, paint-to-image) without retraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ilvr-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """ILVR: Iterative Latent Variable Refinement (Choi et al., ICCV 2021) for real images."""


def main() -> None:
    """Console-script entry point: memory settings first (they must precede ``import torch``), then Typer."""
    from ilvr_cli import runtime

    runtime.tune_memory()
    app()
