"""The task commands: exit codes, output, --json / --quiet, and a 2-process torchrun run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ilvr_cli.cli.app import app
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.io.manifest import read_records
from ilvr_cli.io.write import read_png_params
from ilvr_cli.registry.handle import ModelHandle
from test_tasks_support import read_pixels, save_tiny_model, smooth_image, write_png

runner = CliRunner()
#: A safety net for a hung subprocess, far above what a loaded machine needs: no outcome depends on it.
SAFETY_S = 600


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors"))


@pytest.fixture()
def lr(tmp_path: Path) -> Path:
    for i in range(3):
        write_png(tmp_path / "lr" / "faces" / f"{i:03d}.png", smooth_image(i, 8))
    return tmp_path / "lr"


def invoke(*args: str):
    return runner.invoke(
        app, [str(a) for a in args], env={"ILVR_CACHE_DIR": os.environ.get("ILVR_CACHE_DIR", "")}
    )


def test_upscale_writes_next_to_the_input_by_default(model: str, lr: Path) -> None:
    result = invoke("upscale", lr, "--model", model, "--steps", "5", "--device", "cpu")
    assert result.exit_code == ExitCode.OK, result.output
    out = lr.parent / "lr-upscale"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "faces/000.png",
        "faces/001.png",
        "faces/002.png",
    ]
    assert "done" in result.stdout and "skipped" in result.stdout  # the summary table
    assert len(list(read_records(out / "manifest.jsonl"))) == 3


def test_json_summary_and_resume(model: str, lr: Path, tmp_path: Path) -> None:
    args = ("upscale", lr, tmp_path / "out", "-m", model, "--steps", "5", "--json", "--device", "cpu")
    first = json.loads(invoke(*args).stdout)
    assert (first["done"], first["skipped"], first["failed"]) == (3, 0, 0)
    assert first["settings"]["range"] == [1000, 0] and first["settings"]["steps"] == "5"
    second = json.loads(invoke(*args).stdout)
    assert (second["done"], second["skipped"]) == (0, 3)
    third = json.loads(invoke(*args, "--overwrite", "--quiet").stdout)
    assert third["done"] == 3


def test_quiet_prints_nothing_on_success(model: str, lr: Path, tmp_path: Path) -> None:
    result = invoke("upscale", lr, tmp_path / "out", "-m", model, "--steps", "5", "-q", "--device", "cpu")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_partial_failure_exits_1_and_names_the_file(model: str, lr: Path, tmp_path: Path) -> None:
    (lr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = invoke("upscale", lr, tmp_path / "out", "-m", model, "--steps", "5", "--device", "cpu")
    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    assert "broken.png" in result.stderr  # the warning
    assert "broken.png" in result.stdout  # the summary
    assert len(list((tmp_path / "out" / "faces").glob("*.png"))) == 3  # the rest was processed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "ffhx"], "did you mean ffhq"),
        (["--factor", "3"], "--factor 3 does not divide the model size 32"),
        (["--precision", "fp16", "--device", "cpu"], "needs a CUDA device"),
        (["--range", "10:500"], "--range"),
        (["--steps", "ddim7x"], "--steps"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_loading(
    model: str, lr: Path, tmp_path: Path, monkeypatch, args: list[str], message: str
) -> None:
    monkeypatch.setattr(ModelHandle, "load", lambda *a, **k: pytest.fail("model loaded"))
    base = ["upscale", lr, tmp_path / "out"]
    if "--model" not in args:
        base += ["--model", model]
    result = invoke(*base, *args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["missing", "same"])
def test_missing_input_and_output_equal_to_input_exit_2(
    model: str, lr: Path, tmp_path: Path, which: str
) -> None:
    target = (tmp_path / "nope", tmp_path / "o") if which == "missing" else (lr, lr)
    result = invoke("translate", *target, "--model", model)
    assert result.exit_code == ExitCode.USAGE
    assert ("does not exist" if which == "missing" else "overwrite the inputs") in result.stderr


def test_bad_choice_is_a_usage_error(model: str, lr: Path) -> None:
    assert invoke("upscale", lr, "--model", model, "--fit", "stretch").exit_code == ExitCode.USAGE
    assert invoke("upscale", "--model", model).exit_code == ExitCode.USAGE  # INPUT missing


def test_edit_with_mask_and_samples(model: str, tmp_path: Path) -> None:
    y = smooth_image(5, 32)
    write_png(tmp_path / "in" / "a.png", y)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    write_png(tmp_path / "mask.png", mask)
    result = invoke(
        "edit", tmp_path / "in", tmp_path / "out", "-m", model, "--mask", tmp_path / "mask.png",
        "-k", "2", "--steps", "5", "--grid", "-q", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for k in range(2):
        out = read_pixels(tmp_path / "out" / f"a_{k}.png")
        keep = mask == 0
        np.testing.assert_array_equal(out[keep], y[keep])
        assert read_png_params(tmp_path / "out" / f"a_{k}.png")["sample"] == k
    assert (tmp_path / "out" / "_grids" / "a_0.png").exists()


def test_sample_command(model: str, tmp_path: Path) -> None:
    result = invoke(
        "sample", tmp_path / "s", "-m", model, "--count", "2", "--steps", "5", "--json", "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"] == ["000000.png", "000001.png"]


@pytest.mark.parametrize("command", ["upscale", "edit", "sample"])
def test_command_help_does_not_import_torch(command: str) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['ilvr', {command!r}, '--help']\n"
        "from ilvr_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in proc.stdout
    assert ("--factor" in proc.stdout) == (command != "sample")


def test_two_ranks_under_torchrun_equal_one_process(model: str, tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 on CPU (gloo): disjoint shares whose union is the single-process run."""
    for i in range(3):
        write_png(tmp_path / "lr" / f"{i}.png", smooth_image(i, 8))
    common = [str(tmp_path / "lr"), "--model", model, "--steps", "5", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    # --standalone's agent binds its store on port 0 and the ranks meet there: no free port is guessed and
    # no two runs can collide, unless this opt-out makes torchrun probe for a free port instead
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    single = subprocess.run(
        [sys.executable, "-m", "ilvr_cli", "upscale", *common[:1], str(tmp_path / "one"), *common[1:]],
        capture_output=True, text=True, env=env, timeout=SAFETY_S,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    multi = subprocess.run(
        [*launch, "-m", "ilvr_cli", "upscale", *common[:1], str(tmp_path / "two"), *common[1:]],
        capture_output=True, text=True, env=env, timeout=SAFETY_S,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    summary = json.loads(multi.stdout[multi.stdout.index("{") :])  # printed by rank 0 only, for both ranks
    assert (summary["done"], summary["world_size"]) == (3, 2)
    one = {p.name: read_pixels(p) for p in (tmp_path / "one").glob("*.png")}
    two = {p.name: read_pixels(p) for p in (tmp_path / "two").glob("*.png")}
    assert one.keys() == two.keys() == {"0.png", "1.png", "2.png"}
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    ranks = sorted((r["output"], r["rank"]) for r in read_records(tmp_path / "two" / "manifest.jsonl"))
    assert ranks == [("0.png", 0), ("1.png", 1), ("2.png", 0)]
