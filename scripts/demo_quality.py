"""Quality check of the demo model: does a digit classifier recognise its unconditional samples?

A support-vector classifier (Platt-calibrated probabilities) is trained on scikit-learn's 8x8 digits (the
50 held-out digits excluded) plus an eleventh class, "not a digit": the training digits with their pixels
shuffled (same ink, no shape) and smoothed random blobs. Without that class any classifier is confidently
wrong on junk: an untrained network's samples would be "recognised" too.

Each 32x32 image is turned back into the dataset's format (grey, 4x4 box average -> 8x8, scaled to
0..16) and classified. Printed for the model's unconditional samples (DDPM, 100 respaced steps), for the
held-out real digits through the same 32x32 round trip (the ceiling) and for the samples of the same
network untrained (the floor): the fraction recognised as a digit with probability >= 0.5 and >= 0.9,
the mean probability of the predicted digit over the recognised ones, and how many of each digit.

    python scripts/demo_quality.py [--model demo] [--count 200] [--steps 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_digits import digits_32, held_out_indices  # noqa: E402

from ilvr_cli.diffusion import Denoiser, NoiseSource, sample  # noqa: E402
from ilvr_cli.models.unet import UNet  # noqa: E402
from ilvr_cli.registry import load_model  # noqa: E402

NOT_A_DIGIT = 10


def to_features(images: torch.Tensor) -> np.ndarray:
    """(N, C, 32, 32) in [0, 1] -> (N, 64): grey, 4x4 box average, in the dataset's 0..16 range."""
    grey = images.float().mean(dim=1, keepdim=True)
    return (torch.nn.functional.avg_pool2d(grey, 4).flatten(1).clamp(0, 1) * 16).numpy()


def junk(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Non-digits with digit statistics: each digit's pixels shuffled, and blurred noise blobs."""
    shuffled = rng.permuted(features, axis=1)
    noise = torch.rand(len(features), 1, 12, 12, generator=torch.Generator().manual_seed(0))
    blobs = torch.nn.functional.avg_pool2d(noise, 5, stride=1)  # (N, 1, 8, 8), smooth
    blobs = (blobs - blobs.amin((2, 3), keepdim=True)) / (
        blobs.amax((2, 3), keepdim=True) - blobs.amin((2, 3), keepdim=True)
    )
    blobs = (
        blobs > torch.rand(len(features), 1, 1, 1, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    ).float()
    return np.concatenate([shuffled, blobs.flatten(1).numpy() * 16])


def classifier():
    """The 11-class SVC; also the digits, and the training and held-out indices."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    held = held_out_indices(digits.target)
    train = [i for i in range(len(digits.target)) if i not in set(held)]
    features = to_features(digits_32(digits.images[train]))  # the same 32x32 round trip as the samples
    negatives = junk(features, np.random.default_rng(0))
    x = np.concatenate([features, negatives]) / 16.0
    y = np.concatenate([digits.target[train], np.full(len(negatives), NOT_A_DIGIT)])
    model = CalibratedClassifierCV(SVC(gamma=0.1, C=10.0), ensemble=False)  # Platt-scaled probabilities
    model.fit(x, y)
    return model, digits, held


def report(model, name: str, features: np.ndarray, labels: np.ndarray | None = None) -> None:
    probs = model.predict_proba(features / 16.0)
    top, predicted = probs.max(axis=1), model.classes_[probs.argmax(axis=1)]
    digit = predicted != NOT_A_DIGIT
    recognised = digit & (top >= 0.5)
    mean_p = top[recognised].mean() if recognised.any() else float("nan")
    line = (
        f"{name:<26} n={len(top):4d}  recognised p>=0.5: {recognised.mean():6.1%}  "
        f"p>=0.9: {(digit & (top >= 0.9)).mean():6.1%}  mean p (recognised): {mean_p:.3f}"
    )
    if labels is not None:
        line += f"  accuracy: {np.mean(predicted == labels):.1%}"
    counts = Counter(int(c) for c in predicted[recognised])
    print(line + "  digits: " + " ".join(f"{d}:{counts.get(d, 0)}" for d in range(10)))


def samples_of(network: torch.nn.Module, diffusion, count: int, steps: str, seed: int) -> torch.Tensor:
    """``count`` unconditional samples in [0, 1] (DDPM on the respaced schedule ``steps``)."""
    denoiser = Denoiser.from_loaded(network.eval(), diffusion, steps=steps)
    noise = NoiseSource(seed, [f"quality/{k}" for k in range(count)])
    with torch.inference_mode():
        x = sample(denoiser, noise, shape=(3, 32, 32))
    return (x + 1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="catalog name or checkpoint (default: demo)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--steps", default="100", help="DDPM respacing (default 100, the tasks' default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, digits, held = classifier()
    loaded = load_model(args.model)
    report(model, "held-out real digits", to_features(digits_32(digits.images[held])), digits.target[held])
    shape = (args.count, args.steps, args.seed)
    report(
        model,
        f"{args.model} samples",
        to_features(samples_of(loaded.network, loaded.diffusion_config, *shape)),
    )
    torch.manual_seed(args.seed)
    untrained = UNet(loaded.unet_config)
    report(
        model,
        "untrained network samples",
        to_features(samples_of(untrained, loaded.diffusion_config, *shape)),
    )


if __name__ == "__main__":
    main()
