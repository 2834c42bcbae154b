"""Ho et al.'s DDPM in the diffusers layout: our UNet against diffusers' own UNet2DModel (random weights).

Models mirror google/ddpm-cifar10-32's and google/ddpm-ema-church-256's config.json (sin-first timestep
embedding with shift 1, GroupNorm eps 1e-6, downsample padding 0, one attention level at 16x16, one head)
at small widths; every parameter is random, so each one matters.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from extras import require_extra
from ilvr_cli.config import DiffusionConfig
from ilvr_cli.errors import CheckpointError
from ilvr_cli.models.checkpoints import load_checkpoint
from ilvr_cli.models.diffusers_format import (
    convert_state_dict,
    diffusion_config_from_scheduler,
    unet_config_from_diffusers,
)
from ilvr_cli.models.unet import UNet


def _diffusers() -> ModuleType:
    """The reference package, imported by the tests that compare against it (the config tests need none)."""
    return require_extra("diffusers")


ATOL = 1e-5
TIMESTEPS = torch.tensor([0, 1, 500, 999])
WEIGHTS = "diffusion_pytorch_model"

#: google/ddpm-cifar10-32's structure (attention at 16x16 = level 1), widths 128,256,256,256 -> 32,32,64,64.
CIFAR10_LIKE: dict[str, Any] = dict(
    sample_size=32,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_eps=1e-6,
    norm_num_groups=32,
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    act_fn="silu",
    center_input_sample=False,
    time_embedding_type="positional",
    resnet_time_scale_shift="default",
    mid_block_scale_factor=1,
)
#: google/ddpm-ema-church-256's six levels (attention at 16x16 = level 4 of 256 px) scaled to 64 px (level 2).
CHURCH_LIKE: dict[str, Any] = {
    **CIFAR10_LIKE,
    "sample_size": 64,
    "block_out_channels": (32, 32, 64, 64, 64, 64),
    "down_block_types": (
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "cifar10_like": CIFAR10_LIKE,
    "church_like_64": CHURCH_LIKE,
    "multi_head": {**CIFAR10_LIKE, "attention_head_dim": 16},
    "scale_shift": {**CIFAR10_LIKE, "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 32},
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random and non-zero (diffusers zero-initialises nothing, but biases start at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 1 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.5
            values = torch.randn(p.shape, generator=gen) * scale
            p.copy_(torch.where(values == 0, scale, values))  # randn can return an exact 0
            assert bool((p != 0).all())


def _diffusers_model(kwargs: dict[str, Any], seed: int = 0):
    model = _diffusers().UNet2DModel(**kwargs).eval()
    _randomise(model, seed)
    return model


def _save(model, folder: Path, style: str) -> Path:
    """Write ``model`` as the hub does: config.json + safetensors, or a torch.save'd .bin, or legacy names."""
    unet_dir = folder / "unet" if style == "pipeline" else folder
    model.save_pretrained(unet_dir)  # config.json + diffusion_pytorch_model.safetensors
    if style == "bin":
        (unet_dir / f"{WEIGHTS}.safetensors").unlink()
        torch.save(model.state_dict(), unet_dir / f"{WEIGHTS}.bin")
    elif style == "legacy_names":
        renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
        path = unet_dir / f"{WEIGHTS}.safetensors"
        tensors = load_file(str(path))
        legacy = {}
        for key, tensor in tensors.items():
            for new, old in renames.items():
                key = key.replace(new, old)
            legacy[key] = tensor
        assert any(".query." in k for k in legacy) and not any(".to_q." in k for k in legacy)
        save_file(legacy, str(path))
    scheduler = _diffusers().DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small"
    )
    scheduler.save_config(folder / "scheduler" if style == "pipeline" else folder)
    return folder


def _assert_same_eps(model, network: UNet, size: int) -> None:
    x = torch.randn(len(TIMESTEPS), 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x, TIMESTEPS).sample
        got = network(x, TIMESTEPS)
    assert expected.abs().mean() > 0.05  # a meaningful output, not a near-zero one
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("style", ["safetensors", "bin", "legacy_names", "pipeline"])
def test_cifar10_like_all_storage_styles(tmp_path: Path, style: str) -> None:
    model = _diffusers_model(CIFAR10_LIKE)
    folder = _save(model, tmp_path, style)
    loaded = load_checkpoint(folder)
    assert loaded.format == "diffusers"
    if style == "safetensors":  # the weight file itself names its folder
        assert load_checkpoint(folder / f"{WEIGHTS}.safetensors").unet_config == loaded.unet_config
    assert loaded.diffusion_config == DiffusionConfig(
        schedule="linear", num_timesteps=1000, variance_type="fixed_small"
    )
    c = loaded.unet_config
    assert (c.time_embed_flip_sin_to_cos, c.time_embed_freq_shift, c.norm_eps) == (False, 1.0, 1e-6)
    assert (c.downsample_padding, c.attention_resolutions, c.num_heads, c.num_head_channels) == (
        "tf_same",
        (16,),
        1,
        -1,
    )
    _assert_same_eps(model, loaded.network, 32)


