"""Every exit code each command can return, as docs/cli.md lists them: one scenario per (command, code).

The table in docs/cli.md ("Exit codes per command") and :data:`SCENARIOS` must name the same pairs, and
each scenario must end with its code. 70 (a bug) and 130 (Ctrl-C) are provoked by making an internal
function raise.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ilvr_cli.cli.app import app
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.metrics.fid import FIDStatistics
from ilvr_cli.metrics.inception import random_state_dict
from ilvr_cli.registry.handle import ModelHandle
from test_tasks_support import SIZE, TINY_DIFFUSION, save_tiny_model, smooth_image, write_png
from training_helpers import image_folder, tiny_config_json

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
TASKS = ("upscale", "translate", "edit", "paint2img", "sample")
FAST_TRAIN = ["--batch-size", "4", "--workers", "0", "--sample-every", "0", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread", "private_cache")


class Ctx:
    """What a scenario may use: a folder of its own, monkeypatch, and the shared tiny files."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, shared: dict[str, Path]) -> None:
        self.tmp, self.mp, self.shared = tmp, monkeypatch, shared

    def raise_in(self, target: str, error: BaseException) -> None:
        def boom(*args, **kwargs):
            raise error

        self.mp.setattr(target, boom)


Scenario = Callable[[Ctx], list[str]]


# ----------------------------------------------------------------------- the task commands
def _task_inputs(ctx: Ctx, task: str, bad: bool = False) -> list[str]:
    if task == "sample":
        return []
    size = 8 if task == "upscale" else SIZE
    for i in range(2):
        write_png(ctx.tmp / "in" / f"{i}.png", smooth_image(i, size))
    if bad:
        (ctx.tmp / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    return [str(ctx.tmp / "in")]


def _task(task: str, *, model: str | None = None, bad: bool = False, extra: tuple[str, ...] = ()) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        count = ["--count", "2"] if task == "sample" else []
        chosen = model or str(ctx.shared["model"])
        args = [task, *_task_inputs(ctx, task, bad), str(ctx.tmp / "out"), "--model", chosen]
        return [*args, "--steps", "2", "--device", "cpu", *count, *extra]

    return run


def _task_nan(task: str) -> Scenario:
    class NaN(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 6, *x.shape[2:]), float("nan"))

    def run(ctx: Ctx) -> list[str]:
        broken = ModelHandle.from_network(NaN(), TINY_DIFFUSION, SIZE, name="nan")
        ctx.mp.setattr("ilvr_cli.tasks.plan.open_task_model", lambda *a, **k: broken)
        return _task(task)(ctx)

    return run


def _task_broken_checkpoint(task: str) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        (ctx.tmp / "broken.pt").write_bytes(b"not a checkpoint")
        return _task(task, model=str(ctx.tmp / "broken.pt"))(ctx)

    return run


def _task_offline(task: str) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.mp.setenv("ILVR_OFFLINE", "1")
        fit = ("--fit", "resize") if task not in ("upscale", "sample") else ()
        return _task(task, model="ffhq", extra=fit)(ctx)

    return run


def _task_disk_full(task: str) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.raise_in("ilvr_cli.tasks.writer.save_png", OSError(errno.ENOSPC, "No space left on device"))
        return _task(task)(ctx)

    return run


def _task_raises(task: str, error: BaseException) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.raise_in("ilvr_cli.tasks.runner.run_task", error)
        return _task(task)(ctx)

    return run


def _task_usage(task: str) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        return [*_task(task)(ctx), "--steps", "0"]

    return run


# ----------------------------------------------------------------------- train
def _train(ctx: Ctx, data: Path | None = None, *extra: str) -> list[str]:
    data = data if data is not None else ctx.shared["train_data"]
    preset = ["-p", str(ctx.shared["train_preset"])] if "--init-from" not in extra else []
    return ["train", str(data), "-o", str(ctx.tmp / "run"), *preset, "--steps", "2", *FAST_TRAIN, *extra]


def _train_no_readable_image(ctx: Ctx) -> list[str]:
    (ctx.tmp / "data").mkdir()
    for i in range(4):
        (ctx.tmp / "data" / f"{i}.png").write_bytes(b"\x89PNG broken")
    return _train(ctx, ctx.tmp / "data")


def _train_raises(error: BaseException) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.raise_in("ilvr_cli.training.train", error)
        return _train(ctx)

    return run


def _train_offline(ctx: Ctx) -> list[str]:
    ctx.mp.setenv("ILVR_OFFLINE", "1")
    return _train(ctx, None, "--init-from", "ffhq")


# ----------------------------------------------------------------------- fid and niqe
def _stats(ctx: Ctx, name: str, seed: int, poison: bool = False) -> str:
    features = np.random.default_rng(seed).standard_normal((40, 8))
    stats = FIDStatistics.from_features(features)
    if poison:
        stats.mu[0] = np.nan
    return str(stats.save(ctx.tmp / name))


