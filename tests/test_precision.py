"""``--precision auto``: bf16 where the hardware computes it natively, fp32 elsewhere; what ran is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ilvr_cli import runtime
from ilvr_cli.cli.app import app
from ilvr_cli.errors import UsageError
from ilvr_cli.io.write import read_png_params
from test_tasks_support import smooth_image, write_png

CPU = torch.device("cpu")
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread", "private_cache")


@pytest.mark.parametrize(
    ("text", "native"),
    [
        ("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu sse2 amx_bf16 amx_tile\n", True),
        ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Graviton 3, Neoverse V1/N2)
        ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n", False),  # AVX-512 without BF16 (Skylake)
        ("model name\t: bf16 in a name is not a flag\nflags\t\t: fpu\n", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(text: str, native: bool) -> None:
    assert runtime.cpuinfo_has_native_bf16(text) is native


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native: bool, expected: str) -> None:
    monkeypatch.delenv("ILVR_PRECISION")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.resolve_precision("fp32", CPU) == "fp32"  # fp32 can always be forced
    assert runtime.resolve_precision("bf16", CPU) == "bf16"  # and bf16 asked for (emulated if not native)


def test_ilvr_precision_pins_what_auto_means(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("ILVR_PRECISION", "fp32")
    assert runtime.resolve_precision("auto", CPU) == "fp32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"  # an explicit option still wins
    monkeypatch.setenv("ILVR_PRECISION", "fp8")
    with pytest.raises(UsageError, match="ILVR_PRECISION='fp8'"):
        runtime.resolve_precision("auto", CPU)


def test_fp16_stays_cuda_only() -> None:
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        runtime.resolve_precision("fp16", CPU)


def test_a_cpu_bf16_network_has_bf16_weights_and_the_sampler_stays_float32(model_path: Path) -> None:
    from ilvr_cli.config import DiffusionConfig
    from ilvr_cli.diffusion import Denoiser, NoiseSource, sample
    from ilvr_cli.models.checkpoints import load_checkpoint
    from test_tasks_support import TINY_DIFFUSION

    network = load_checkpoint(model_path).network
    placed = runtime.place_network(network, CPU, torch.bfloat16)
    assert {p.dtype for p in placed.parameters()} == {torch.bfloat16}
    diffusion: DiffusionConfig = TINY_DIFFUSION
    denoiser = Denoiser.from_loaded(placed, diffusion, "5", autocast_dtype=torch.bfloat16)
    x = sample(denoiser, NoiseSource(0, ["a"], CPU), shape=(3, 32, 32))
    assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())


@pytest.mark.parametrize(("native", "precision", "ran", "source"), [
    (True, "auto", "bf16", "auto (native bf16 here)"),
    (False, "auto", "fp32", "auto (no native bf16 on this cpu)"),
    (True, "fp32", "fp32", "option"),
])  # fmt: skip
def test_the_summary_and_each_png_say_which_precision_ran(
    monkeypatch, tmp_path: Path, model_path: Path, native: bool, precision: str, ran: str, source: str
) -> None:
    monkeypatch.delenv("ILVR_PRECISION")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    write_png(tmp_path / "lr" / "a.png", smooth_image(1, 8))
    args = [
        "upscale",
        str(tmp_path / "lr"),
        str(tmp_path / "out"),
        "--model",
        str(model_path),
        "--steps",
        "3",
    ]
    result = runner.invoke(app, [*args, "--device", "cpu", "--precision", precision, "--json"])
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    assert settings["precision"] == ran and settings["sources"]["precision"] == source
    assert read_png_params(tmp_path / "out" / "a.png")["precision"] == ran


def test_bf16_and_fp32_outputs_of_one_run_differ_but_little(tmp_path: Path, model_path: Path) -> None:
    """The same noise in both precisions: close (the bound on a fixture network is in test_bf16_quality)."""
    import numpy as np
    from PIL import Image

    write_png(tmp_path / "lr" / "a.png", smooth_image(2, 8))
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["upscale", str(tmp_path / "lr"), str(out), "--model", str(model_path), "--steps", "5"]
        assert runner.invoke(app, [*args, "--device", "cpu", "--precision", precision]).exit_code == 0
        outputs[precision] = np.asarray(Image.open(out / "a.png"), dtype=np.float64)
    difference = np.abs(outputs["fp32"] - outputs["bf16"])
    assert 0 < difference.mean() < 8, difference.mean()


def test_training_runs_bf16_autocast_on_the_cpu(tmp_path: Path) -> None:
    from ilvr_cli.training import train
    from training_helpers import image_folder, tiny_config

    data = image_folder(tmp_path / "data", count=4)
    result = train(tiny_config(data, tmp_path / "run", steps=2, precision="bf16"))
    assert result.precision == "bf16"
    assert (tmp_path / "run" / "ema.safetensors").is_file()


def test_the_cpu_bf16_group_norm_equals_the_float32_round_trip() -> None:
    """GroupNorm32 sends a CPU bf16 activation to the mixed-dtype kernel: the same bits as computing in
    float32 and casting back (guided-diffusion's GroupNorm32), without the two copies."""
    from ilvr_cli.models.unet import GroupNorm32

    torch.manual_seed(0)
    norm = GroupNorm32(8, 64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 64, 16, 16) * 3 + 1).to(torch.bfloat16).to(memory_format=torch.channels_last)
    fast = norm(x)
    slow = torch.nn.functional.group_norm(x.float(), 8, norm.weight, norm.bias, norm.eps).to(torch.bfloat16)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    scale, shift = torch.randn(1, 64, 1, 1), torch.randn(1, 64, 1, 1)
    folded = norm.modulated(x[:1], scale.to(torch.bfloat16), shift.to(torch.bfloat16))
    assert folded.dtype == torch.bfloat16 and bool(torch.isfinite(folded).all())
