"""What every command shares: the rich consoles and the one place that maps errors to exit codes."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.errors import CheckpointError, DownloadError, IlvrError, InputError, OutputError, UsageError

#: Line width when the output is not a terminal (a file, a pipe, a CI log): wide enough that no path or
#: message is ever wrapped across lines.
LOG_WIDTH = 10_000


class LogFriendlyConsole(Console):
    """A rich console that, writing to a file or a pipe rather than a terminal, never wraps lines (rich
    would wrap at 80 columns and split long paths)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(LOG_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


#: Results go to stdout (so ``--json`` output can be piped); progress, warnings and errors to stderr.
out = LogFriendlyConsole()
err = LogFriendlyConsole(stderr=True)


def interactive() -> bool:
    """Whether progress can be drawn as live bars (stderr is a terminal); otherwise plain lines."""
    return err.is_terminal


P = ParamSpec("P")


def counting_progress() -> Progress:
    """The bar every command uses for counted work (images, steps): description, bar, done/total,
    elapsed, ETA; drawn on stderr and removed when it stops."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


R = TypeVar("R")


def exit_code_for(error: BaseException) -> ExitCode:
    """The documented exit code of an exception (docs/cli.md)."""
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(error, UsageError):
        return ExitCode.USAGE
    if isinstance(error, CheckpointError | InputError):
        return ExitCode.BAD_INPUT
    if isinstance(error, DownloadError):
        return ExitCode.DOWNLOAD
    if isinstance(error, OutputError):
        return ExitCode.OUTPUT
    if isinstance(error, IlvrError):
        return ExitCode.BAD_INPUT
    return ExitCode.INTERNAL


def json_error(message: str, code: ExitCode) -> None:
    """Under ``--json``, a command that stops on an error still prints one JSON document on stdout:
    ``{"error": message, "exit_code": code}`` (the error line goes to stderr as always)."""
    import json

    document = json.dumps({"error": message, "exit_code": int(code)}, indent=2)
    out.print(document, markup=False, highlight=False, soft_wrap=True)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command: an :class:`IlvrError` becomes one red line on stderr and its exit code.

    Unexpected exceptions print a one-line summary too; ``ILVR_DEBUG=1`` re-raises them with the traceback.
    With ``--json`` (the ``as_json`` parameter), stdout gets the error as a JSON document (:func:`json_error`).
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json"))
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as error:
            err.print("[yellow]interrupted[/]")
            if as_json:
                json_error("interrupted", exit_code_for(error))
            raise typer.Exit(exit_code_for(error)) from None
        except IlvrError as error:
            err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            if as_json:
                json_error(str(error), exit_code_for(error))
            raise typer.Exit(exit_code_for(error)) from None
        except Exception as error:
            if os.environ.get("ILVR_DEBUG"):
                raise
            message = f"{type(error).__name__}: {error}"
            err.print(
                f"[bold red]internal error:[/] {message} "
                "(rerun with ILVR_DEBUG=1 for the traceback, and please report it)",
                highlight=False,
                soft_wrap=True,
            )
            if as_json:
                json_error(message, ExitCode.INTERNAL)
            raise typer.Exit(ExitCode.INTERNAL) from None

    return wrapper
