"""The example inputs shipped in the package (``ilvr_cli.examples``) and ``ilvr examples`` that copies them."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ilvr_cli.cli import examples_cmd
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.errors import OutputError, UsageError
from ilvr_cli.examples import copy_examples, example_sets

PACKAGE_EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "ilvr_cli" / "data" / "examples"


def _examples_app() -> typer.Typer:
    """A root app with just the examples command, registered as cli/app.py registers it."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Root."""

    examples_cmd.register(app)
    return app


runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(_examples_app(), ["examples", *args])


def _digits() -> list[str]:
    [digits] = [s for s in example_sets() if s.name == "digits"]
    return list(digits.files)


def test_the_digits_set_has_the_readme_s_inputs() -> None:
    files = _digits()
    for folder in ("", "lr8/", "lr4/"):
        pngs = [
            f for f in files if f.startswith(folder) and f.endswith(".png") and "/" not in f[len(folder) :]
        ]
        assert len(pngs) == 10, (folder, pngs)
    assert "README.md" in files  # the source and licence (CC BY 4.0) travel with the images
    assert [s.title for s in example_sets() if s.name == "digits"] == ["Example digits"]


def test_copy_writes_the_shipped_bytes_then_leaves_them_alone(tmp_path: Path) -> None:
    [first] = copy_examples(tmp_path)
    assert (first.name, first.folder) == ("digits", tmp_path / "digits")
    assert sorted(first.written) == _digits() and not first.unchanged and not first.replaced
    for relative in _digits():
        assert (tmp_path / "digits" / relative).read_bytes() == (
            PACKAGE_EXAMPLES / "digits" / relative
        ).read_bytes()
    inodes = {p: p.stat().st_ino for p in tmp_path.rglob("*") if p.is_file()}

    [again] = copy_examples(tmp_path)
    assert sorted(again.unchanged) == _digits() and not again.written and not again.replaced
    assert {p: p.stat().st_ino for p in tmp_path.rglob("*") if p.is_file()} == inodes  # nothing rewritten
    assert not [p for p in tmp_path.rglob(".*")], "a temporary file was left behind"


def test_a_different_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    mine = tmp_path / "digits" / "lr8" / "0_1793.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own picture")
    with pytest.raises(UsageError, match=r"0_1793\.png exists and differs.*--overwrite"):
        copy_examples(tmp_path)
    assert mine.read_bytes() == b"my own picture"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["0_1793.png"]

    [done] = copy_examples(tmp_path, overwrite=True)
    assert done.replaced == ("lr8/0_1793.png",) and len(done.written) == len(_digits()) - 1
    assert mine.read_bytes() == (PACKAGE_EXAMPLES / "digits" / "lr8" / "0_1793.png").read_bytes()


def test_a_folder_in_the_way_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "digits" / "README.md").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a regular file"):
        copy_examples(tmp_path, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        copy_examples(tmp_path / "file" / "below")


def test_a_failed_write_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(path: object, write: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ilvr_cli.examples.atomic_write", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        copy_examples(tmp_path)


# ----------------------------------------------------------------------------------- the command
def test_command_prints_one_line_per_set_on_stdout(tmp_path: Path) -> None:
    result = _invoke(str(tmp_path / "ex"))
    assert result.exit_code == 0, result.output
    total = len(_digits())
    assert result.stdout.splitlines() == [
        f"digits: {total} files in {tmp_path / 'ex' / 'digits'} ({total} written)"
    ]
    again = _invoke(str(tmp_path / "ex"))
    assert again.stdout.splitlines() == [
        f"digits: {total} files in {tmp_path / 'ex' / 'digits'} ({total} already there)"
    ]


def test_command_defaults_to_ilvr_examples_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _invoke("--quiet").exit_code == 0
    assert (tmp_path / "ilvr-examples" / "digits" / "lr8" / "0_1793.png").is_file()


def test_command_json_and_quiet(tmp_path: Path) -> None:
    result = _invoke(str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["destination"] == str(tmp_path)
    [digits] = data["sets"]
    assert digits["name"] == "digits" and digits["folder"] == str(tmp_path / "digits")
    assert digits["files"] == len(_digits()) and sorted(digits["written"]) == _digits()
    assert digits["unchanged"] == [] and digits["replaced"] == []

    quiet = _invoke(str(tmp_path), "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_command_refuses_a_different_file_with_exit_2_and_one_line(tmp_path: Path) -> None:
    mine = tmp_path / "digits" / "README.md"
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes")
    result = _invoke(str(tmp_path))
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "--overwrite" in result.stderr
    assert mine.read_text() == "my notes"

    replaced = _invoke(str(tmp_path), "--overwrite", "--json")
    assert replaced.exit_code == 0
    assert json.loads(replaced.stdout)["sets"][0]["replaced"] == ["README.md"]


def test_command_names_replaced_files_in_its_line(tmp_path: Path) -> None:
    assert _invoke(str(tmp_path), "--quiet").exit_code == 0
    (tmp_path / "digits" / "lr4" / "0_1793.png").write_bytes(b"changed")
    result = _invoke(str(tmp_path), "--overwrite")
    assert result.exit_code == 0
    assert result.stdout.strip().endswith(f"(1 replaced, {len(_digits()) - 1} already there)")


def test_command_exit_5_when_it_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(path: object, write: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("ilvr_cli.examples.atomic_write", read_only)
    result = _invoke(str(tmp_path))
    assert result.exit_code == ExitCode.OUTPUT
    assert "Read-only file system" in result.stderr


def test_ilvr_examples_runs_without_importing_torch(tmp_path: Path) -> None:
    """Through the real root app (cli/app.py registers the command), as `ilvr examples DEST --json`."""
    code = (
        "import sys\n"
        f"sys.argv = ['ilvr', 'examples', {str(tmp_path)!r}, '--json']\n"
        "from ilvr_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'torchvision', 'PIL', 'safetensors') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "No such command" not in proc.stderr, "`examples` is missing from COMMANDS in cli/app.py"
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["sets"][0]["name"] == "digits"
    assert (tmp_path / "digits" / "lr8" / "0_1793.png").is_file()
