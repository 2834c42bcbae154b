"""Export scikit-learn's bundled 8x8 handwritten digits as 32x32 PNGs: the demo model's training set.

The digits (UCI "Optical Recognition of Handwritten Digits", Alpaydin & Kaynak 1998, CC BY 4.0; shipped
inside the scikit-learn wheel, so no download) are 8x8 counts 0..16 of ink pixels. Each is scaled to [0, 1],
upsampled x4 with the project's MATLAB-style bicubic resampler (ILVR's phi_4 ``up``) and sharpened with a
logistic curve so strokes look like pen strokes; white ink on black, saved as RGB.

Five digits of each class (the last five in the dataset's order) are held out of training; the last one
of each class is written to ``--examples`` with its 8x8 and 4x4 thumbnails (the ILVR ``down`` of the
32x32 image): the example inputs shipped in the package (src/ilvr_cli/data/examples/digits/, copied out
by ``ilvr examples``).

    python scripts/export_digits.py /tmp/digits-train --examples src/ilvr_cli/data/examples/digits
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilvr_cli.ilvr.lowpass import LowPass

HELD_OUT_PER_CLASS = 5
GAIN, THRESHOLD = 12.0, 0.45


def sharpen(x: torch.Tensor) -> torch.Tensor:
    """Logistic contrast curve mapping 0 -> 0 and 1 -> 1 (steepness GAIN around THRESHOLD)."""
    lo, hi = (
        torch.sigmoid(torch.tensor(-GAIN * THRESHOLD)),
        torch.sigmoid(torch.tensor(GAIN * (1 - THRESHOLD))),
    )
    return ((torch.sigmoid(GAIN * (x - THRESHOLD)) - lo) / (hi - lo)).clamp(0, 1)


def digits_32(images_8x8: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) counts 0..16 -> (N, 1, 32, 32) in [0, 1]."""
    x = torch.tensor(images_8x8 / 16.0, dtype=torch.float32)[:, None]
    return sharpen(LowPass(32, 32, 4).up(x).clamp(0, 1))


def to_png(x: torch.Tensor, path: Path) -> None:
    """(1, H, W) in [0, 1] -> an RGB PNG."""
    array = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(array[..., None], 3, axis=2)).save(path)


def held_out_indices(targets: np.ndarray, per_class: int = HELD_OUT_PER_CLASS) -> list[int]:
    """The last ``per_class`` indices of each class."""
    return sorted(int(i) for c in range(10) for i in np.flatnonzero(targets == c)[-per_class:])


def main() -> None:
    from sklearn.datasets import load_digits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the training PNGs")
    parser.add_argument(
        "--examples", type=Path, help="folder for one held-out digit per class and thumbnails"
    )
    args = parser.parse_args()
    digits = load_digits()
    images = digits_32(digits.images)
    held = set(held_out_indices(digits.target))
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
        if i not in held:
            to_png(image, args.out / str(label) / f"{i:04d}.png")
    if args.examples:
        for i in held_out_indices(digits.target, per_class=1):
            name = f"{digits.target[i]}_{i:04d}.png"
            to_png(images[i], args.examples / name)
            for factor in (4, 8):
                small = LowPass(32, 32, factor).down(images[i][None])[0]
                to_png(small, args.examples / f"lr{32 // factor}" / name)
    print(f"{len(images) - len(held)} training images in {args.out}; {len(held)} held out")


if __name__ == "__main__":
    main()
