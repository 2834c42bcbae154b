"""Ho et al.'s DDPM as published in the diffusers layout (``UNet2DModel``), read into guided-diffusion names.

Covers google/ddpm-{cifar10-32, celebahq-256, church-256, bedroom-256, cat-256} and their ``-ema-`` twins:
a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``), optionally
``scheduler_config.json``; or the pipeline layout with ``unet/`` and ``scheduler/`` subfolders.
Only what :class:`~ilvr_cli.models.unet.UNet` can express is accepted; anything else is a
:class:`~ilvr_cli.errors.CheckpointError` naming the unsupported setting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ilvr_cli.config import DiffusionConfig, DownsamplePadding, ScheduleName, UNetConfig, VarianceType
from ilvr_cli.errors import CheckpointError
from ilvr_cli.models.unet import attention_heads

__all__ = [
    "WEIGHT_NAMES",
    "convert_state_dict",
    "diffusion_config_from_scheduler",
    "find_files",
    "unet_config_from_diffusers",
]

#: Weight files looked for, in order of preference (safetensors never unpickles anything).
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}
#: diffusers defaults (UNet2DModel.__init__) for keys an older config.json may lack.
_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}
#: Settings that must have exactly these values (anything else changes the network in ways UNet lacks).
_REQUIRED: dict[str, Any] = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}


def find_files(folder: Path) -> tuple[Path, Path, Path | None] | None:
    """(config.json, weights, scheduler_config.json or None) of a diffusers UNet folder, else None.

    Looks in ``folder`` and then in the pipeline layout ``folder/unet`` (+ ``folder/scheduler``).
    """
    for unet_dir in (folder, folder / "unet"):
        config = unet_dir / "config.json"
        weights = next((unet_dir / n for n in WEIGHT_NAMES if (unet_dir / n).is_file()), None)
        if config.is_file() and weights is not None:
            candidates = (unet_dir / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
            scheduler = next((p for p in candidates if p.is_file()), None)
            return config, weights, scheduler
    return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or a CheckpointError saying why not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def unet_config_from_diffusers(raw: Mapping[str, Any]) -> UNetConfig:
    """Map a ``UNet2DModel`` ``config.json`` to a :class:`UNetConfig` (Ho et al.'s DDPM family).

    Heads follow diffusers 0.42 exactly: ``attention_head_dim`` null means one head over all channels; a
    missing key means diffusers' default 8 channels per head.
    """
    if raw.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(
            f"unsupported diffusers model class {raw['_class_name']!r}; expected UNet2DModel"
        )
    cfg = {**_DEFAULTS, **raw}
    for key, want in _REQUIRED.items():
        if cfg[key] != want:
            raise CheckpointError(
                f"unsupported diffusers UNet2DModel setting {key}={cfg[key]!r} (need {want!r})"
            )
    widths = [int(w) for w in cfg["block_out_channels"]]
    down = list(cfg["down_block_types"])
    up = list(cfg["up_block_types"])
    if not (len(widths) == len(down) == len(up)):
        raise CheckpointError(
            "diffusers config: block_out_channels, down_block_types and up_block_types differ in length"
        )
    for kind in [*down, *up]:
        if kind not in _DOWN_TYPES and kind not in _UP_TYPES:
            raise CheckpointError(
                f"unsupported diffusers block type {kind!r} (only (Attn)DownBlock2D / (Attn)UpBlock2D)"
            )
    attention = [_DOWN_TYPES.get(k) for k in down]
    if None in attention or [_UP_TYPES.get(k) for k in reversed(up)] != attention:
        raise CheckpointError(
            f"unsupported diffusers block layout: down {down} and up {up} must mirror each other"
        )
    base = widths[0]
    if any(w % base for w in widths):
        raise CheckpointError(
            f"unsupported block_out_channels {widths}: each must be a multiple of the first"
        )
    if cfg["time_embedding_dim"] not in (None, 4 * base):
        raise CheckpointError(f"unsupported time_embedding_dim {cfg['time_embedding_dim']} (need {4 * base})")
    groups = cfg["norm_num_groups"]
    if groups is None or cfg["attn_norm_num_groups"] not in (None, groups):
        raise CheckpointError(
            "unsupported diffusers norm groups: norm_num_groups must be set and shared by attention"
        )
    if cfg["resnet_time_scale_shift"] == "scale_shift" and cfg["attn_norm_num_groups"] is None:
        # diffusers' UNetMidBlock2D then builds its attention without a group norm, which UNet always has
        raise CheckpointError("unsupported diffusers config: scale_shift without attn_norm_num_groups")
    paddings: dict[int, DownsamplePadding] = {0: "tf_same", 1: "symmetric"}
    padding = paddings.get(cfg["downsample_padding"])
    if padding is None:
        raise CheckpointError(f"unsupported downsample_padding {cfg['downsample_padding']} (0 or 1)")
    shift = {"default": False, "scale_shift": True}.get(cfg["resnet_time_scale_shift"])
    if shift is None:
        raise CheckpointError(f"unsupported resnet_time_scale_shift {cfg['resnet_time_scale_shift']!r}")
    image_size = _sample_size(cfg.get("sample_size"))
    head_dim = cfg["attention_head_dim"]
    attention_widths = [w for w, a in zip(widths, attention, strict=True) if a] + [widths[-1]]
    if head_dim is not None and any(w % head_dim for w in attention_widths):
        raise CheckpointError(
            f"unsupported attention_head_dim {head_dim}: it must divide the attention widths"
        )
    return UNetConfig(
        image_size=image_size,
        model_channels=base,
        num_res_blocks=int(cfg["layers_per_block"]),
        attention_resolutions=tuple(image_size // 2**level for level, a in enumerate(attention) if a),
        channel_mult=tuple(w // base for w in widths),
        in_channels=int(cfg["in_channels"]),
        out_channels=int(cfg["out_channels"]),
        num_heads=1,
        num_head_channels=-1 if head_dim is None else int(head_dim),
        use_scale_shift_norm=shift,
        resblock_updown=False,
        conv_resample=True,
        dropout=float(cfg["dropout"]),
        norm_groups=int(groups),
        norm_eps=float(cfg["norm_eps"]),
        time_embed_flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]),
        time_embed_freq_shift=float(cfg["freq_shift"]),
        downsample_padding=padding,
        attention_order="legacy",
    )


def _sample_size(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"unsupported non-square sample_size {list(value)}")
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise CheckpointError("diffusers config.json has no usable sample_size (the training image size)")
    return value


def diffusion_config_from_scheduler(raw: Mapping[str, Any]) -> DiffusionConfig:
    """Map a diffusers ``scheduler_config.json`` (DDPM/DDIM/PNDM...) to a :class:`DiffusionConfig`.

    ``linear`` must be guided-diffusion's linear schedule (beta 1e-4 .. 0.02 scaled by 1000/T);
    ``squaredcos_cap_v2`` is its cosine schedule. A missing ``variance_type`` means DDPMScheduler's default,
    fixed_small.
    """
    steps = int(raw.get("num_train_timesteps", 1000))
    if raw.get("trained_betas") is not None:
        raise CheckpointError("unsupported scheduler: explicit trained_betas")
    if raw.get("rescale_betas_zero_snr", False):
        raise CheckpointError("unsupported scheduler: rescale_betas_zero_snr")
    if raw.get("prediction_type", "epsilon") != "epsilon":
        raise CheckpointError(f"unsupported prediction_type {raw['prediction_type']!r} (only epsilon)")
    name = raw.get("beta_schedule", "linear")
    schedule: ScheduleName
    if name == "linear":
        scale = 1000 / steps
        start, end = float(raw.get("beta_start", 1e-4)), float(raw.get("beta_end", 0.02))
        if not (
            math.isclose(start, scale * 1e-4, rel_tol=1e-6) and math.isclose(end, scale * 0.02, rel_tol=1e-6)
        ):
            raise CheckpointError(
                f"unsupported linear schedule beta {start}..{end} over {steps} steps "
                f"(guided-diffusion's is {scale * 1e-4:g}..{scale * 0.02:g})"
            )
        schedule = "linear"
    elif name == "squaredcos_cap_v2":
        schedule = "cosine"
    else:
        raise CheckpointError(f"unsupported beta_schedule {name!r} (linear or squaredcos_cap_v2)")
    variances: dict[str, VarianceType] = {
        "fixed_small": "fixed_small",
        "fixed_small_log": "fixed_small",
        "fixed_large": "fixed_large",
        "fixed_large_log": "fixed_large",
        "learned_range": "learned_range",
    }
    variance = variances.get(raw.get("variance_type", "fixed_small"))
    if variance is None:
        raise CheckpointError(f"unsupported variance_type {raw['variance_type']!r}")
    return DiffusionConfig(schedule=schedule, num_timesteps=steps, variance_type=variance)


_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: Legacy (2022) attention names -> current ones; both are accepted.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _block_prefixes(config: UNetConfig) -> dict[str, str]:
    """diffusers module prefix -> guided-diffusion prefix, for every resnet/attention/resampler."""
    levels, blocks = len(config.channel_mult), config.num_res_blocks
    attention = {config.image_size // r for r in config.attention_resolutions}
    out: dict[str, str] = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    for level in range(levels):
        first = 1 + level * (blocks + 1)
        for r in range(blocks):
            out[f"down_blocks.{level}.resnets.{r}"] = f"input_blocks.{first + r}.0"
            out[f"down_blocks.{level}.attentions.{r}"] = f"input_blocks.{first + r}.1"
        out[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{first + blocks}.0.op"
        u = levels - 1 - level  # up block index of this level
        has_attention = 2**level in attention
        for j in range(blocks + 1):
            out[f"up_blocks.{u}.resnets.{j}"] = f"output_blocks.{u * (blocks + 1) + j}.0"
            out[f"up_blocks.{u}.attentions.{j}"] = f"output_blocks.{u * (blocks + 1) + j}.1"
        out[f"up_blocks.{u}.upsamplers.0.conv"] = (
            f"output_blocks.{u * (blocks + 1) + blocks}.{2 if has_attention else 1}.conv"
        )
    return out


def convert_state_dict(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """Rename a ``UNet2DModel`` state dict to guided-diffusion names; pack q/k/v into the ``qkv`` conv.

    Linear (C, C) weights become 1x1 conv1d (C, C, 1); q, k, v are stacked in the channel order of
    ``config.attention_order`` and its head count, so :class:`~ilvr_cli.models.unet.AttentionBlock` splits
    them exactly as diffusers' ``Attention`` does. Unknown names raise a CheckpointError.
    """
    prefixes = _block_prefixes(config)
    converted: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        module, _, leaf = key.rpartition(".")
        mapped = _map_key(module, prefixes)
        if mapped is None:
            unknown.append(key)
            continue
        target, role = mapped
        if role in ("to_q", "to_k", "to_v"):
            qkv_parts.setdefault(f"{target}.qkv.{leaf}", {})[role] = tensor
        elif role == "to_out.0":
            converted[f"{target}.proj_out.{leaf}"] = tensor[..., None] if leaf == "weight" else tensor
        elif role == "group_norm":
            converted[f"{target}.norm.{leaf}"] = tensor
        else:
            converted[f"{target}.{leaf}"] = tensor
    if unknown:
        raise CheckpointError(
            f"diffusers checkpoint has {len(unknown)} tensors this UNet has no place for "
            f"(e.g. {', '.join(unknown[:3])})"
        )
    for name, parts in qkv_parts.items():
        if set(parts) != {"to_q", "to_k", "to_v"}:
            raise CheckpointError(f"diffusers checkpoint: attention {name} lacks one of query/key/value")
        q, k, v = parts["to_q"], parts["to_k"], parts["to_v"]
        heads = attention_heads(config, q.shape[0], upsample=name.startswith("output_blocks."))
        converted[name] = _pack_qkv(q, k, v, heads, config.attention_order)
    return converted


def _map_key(module: str, prefixes: Mapping[str, str]) -> tuple[str, str] | None:
    """(guided-diffusion prefix, role) of a diffusers module path, or None when unknown."""
    if module in prefixes:
        return prefixes[module], ""
    parent, _, role = module.rpartition(".")
    if parent.endswith("to_out"):  # to_out.0
        parent, _, _ = parent.rpartition(".")
        role = "to_out.0"
    role = _LEGACY_ATTENTION.get(role, role)
    if (
        ".attentions." in parent
        and parent in prefixes
        and role in ("to_q", "to_k", "to_v", "to_out.0", "group_norm")
    ):
        return prefixes[parent], role
    if ".resnets." in parent and parent in prefixes and role in _RESNET:
        return f"{prefixes[parent]}.{_RESNET[role]}", ""
    return None


def _pack_qkv(q: Tensor, k: Tensor, v: Tensor, heads: int, order: str) -> Tensor:
    """Stack diffusers q, k, v (C, C) weights or (C,) biases into guided-diffusion's (3C, C, 1) / (3C,)."""
    channels = q.shape[0]
    stacked = torch.stack([q, k, v])  # (3, C, ...)
    if order == "legacy":
        stacked = stacked.reshape(3, heads, channels // heads, *q.shape[1:]).transpose(0, 1)
    packed = stacked.reshape(3 * channels, *q.shape[1:])
    return packed[..., None] if q.ndim == 2 else packed
