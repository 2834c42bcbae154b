"""bf16 against fp32 from the same noise: the demo model's outputs and the parity fixtures' networks.

Both precisions run the same code from the same noise (same seed, same noise keys); only the network's
dtype differs, placed as the task runner places it: :func:`ilvr_cli.runtime.place_network` (channels_last,
bf16 weights on the CPU) and ``Denoiser.from_loaded(..., autocast_dtype=torch.bfloat16)``. The schedule,
posterior, noise and ILVR refinement are float32 in both. Built from the library's blocks, as
``ilvr_cli.tasks`` runs them: ``Denoiser``, ``sample`` (``sample_steps``), ``ILVRHook(low_res=...)`` and
``LowPass``.

1. The built-in ``demo`` model (32x32 digits) on the 50 held-out digits of scripts/demo_quality.py. Each
   digit, as its 8-bit PNG pixels (grey over RGB), is shrunk by N with the filter's down-sampler (the
   task's protocol for a model-size input, ``ilvr upscale hr/ --factor N``) and upscaled by ILVR
   (DDPM, ``--steps`` respaced steps, every step conditioned, noise key ``"<name>.png#0"``); plus
   unconditional samples (keys ``"sample/<n>"``, as ``ilvr sample``). Printed: the PSNR between the bf16
   and the fp32 output of each image (mean and minimum), how many of the 8-bit values that would be
   written differ and by how much, the LR-consistency PSNR (down_N(output) against the thumbnail, the
   paper's measure) and the demo classifier's accuracy (scripts/demo_quality.py's SVC; needs
   scikit-learn: ``pip install -e '.[demo]'``) for each precision. ``--control`` adds the PSNR between
   the fp32 outputs made in batches of 4 (the task default) and in one batch of 50: the difference that
   batching alone makes, for scale.
2. The parity fixtures' networks (tests/data/parity: random weights, which are bf16-representable as
   stored, and the same weights moved off the bf16 grid by a relative jitter of up to 2^-8): the relative
   L2 difference of the network output over the fixture's inputs, the same for the fp32 output merely
   rounded to bf16 (the floor set by the output's own dtype), and the PSNR of x between bf16 and fp32
   after steps 1, 2, 5 and 10 of a 10-step DDPM run, unconditional and with ILVR (N = 4).

PSNR is over values scaled to [0, 1] (outputs clamped as written; intermediate x as (x + 1) / 2).

    OMP_NUM_THREADS=1 python scripts/quality_bf16.py [--steps 100] [--seed 0] [--count 50]
        [--skip-demo] [--skip-fixtures] [--control]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_digits import digits_32, held_out_indices  # noqa: E402

from ilvr_cli.config import DiffusionConfig, UNetConfig  # noqa: E402
from ilvr_cli.diffusion import Denoiser, NoiseSource, sample, sample_steps  # noqa: E402
from ilvr_cli.diffusion.sampler import Method  # noqa: E402
from ilvr_cli.ilvr import ILVRHook, LowPass  # noqa: E402
from ilvr_cli.models.checkpoints import load_checkpoint  # noqa: E402
from ilvr_cli.registry import load_model  # noqa: E402
from ilvr_cli.runtime import place_network  # noqa: E402

CPU = torch.device("cpu")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
PARITY_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "parity"
FIXTURES = ("adm_learned_sigma", "adm_fixed_sigma_cosine")
FIXTURE_STEPS = "10"
REPORTED_STEPS = (1, 2, 5, 10)
#: Off-grid weights: each weight times (1 + u 2^-8), u uniform in [-1, 1] (bf16 keeps 8 significant bits).
JITTER = 2.0**-8


# ------------------------------------------------------------------------------------------ measures


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, ...) tensors on a [0, 1] scale (peak 1; capped at 120 dB)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def unit(x: torch.Tensor) -> torch.Tensor:
    """Outputs in [-1, 1] -> [0, 1], clamped as the task clamps before writing."""
    return (x.float().clamp(-1.0, 1.0) + 1.0) / 2.0


def lr_psnr(output: torch.Tensor, thumbnail: torch.Tensor, factor: int) -> torch.Tensor:
    """LR consistency: per-image PSNR between down_N(output) and the thumbnail (both on a [0, 1] scale)."""
    down = LowPass(output.shape[-2], output.shape[-1], factor).down(output.float().clamp(-1.0, 1.0))
    return psnr((down + 1.0) / 2.0, (thumbnail + 1.0) / 2.0)


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit values the task writes for outputs in [-1, 1] (``to_uint8``: float64, round to nearest)."""
    return (unit(x).double() * 255.0).round().to(torch.int16)


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| over the whole tensor."""
    return float((got.double() - want.double()).norm() / want.double().norm())


# ------------------------------------------------------------------------------------------ sampling


def denoiser_for(
    network: torch.nn.Module, diffusion: DiffusionConfig, steps: str, precision: str
) -> Denoiser:
    """A copy of ``network`` placed as the task runner places it, in a denoiser of that precision."""
    dtype = DTYPES[precision]
    placed = place_network(copy.deepcopy(network).eval(), CPU, dtype)
    return Denoiser.from_loaded(placed, diffusion, steps, autocast_dtype=dtype)


def upscale(
    denoiser: Denoiser,
    thumbnails: torch.Tensor,
    keys: Sequence[str],
    seed: int,
    factor: int,
    method: Method = "ddpm",
    eta: float = 0.0,
) -> torch.Tensor:
    """ILVR from the thumbnails l = down_N(y) (``ILVRHook(low_res=l)``, every step): x_0 in [-1, 1]."""
    size = thumbnails.shape[-1] * factor
    hook = ILVRHook(LowPass(size, size, factor), denoiser.schedule, low_res=thumbnails)
    noise = NoiseSource(seed, list(keys))
    return sample(denoiser, noise, shape=(3, size, size), method=method, eta=eta, hooks=[hook])


def held_out() -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """The 50 held-out digits as the task reads their PNGs: (50, 3, 32, 32) in [-1, 1], labels, names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    held = held_out_indices(digits.target)
    pixels = (digits_32(digits.images[held]) * 255.0).round() / 255.0  # the 8-bit PNG the export writes
    images = pixels.repeat(1, 3, 1, 1) * 2.0 - 1.0
    names = [f"{digits.target[i]}_{i:04d}.png" for i in held]
    return images, digits.target[held], names


