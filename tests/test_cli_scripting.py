"""The CLI as scripts and shells use it: completion, help examples, ``--json`` everywhere (valid even when
everything failed), renamed options, plain progress lines in logs, and the default models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from ilvr_cli.cli.app import COMMANDS, app
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.progress import PlainTicker
from training_helpers import image_folder, tiny_config_json

runner = CliRunner()
NIQE_DATA = Path(__file__).resolve().parent / "data" / "niqe"
FAST_TRAIN = ["--batch-size", "4", "--workers", "0", "--sample-every", "0", "--device", "cpu"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_ILVR_COMPLETE", "COMP_", "_TYPER"))}
    return {**env, "ILVR_CACHE_DIR": str(tmp_path / "cache"), "ILVR_OFFLINE": "1", **extra}


def _ilvr(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``ilvr ...`` in a subprocess, with stdout and stderr captured (so neither is a terminal)."""
    code = f"import sys\nsys.argv = ['ilvr', *{args!r}]\nfrom ilvr_cli.cli.app import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)


def _thumbnails(folder: Path, count: int = 2, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


# ------------------------------------------------------------------------------------------ completion
@pytest.mark.parametrize(
    ("shell", "variables", "expected"),
    [
        ("bash", {"COMP_WORDS": "ilvr upscale --model af", "COMP_CWORD": "3"}, "afhq-dog"),
        ("zsh", {"_TYPER_COMPLETE_ARGS": "ilvr models info ff"}, "ffhq"),
        (
            "fish",
            {
                "_TYPER_COMPLETE_ARGS": "ilvr train x --init-from ce",
                "_TYPER_COMPLETE_FISH_ACTION": "get-args",
            },
            "celebahq",
        ),
        ("bash", {"COMP_WORDS": "ilvr ups", "COMP_CWORD": "1"}, "upscale"),
    ],
)
def test_shell_completion_completes_commands_and_model_names(
    tmp_path: Path, shell: str, variables: dict[str, str], expected: str
) -> None:
    env = _env(tmp_path, _ILVR_COMPLETE=f"complete_{shell}", **variables)
    proc = _ilvr([], env)
    assert expected in proc.stdout, proc.stdout + proc.stderr
    assert "torch" not in proc.stderr


def test_completion_can_be_installed_for_each_shell() -> None:
    help_text = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in help_text and "--show-completion" in help_text
    for shell in ("bash", "zsh", "fish"):
        result = runner.invoke(app, ["--show-completion", shell])
        assert result.exit_code == 0 and "_ILVR_COMPLETE" in result.output, (shell, result.output)


def _all_commands() -> list[list[str]]:
    subcommands = ["list", "info", "download", "path", "rm", "add"]
    return [[name] for name in COMMANDS if name != "models"] + [["models", sub] for sub in subcommands]


@pytest.mark.parametrize("argv", _all_commands(), ids=" ".join)
def test_every_command_s_help_ends_with_examples_that_are_not_wrapped(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "-h"])
    assert result.exit_code == 0
    block = result.output.split("Examples", 1)[1]
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    assert lines, result.output
    assert all(line.startswith(("ilvr ", "torchrun ", "HF_TOKEN=")) for line in lines), lines


# ------------------------------------------------------------------------------------------ --json
def test_models_commands_print_json(tmp_path: Path) -> None:
    env = _env(tmp_path)
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"], env=env).stdout)
    assert {m["name"] for m in listed["models"]} >= {"demo", "ffhq", "afhq-dog", "church"}
    demo = next(m for m in listed["models"] if m["name"] == "demo")
    assert demo["cached"] == "builtin" and demo["image_size"] == 32
    info = json.loads(runner.invoke(app, ["models", "info", "ffhq", "--json"], env=env).stdout)
    assert info["name"] == "ffhq" and info["diffusion"]["num_timesteps"] == 1000 and info["files"]
    ready = json.loads(runner.invoke(app, ["models", "download", "demo", "--json"], env=env).stdout)
    assert Path(ready["ready"]["demo"]).is_file()
    path = json.loads(runner.invoke(app, ["models", "path", "demo", "--json"], env=env).stdout)
    assert path == {"name": "demo", "path": ready["ready"]["demo"]}


