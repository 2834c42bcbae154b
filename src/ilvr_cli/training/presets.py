"""What a training run is: :class:`TrainConfig`, and the architecture presets it starts from.

Torch-free (the CLI builds a config before importing torch). Presets:

- ``ddpm``: Ho et al. (2020), the architecture of the ILVR paper's appendix C.3: a U-Net of Wide-ResNet
  blocks with group normalisation, self-attention at 16x16, a sinusoidal time embedding (sin first, shift 1),
  128 base channels, 2 res blocks per level, a fixed linear beta schedule 1e-4..0.02 over T = 1000 and
  sigma_t^2 = beta_t (``fixed_large``); dropout 0.1 at 32x32 (Ho et al.'s CIFAR-10 setting), 0 above.
- ``adm-small``: the lightweight ADM of ILVR / P2-weighting (the ``ffhq`` catalog entry's flags: 128
  channels, 1 res block, attention at 16 with 64-channel heads, scale-shift norm, res-block up/down
  sampling), learned sigma (hybrid loss) by default.
- a JSON file: ``{"unet": {...}, "diffusion": {...}}`` (config dictionaries) or guided-diffusion flags.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ilvr_cli.config import DEFAULT_CHANNEL_MULT, DiffusionConfig, UNetConfig, VarianceType
from ilvr_cli.errors import IlvrError, UsageError

__all__ = [
    "PRESETS",
    "Precision",
    "TrainConfig",
    "adm_small_config",
    "ddpm_config",
    "load_config_file",
    "model_configs",
]

PRESETS: tuple[str, ...] = ("ddpm", "adm-small")
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

#: Options a resumed run may change; every other option is fixed by the run's saved config.
RESUMABLE_FIELDS = frozenset(
    {"steps", "save_every", "sample_every", "sample_count", "sample_steps", "log_every", "keep_every",
     "workers", "device", "data_dir"}
)  # fmt: skip


def _channel_mult(image_size: int) -> tuple[float, ...]:
    if image_size not in DEFAULT_CHANNEL_MULT:
        raise UsageError(
            f"no preset channel_mult for image size {image_size} (presets know "
            f"{sorted(DEFAULT_CHANNEL_MULT)}); give a JSON config with channel_mult"
        )
    return tuple(DEFAULT_CHANNEL_MULT[image_size])


def ddpm_config(image_size: int = 256, learn_sigma: bool = False) -> tuple[UNetConfig, DiffusionConfig]:
    """Ho et al.'s DDPM (the ILVR paper's C.3): diffusers' ``google/ddpm-*`` layout at ``image_size``."""
    channels = 6 if learn_sigma else 3
    unet = UNetConfig(
        image_size=image_size,
        model_channels=128,
        num_res_blocks=2,
        attention_resolutions=(16,),
        channel_mult=_channel_mult(image_size),
        out_channels=channels,
        num_heads=1,
        dropout=0.1 if image_size <= 32 else 0.0,
        norm_eps=1e-6,
        time_embed_flip_sin_to_cos=False,
        time_embed_freq_shift=1.0,
        downsample_padding="tf_same",
    )
    variance: VarianceType = "learned_range" if learn_sigma else "fixed_large"
    return unet, DiffusionConfig(schedule="linear", num_timesteps=1000, variance_type=variance)


def adm_small_config(image_size: int = 256, learn_sigma: bool = True) -> tuple[UNetConfig, DiffusionConfig]:
    """The ``ffhq`` catalog entry's guided-diffusion flags (ILVR's lightweight ADM) at ``image_size``."""
    from ilvr_cli.registry.catalog import BUILTIN_CATALOG, read_catalog_file

    flags = dict(read_catalog_file(BUILTIN_CATALOG, "builtin")["ffhq"].flags or {})
    flags.update(image_size=image_size, learn_sigma=learn_sigma)
    flags.pop("channel_mult", None)
    _channel_mult(image_size)
    return UNetConfig.from_guided_diffusion_flags(flags), DiffusionConfig.from_guided_diffusion_flags(flags)


