"""The ``ilvr`` Typer application: registers one module per command group.

Keep this module free of torch imports: ``ilvr --help`` and ``ilvr --version`` import only this file,
typer and rich.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ilvr_cli import __version__, runtime
from ilvr_cli.cli import models_cmd, tasks_cmd, train_cmd
from ilvr_cli.cli.metrics_cmd import fid_command, niqe_command

app = typer.Typer(
    name="ilvr",
    help="ILVR: steer an unconditional diffusion model with a reference image "
    "(upscale, translate, edit, paint-to-image) without retraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


app.add_typer(models_cmd.app, name="models")
tasks_cmd.register(app)
train_cmd.register(app)
app.command("fid")(fid_command)
app.command("niqe")(niqe_command)


def main() -> None:
    """Console-script entry point: memory settings first (they must precede ``import torch``), then Typer."""
    runtime.tune_memory()
    app()