def test_an_error_under_json_is_still_one_json_document(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "info", "no-such-model", "--json"], env=_env(tmp_path))
    assert result.exit_code == ExitCode.USAGE
    document = json.loads(result.stdout)
    assert document["exit_code"] == ExitCode.USAGE and "no-such-model" in document["error"]
    missing = runner.invoke(
        app, ["upscale", str(tmp_path / "nope"), "--model", "demo", "--json"], env=_env(tmp_path)
    )
    assert missing.exit_code == ExitCode.USAGE and json.loads(missing.stdout)["exit_code"] == 2


def test_niqe_json_is_valid_when_every_image_fails(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "tiny.png")  # too small for NIQE
    result = runner.invoke(app, ["niqe", str(folder), "--json"], env=_env(tmp_path))
    assert result.exit_code == ExitCode.BAD_INPUT
    document = json.loads(result.stdout)
    assert (
        document["count"] == 0
        and document["mean"] is None
        and set(document["failed"]) == {"a.png", "tiny.png"}
    )


def test_niqe_takes_several_paths(tmp_path: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copyfile(NIQE_DATA / "image2.png", folder / "b.png")
    one = NIQE_DATA / "image1.png"
    result = runner.invoke(app, ["niqe", str(one), str(folder), "--json"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["paths"] == [str(one), str(folder)]
    assert set(document["scores"]) == {one.as_posix(), f"{folder.as_posix()}/b.png"}
    alone = json.loads(runner.invoke(app, ["niqe", str(one), "--json"], env=_env(tmp_path)).stdout)
    assert alone["path"] == str(one) and alone["scores"]["image1.png"] == document["scores"][one.as_posix()]


# ------------------------------------------------------------------------------------------ logs
def test_a_task_run_in_a_log_prints_plain_progress_lines_and_never_wraps(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 4) / "thumbnails"
    lr = _thumbnails(deep)
    out = tmp_path / ("an-even-longer-output-folder-name-" * 3)
    proc = _ilvr(["upscale", str(lr), str(out), "--model", "demo", "--steps", "3"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "loading model demo" in proc.stderr
    assert "upscale: images: 2/2 (100%)" in proc.stderr
    assert f"ilvr upscale: {out}\n" in proc.stdout  # the long path on one line
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log


def test_train_prints_a_loss_line_every_log_every_steps(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", count=4)
    preset = str(tiny_config_json(tmp_path / "tiny.json"))
    args = ["train", str(data), str(tmp_path / "run"), "-p", preset, "--max-steps", "3", *FAST_TRAIN]
    proc = _ilvr([*args, "--log-every", "2"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    loss_lines = [line for line in proc.stderr.splitlines() if line.startswith("step ") and ", loss " in line]
    assert [line.split(",")[0] for line in loss_lines] == ["step 2", "step 3"], proc.stderr  # and the last
    assert "train: 3/3 (100%)" in proc.stderr


def test_plain_ticker_prints_each_tenth_or_after_30_s() -> None:
    now = [0.0]
    lines: list[str] = []
    ticker = PlainTicker("work", 100, clock=lambda: now[0])
    import ilvr_cli.cli.progress as progress

    original = progress.plain
    progress.plain = lines.append
    try:
        for done in range(1, 101):
            now[0] += 0.1
            ticker.update(done)
        assert len(lines) == 10 and lines[-1].startswith("work: 100/100 (100%)")
        slow = PlainTicker("slow", 1000, clock=lambda: now[0])
        now[0] += 31
        slow.update(1)
        assert lines[-1].startswith("slow: 1/1000 (0%)") and "ETA" in lines[-1]
    finally:
        progress.plain = original


# ------------------------------------------------------------------------------------------ train renames
def test_train_takes_output_positionally_and_warns_on_the_old_names(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", count=4)
    preset = str(tiny_config_json(tmp_path / "tiny.json"))
    old = runner.invoke(
        app,
        [
            "train",
            str(data),
            "-o",
            str(tmp_path / "old"),
            "-p",
            preset,
            "--steps",
            "1",
            "--samples",
            "2",
            *FAST_TRAIN,
        ],
    )
    assert old.exit_code == 0, old.output
    for name in ("--out", "--steps", "--samples"):
        assert f"{name} is deprecated" in old.output
    new = runner.invoke(
        app,
        ["train", str(data), str(tmp_path / "new"), "-p", preset, "--max-steps", "1", "--json", *FAST_TRAIN],
    )
    assert new.exit_code == 0, new.output
    assert json.loads(new.stdout)["step"] == 1
    both = runner.invoke(
        app, ["train", str(data), str(tmp_path / "x"), "-o", str(tmp_path / "y"), "-p", preset]
    )
    assert both.exit_code == ExitCode.USAGE and "give OUTPUT only" in both.output
    neither = runner.invoke(app, ["train", str(data), "-p", preset])
    assert neither.exit_code == ExitCode.USAGE and "OUTPUT" in neither.output


# ------------------------------------------------------------------------------------------ default models
def test_the_design_card_command_works_as_written_and_offline_says_what_to_download(tmp_path: Path) -> None:
    lr = _thumbnails(tmp_path / "lr", size=16)
    proc = _ilvr(["upscale", "lr/", "out/", "--factor", "16"], _env(tmp_path), cwd=tmp_path)
    assert proc.returncode == ExitCode.DOWNLOAD, proc.stderr
    assert "ffhq" in proc.stderr and "ILVR_OFFLINE" in proc.stderr and "Missing option" not in proc.stderr
    assert lr.is_dir()


@pytest.mark.parametrize(
    ("task", "model"),
    [("upscale", "ffhq"), ("translate", "afhq-dog"), ("edit", "ffhq"), ("paint2img", "church")],
)
def test_each_task_names_its_default_model_in_its_help(task: str, model: str) -> None:
    from ilvr_cli.tasks.presets import preset

    assert preset(task).default_model == model
    group = typer.main.get_group(app)
    command = group.get_command(typer.Context(group), task)
    assert command is not None
    (option,) = [p for p in command.params if p.name == "model"]
    assert option.help is not None and option.help.endswith(f"Default: {model}.")  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ downloads
def test_a_first_download_is_announced_in_one_line(tmp_path: Path) -> None:
    """What, how big, from where and where to: one line before the first byte (a local server here)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    data = b"some weights " * 1000

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
        cache = tmp_path / "cache"
        cache.mkdir()
        entry = {"kind": "weights", "family": "test", "title": "tiny weights",
                 "files": [{"name": "w.pth", "size": len(data), "sources": [{"url": url}]}]}  # fmt: skip
        (cache / "catalog.json").write_text(json.dumps({"version": 1, "models": {"tiny-w": entry}}))
        env = _env(tmp_path)
        env.pop("ILVR_OFFLINE")
        proc = _ilvr(["models", "download", "tiny-w"], env)
        assert proc.returncode == 0, proc.stderr
        target = cache / "models" / "tiny-w" / "w.pth"
        announced = [line for line in proc.stderr.splitlines() if line.startswith("downloading ")]
        assert announced == [f"downloading tiny-w: w.pth (13.0 kB) from {url} to {target}"], proc.stderr
        again = _ilvr(["models", "download", "tiny-w"], env)  # cached now: nothing to announce
        assert again.returncode == 0 and "downloading " not in again.stderr
    finally:
        server.shutdown()