def _fid_images(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    stats = FIDStatistics.from_features(np.random.default_rng(1).standard_normal((100, 64)))
    stats.save(ctx.tmp / "ref.npz")
    weights = ["--inception-weights", str(ctx.shared["inception"])]
    return ["fid", str(folder), str(ctx.tmp / "ref.npz"), "--dims", "64", "--device", "cpu", *weights]


def _fid_offline(ctx: Ctx) -> list[str]:
    ctx.mp.setenv("ILVR_OFFLINE", "1")
    args = _fid_images(ctx)
    return args[: args.index("--inception-weights")]


def _fid_raises(error: BaseException) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.raise_in("ilvr_cli.metrics.fid.frechet_distance", error)
        return ["fid", _stats(ctx, "a.npz", 0), _stats(ctx, "b.npz", 1)]

    return run


def _niqe_folder(ctx: Ctx, with_small: bool) -> list[str]:
    folder = ctx.tmp / "niqe"
    folder.mkdir()
    Image.open(ctx.shared["niqe_dir"] / "image4.png").save(folder / "four.png")
    if with_small:
        Image.new("RGB", (100, 100)).save(folder / "small.png")
    return ["niqe", str(folder)]


def _niqe_raises(error: BaseException) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.raise_in("ilvr_cli.metrics.niqe.niqe_file", error)
        return ["niqe", str(ctx.shared["niqe_dir"] / "image4.png")]

    return run


# ----------------------------------------------------------------------- models
def _models_raises(args: list[str], target: str, error: BaseException) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        ctx.raise_in(target, error)
        return args

    return run


def _models_add(name: str, file: str) -> Scenario:
    def run(ctx: Ctx) -> list[str]:
        path = ctx.shared["model"] if file == "good" else ctx.tmp / "bad.safetensors"
        if file != "good":
            path.write_bytes(b"not safetensors")
        return ["models", "add", name, str(path)]

    return run


def _models_verify_mismatch(ctx: Ctx) -> list[str]:
    assert CliRunner().invoke(app, ["models", "add", "mine", str(ctx.shared["model"])]).exit_code == 0
    for path in (ctx.tmp / "cache" / "models" / "mine").iterdir():
        if path.suffix == ".safetensors":
            data = bytearray(path.read_bytes())
            data[-10] ^= 0x55
            path.write_bytes(bytes(data))
    return ["models", "info", "mine", "--verify"]


def _examples_conflict(ctx: Ctx) -> list[str]:
    target = ctx.tmp / "ex" / "digits" / "README.md"
    target.parent.mkdir(parents=True)
    target.write_text("a different file of mine")
    return ["examples", str(ctx.tmp / "ex")]


INTERRUPT, BUG = KeyboardInterrupt(), RuntimeError("an internal error")

SCENARIOS: dict[tuple[str, int], Scenario] = {}
for _name in TASKS:
    SCENARIOS[(_name, ExitCode.OK)] = _task(_name)
    SCENARIOS[(_name, ExitCode.PARTIAL_FAILURE)] = (
        _task_nan(_name) if _name == "sample" else _task(_name, bad=True)
    )
    SCENARIOS[(_name, ExitCode.USAGE)] = _task_usage(_name)
    SCENARIOS[(_name, ExitCode.BAD_INPUT)] = _task_broken_checkpoint(_name)
    SCENARIOS[(_name, ExitCode.DOWNLOAD)] = _task_offline(_name)
    SCENARIOS[(_name, ExitCode.OUTPUT)] = _task_disk_full(_name)
    SCENARIOS[(_name, ExitCode.INTERNAL)] = _task_raises(_name, BUG)
    SCENARIOS[(_name, ExitCode.INTERRUPTED)] = _task_raises(_name, INTERRUPT)
SCENARIOS.update(
    {
        ("train", ExitCode.OK): lambda ctx: _train(ctx),
        ("train", ExitCode.USAGE): lambda ctx: _train(ctx, ctx.tmp / "missing"),
        ("train", ExitCode.BAD_INPUT): _train_no_readable_image,
        ("train", ExitCode.DOWNLOAD): _train_offline,
        ("train", ExitCode.INTERNAL): _train_raises(BUG),
        ("train", ExitCode.INTERRUPTED): _train_raises(INTERRUPT),
        ("fid", ExitCode.OK): lambda ctx: ["fid", _stats(ctx, "a.npz", 0), _stats(ctx, "b.npz", 1)],
        ("fid", ExitCode.PARTIAL_FAILURE): _fid_images,
        ("fid", ExitCode.USAGE): lambda ctx: ["fid", _stats(ctx, "a.npz", 0)],
        ("fid", ExitCode.BAD_INPUT): lambda ctx: [
            "fid",
            _stats(ctx, "a.npz", 0),
            _stats(ctx, "b.npz", 1, True),
        ],
        ("fid", ExitCode.DOWNLOAD): _fid_offline,
        ("fid", ExitCode.INTERNAL): _fid_raises(BUG),
        ("fid", ExitCode.INTERRUPTED): _fid_raises(INTERRUPT),
        ("niqe", ExitCode.OK): lambda ctx: ["niqe", str(ctx.shared["niqe_dir"] / "image4.png")],
        ("niqe", ExitCode.PARTIAL_FAILURE): lambda ctx: _niqe_folder(ctx, with_small=True),
        ("niqe", ExitCode.USAGE): lambda ctx: ["niqe", str(ctx.tmp / "missing.png")],
        ("niqe", ExitCode.BAD_INPUT): lambda ctx: (
            _niqe_folder(ctx, with_small=True)[:1] + [str(ctx.tmp / "niqe" / "small.png")]
        ),
        ("niqe", ExitCode.INTERNAL): _niqe_raises(BUG),
        ("niqe", ExitCode.INTERRUPTED): _niqe_raises(INTERRUPT),
        ("examples", ExitCode.OK): lambda ctx: ["examples", str(ctx.tmp / "ex")],
        ("examples", ExitCode.USAGE): _examples_conflict,
        ("examples", ExitCode.OUTPUT): _models_raises(
            ["examples", "ex"],
            "ilvr_cli.examples.atomic_write",
            OSError(errno.EROFS, "Read-only file system"),
        ),
        ("examples", ExitCode.INTERNAL): _models_raises(
            ["examples", "ex"], "ilvr_cli.examples.copy_examples", BUG
        ),
        ("examples", ExitCode.INTERRUPTED): _models_raises(
            ["examples", "ex"], "ilvr_cli.examples.copy_examples", INTERRUPT
        ),
        ("models list", ExitCode.OK): lambda ctx: ["models", "list"],
        ("models list", ExitCode.INTERNAL): _models_raises(
            ["models", "list"], "ilvr_cli.registry.load_catalog", BUG
        ),
        ("models info", ExitCode.OK): lambda ctx: ["models", "info", "demo"],
        ("models info", ExitCode.USAGE): lambda ctx: ["models", "info", "no-such-model"],
        ("models info", ExitCode.BAD_INPUT): _models_verify_mismatch,
        ("models download", ExitCode.OK): lambda ctx: ["models", "download", "demo"],
        ("models download", ExitCode.USAGE): lambda ctx: ["models", "download", "no-such-model"],
        ("models download", ExitCode.DOWNLOAD): lambda ctx: (
            ctx.mp.setenv("ILVR_OFFLINE", "1") or ["models", "download", "ffhq"]
        ),
        ("models path", ExitCode.OK): lambda ctx: ["models", "path", "demo"],
        ("models path", ExitCode.USAGE): lambda ctx: ["models", "path", "ffhq"],
        ("models rm", ExitCode.OK): lambda ctx: ["models", "rm", "ffhq"],
        ("models rm", ExitCode.USAGE): lambda ctx: ["models", "rm", "no-such-model"],
        ("models add", ExitCode.OK): _models_add("mine", "good"),
        ("models add", ExitCode.USAGE): _models_add("bad\nname", "good"),
        ("models add", ExitCode.BAD_INPUT): _models_add("mine", "bad"),
    }
)


def documented() -> set[tuple[str, int]]:
    """The pairs of docs/cli.md's "Exit codes per command" table."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Exit codes per command") :]
    section = section[: section.find("\n## ", 5)] if "\n## " in section[5:] else section
    pairs = set()
    for command, codes in re.findall(r"^\| `ilvr ([a-z0-9 ]+)` \| ([0-9 ,]+) \|", section, re.M):
        for code in re.findall(r"\d+", codes):
            pairs.add((command.strip(), int(code)))
    return pairs


def test_docs_list_exactly_the_codes_the_scenarios_produce() -> None:
    assert documented() == set(SCENARIOS)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, niqe_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shared")
    torch.save(random_state_dict(seed=1), root / "inception.pth")
    return {
        "model": save_tiny_model(root / "tiny.safetensors"),
        "train_data": image_folder(root / "train", count=8),
        "train_preset": tiny_config_json(root / "tiny.json"),
        "inception": root / "inception.pth",
        "niqe_dir": niqe_dir,
    }


@pytest.mark.parametrize(("command", "code"), sorted(SCENARIOS), ids=lambda v: str(v).replace(" ", "-"))
def test_each_command_returns_each_documented_code(
    command: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: dict[str, Path]
) -> None:
    monkeypatch.setenv("ILVR_CACHE_DIR", str(tmp_path / "cache"))
    args = SCENARIOS[(command, code)](Ctx(tmp_path, monkeypatch, shared))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, f"{args}: {result.output}"