def classify(model: Any, images: torch.Tensor) -> np.ndarray:
    """The demo classifier's predicted class (10 = not a digit) of outputs in [-1, 1]."""
    from demo_quality import to_features

    probs = model.predict_proba(to_features(unit(images)) / 16.0)
    return model.classes_[probs.argmax(axis=1)]


# ------------------------------------------------------------------------------------------ part 1


def generate(
    denoiser: Denoiser, keys: list[str], seed: int, factor: int | None, thumbnails: torch.Tensor | None
) -> torch.Tensor:
    """ILVR upscale of ``thumbnails`` by ``factor``, or unconditional samples when ``factor`` is None."""
    with torch.inference_mode():
        if factor is None or thumbnails is None:
            return sample(denoiser, NoiseSource(seed, keys), shape=(3, 32, 32))
        return upscale(denoiser, thumbnails, keys, seed, factor)


def demo_table(steps: str, seed: int, count: int, control: bool = False) -> None:
    """Print part 1's table (see the module docstring); ``control`` adds fp32 at batch 4 against batch 50."""
    from demo_quality import NOT_A_DIGIT, classifier

    started = time.perf_counter()
    model, _, _ = classifier()
    images, labels, names = held_out()
    loaded = load_model("demo")
    assert loaded.diffusion_config is not None, "the demo model records how it was trained"
    denoisers = {p: denoiser_for(loaded.network, loaded.diffusion_config, steps, p) for p in DTYPES}
    rows = []
    for factor in (4, 8, None):
        keys = [f"{name}#0" for name in names] if factor else [f"sample/{n}" for n in range(count)]
        thumbnails = LowPass(32, 32, factor).down(images) if factor else None
        outputs, seconds = {}, {}
        for precision, denoiser in denoisers.items():
            tic = time.perf_counter()
            outputs[precision] = generate(denoiser, keys, seed, factor, thumbnails)
            seconds[precision] = time.perf_counter() - tic
        if control:  # the same fp32 run in batches of 4 (the task default): what batching alone moves
            parts = [
                generate(
                    denoisers["fp32"],
                    keys[j : j + 4],
                    seed,
                    factor,
                    None if thumbnails is None else thumbnails[j : j + 4],
                )
                for j in range(0, len(keys), 4)
            ]
            batched = psnr(unit(torch.cat(parts)), unit(outputs["fp32"]))
        fp32, bf16 = outputs["fp32"], outputs["bf16"]
        between = psnr(unit(bf16), unit(fp32))
        levels = (eight_bit(bf16) - eight_bit(fp32)).abs()
        predicted = {p: classify(model, x) for p, x in outputs.items()}
        if factor is None or thumbnails is None:
            lr = "- / -"
            quality = " / ".join(f"{np.mean(predicted[p] != NOT_A_DIGIT):.0%}" for p in DTYPES)
            what = f"unconditional sample (n = {count})"
        else:
            lr = " / ".join(f"{lr_psnr(outputs[p], thumbnails, factor).mean():.2f}" for p in DTYPES)
            quality = " / ".join(f"{np.mean(predicted[p] == labels):.0%}" for p in DTYPES)
            what = f"ILVR upscale, N = {factor} ({32 // factor}x{32 // factor} -> 32x32)"
        rows.append(
            f"| {what} | {between.mean():.1f} / {between.min():.1f} | "
            f"{(levels > 0).double().mean():.1%} / {int(levels.max())} | {lr} | {quality} | "
            f"{int((predicted['fp32'] != predicted['bf16']).sum())} of {len(fp32)} | "
            f"{seconds['fp32']:.0f} / {seconds['bf16']:.0f} s |"
            + (f" {batched.mean():.1f} / {batched.min():.1f} |" if control else "")
        )
    print(
        f"demo model, DDPM {steps} respaced steps, seed {seed}, batch {len(names)} "
        f"({torch.get_num_threads()} thread(s)); fp32 / bf16 where two values\n"
    )
    print(
        "| run | bf16 vs fp32 PSNR, mean / min (dB) | 8-bit values differing / max difference | "
        "LR-consistency PSNR fp32 / bf16 (dB) | classifier: accuracy (unconditional: recognised) "
        "fp32 / bf16 | predicted class differs | time fp32 / bf16 |"
        + (" control: fp32 batch 4 vs batch 50, PSNR mean / min (dB) |" if control else "")
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if control else ""))
    print("\n".join(rows))
    print(f"\n({time.perf_counter() - started:.0f} s)\n")