def load_config_file(path: str | Path) -> tuple[UNetConfig, DiffusionConfig]:
    """``{"unet": {...}, "diffusion": {...}}`` or guided-diffusion ``create_model_and_diffusion`` flags."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the config file {p}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{p}: expected a JSON object with 'unet' and 'diffusion', or guided-diffusion flags"
        )
    try:
        if "unet" in data:
            return UNetConfig.from_dict(data["unet"]), DiffusionConfig.from_dict(data.get("diffusion", {}))
        return UNetConfig.from_guided_diffusion_flags(data), DiffusionConfig.from_guided_diffusion_flags(data)
    except (IlvrError, TypeError, ValueError) as error:
        raise UsageError(f"{p}: bad model config: {error}") from None


def _with_learn_sigma(
    unet: UNetConfig, diffusion: DiffusionConfig, learn_sigma: bool
) -> tuple[UNetConfig, DiffusionConfig]:
    """Switch a config to learned sigma (6 output channels, ``learned_range``) or back to eps only."""
    if learn_sigma == unet.learn_sigma:
        return unet, diffusion
    out = unet.in_channels * (2 if learn_sigma else 1)
    variance: VarianceType = "learned_range" if learn_sigma else "fixed_large"
    return dataclasses.replace(unet, out_channels=out), dataclasses.replace(diffusion, variance_type=variance)


def model_configs(
    preset: str,
    *,
    image_size: int | None = None,
    learn_sigma: bool | None = None,
    dropout: float | None = None,
) -> tuple[UNetConfig, DiffusionConfig]:
    """The architecture and diffusion of a preset name or a JSON config file, with the overrides applied."""
    if preset == "ddpm":
        unet, diffusion = ddpm_config(image_size or 256, bool(learn_sigma))
    elif preset == "adm-small":
        unet, diffusion = adm_small_config(image_size or 256, True if learn_sigma is None else learn_sigma)
    elif preset.endswith(".json") or Path(preset).expanduser().is_file():
        unet, diffusion = load_config_file(preset)
        if image_size is not None and image_size != unet.image_size:
            unet = dataclasses.replace(unet, image_size=image_size)
        if learn_sigma is not None:
            unet, diffusion = _with_learn_sigma(unet, diffusion, learn_sigma)
    else:
        raise UsageError(f"unknown preset {preset!r}: use {', '.join(PRESETS)} or a JSON config file")
    if dropout is not None:
        unet = dataclasses.replace(unet, dropout=dropout)
    return unet, diffusion


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``RUN_DIR/config.json`` and reused by ``--resume``.

    ``batch_size`` is the global batch (split evenly over the ranks under torchrun), so a run's
    hyperparameters do not depend on the number of GPUs. ``p2_gamma = 0`` turns P2 weighting off;
    ``vlb_weight`` is Nichol & Dhariwal's lambda (used when the variance is learned).
    """

    data_dir: str
    out_dir: str
    unet: UNetConfig
    diffusion: DiffusionConfig
    preset: str = ""
    init_from: str | None = None
    batch_size: int = 8
    lr: float = 2e-5
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    steps: int = 100_000
    grad_clip: float | None = None
    #: ``auto``: bf16 autocast where the hardware computes bf16 natively, else fp32
    #: (:func:`ilvr_cli.runtime.resolve_precision`).
    precision: Precision = "auto"
    workers: int = 2
    seed: int = 0
    flip: bool = True
    p2_gamma: float = 0.0
    p2_k: float = 1.0
    vlb_weight: float = 1e-3
    save_every: int = 5000
    sample_every: int = 5000
    sample_count: int = 16
    sample_steps: str = "ddim50"
    log_every: int = 100
    keep_every: int = 0
    channels_last: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UsageError naming the first option out of range."""
        checks = [
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0.0 <= self.ema_decay < 1.0, f"--ema must lie in [0, 1), got {self.ema_decay}"),
            (self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            (self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}"),
            (self.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.workers >= 0, f"--workers must be 0 or more, got {self.workers}"),
            (self.p2_gamma >= 0 and self.p2_k > 0, "--p2-gamma must be >= 0 and --p2-k > 0"),
            (self.vlb_weight >= 0, f"the VLB weight must be >= 0, got {self.vlb_weight}"),
            (min(self.save_every, self.log_every) >= 1, "--save-every and --log-every must be at least 1"),
            (min(self.sample_every, self.sample_count, self.keep_every) >= 0, "sample/keep counts must be >= 0"),
            (self.unet.in_channels in (1, 3), f"images have 1 or 3 channels, not {self.unet.in_channels}"),
            (self.diffusion.prediction == "eps", "only eps-prediction training is supported"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.diffusion.variance_type == "learned_range" and not self.unet.learn_sigma:
            raise UsageError("variance type learned_range needs a UNet with 2x the input channels as output")

    @property
    def hybrid(self) -> bool:
        """True when sigma is learned: the loss is L_simple + lambda L_vlb (Nichol & Dhariwal sec. 3.1)."""
        return self.diffusion.variance_type == "learned_range"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["unet"], d["diffusion"] = self.unet.to_dict(), self.diffusion.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown training config keys {unknown}")
        values = dict(data)
        values["unet"] = UNetConfig.from_dict(values["unet"])
        values["diffusion"] = DiffusionConfig.from_dict(values["diffusion"])
        return cls(**values)

    def resumed_with(self, changes: dict[str, Any]) -> TrainConfig:
        """This (saved) config with the options a resumed run may change; others must be unchanged."""
        fixed = {k: v for k, v in changes.items() if k not in RESUMABLE_FIELDS and getattr(self, k) != v}
        if fixed:
            name, value = next(iter(fixed.items()))
            raise UsageError(
                f"--resume continues the saved run: {name} was {getattr(self, name)!r}, not {value!r}; "
                f"only {', '.join(sorted(RESUMABLE_FIELDS))} may change (start a new --out for the rest)"
            )
        return dataclasses.replace(self, **changes)
