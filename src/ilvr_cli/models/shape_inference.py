"""Read a guided-diffusion UNet architecture back from a state dict's tensor shapes, and explain mismatches.

Shapes fix the widths, the number of res blocks per level, which levels have attention, scale-shift norm,
resblock up/down and conv resampling. They do not fix the number of attention heads (the qkv conv is
(3C, C, 1) for any head count) nor the training image size (the network is fully convolutional): those
come from the caller, with the defaults below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor

from ilvr_cli.config import UNetConfig
from ilvr_cli.errors import CheckpointError
from ilvr_cli.models.unet import UNet

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_HEAD_CHANNELS",
    "describe_key_mismatch",
    "expected_shapes",
    "explain_mismatch",
    "infer_unet_config",
]

#: Training image size assumed for a bare guided-diffusion checkpoint (every published ADM / ilvr_adm /
#: P2-weighting unconditional model is 256x256). Only ``attention_resolutions`` (in pixels) depend on it.
DEFAULT_IMAGE_SIZE = 256
#: Channels per attention head assumed for a bare guided-diffusion checkpoint (``--num_head_channels 64`` in
#: all published ADM 256 models); when it does not divide a width, guided-diffusion's defaults
#: (``num_heads=4``) are used instead.
DEFAULT_NUM_HEAD_CHANNELS = 64

ShapeMap = Mapping[str, tuple[int, ...]]


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of ``UNet(config)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        network = UNet(config)
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def _shapes(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def infer_unet_config(
    state_dict: Mapping[str, Tensor],
    image_size: int | None = None,
    num_heads: int | None = None,
    num_head_channels: int | None = None,
) -> UNetConfig:
    """Infer the :class:`UNetConfig` of a guided-diffusion ``UNetModel`` state dict from tensor shapes.

    Tries every (levels, res blocks) split of the block count, reads widths and attention levels for each,
    and keeps the one whose skeleton matches every name and shape. ``image_size`` defaults to
    :data:`DEFAULT_IMAGE_SIZE`; heads to :data:`DEFAULT_NUM_HEAD_CHANNELS` per head.
    """
    shapes = _shapes(state_dict)
    if "label_emb.weight" in shapes:
        raise CheckpointError(
            "class-conditional guided-diffusion checkpoints (label_emb) are not supported; "
            "ILVR needs an unconditional model"
        )
    for key in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"):
        if key not in shapes:
            raise CheckpointError(f"not a guided-diffusion UNet state dict: no {key!r}")
    n_out = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks.")), default=-1)
    size = image_size or DEFAULT_IMAGE_SIZE
    matches = []
    for res_blocks in range(1, n_out):
        if n_out % (res_blocks + 1):
            continue
        config = _candidate(shapes, n_out // (res_blocks + 1), res_blocks, size)
        if config is None:
            continue
        config = _with_heads(config, num_heads, num_head_channels)
        try:
            if expected_shapes(config) == shapes:
                matches.append(config)
        except CheckpointError:
            continue
    if len(matches) != 1:
        raise CheckpointError(
            f"could not infer the UNet architecture from the checkpoint's {len(shapes)} tensors"
            + (" (several architectures fit)" if matches else "")
            + "; give its UNetConfig (guided-diffusion flags) explicitly"
        )
    return matches[0]


def _candidate(shapes: ShapeMap, levels: int, res_blocks: int, image_size: int) -> UNetConfig | None:
    """The config implied by reading the state dict as ``levels`` levels of ``res_blocks`` blocks."""
    model_channels = shapes["time_embed.0.weight"][1]
    mult: list[int | float] = []
    attention_ds = []
    for level in range(levels):
        first = f"input_blocks.{1 + level * (res_blocks + 1)}"
        width_key = f"{first}.0.out_layers.3.weight"
        if width_key not in shapes:
            return None
        width = shapes[width_key][0]
        mult.append(width // model_channels if width % model_channels == 0 else width / model_channels)
        if f"{first}.1.qkv.weight" in shapes:
            attention_ds.append(2**level)
    if image_size % 2 ** (levels - 1):
        return None
    down = f"input_blocks.{1 + res_blocks}.0"
    resblock_updown = levels > 1 and f"{down}.in_layers.0.weight" in shapes
    conv_resample = levels == 1 or resblock_updown or f"{down}.op.weight" in shapes
    emb_key = "input_blocks.1.0.emb_layers.1.weight"
    out_width = shapes["input_blocks.1.0.out_layers.3.weight"][0]
    return UNetConfig(
        image_size=image_size,
        model_channels=model_channels,
        num_res_blocks=res_blocks,
        attention_resolutions=tuple(image_size // ds for ds in attention_ds),
        channel_mult=tuple(mult),
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes["out.2.weight"][0],
        use_scale_shift_norm=shapes[emb_key][0] == 2 * out_width,
        resblock_updown=resblock_updown,
        conv_resample=conv_resample,
    )


def _with_heads(config: UNetConfig, num_heads: int | None, num_head_channels: int | None) -> UNetConfig:
    """Apply the caller's head counts, or the documented defaults."""
    if num_heads is not None or num_head_channels is not None:
        return dataclasses.replace(
            config,
            num_heads=num_heads if num_heads is not None else 1,
            num_head_channels=num_head_channels if num_head_channels is not None else -1,
        )
    widths = [int(m * config.model_channels) for m in config.channel_mult]
    if all(w % DEFAULT_NUM_HEAD_CHANNELS == 0 for w in widths):  # every width, attention or not: conservative
        # num_heads=4 is guided-diffusion's flag default, ignored when num_head_channels is set
        return dataclasses.replace(config, num_heads=4, num_head_channels=DEFAULT_NUM_HEAD_CHANNELS)
    return dataclasses.replace(config, num_heads=4, num_head_channels=-1)


