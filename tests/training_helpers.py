"""Shared by the tests/test_training_*.py files: a tiny image folder and a tiny training config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.training.presets import TrainConfig

TINY_UNET = UNetConfig(
    image_size=8, model_channels=8, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2),
    out_channels=6, norm_groups=4, dropout=0.1, use_scale_shift_norm=True,
)  # fmt: skip
TINY_DIFFUSION = DiffusionConfig(schedule="linear", num_timesteps=40, variance_type="learned_range")


def image_folder(root: Path, count: int = 10, size: tuple[int, int] = (12, 10)) -> Path:
    """``count`` random RGB PNGs (``size`` = width, height) under ``root`` (two sub-folders)."""
    rng = np.random.default_rng(0)
    for k in range(count):
        path = root / f"part{k % 2}" / f"{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return root


def tiny_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    """A run of a few CPU milliseconds per step: learned sigma, dropout, flips, clipping all on."""
    base = TrainConfig(
        data_dir=str(data), out_dir=str(out), unet=TINY_UNET, diffusion=TINY_DIFFUSION, batch_size=4,
        lr=1e-3, ema_decay=0.9, steps=6, grad_clip=1.0, workers=0, save_every=2, sample_every=0,
        log_every=1, seed=3,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def tiny_config_json(path: Path) -> Path:
    """The tiny architecture as a ``{"unet": ..., "diffusion": ...}`` file (for ``--preset``)."""
    import json

    path.write_text(json.dumps({"unet": TINY_UNET.to_dict(), "diffusion": TINY_DIFFUSION.to_dict()}))
    return path
