"""The training loop: outputs, exact resume (bitwise on CPU), atomic checkpoints, fine-tuning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ilvr_cli.errors import CheckpointError, UsageError
from ilvr_cli.models import safetensors_file
from ilvr_cli.models.checkpoints import load_checkpoint, read_native_metadata
from ilvr_cli.registry import load_model
from ilvr_cli.training import saved_config, train
from ilvr_cli.training.state import STATE_NAME, load_state
from training_helpers import image_folder, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 6-step run (3 epochs of 2 steps: the data order wraps twice)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(tiny_config(data, out, sample_every=3, sample_count=2, sample_steps="ddim4"))
    assert result.step == 6 and not result.stopped
    return out


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_state(run / STATE_NAME).tensors


def _assert_same_state(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "loss.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_a_run_writes_weights_state_log_and_sample_grids(reference_run: Path) -> None:
    names = {p.relative_to(reference_run).as_posix() for p in reference_run.rglob("*") if p.is_file()}
    assert names == {
        "config.json", "ema.safetensors", "model.safetensors", "state.safetensors", "loss.jsonl",
        "samples/step_0000003.png", "samples/step_0000006.png",
    }  # fmt: skip
    assert [s for s, _ in _losses(reference_run)] == [1, 2, 3, 4, 5, 6]
    ema = load_checkpoint(reference_run / "ema.safetensors")
    assert (
        ema.unet_config == tiny_config(Path(), Path()).unet
        and ema.diffusion_config.variance_type == "learned_range"
    )
    meta = read_native_metadata(reference_run / "ema.safetensors")
    assert meta["train_step"] == "6" and meta["train_weights"] == "ema"
    state = _tensors(reference_run)
    for name, tensor in ema.network.state_dict().items():
        assert torch.equal(tensor, state[f"ema.{name}"])
    model = load_model(str(reference_run / "model.safetensors"))  # what --model RUN_DIR/... does
    assert any(not torch.equal(p, state[f"ema.{n}"]) for n, p in model.network.state_dict().items())


def test_the_state_file_is_plain_safetensors_with_json_metadata(reference_run: Path) -> None:
    with safe_open(str(reference_run / STATE_NAME), framework="pt") as f:
        info = json.loads(f.metadata()["ilvr_cli.training_state"])
        keys = set(f.keys())
    assert info["step"] == 6 and info["world_size"] == 1 and info["num_images"] == 10
    assert {"rng.noise", "rng.cpu.0"} <= keys and any(k.startswith("optim.") for k in keys)
    assert saved_config(reference_run) == tiny_config(Path(), Path()).__class__.from_dict(info["config"])


def test_a_stopped_and_resumed_run_ends_bitwise_like_an_uninterrupted_one(
    data: Path, reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] == 3  # after step 3, between the checkpoints at 2 and 4

    first = train(tiny_config(data, out, sample_every=3, sample_count=2, sample_steps="ddim4"), stop=stop)
    assert first.stopped and first.step == 3 and load_state(out / STATE_NAME).info["step"] == 3
    resumed = train(tiny_config(data, out, sample_every=3, sample_count=2, sample_steps="ddim4"), resume=True)
    assert resumed.step == 6 and not resumed.stopped
    _assert_same_state(reference_run, out)
    assert _losses(out) == _losses(reference_run)


class _Crash(Exception):
    pass


def test_a_crash_resumes_from_the_last_checkpoint_bitwise(
    data: Path, reference_run: Path, tmp_path: Path
) -> None:
    """Killed during step 5: the log's step-5 line is dropped and steps 5-6 are redone exactly."""
    out = tmp_path / "run"
    calls = [0]

    def crash() -> bool:
        calls[0] += 1
        if calls[0] == 5:
            raise _Crash
        return False

    with pytest.raises(_Crash):
        train(tiny_config(data, out, sample_every=3, sample_count=2, sample_steps="ddim4"), stop=crash)
    assert load_state(out / STATE_NAME).info["step"] == 4
    train(tiny_config(data, out, sample_every=3, sample_count=2, sample_steps="ddim4"), resume=True)
    _assert_same_state(reference_run, out)
    assert _losses(out) == _losses(reference_run)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    train(tiny_config(data, out, steps=2))
    before = (out / STATE_NAME).read_bytes()

    def half_write(tensor):  # fails after the header is written: a half-written file
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_file, "_tensor_bytes", half_write)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_config(data, out, steps=4), resume=True)
    assert (out / STATE_NAME).read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert load_state(out / STATE_NAME).info["step"] == 2


def test_resume_refuses_changed_hyperparameters_and_missing_runs(
    data: Path, reference_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="already holds a run"):
        train(tiny_config(data, reference_run))
    with pytest.raises(UsageError, match="lr was 0.001"):
        train(tiny_config(data, reference_run, lr=5e-4, steps=8), resume=True)
    with pytest.raises(UsageError, match="no state.safetensors"):
        train(tiny_config(data, tmp_path / "nothing"), resume=True)
    with pytest.raises(UsageError, match="already at step 6"):
        train(tiny_config(data, reference_run, steps=5), resume=True)


def test_fine_tuning_starts_from_the_given_weights(data: Path, reference_run: Path, tmp_path: Path) -> None:
    init = str(reference_run / "ema.safetensors")
    result = train(tiny_config(data, tmp_path / "ft", steps=1, lr=1e-12, init_from=init))
    start = load_checkpoint(init).network.state_dict()
    tuned = load_checkpoint(result.model_path).network.state_dict()
    assert all(torch.allclose(start[k], tuned[k], atol=1e-8) for k in start)
    other = dataclasses.replace(tiny_config(data, tmp_path).unet, model_channels=16)
    with pytest.raises(CheckpointError, match="model_channels 8 vs 16"):
        train(tiny_config(data, tmp_path / "ft2", unet=other, init_from=init))
