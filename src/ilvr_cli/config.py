"""Architecture and diffusion configs: plain frozen dataclasses that round-trip through JSON.

They are data, not code: the model catalog, checkpoint metadata and ``ilvr train`` all store them as
JSON dictionaries (:meth:`to_dict` / :meth:`from_dict`). Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ilvr_cli.errors import CheckpointError

VarianceType = Literal["learned_range", "fixed_small", "fixed_large"]
ScheduleName = Literal["linear", "cosine"]
DownsamplePadding = Literal["symmetric", "tf_same"]

#: guided-diffusion's ``channel_mult`` defaults by image size (script_util.create_model).
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def _from_dict(cls: type, data: dict[str, Any]):
    """Build a dataclass from a dict, turning lists into tuples and naming unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} keys {unknown}; expected some of {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class UNetConfig:
    """The one UNet architecture, covering guided-diffusion's ADM and Ho et al.'s DDPM.

    Field names follow guided-diffusion's ``create_model`` flags. ``attention_resolutions`` are feature-map
    sizes in pixels (a level of spatial size r gets attention when r is listed), as in guided-diffusion's
    flags. The last four fields describe Ho et al.'s DDPM as published in the diffusers layout.
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...]
    in_channels: int = 3
    out_channels: int = 3
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    dropout: float = 0.0
    norm_groups: int = 32
    norm_eps: float = 1e-5
    #: Sinusoidal timestep embedding: ADM puts cos first (True) with frequency shift 0; Ho et al. put sin
    #: first with shift 1 (diffusers' ``flip_sin_to_cos`` / ``freq_shift``).
    time_embed_flip_sin_to_cos: bool = True
    time_embed_freq_shift: float = 0.0
    #: "symmetric": stride-2 conv, padding 1 (ADM); "tf_same": pad right/bottom by 1, no padding (Ho et al.).
    downsample_padding: DownsamplePadding = "symmetric"
    #: "legacy": guided-diffusion's QKVAttentionLegacy channel layout (the published checkpoints); "new":
    #: its QKVAttention layout (``use_new_attention_order``).
    attention_order: Literal["legacy", "new"] = "legacy"

    @property
    def learn_sigma(self) -> bool:
        """True when the network also predicts the variance interpolation v (2x the input channels)."""
        return self.out_channels == 2 * self.in_channels

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        return _from_dict(cls, data)

    @classmethod
    def from_guided_diffusion_flags(cls, flags: dict[str, Any]) -> UNetConfig:
        """Build from guided-diffusion ``create_model_and_diffusion`` keywords (e.g. a ``flags.json``).

        Missing flags take guided-diffusion's ``model_and_diffusion_defaults()``.
        """
        image_size = int(flags.get("image_size", 64))
        mult = flags.get("channel_mult", "")
        if isinstance(mult, str):
            mult_tuple = tuple(float(m) if "." in m else int(m) for m in mult.split(",") if m) or None
        else:
            mult_tuple = tuple(mult)
        if not mult_tuple:
            if image_size not in DEFAULT_CHANNEL_MULT:
                raise CheckpointError(
                    f"no default channel_mult for image size {image_size}; give channel_mult"
                )
            mult_tuple = DEFAULT_CHANNEL_MULT[image_size]
        att = flags.get("attention_resolutions", "32,16,8")
        att_tuple = tuple(int(a) for a in att.split(",") if a) if isinstance(att, str) else tuple(att)
        in_ch = 3
        return cls(
            image_size=image_size,
            model_channels=int(flags.get("num_channels", 128)),
            num_res_blocks=int(flags.get("num_res_blocks", 2)),
            attention_resolutions=att_tuple,
            channel_mult=mult_tuple,
            in_channels=in_ch,
            out_channels=in_ch * 2 if flags.get("learn_sigma", False) else in_ch,
            num_heads=int(flags.get("num_heads", 4)),
            num_head_channels=int(flags.get("num_head_channels", -1)),
            num_heads_upsample=int(flags.get("num_heads_upsample", -1)),
            use_scale_shift_norm=bool(flags.get("use_scale_shift_norm", True)),
            resblock_updown=bool(flags.get("resblock_updown", False)),
            dropout=float(flags.get("dropout", 0.0)),
            attention_order="new" if flags.get("use_new_attention_order", False) else "legacy",
        )


@dataclass(frozen=True)
class DiffusionConfig:
    """What the network was trained for: the noise schedule, its length, the variance and prediction type."""

    schedule: ScheduleName = "linear"
    num_timesteps: int = 1000
    variance_type: VarianceType = "fixed_large"
    prediction: Literal["eps"] = "eps"
    #: guided-diffusion's ``rescale_timesteps``: feed the network t * 1000 / num_timesteps.
    rescale_timesteps: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        return _from_dict(cls, data)

    @classmethod
    def from_guided_diffusion_flags(cls, flags: dict[str, Any]) -> DiffusionConfig:
        """guided-diffusion's ``create_gaussian_diffusion``: learn_sigma -> learned_range, else
        sigma_small -> fixed_small, else fixed_large."""
        if flags.get("learn_sigma", False):
            variance: VarianceType = "learned_range"
        elif flags.get("sigma_small", False):
            variance = "fixed_small"
        else:
            variance = "fixed_large"
        return cls(
            schedule=flags.get("noise_schedule", "linear"),
            num_timesteps=int(flags.get("diffusion_steps", 1000)),
            variance_type=variance,
            rescale_timesteps=bool(flags.get("rescale_timesteps", False)),
        )
