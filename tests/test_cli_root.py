"""The CLI root: version, help, torch-free start-up, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from ilvr_cli import __version__
from ilvr_cli.cli.app import COMMANDS, app
from ilvr_cli.cli.common import exit_code_for, handle_errors
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.errors import CheckpointError, DownloadError, InputError, ModelNotFoundError, UsageError

runner = CliRunner()


def test_version_prints_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ilvr-cli {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['ilvr', *{argv!r}]\n"
        "from ilvr_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'torchvision', 'PIL', 'safetensors') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in proc.stdout, proc.stdout


def test_root_help_imports_no_command_module() -> None:
    """``ilvr --help`` lists the commands from cli/app.py's table: no command module is imported."""
    code = (
        "import sys\nsys.argv = ['ilvr', '--help']\nfrom ilvr_cli.cli.app import main, COMMANDS\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED=' + ','.join(sorted({c.module for c in COMMANDS.values()} & set(sys.modules))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED=\n" in proc.stdout, proc.stdout
    assert all(name in proc.stdout for name in COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_root_list_shows_each_command_s_own_first_paragraph(name: str) -> None:
    """The one-line help in cli/app.py's table is the command's own (they cannot drift apart)."""
    group = typer.main.get_group(app)
    command = group.get_command(typer.Context(group), name)
    assert command is not None
    assert (command.help or "").split("\n\n")[0].strip() == COMMANDS[name].help


@pytest.mark.parametrize("argv", [["-h"], ["upscale", "-h"], ["models", "list", "-h"]])
def test_dash_h_is_help(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0 and "Usage:" in result.output


def test_a_mistyped_command_suggests_the_closest() -> None:
    result = runner.invoke(app, ["upscal"])
    assert result.exit_code == 2 and "Did you mean 'upscale'" in result.output


def test_python_dash_m_runs_the_same_app() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ilvr_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == f"ilvr-cli {__version__}"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("x"), ExitCode.USAGE),
        (ModelNotFoundError("x"), ExitCode.USAGE),
        (InputError("x"), ExitCode.BAD_INPUT),
        (CheckpointError("x"), ExitCode.BAD_INPUT),
        (DownloadError("x"), ExitCode.DOWNLOAD),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (RuntimeError("x"), ExitCode.INTERNAL),
    ],
)
def test_exit_code_mapping(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) == code


def test_handle_errors_turns_an_ilvr_error_into_one_line_and_its_code() -> None:
    demo = typer.Typer()

    @demo.command()
    @handle_errors
    def fail() -> None:
        raise UsageError("unknown model 'ffhx': did you mean 'ffhq'?")

    result = runner.invoke(demo, [])
    assert result.exit_code == ExitCode.USAGE
    assert "unknown model 'ffhx': did you mean 'ffhq'?" in result.output
    assert "Traceback" not in result.output