@pytest.mark.parametrize("name", ["church_like_64", "multi_head", "scale_shift"])
def test_variants(tmp_path: Path, name: str) -> None:
    kwargs = VARIANTS[name]
    model = _diffusers_model(kwargs, seed=3)
    loaded = load_checkpoint(_save(model, tmp_path, "safetensors"))
    _assert_same_eps(model, loaded.network, kwargs["sample_size"])


def test_missing_attention_head_dim_means_diffusers_default_8(tmp_path: Path) -> None:
    """An old config.json without the key: diffusers 0.42 falls back to 8 channels per head."""
    config = {k: v for k, v in CIFAR10_LIKE.items() if k != "attention_head_dim"}
    model = _diffusers().UNet2DModel.from_config(config).eval()
    assert model.mid_block.attentions[0].heads == 64 // 8
    _randomise(model, seed=5)
    _save(model, tmp_path, "safetensors")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("attention_head_dim")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = load_checkpoint(tmp_path)
    assert loaded.unet_config.num_head_channels == 8
    _assert_same_eps(model, loaded.network, 32)


def test_new_attention_order_packing() -> None:
    """q/k/v packed in QKVAttention's order give the same network as the legacy order."""
    import dataclasses

    model = _diffusers_model(VARIANTS["multi_head"], seed=7)
    legacy = unet_config_from_diffusers(dict(model.config))
    new = dataclasses.replace(legacy, attention_order="new")
    network = UNet(new).eval()
    network.load_state_dict(convert_state_dict(model.state_dict(), new), strict=True)
    _assert_same_eps(model, network, 32)


def test_scheduler_mapping(tmp_path: Path) -> None:
    def mapped(**kwargs) -> DiffusionConfig:
        _diffusers().DDPMScheduler(**kwargs).save_config(tmp_path)
        return diffusion_config_from_scheduler(json.loads((tmp_path / "scheduler_config.json").read_text()))

    assert mapped() == DiffusionConfig("linear", 1000, "fixed_small")
    assert mapped(
        beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", num_train_timesteps=4000
    ) == (DiffusionConfig("cosine", 4000, "fixed_large"))
    assert mapped(num_train_timesteps=500, beta_start=2e-4, beta_end=0.04) == DiffusionConfig(
        "linear", 500, "fixed_small"
    )
    for bad, match in [
        (dict(prediction_type="v_prediction"), "prediction_type"),
        (dict(beta_schedule="scaled_linear"), "beta_schedule"),
        (dict(beta_end=0.03), "linear schedule"),
        (dict(variance_type="learned"), "variance_type"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            mapped(**bad)


def _config_json(**changes: Any) -> dict[str, Any]:
    return {
        "_class_name": "UNet2DModel",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in CIFAR10_LIKE.items()},
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(time_embedding_type="fourier"), "time_embedding_type"),
        (dict(center_input_sample=True), "center_input_sample"),
        (dict(downsample_padding=2), "downsample_padding"),
        (dict(mid_block_type=None), "mid_block_type"),
        (dict(num_class_embeds=10), "num_class_embeds"),
        (
            dict(down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnSkipDownBlock2D", "DownBlock2D"]),
            "block type",
        ),
        (dict(up_block_types=["UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]), "mirror"),
        (dict(_class_name="UNet2DConditionModel"), "UNet2DModel"),
        (dict(resnet_time_scale_shift="scale_shift"), "attn_norm_num_groups"),
    ],
)
def test_unsupported_configs_are_named(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        unet_config_from_diffusers(_config_json(**changes))


def test_config_mapping_matches_google_church() -> None:
    """google/ddpm-ema-church-256's published config.json (read with the search tool) maps as expected."""
    church = _config_json(
        sample_size=256,
        block_out_channels=[128, 128, 256, 256, 512, 512],
        down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    )
    config = unet_config_from_diffusers(church)
    assert (config.model_channels, config.channel_mult, config.num_res_blocks) == (128, (1, 1, 2, 2, 4, 4), 2)
    assert config.attention_resolutions == (16,) and config.out_channels == 3 and not config.learn_sigma


def test_unknown_tensor_is_reported(tmp_path: Path) -> None:
    model = _diffusers_model(CIFAR10_LIKE)
    _save(model, tmp_path, "safetensors")
    path = tmp_path / f"{WEIGHTS}.safetensors"
    tensors = load_file(str(path))
    save_file({**tensors, "class_embedding.weight": torch.ones(10, 128)}, str(path))
    with pytest.raises(CheckpointError, match="no place for .*class_embedding.weight"):
        load_checkpoint(tmp_path)
    shutil.rmtree(tmp_path)