# ------------------------------------------------------------------------------------------ part 2


def fixture(name: str) -> tuple[torch.nn.Module, DiffusionConfig, str, dict[str, torch.Tensor], int]:
    """A parity fixture's network (fp32, as stored), DiffusionConfig, respacing, expected tensors, size."""
    from safetensors.torch import load_file

    folder = PARITY_DIR / name
    flags = json.loads((folder / "flags.json").read_text())
    network = load_checkpoint(folder / "model.pt", UNetConfig.from_guided_diffusion_flags(flags)).network
    expected = load_file(str(folder / "expected.safetensors"))
    diffusion = DiffusionConfig.from_guided_diffusion_flags(flags)
    return network.eval(), diffusion, str(flags["timestep_respacing"]), expected, int(flags["image_size"])


def jittered(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy whose weights are moved off the bf16 grid: w (1 + u 2^-8), u uniform in [-1, 1]."""
    moved = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in moved.parameters():
            u = torch.rand(parameter.shape, generator=generator, dtype=torch.float32) * 2 - 1
            parameter.mul_(1 + JITTER * u)
    return moved


def network_outputs(denoiser: Denoiser, expected: dict[str, torch.Tensor]) -> torch.Tensor:
    """The network's float32 output for each of the fixture's inputs at its respaced index."""
    with torch.inference_mode():
        rows = [
            denoiser.model_output(expected["x"][b : b + 1], int(i)).float()
            for b, i in enumerate(expected["t_respaced"].tolist())
        ]
    return torch.cat(rows)


def trajectory(
    denoiser: Denoiser, size: int, seed: int, batch: int, low_res: torch.Tensor | None
) -> list[torch.Tensor]:
    """x after each step of a DDPM run from the same noise (with ILVR, N = 4, when ``low_res``)."""
    hooks = [] if low_res is None else [ILVRHook(LowPass(size, size, 4), denoiser.schedule, low_res=low_res)]
    noise = NoiseSource(seed, [f"fixture/{k}" for k in range(batch)])
    return [state.x.float() for state in sample_steps(denoiser, noise, shape=(3, size, size), hooks=hooks)]


def smooth_thumbnails(batch: int, size: int, seed: int) -> torch.Tensor:
    """Random thumbnails (batch, 3, size/4, size/4) in [-1, 1]: references for the fixtures' ILVR runs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size // 4, size // 4, generator=generator) * 2 - 1


def fixture_table(seed: int, batch: int = 4) -> None:
    """Print part 2's table (see the module docstring)."""
    started = time.perf_counter()
    print(
        f"parity fixtures, DDPM on the {FIXTURE_STEPS}-step respacing, batch {batch}, seed {seed}; "
        f"PSNR of x after step {', '.join(map(str, REPORTED_STEPS))}\n"
    )
    print(
        "| fixture | weights | network output: bf16 vs fp32, relative L2 | fp32 output rounded to bf16 | "
        "x, unconditional: PSNR (dB) | x, ILVR N = 4: PSNR (dB) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in FIXTURES:
        stored, diffusion, respacing, expected, size = fixture(name)
        low_res = smooth_thumbnails(batch, size, seed)
        for weights, network in (
            ("as stored (bf16-exact)", stored),
            ("off-grid (jittered)", jittered(stored)),
        ):
            out = {
                p: network_outputs(denoiser_for(network, diffusion, respacing, p), expected) for p in DTYPES
            }
            rounded = relative_l2(out["fp32"].to(torch.bfloat16).float(), out["fp32"])
            cells = []
            for refs in (None, low_res):
                runs = {
                    p: trajectory(denoiser_for(network, diffusion, FIXTURE_STEPS, p), size, seed, batch, refs)
                    for p in DTYPES
                }
                values = [
                    psnr((runs["bf16"][k - 1] + 1) / 2, (runs["fp32"][k - 1] + 1) / 2).mean()
                    for k in REPORTED_STEPS
                ]
                cells.append(" / ".join(f"{v:.1f}" for v in values))
            print(
                f"| `{name}` | {weights} | {relative_l2(out['bf16'], out['fp32']):.2e} | {rounded:.2e} | "
                f"{cells[0]} | {cells[1]} |"
            )
    print(f"\n({time.perf_counter() - started:.0f} s)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100", help="DDPM respacing of the demo runs (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=50, help="unconditional samples (default 50)")
    parser.add_argument("--skip-demo", action="store_true", help="only the parity fixtures")
    parser.add_argument("--skip-fixtures", action="store_true", help="only the demo model")
    parser.add_argument(
        "--control", action="store_true", help="also fp32 in batches of 4 against batch 50 (slower)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    if not args.skip_fixtures:
        fixture_table(args.seed)
    if not args.skip_demo:
        demo_table(args.steps, args.seed, args.count, args.control)


if __name__ == "__main__":
    main()
