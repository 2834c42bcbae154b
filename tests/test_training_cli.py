"""``ilvr train`` through Typer's CliRunner: files, resume, fine-tuning, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ilvr_cli.cli import train_cmd
from ilvr_cli.cli.app import app
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.training.state import STATE_NAME, load_state
from training_helpers import TINY_UNET, image_folder, tiny_config_json

runner = CliRunner()
FAST = ["--batch-size", "4", "--workers", "0", "--sample-every", "0", "--log-every", "1", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("data"), count=8)


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_config_json(tmp_path_factory.mktemp("cfg") / "tiny.json"))


def _step(run: Path) -> int:
    return load_state(run / STATE_NAME).info["step"]


def test_train_then_resume(data: Path, preset: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "-o", str(run), "-p", preset, "--steps", "3", *FAST])
    assert result.exit_code == 0, result.output
    assert "ema.safetensors" in result.output and _step(run) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["unet"] == TINY_UNET.to_dict() and config["data_dir"] == str(data.absolute())
    resumed = runner.invoke(app, ["train", str(data), "-o", str(run), "--resume", "--steps", "5", *FAST])
    assert resumed.exit_code == 0, resumed.output
    assert _step(run) == 5
    changed = runner.invoke(
        app, ["train", str(data), "-o", str(run), "--resume", "--steps", "6", "--lr", "1"]
    )
    assert changed.exit_code == ExitCode.USAGE and "lr was" in changed.output


def test_fine_tuning_takes_the_models_architecture(data: Path, preset: str, tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert (
        runner.invoke(
            app, ["train", str(data), "-o", str(base), "-p", preset, "--steps", "1", *FAST]
        ).exit_code
        == 0
    )
    init = str(base / "ema.safetensors")
    tuned = runner.invoke(
        app, ["train", str(data), "-o", str(tmp_path / "ft"), "--init-from", init, "--steps", "1", *FAST]
    )
    assert tuned.exit_code == 0, tuned.output
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["unet"] == TINY_UNET.to_dict()
    resized = runner.invoke(
        app, ["train", str(data), "-o", str(tmp_path / "x"), "--init-from", init, "--image-size", "16"]
    )
    assert resized.exit_code == ExitCode.USAGE and "--image-size" in resized.output


def test_errors_map_to_exit_codes(data: Path, preset: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train", str(empty), "-o", str(tmp_path / "r1"), "-p", preset, *FAST])
    assert result.exit_code == ExitCode.BAD_INPUT and "no image files" in result.output
    result = runner.invoke(
        app, ["train", str(data), "-o", str(tmp_path / "r2"), "-p", preset, "--precision", "fp16", *FAST]
    )
    assert result.exit_code == ExitCode.USAGE and "needs a CUDA device" in result.output
    result = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "r3"), "-p", "nope"])
    assert result.exit_code == ExitCode.USAGE and "unknown preset" in result.output


def test_first_ctrl_c_saves_and_exits_130(
    data: Path, preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = train_cmd.RichTrainProgress.step

    def interrupt_at_step_2(self, update) -> None:  # noqa: ANN001
        original(self, update)
        if update.step == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train_cmd.RichTrainProgress, "step", interrupt_at_step_2)
    run = tmp_path / "run"
    # Python's own Ctrl-C handler, as in a terminal, whatever pytest inherited (a shell's background job
    # starts with SIGINT ignored)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = runner.invoke(
            app, ["train", str(data), "-o", str(run), "-p", preset, "--steps", "50", *FAST]
        )
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert _step(run) == 2 and "--resume" in result.output


def test_train_help_does_not_import_torch() -> None:
    code = (
        "import sys\nsys.argv = ['ilvr', 'train', '--help']\nfrom ilvr_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('TORCH=' + str('torch' in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TORCH=False" in proc.stdout and "--init-from" in proc.stdout
