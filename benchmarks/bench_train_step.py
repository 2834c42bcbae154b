"""One training step (forward, backward, AdamW) in fp32 and under bf16 CPU autocast, timed interleaved.

``ilvr train --precision auto`` uses bf16 autocast (float32 weights and optimizer) where the CPU computes
bf16 natively. This prints the seconds per step of both for two networks: ILVR's adm-small at 64x64
(batch 8) and the built-in demo's 1.7M-parameter UNet at 32x32 (batch 32). Random weights and data.

    python benchmarks/bench_train_step.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ilvr_cli import runtime

runtime.tune_memory()

import torch  # noqa: E402  (after the memory settings)

from ilvr_cli.config import UNetConfig  # noqa: E402
from ilvr_cli.models.unet import UNet  # noqa: E402
from ilvr_cli.training.presets import model_configs  # noqa: E402

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "scripts" / "demo_model.json"


def seconds_per_step(config: UNetConfig, batch: int, rounds: int) -> dict[str, float]:
    """Fastest fp32 and bf16-autocast step over ``rounds`` interleaved rounds (after two warm-ups each)."""
    torch.manual_seed(0)
    network = UNet(config).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
    size = config.image_size
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = network(x, t)
        loss = (out.float()[:, :3] - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    best = {"fp32": float("inf"), "bf16": float("inf")}
    for name in best:
        step(name == "bf16")
        step(name == "bf16")
    for _ in range(rounds):
        for name in best:
            started = time.perf_counter()
            step(name == "bf16")
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"cpu bf16 native={runtime.cpu_has_native_bf16()}, {torch.get_num_threads()} threads")
    adm_small, _ = model_configs("adm-small", image_size=64)
    demo = UNetConfig.from_dict(json.loads(DEMO_CONFIG.read_text())["unet"])
    for name, config, batch in (("adm-small 64x64", adm_small, 8), ("demo 32x32 (1.7M)", demo, 32)):
        best = seconds_per_step(config, batch, args.rounds)
        print(
            f"{name}, batch {batch}: fp32 {best['fp32']:.3f} s/step, bf16 autocast {best['bf16']:.3f} s/step "
            f"({best['bf16'] / best['fp32']:.2f}x)"
        )


if __name__ == "__main__":
    main()
