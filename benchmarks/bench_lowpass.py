"""Time phi_N (ILVR's low-pass filter) against one forward pass of the network it conditions.

    .venv/bin/python benchmarks/bench_lowpass.py [--device cuda] [--size 256] [--repeats 20] [--no-unet]

Prints the median wall time of ``LowPass(size, size, N)(x)`` (as called: ``up(down(x))``, four thin
matmuls), of the fused form ``P_h x P_w^T`` (two H x H matmuls) and of one ILVR refinement (two filters
and a noise draw) on a (1, 3, size, size) batch for N = 4, 8, 16, 32, then of one forward of the FFHQ 256
ADM (ilvr_adm's ``ffhq_10m`` architecture, random weights). No asserts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ilvr_cli.config import UNetConfig
from ilvr_cli.diffusion import NoiseSource, Schedule, StepState
from ilvr_cli.ilvr import ILVRHook, LowPass

#: ilvr_adm README flags of ffhq_10m.pt (the catalog's "ffhq" model).
FFHQ_FLAGS = {
    "attention_resolutions": "16",
    "image_size": 256,
    "learn_sigma": True,
    "num_channels": 128,
    "num_head_channels": 64,
    "num_res_blocks": 1,
    "resblock_updown": True,
    "use_scale_shift_norm": True,
}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after two warm-up calls."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_lowpass(size: int, device: torch.device, repeats: int) -> None:
    x = torch.randn(1, 3, size, size, device=device)
    torch.randn(size, size, device=device) @ x  # warm up the matmul backend before timing anything
    schedule = Schedule.named("linear", 1000).respace("100")
    noise = NoiseSource(0, ["bench"], device)
    print(f"phi_N on (1, 3, {size}, {size}), {device}, median of {repeats}")
    print(f"{'N':>4} {'build ms':>9} {'phi ms':>8} {'fused P ms':>11} {'ILVR step ms':>13}")
    for factor in (4, 8, 16, 32):
        start = time.perf_counter()
        lp = LowPass(size, size, factor, device=device)
        build = time.perf_counter() - start
        hook = ILVRHook(lp, schedule, reference=torch.zeros(1, 3, size, size))
        state = StepState(i=50, t=schedule.timestep(50), x=x, pred_xstart=x, schedule=schedule, noise=noise)
        with torch.inference_mode():
            phi = timed(lambda lp=lp: lp(x), device, repeats)
            rows, cols = lp.rows.phi.to(device, torch.float32), lp.cols.phi.to(device, torch.float32)
            fused = timed(lambda r=rows, c=cols: r @ x @ c.T, device, repeats)
            step = timed(lambda hook=hook, state=state: hook(x, state), device, repeats)
        print(f"{factor:>4} {build * 1e3:>9.2f} {phi * 1e3:>8.3f} {fused * 1e3:>11.3f} {step * 1e3:>13.3f}")


def bench_unet(size: int, device: torch.device, repeats: int) -> None:
    from ilvr_cli.models.unet import UNet

    config = UNetConfig.from_guided_diffusion_flags({**FFHQ_FLAGS, "image_size": size})
    net = UNet(config).to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    t = torch.full((1,), 500, device=device)
    with torch.inference_mode():
        seconds = timed(lambda: net(x, t), device, repeats)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"UNet forward (FFHQ ADM, {params:.1f}M params, batch 1): {seconds * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-unet", action="store_true", help="skip the network forward")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench_lowpass(args.size, device, args.repeats)
    if not args.no_unet:
        bench_unet(args.size, device, max(3, args.repeats // 5))


if __name__ == "__main__":
    main()
