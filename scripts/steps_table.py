"""DDPM against DDIM at the same step counts: ILVR upscale of the 50 held-out digits on the demo model.

For each N (``--factors``) and step count K (``--steps``): DDPM on the K-step respacing (``--steps K``)
and DDIM with eta = 0 on ``ddimK`` (``--sampler ddim --steps ddimK``), every step conditioned, from the
thumbnails down_N(y) of the held-out digits (8-bit pixels, as scripts/quality_bf16.py makes them), noise
keys ``"<name>.png#0"`` and the same seed. The network runs in ``--precision`` (default fp32), placed as
the task runner places it; the blocks are the library's (``Denoiser``, ``sample``, ``ILVRHook``,
``LowPass``).

Printed per run, means over the 50 digits: the LR-consistency PSNR (down_N(output) against the thumbnail),
the PSNR against the original digit, the demo classifier's accuracy (scripts/demo_quality.py; needs
scikit-learn) and two haziness proxies: the mean gradient magnitude of the grey image relative to DDPM at
the largest K (1.00 = as sharp; lower = softer) and the share of mid-grey pixels (0.1 < v < 0.9; the
digits are white strokes on black, so haze shows up as mid-grey). The real digits' values are printed as
the reference row.

    OMP_NUM_THREADS=1 python scripts/steps_table.py [--steps 10,25,50,100] [--factors 4,8] [--seed 0]
        [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_bf16 import DTYPES, classify, denoiser_for, held_out, lr_psnr, psnr, unit, upscale  # noqa: E402

from ilvr_cli.diffusion.sampler import Method  # noqa: E402
from ilvr_cli.ilvr import LowPass  # noqa: E402
from ilvr_cli.registry import load_model  # noqa: E402

SAMPLERS: tuple[tuple[Method, str], ...] = (("ddpm", ""), ("ddim", "ddim"))


def sharpness(images: torch.Tensor) -> float:
    """Mean gradient magnitude (forward differences) of the grey image, outputs in [-1, 1]."""
    grey = unit(images).mean(dim=1)
    dx, dy = grey[:, :-1, 1:] - grey[:, :-1, :-1], grey[:, 1:, :-1] - grey[:, :-1, :-1]
    return float(torch.sqrt(dx**2 + dy**2).mean())


def mid_grey(images: torch.Tensor) -> float:
    """Share of grey values strictly between 0.1 and 0.9 (outputs in [-1, 1])."""
    grey = unit(images).mean(dim=1)
    return float(((grey > 0.1) & (grey < 0.9)).double().mean())


def main() -> None:
    from demo_quality import classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,25,50,100", help="step counts K (default 10,25,50,100)")
    parser.add_argument("--factors", default="4,8", help="N (default 4,8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args()
    counts = sorted(int(k) for k in args.steps.split(","))
    factors = [int(n) for n in args.factors.split(",")]

    started = time.perf_counter()
    model, _, _ = classifier()
    images, labels, names = held_out()
    keys = [f"{name}#0" for name in names]
    loaded = load_model("demo")
    assert loaded.diffusion_config is not None, "the demo model records how it was trained"
    print(
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; demo model, {args.precision}, seed {args.seed}, "
        f"batch {len(names)} ({torch.get_num_threads()} thread(s)); sharpness relative to DDPM-{counts[-1]}\n"
    )
    print(
        "| N | steps | sampler | LR-consistency PSNR (dB) | PSNR vs original (dB) | classifier accuracy | "
        "sharpness | mid-grey pixels | time |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    real_sharpness = sharpness(images)
    for factor in factors:
        thumbnails = LowPass(32, 32, factor).down(images)
        results: dict[tuple[int, str], tuple[torch.Tensor, float]] = {}
        for k in counts:
            for method, prefix in SAMPLERS:
                denoiser = denoiser_for(
                    loaded.network, loaded.diffusion_config, f"{prefix}{k}", args.precision
                )
                tic = time.perf_counter()
                with torch.inference_mode():
                    out = upscale(denoiser, thumbnails, keys, args.seed, factor, method=method)
                results[(k, method)] = out, time.perf_counter() - tic
        reference = sharpness(results[(counts[-1], "ddpm")][0])
        print(
            f"| {factor} | - | real digits | - | - | 100% | {real_sharpness / reference:.2f} | "
            f"{mid_grey(images):.1%} | - |"
        )
        for (k, name), (out, seconds) in results.items():
            accuracy = np.mean(classify(model, out) == labels)
            print(
                f"| {factor} | {k} | {name.upper()} | {lr_psnr(out, thumbnails, factor).mean():.2f} | "
                f"{psnr(unit(out), unit(images)).mean():.2f} | {accuracy:.0%} | "
                f"{sharpness(out) / reference:.2f} | {mid_grey(out):.1%} | {seconds:.0f} s |"
            )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
