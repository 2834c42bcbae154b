"""Seconds per sampling step vs one bare forward pass of the 256x256 ADM used by ilvr_adm (93.6M params).

Prints: the machine's fp32 (or bf16) matmul throughput, the network's FLOPs per forward
(torch.utils.flop_counter), the bare forward time and its share of the matmul throughput, and the time
of one DDPM step through the sampler (Denoiser + posterior + noise) with and without the ILVR hook.
Random weights; nothing is downloaded.

Like the ``ilvr`` command, it runs in channels_last with the memory settings of
:mod:`ilvr_cli.runtime`, which have to be made before torch is imported: ``--no-channels-last`` and
``--default-allocator`` measure without them.

    python benchmarks/bench_unet.py                      # CPU, fp32, batch 1
    python benchmarks/bench_unet.py --device cuda --precision bf16 --batch 16
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from ilvr_cli import runtime

#: (huge pages, freed-memory reuse) in effect.
MEMORY_SETTINGS = (False, False) if "--default-allocator" in sys.argv else runtime.tune_memory()

import torch  # noqa: E402  (after the memory settings, which torch reads once)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ilvr_cli.config import DiffusionConfig, UNetConfig  # noqa: E402
from ilvr_cli.diffusion import Denoiser, NoiseSource, Schedule, sample_steps  # noqa: E402
from ilvr_cli.ilvr import ILVRHook, LowPass  # noqa: E402
from ilvr_cli.models.unet import UNet  # noqa: E402

#: ilvr_adm / P2-weighting FFHQ model flags (the `ffhq` catalog entry).
FFHQ_FLAGS = {
    "image_size": 256,
    "num_channels": 128,
    "num_res_blocks": 1,
    "attention_resolutions": "16",
    "num_head_channels": 64,
    "resblock_updown": True,
    "use_scale_shift_norm": True,
    "learn_sigma": True,
}
#: guided-diffusion's LSUN / ImageNet-256 unconditional model flags.
ADM256_FLAGS = {
    **FFHQ_FLAGS,
    "num_channels": 256,
    "num_res_blocks": 2,
    "attention_resolutions": "32,16,8",
}
CONFIGS = {"ffhq": FFHQ_FLAGS, "adm256": ADM256_FLAGS}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Fastest wall time of ``fn`` in seconds over ``repeats`` runs (the minimum is the estimate least
    disturbed by other load on the machine)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, float]:
    """Time several functions in alternation, ``rounds`` times each, so that load that comes and goes
    hits them alike; returns the fastest time of each."""
    best = {name: float("inf") for name in fns}
    for _ in range(2):  # warm-up: the allocator reaches its steady state in the second pass
        for fn in fns.values():
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


#: Side of the square matmul whose throughput is the machine's practical peak.
MATMUL_SIZE = 2048


def square_matmul(device: torch.device, dtype: torch.dtype, n: int = MATMUL_SIZE) -> Callable[[], object]:
    """One n x n by n x n matmul (2 n^3 FLOPs): timed alongside the network, it gives the peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: a @ b


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="ffhq")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of interleaved timing")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC activations, as the task commands run (default: on)",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="skip ilvr_cli.runtime's memory settings (huge pages, freed-memory reuse)",
    )
    parser.add_argument("--factor", type=int, default=8, help="ILVR down-sampling factor N")
    args = parser.parse_args()

    device = torch.device(args.device)
    autocast_dtype = DTYPES[args.precision]
    config = UNetConfig.from_guided_diffusion_flags(CONFIGS[args.config])
    torch.manual_seed(0)
    network = UNet(config).to(device).eval()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    params = sum(p.numel() for p in network.parameters())

    size = config.image_size
    x = torch.randn(args.batch, 3, size, size, device=device).to(memory_format=memory_format)
    t = torch.full((args.batch,), 500, device=device, dtype=torch.long)
    use_autocast = autocast_dtype is not None

    def forward() -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, autocast_dtype or torch.float32, use_autocast),
        ):
            return network(x, t)

    with FlopCounterMode(display=False) as counter:
        forward()
    flops = counter.get_total_flops()

    schedule = Schedule.from_config(DiffusionConfig(variance_type="learned_range")).respace("1000")
    denoiser = Denoiser(network, schedule, "learned_range", autocast_dtype=autocast_dtype)
    keys = [f"bench-{k}" for k in range(args.batch)]
    reference = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    hook = ILVRHook(LowPass(size, size, args.factor), schedule, reference=reference)

    def one_step(hooks: tuple) -> Callable[[], None]:
        """One sampler step (network + posterior + noise draw + hooks) from the start of a fresh loop."""

        def run() -> None:
            next(sample_steps(denoiser, NoiseSource(0, keys, device), x_T=x, hooks=hooks))

        return run

    def free_network(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        """A network that costs nothing: what remains of a step is the sampler's own work."""
        return torch.zeros(x_in.shape[0], config.out_channels, *x_in.shape[2:], device=x_in.device)

    free = Denoiser(free_network, schedule, "learned_range")

    def free_steps(hooks: tuple, count: int = 20) -> Callable[[], None]:
        def run() -> None:
            steps = sample_steps(free, NoiseSource(0, keys, device), x_T=x, hooks=hooks)
            for _ in range(count):
                next(steps)

        return run

    own_s = timed(free_steps(()), device, args.repeats) / 20
    own_ilvr_s = timed(free_steps((hook,)), device, args.repeats) / 20
    matmul = square_matmul(device, autocast_dtype or torch.float32)
    times = interleaved(
        {"matmul": matmul, "forward": forward, "step": one_step(()), "ilvr": one_step((hook,))},
        device,
        args.repeats,
    )
    forward_s, step_s, ilvr_s = times["forward"], times["step"], times["ilvr"]
    peak = 2 * MATMUL_SIZE**3 / times["matmul"]
    lowpass_s = timed(lambda: hook.lowpass(reference), device, max(args.repeats, 10))

    print(
        f"device            {device} ({torch.get_num_threads()} threads)"
        if device.type == "cpu"
        else f"device            {torch.cuda.get_device_name(device)}"
    )
    print(
        f"config            {args.config}: {params / 1e6:.1f}M parameters, {size}x{size}, batch {args.batch}, "
        f"{args.precision}, channels_last={args.channels_last}"
    )
    huge_pages, reuse = MEMORY_SETTINGS
    print(f"memory            huge pages={huge_pages}, freed-memory reuse={reuse}")
    print(f"forward FLOPs     {flops / 1e9:.1f} GFLOP")
    print(f"matmul peak       {peak / 1e9:.1f} GFLOP/s")
    print(
        f"bare forward      {forward_s:.4f} s  ({flops / forward_s / 1e9:.1f} GFLOP/s, "
        f"{100 * flops / forward_s / peak:.0f}% of matmul peak)"
    )
    print(f"sampler step      {step_s:.4f} s  (overhead {100 * (step_s / forward_s - 1):+.1f}% vs forward)")
    print(f"sampler + ILVR    {ilvr_s:.4f} s  (overhead {100 * (ilvr_s / forward_s - 1):+.1f}% vs forward)")
    print(
        f"sampler's own work {own_s * 1e3:.2f} ms/step ({100 * own_s / forward_s:.2f}% of a forward); "
        f"with ILVR {own_ilvr_s * 1e3:.2f} ms/step ({100 * own_ilvr_s / forward_s:.2f}%)"
    )
    print(
        f"phi_N alone       {lowpass_s * 1e3:.2f} ms  (N={args.factor}, "
        f"{100 * lowpass_s / forward_s:.2f}% of a forward)"
    )


if __name__ == "__main__":
    main()
