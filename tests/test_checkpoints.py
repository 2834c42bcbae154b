"""Checkpoint formats: native safetensors round trip, mismatch messages, refusing to unpickle, inference."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import CheckpointError
from ilvr_cli.models import safetensors_file
from ilvr_cli.models.checkpoints import load_checkpoint, read_native_metadata, save_native
from ilvr_cli.models.shape_inference import infer_unet_config
from ilvr_cli.models.unet import UNet

FIXTURE = "adm_learned_sigma"


@pytest.fixture
def fixture_dir(parity_dir: Path) -> Path:
    return parity_dir / FIXTURE


@pytest.fixture
def flags(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "flags.json").read_text())


def _tiny(**overrides) -> UNetConfig:
    base = dict(
        image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,), channel_mult=(1, 2)
    )
    return UNetConfig(**{**base, **overrides})


def _random_state(config: UNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    network = UNet(config)
    return {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in network.state_dict().items()}


def test_native_round_trip(tmp_path: Path, fixture_dir: Path, flags: dict) -> None:
    unet = UNetConfig.from_guided_diffusion_flags(flags)
    diffusion = DiffusionConfig.from_guided_diffusion_flags(flags)
    original = load_checkpoint(fixture_dir / "model.pt", unet, diffusion)
    target = tmp_path / "out" / "model.safetensors"
    save_native(target, original.network, unet, diffusion, extra_metadata={"source": "parity fixture"})
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]  # no temp file left

    loaded = load_checkpoint(target)
    assert loaded.format == "ilvr-cli"
    assert loaded.unet_config == unet and loaded.diffusion_config == diffusion
    assert loaded.metadata == {"source": "parity fixture"}
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(loaded.network(x, t), original.network(x, t))
    meta = read_native_metadata(target)
    assert json.loads(meta["ilvr_cli.unet_config"]) == unet.to_dict()
    assert meta["ilvr_cli.format_version"] == "1"


def test_native_without_diffusion_config(tmp_path: Path) -> None:
    config = _tiny()
    target = save_native(tmp_path / "m.safetensors", _random_state(config), config, None)
    loaded = load_checkpoint(target)
    assert loaded.unet_config == config and loaded.diffusion_config is None


def test_native_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _tiny()
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"previous version")

    def broken_write(tensor):  # fails after the header is written: a half-written file
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_file, "_tensor_bytes", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_native(target, _random_state(config), config, DiffusionConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert target.read_bytes() == b"previous version"


def test_native_config_mismatch(tmp_path: Path) -> None:
    config = _tiny()
    target = save_native(tmp_path / "m.safetensors", _random_state(config), config, DiffusionConfig())
    with pytest.raises(CheckpointError, match="num_head_channels: checkpoint -1, config 16"):
        load_checkpoint(target, dataclasses.replace(config, num_head_channels=16))


def test_save_native_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    config = _tiny()
    with pytest.raises(CheckpointError, match="res blocks per level"):
        save_native(
            tmp_path / "m.safetensors",
            _random_state(config),
            dataclasses.replace(config, num_res_blocks=2),
            None,
        )
    assert list(tmp_path.iterdir()) == []


def test_wrong_out_channels_message(fixture_dir: Path, flags: dict) -> None:
    config = dataclasses.replace(UNetConfig.from_guided_diffusion_flags(flags), out_channels=3)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(fixture_dir / "model.pt", config)
    assert "checkpoint has 6 output channels (learned sigma) but the config says 3 output channels" in str(
        err.value
    )
    assert "\n" not in str(err.value)


def test_wrong_num_res_blocks_message(fixture_dir: Path, flags: dict) -> None:
    config = dataclasses.replace(UNetConfig.from_guided_diffusion_flags(flags), num_res_blocks=2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(fixture_dir / "model.pt", config)
    message = str(err.value)
    assert "checkpoint has 1 res block per level but the config says 2 res blocks per level" in message
    assert "missing keys" in message and "unexpected keys" in message


def test_wrong_attention_message(tmp_path: Path) -> None:
    config = _tiny(attention_resolutions=(16, 32))
    torch.save(_random_state(config), tmp_path / "m.pt")
    with pytest.raises(
        CheckpointError, match="checkpoint has attention at 32,16 px but the config says attention at 16 px"
    ):
        load_checkpoint(tmp_path / "m.pt", _tiny())


def test_learned_range_needs_six_channels(parity_dir: Path) -> None:
    folder = parity_dir / "adm_fixed_sigma_cosine"
    flags = json.loads((folder / "flags.json").read_text())
    with pytest.raises(CheckpointError, match="learned_range needs 6 output channels"):
        load_checkpoint(
            folder / "model.pt",
            UNetConfig.from_guided_diffusion_flags(flags),
            DiffusionConfig(variance_type="learned_range"),
        )


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert (
        str(err.value)
        == f"{path}: not a guided-diffusion .pt, a diffusers folder or an ilvr-cli .safetensors"
    )
    with pytest.raises(CheckpointError, match="not a guided-diffusion .pt, a diffusers folder"):
        load_checkpoint(tmp_path)  # a folder without config.json
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_checkpoint(tmp_path / "missing.pt")


_UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    """An object whose unpickling would call :func:`_record_unpickling`."""

    def __reduce__(self):
        return (_record_unpickling, ("executed",))


def test_pickle_with_objects_is_refused(tmp_path: Path) -> None:
    config = _tiny()
    state = {**_random_state(config), "payload": _Payload()}
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    _UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="refused to unpickle non-tensor objects .*_record_unpickling"):
        load_checkpoint(path, config)
    assert _UNPICKLED == []
    torch.load(path, weights_only=False)  # the payload is live: full unpickling would have run it
    assert _UNPICKLED == ["executed"]


def test_corrupt_pt(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cut.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_pickle_of_non_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(path)


def test_class_conditional_is_refused(tmp_path: Path) -> None:
    config = _tiny()
    torch.save({**_random_state(config), "label_emb.weight": torch.zeros(10, 128)}, tmp_path / "cond.pt")
    with pytest.raises(CheckpointError, match="class-conditional"):
        load_checkpoint(tmp_path / "cond.pt")


def test_ddp_prefix_and_bare_safetensors(tmp_path: Path) -> None:
    config = _tiny()
    state = _random_state(config)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    save_file(state, str(tmp_path / "bare.safetensors"))
    for name in ("ddp.pth", "bare.safetensors"):
        loaded = load_checkpoint(tmp_path / name, config)
        assert loaded.format == "guided-diffusion"
        assert all(torch.equal(loaded.network.state_dict()[k], v) for k, v in state.items())


INFERENCE_CASES = {
    "adm_like": _tiny(
        num_res_blocks=2, channel_mult=(1, 2, 2), attention_resolutions=(16, 8), use_scale_shift_norm=True
    ),
    "resblock_updown": _tiny(channel_mult=(1, 1, 2), resblock_updown=True, attention_resolutions=(8,)),
    "avgpool_downsample": _tiny(num_res_blocks=3, conv_resample=False, attention_resolutions=(32,)),
    "no_attention_levels": _tiny(channel_mult=(1, 2, 3, 4), attention_resolutions=(), out_channels=6),
    "single_level": _tiny(channel_mult=(2,), num_res_blocks=2, attention_resolutions=(32,)),
}


@pytest.mark.parametrize("name", sorted(INFERENCE_CASES))
def test_config_inference_from_shapes(name: str) -> None:
    config = INFERENCE_CASES[name]
    inferred = infer_unet_config(_random_state(config), image_size=config.image_size)
    heads = dict(num_heads=config.num_heads, num_head_channels=config.num_head_channels)
    assert dataclasses.replace(inferred, **heads) == config


def test_inference_defaults_to_64_channels_per_head() -> None:
    config = _tiny(model_channels=64, num_head_channels=64)
    inferred = infer_unet_config(_random_state(config))
    assert inferred.num_head_channels == 64
    assert inferred.image_size == 256 and inferred.attention_resolutions == (128,)  # same level, 256 px frame