#: Fields that tensor shapes determine, with how to say them to a user.
_SHAPE_FIELDS = (
    "in_channels",
    "out_channels",
    "model_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_resolutions",
    "use_scale_shift_norm",
    "resblock_updown",
    "conv_resample",
)


def _say(field: str, value: object) -> str:
    """A field value in user terms, e.g. '6 output channels (learned sigma)'."""
    if field == "out_channels":
        return f"{value} output channels" + (
            " (learned sigma)" if value == 6 else " (eps only)" if value == 3 else ""
        )
    if field == "in_channels":
        return f"{value} input channels"
    if field == "model_channels":
        return f"base width {value} (model_channels)"
    if field == "num_res_blocks":
        return f"{value} res block{'s' if value != 1 else ''} per level"
    if field == "channel_mult":
        multipliers = cast("tuple[float, ...]", value)
        return f"channel multipliers {','.join(str(m) for m in multipliers)}"
    if field == "attention_resolutions":
        resolutions = cast("tuple[int, ...]", value)
        return "attention at " + (",".join(str(r) for r in resolutions) or "no resolution") + " px"
    if field == "use_scale_shift_norm":
        return "scale-shift norm" if value else "no scale-shift norm"
    if field == "resblock_updown":
        return "res-block up/down-sampling" if value else "plain up/down-sampling layers"
    if field == "conv_resample":
        return "convolutional resampling" if value else "non-convolutional resampling"
    return f"{field}={value}"


def explain_mismatch(config: UNetConfig, state_dict: Mapping[str, Tensor]) -> str | None:
    """Why ``state_dict`` does not load into ``UNet(config)``, in user terms; None when it loads strictly."""
    try:
        expected = expected_shapes(config)
    except CheckpointError as err:
        return str(err)
    shapes = _shapes(state_dict)
    if expected == shapes:
        return None
    reasons = []
    try:
        found = infer_unet_config(state_dict, config.image_size, config.num_heads, config.num_head_channels)
    except CheckpointError:
        found = None
    if found is not None:
        for field in _SHAPE_FIELDS:
            if field == "conv_resample" and found.resblock_updown and config.resblock_updown:
                continue  # res-block resampling has no conv: the flag leaves no trace in the shapes
            have, want = getattr(found, field), getattr(config, field)
            if field == "attention_resolutions":
                have, want = tuple(sorted(have, reverse=True)), tuple(sorted(want, reverse=True))
            if have != want:
                reasons.append(f"checkpoint has {_say(field, have)} but the config says {_say(field, want)}")
    reasons.append(describe_key_mismatch(expected, shapes))
    return "; ".join(reasons)


def describe_key_mismatch(expected: ShapeMap, found: ShapeMap, examples: int = 3) -> str:
    """Summarise missing / unexpected / mis-shaped keys: counts and a few names."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:examples])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:examples])})")
    if reshaped:
        shown = ", ".join(
            f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}" for k in reshaped[:examples]
        )
        parts.append(f"{len(reshaped)} tensors of another shape (e.g. {shown})")
    return "; ".join(parts) or "no differences in names or shapes"
