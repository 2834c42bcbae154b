"""Helpers shared by the task tests (no tests here): a tiny random model on disk, a batch-invariant
stand-in network, image writers and readers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.diffusion import Schedule
from ilvr_cli.models.checkpoints import save_native
from ilvr_cli.models.unet import UNet
from ilvr_cli.registry.handle import ModelHandle

SIZE = 32
TINY_CONFIG = UNetConfig(
    image_size=SIZE,
    model_channels=16,
    num_res_blocks=1,
    attention_resolutions=(16,),
    channel_mult=(1, 2),
    norm_groups=8,
    num_heads=2,
    out_channels=6,
    use_scale_shift_norm=True,
)
TINY_DIFFUSION = DiffusionConfig(variance_type="learned_range")


def tiny_unet(seed: int = 0) -> UNet:
    """A 32x32 UNet with every parameter re-drawn (no zero-initialised output layer)."""
    torch.manual_seed(seed)
    net = UNet(TINY_CONFIG).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1)
    return net


def save_tiny_model(path: Path) -> Path:
    """The tiny UNet as an ilvr-cli .safetensors (what ``--model PATH`` loads)."""
    return save_native(path, tiny_unet(), TINY_CONFIG, TINY_DIFFUSION)


class StandIn(torch.nn.Module):
    """A random per-pixel network f(x, t) -> (eps, v): bitwise independent of the batch size."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(6, 3, generator=g) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(6, 1, 1, generator=g) * 0.1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mixed = [sum(self.w[o, c] * x[:, c] for c in range(3)) for o in range(6)]
        out = torch.stack(mixed, dim=1) + self.b * torch.cos(t.float() / 300.0)[:, None, None, None]
        return torch.tanh(out)


def stand_in_model() -> ModelHandle:
    return ModelHandle.from_network(StandIn(), TINY_DIFFUSION, SIZE, name="stand-in")


class GreyOracle(torch.nn.Module):
    """The exact denoiser of a trivial "trained" model whose data is the mid-grey image (x_0 = 0):
    eps = x_t / sqrt(1 - abar_t). Its samples are smooth, so nothing is clipped when they are saved."""

    def __init__(self) -> None:
        super().__init__()
        abar = Schedule.named("linear", 1000).alphas_cumprod
        self.register_buffer("scale", torch.tensor((1.0 - abar) ** -0.5, dtype=torch.float32))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = x * self.scale[t.long()][:, None, None, None]
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


def oracle_model() -> ModelHandle:
    return ModelHandle.from_network(GreyOracle(), TINY_DIFFUSION, SIZE, name="grey-oracle")


def smooth_image(seed: int, size: int = SIZE, low: float = 0.25, high: float = 0.75) -> np.ndarray:
    """(size, size, 3) uint8: a smooth random image with values in [low, high] (no clipping at the ends)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(low, high, (4, 4, 3))
    image = Image.fromarray((coarse * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def to_unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) float64 in [-1, 1]."""
    return torch.from_numpy(pixels.astype(np.float64) / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1]."""
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))
