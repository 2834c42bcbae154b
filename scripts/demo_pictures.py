"""The demo model's pictures in docs/img/: unconditional samples and ILVR upscaling of the example digits.

    python scripts/demo_pictures.py [--model demo] [--out docs/img]

- ``demo_samples.png``: 64 unconditional samples (DDPM, 100 respaced steps, seed 0), 2x nearest-neighbour,
  stored grey (the model's R, G and B agree to a few levels; the mean is kept).
- ``demo_ilvr.png``: one row per example digit (src/ilvr_cli/data/examples/digits): the 4x4 thumbnail, three ILVR results
  from it (N = 8), the 8x8 thumbnail, three ILVR results from it (N = 4), and the held-out original;
  thumbnails are shown enlarged with nearest-neighbour so their pixels are visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilvr_cli.diffusion import Denoiser, NoiseSource, sample
from ilvr_cli.ilvr import ILVRHook, LowPass
from ilvr_cli.io.grid import make_grid
from ilvr_cli.registry import load_model
from ilvr_cli.training.samples import to_rows

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> torch.Tensor:
    """An RGB PNG -> (3, H, W) in [-1, 1]."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)


def nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(x[None], size=(size, size), mode="nearest")[0]


def ilvr(denoiser: Denoiser, low: torch.Tensor, factor: int, seeds: int, key: str) -> torch.Tensor:
    """``seeds`` ILVR samples (paper Algorithm 1) conditioned on the thumbnail ``low`` (3, 32/N, 32/N)."""
    hook = ILVRHook(LowPass(32, 32, factor), denoiser.schedule, low_res=low[None])
    noise = NoiseSource(0, [f"{key}/{s}" for s in range(seeds)])
    with torch.inference_mode():
        return sample(denoiser, noise, shape=(3, 32, 32), hooks=[hook])


def save(sheet: np.ndarray, path: Path) -> None:
    """Enlarged 2x (nearest) and stored as 8-bit grey (the digits are grey): a small PNG."""
    grid = Image.fromarray(sheet)
    grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST).convert("L").save(
        path, optimize=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument(
        "--examples", type=Path, default=ROOT / "src" / "ilvr_cli" / "data" / "examples" / "digits"
    )
    args = parser.parse_args()
    loaded = load_model(args.model)
    denoiser = Denoiser.from_loaded(loaded.network.eval(), loaded.diffusion_config, steps="100")
    args.out.mkdir(parents=True, exist_ok=True)

    with torch.inference_mode():
        samples = sample(denoiser, NoiseSource(0, [f"sample/{k}" for k in range(64)]), shape=(3, 32, 32))
    save(make_grid(to_rows(samples, columns=16)), args.out / "demo_samples.png")

    tiles = []
    for original in sorted(args.examples.glob("*.png")):
        row = []
        for factor in (8, 4):
            low = read(args.examples / f"lr{32 // factor}" / original.name)
            row += [nearest(low, 32), *ilvr(denoiser, low, factor, 3, f"{original.stem}/{factor}")]
        tiles += [*row, read(original)]
    save(make_grid(to_rows(torch.stack(tiles), columns=9)), args.out / "demo_ilvr.png")
    print(f"wrote {args.out / 'demo_samples.png'} and {args.out / 'demo_ilvr.png'}")


if __name__ == "__main__":
    main()
