"""Sample grids from the EMA model during training, with the engine's respaced sampler.

The same noise (seed, keys ``grid/0`` ...) is used at every step of a run, so successive grids show
the same samples improving.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ilvr_cli.config import DiffusionConfig
from ilvr_cli.diffusion import Denoiser, NoiseSource, sample
from ilvr_cli.diffusion.sampler import Method
from ilvr_cli.io.grid import make_grid
from ilvr_cli.io.write import save_png

__all__ = ["sample_images", "save_grid", "to_rows"]


def sample_images(
    network: torch.nn.Module,
    diffusion: DiffusionConfig,
    *,
    count: int,
    image_size: int,
    channels: int,
    seed: int,
    steps: str = "ddim50",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``count`` unconditional samples (count, C, H, W) in [-1, 1]; ``steps`` "ddimN" runs DDIM (eta 0)
    on N steps, any other respacing spec ("50", "25,25") runs DDPM ancestral sampling."""
    method: Method = "ddim" if steps.startswith("ddim") else "ddpm"
    denoiser = Denoiser.from_loaded(network, diffusion, steps=steps)
    noise = NoiseSource(seed, [f"grid/{k}" for k in range(count)], device=device)
    was_training = network.training
    network.eval()
    try:
        return sample(denoiser, noise, shape=(channels, image_size, image_size), method=method)
    finally:
        network.train(was_training)


def to_rows(images: torch.Tensor, columns: int | None = None) -> list[list[np.ndarray]]:
    """(B, C, H, W) in [-1, 1] -> rows of (H, W, C) arrays in [0, 1] for :func:`ilvr_cli.io.grid.make_grid`
    (``columns`` default: ceil(sqrt(B)))."""
    columns = columns or math.ceil(math.sqrt(images.shape[0]))
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return [list(pixels[k : k + columns]) for k in range(0, len(pixels), columns)]


def save_grid(
    images: torch.Tensor, path: Path, columns: int | None = None, params: dict | None = None
) -> Path:
    """Write a PNG grid of ``images`` atomically (``params`` go into its ``ilvr-cli`` text chunk)."""
    return save_png(path, make_grid(to_rows(images, columns)), params=params)
