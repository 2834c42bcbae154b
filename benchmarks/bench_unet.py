"""Seconds per sampling step vs one bare forward pass of the 256x256 ADM used by ilvr_adm (93.6M params).

Prints: the machine's fp32 (or bf16) matmul throughput, the network's FLOPs per forward
(torch.utils.flop_counter), the bare forward time and its share of the matmul throughput, and the time
of one DDPM step through the sampler (Denoiser + posterior + noise) with and without the ILVR hook.
Random weights; nothing is downloaded.

Like the ``ilvr`` command, it runs in channels_last with the memory settings of
:mod:`ilvr_cli.runtime`, which have to be made before torch is imported: ``--no-channels-last`` and
``--default-allocator`` measure without them.

    python benchmarks/bench_unet.py                      # CPU, fp32, batch 1
    python benchmarks/bench_unet.py --precision fp32,bf16    # both, interleaved: the bf16 / fp32 step ratio
    python benchmarks/bench_unet.py --device cuda --precision bf16 --batch 16

Each precision runs as the tasks run it: on the CPU a bf16 network has bf16 weights
(:func:`ilvr_cli.runtime.place_network`), on CUDA it runs under autocast.
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


class Variant:
    """The network at one precision, run as the ``ilvr`` tasks run it (:func:`ilvr_cli.runtime.place_network`:
    on the CPU a bf16 network has bf16 weights; on CUDA autocast), with its timed callables."""

    def __init__(self, precision: str, base: UNet, device: torch.device, args: argparse.Namespace) -> None:
        import copy

        self.precision = precision
        self.dtype = DTYPES[precision]
        network = copy.deepcopy(base)
        if args.channels_last:
            network = runtime.place_network(network, device, self.dtype)
        elif self.dtype is not None and device.type == "cpu":
            network = network.to(dtype=self.dtype)
        self.network = network
        size = base.config.image_size
        self.x = torch.randn(
            args.batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0)
        )
        if args.channels_last:
            self.x = self.x.to(memory_format=torch.channels_last)
        self.t = torch.full((args.batch,), 500, device=device, dtype=torch.long)
        schedule = Schedule.from_config(DiffusionConfig(variance_type="learned_range")).respace("1000")
        self.denoiser = Denoiser(network, schedule, "learned_range", autocast_dtype=self.dtype)
        self.keys = [f"bench-{k}" for k in range(args.batch)]
        reference = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
        self.hook = ILVRHook(LowPass(size, size, args.factor), schedule, reference=reference)
        self.reference = reference
        self.device = device

    def forward(self) -> torch.Tensor:
        """One bare forward: what the sampler's network call costs at this precision."""
        with torch.inference_mode():
            return self.denoiser.model_output(self.x, len(self.denoiser.schedule) - 1)

    def step(self, hooks: tuple) -> Callable[[], None]:
        """One sampler step (network + posterior + noise draw + hooks) from the start of a fresh loop."""

        def run() -> None:
            next(sample_steps(self.denoiser, NoiseSource(0, self.keys, self.device), x_T=self.x, hooks=hooks))

        return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="ffhq")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        default="fp32",
        help="fp32, bf16 or fp16, or several comma-separated (e.g. fp32,bf16): timed interleaved in one run",
    )
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
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"),
        help="torch.compile each network in this mode (reduce-overhead and max-autotune capture CUDA graphs)",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    precisions = [p.strip() for p in args.precision.split(",")]
    unknown = [p for p in precisions if p not in DTYPES]
    if unknown:
        parser.error(f"--precision: unknown {unknown}; choose from {sorted(DTYPES)} (comma-separated)")
    config = UNetConfig.from_guided_diffusion_flags(CONFIGS[args.config])
    torch.manual_seed(0)
    base = UNet(config).to(device).eval()
    params = sum(p.numel() for p in base.parameters())
    variants = {p: Variant(p, base, device, args) for p in precisions}
    first = variants[precisions[0]]

    with FlopCounterMode(display=False) as counter:
        first.forward()
    flops = counter.get_total_flops()
    if args.compile:  # FLOPs were counted eagerly; every timed call below goes through the compiled graph
        mode = None if args.compile == "default" else args.compile
        for v in variants.values():
            v.denoiser.network = torch.compile(v.network, mode=mode)
            started = time.perf_counter()
            v.forward()
            _sync(device)
            print(f"compile {v.precision:<9} {time.perf_counter() - started:.1f} s (mode {args.compile})")
    size = config.image_size
    keys, x = first.keys, first.x
    schedule = first.denoiser.schedule
    hook = first.hook

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
    fns: dict[str, Callable[[], object]] = {}
    matmul_size = 8192 if device.type == "cuda" else MATMUL_SIZE  # a 2048^2 GPU matmul is launch-bound
    for p, v in variants.items():
        fns[f"matmul {p}"] = square_matmul(device, v.dtype or torch.float32, matmul_size)
        fns[f"forward {p}"] = v.forward
        fns[f"step {p}"] = v.step(())
        fns[f"ilvr {p}"] = v.step((v.hook,))
    times = interleaved(fns, device, args.repeats)
    lowpass_s = timed(
        lambda: hook.lowpass(first.reference),
        device,
        max(args.repeats, 10),
    )

    print(
        f"device            {device} ({torch.get_num_threads()} threads)"
        if device.type == "cpu"
        else f"device            {torch.cuda.get_device_name(device)}"
    )
    if device.type == "cpu":
        print(
            f"cpu bf16          native={runtime.cpu_has_native_bf16()} ({torch.backends.cpu.get_cpu_capability()})"
        )
    print(
        f"config            {args.config}: {params / 1e6:.1f}M parameters, {size}x{size}, batch {args.batch}, "
        f"channels_last={args.channels_last}; precisions {', '.join(precisions)} timed interleaved, "
        f"{args.repeats} rounds (fastest of each)"
    )
    huge_pages, reuse = MEMORY_SETTINGS
    print(f"memory            huge pages={huge_pages}, freed-memory reuse={reuse}")
    print(f"forward FLOPs     {flops / 1e9:.1f} GFLOP")
    for p in precisions:
        forward_s, step_s, ilvr_s = times[f"forward {p}"], times[f"step {p}"], times[f"ilvr {p}"]
        peak = 2 * matmul_size**3 / times[f"matmul {p}"]
        print(f"--- {p}")
        print(f"matmul peak       {peak / 1e9:.1f} GFLOP/s ({p} {matmul_size}x{matmul_size})")
        print(
            f"bare forward      {forward_s:.4f} s  ({flops / forward_s / 1e9:.1f} GFLOP/s, "
            f"{100 * flops / forward_s / peak:.0f}% of {p} matmul peak; {args.batch / forward_s:.2f} images/s)"
        )
        print(
            f"sampler step      {step_s:.4f} s  (overhead {100 * (step_s / forward_s - 1):+.1f}% vs forward)"
        )
        print(
            f"sampler + ILVR    {ilvr_s:.4f} s  (overhead {100 * (ilvr_s / forward_s - 1):+.1f}% vs forward)"
        )
    if len(precisions) > 1:
        base_p = precisions[0]
        for p in precisions[1:]:
            ratio = times[f"ilvr {p}"] / times[f"ilvr {base_p}"]
            print(
                f"ILVR step {p} / {base_p}: {ratio:.2f}x  (forward {times[f'forward {p}'] / times[f'forward {base_p}']:.2f}x)"
            )
    print(
        f"sampler's own work {own_s * 1e3:.2f} ms/step; with ILVR {own_ilvr_s * 1e3:.2f} ms/step "
        f"({100 * own_ilvr_s / times[f'forward {precisions[0]}']:.2f}% of a {precisions[0]} forward)"
    )
    print(f"phi_N alone       {lowpass_s * 1e3:.2f} ms  (N={args.factor})")


if __name__ == "__main__":
    main()
