"""Load time of a 93.6M-parameter checkpoint (the ``ffhq`` architecture, random weights): the pickled
guided-diffusion ``.pt`` as published vs. the safetensors file the registry converts it to once.

Usage: ``python benchmarks/bench_load.py [--repeats 5] [--dir DIR]``. Files are read from the page cache
(warm) after the first repeat; the median of the repeats is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ilvr_cli.models.checkpoints import load_checkpoint
from ilvr_cli.models.unet import UNet
from ilvr_cli.registry.catalog import BUILTIN_CATALOG, read_catalog_file
from ilvr_cli.registry.convert import convert_to_native


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the two files (default: a temp dir)"
    )
    args = parser.parse_args()
    spec = read_catalog_file(BUILTIN_CATALOG, "builtin")["ffhq"]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        pt, native = Path(tmp) / "ffhq_random.pt", Path(tmp) / "model.safetensors"
        torch.manual_seed(0)
        network = UNet(spec.unet)
        n_params = sum(p.numel() for p in network.parameters())
        torch.save(network.state_dict(), pt)
        del network
        t0 = time.perf_counter()
        convert_to_native(pt, native, unet_config=spec.unet, diffusion_config=spec.diffusion)
        convert_s = time.perf_counter() - t0
        rows = [
            (
                "state dict only: torch.load(.pt, weights_only=True)",
                lambda: torch.load(pt, weights_only=True),
            ),
            ("state dict only: safetensors load_file", lambda: load_file(str(native))),
            ("network: load_checkpoint(.pt)", lambda: load_checkpoint(pt, spec.unet, spec.diffusion)),
            (
                "network: load_checkpoint(.safetensors)",
                lambda: load_checkpoint(native, spec.unet, spec.diffusion),
            ),
        ]
        print(f"ffhq architecture, {n_params / 1e6:.1f}M parameters; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")  # fmt: skip
        print(f".pt {pt.stat().st_size / 1e6:.1f} MB, .safetensors {native.stat().st_size / 1e6:.1f} MB")
        print(f"one-time conversion (.pt -> safetensors): {convert_s:.2f} s")
        for label, fn in rows:
            print(f"{label:<55} {timed(fn, args.repeats) * 1000:8.0f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()
