"""The CUDA paths: device-resident noise, autocast in the sampler and in training, NCCL under torchrun, the
low-pass on the device, and a task command end to end. Every test needs a CUDA device and skips without one
(a machine reason: tests/conftest.py); ``benchmarks/device_check.sh`` runs this file on a GPU machine.

Tiny models only (tests/test_tasks_support.py, tests/training_helpers.py): the whole file takes seconds on a
GPU. Nothing here touches CUDA at import time, so it is collected (and skipped) on any machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ilvr_cli.diffusion import Denoiser, NoiseSource, sample_steps
from ilvr_cli.ilvr import LowPass
from ilvr_cli.runtime import place_network
from test_tasks_support import SIZE, TINY_DIFFUSION, smooth_image, tiny_unet, to_unit, write_png
from training_helpers import TINY_UNET, image_folder, tiny_config, tiny_config_json

#: The one skip condition of this file; its reason is a machine reason (conftest.MACHINE_SKIP_REASONS).
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: The device every test runs on (a torch.device object: creating it does not initialise CUDA).
CUDA = torch.device("cuda", 0)
#: A safety net for a hung subprocess (an NCCL rendezvous that never completes), far above a normal run.
SAFETY_S = 300


@pytest.fixture()
def full_fp32() -> Iterator[None]:
    """fp32 references in true fp32: CUDA convolutions default to TF32 (10-bit mantissa) otherwise."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def conv_output_dtypes(module: torch.nn.Module) -> tuple[list[torch.dtype], list]:
    """A list that fills with the output dtype of every Conv2d call under ``module``, and the hook handles."""
    seen: list[torch.dtype] = []

    def record(_: torch.nn.Module, __: object, output: torch.Tensor) -> None:
        seen.append(output.dtype)

    handles = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, handles


def losses(run_dir: Path) -> list[float]:
    """The ``loss`` of every loss.jsonl record of a training run."""
    lines = (run_dir / "loss.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


def torchrun_env() -> dict[str, str]:
    """The environment of a torchrun subprocess: no rank variables of an outer job, one CPU thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"):
        env.pop(name, None)
    return env


# ----------------------------------------------------------------------------------------------- noise
@needs_cuda
def test_noise_generators_live_on_the_device_and_follow_the_keys() -> None:
    """Each sample's generator is a CUDA generator; a key draws the same noise whatever batch it is in."""
    keys = ["a.png#0", "b.png#0", "c.png#0", "d.png#0"]
    noise = NoiseSource(11, keys, device=CUDA)
    assert all(g.device.type == "cuda" for g in noise.generators)
    draws = [noise.randn((3, 8, 8)) for _ in range(3)]  # x_T, then two steps' z
    assert all(d.device.type == "cuda" and d.dtype == torch.float32 for d in draws)
    for batch in (keys[2:], keys[::-1], [keys[1]]):
        other = NoiseSource(11, batch, device=CUDA)
        for draw in draws:
            again = other.randn((3, 8, 8))
            for row, key in enumerate(batch):
                assert torch.equal(again[row], draw[keys.index(key)]), key
    assert not torch.equal(NoiseSource(12, keys[:1], device=CUDA).randn((3, 8, 8))[0], draws[0][0])


# ---------------------------------------------------------------------------------- sampler, autocast
@needs_cuda
@pytest.mark.parametrize(
    ("precision", "output_bound", "sample_bound"),
    [("bf16", 0.02, 0.1), ("fp16", 0.005, 0.02)],  # measured: 0.0026 / 0.011 (bf16), 0.0003 / 0.001 (fp16)
)
def test_sampler_autocast_stays_close_to_fp32(
    full_fp32: None, precision: str, output_bound: float, sample_bound: float
) -> None:
    """The network runs in bf16 / fp16 (its convolutions' outputs are), the sampler's x stays float32 on the
    device, and the outputs stay within a bound of fp32: the network's output against a CPU fp32 reference
    (batch 1, where scale-shift folds into GroupNorm, and batch 4), and a 10-step sample against fp32 on CUDA."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("needs a CUDA device with bf16 support")
    cpu_net = tiny_unet()
    net = place_network(tiny_unet(), CUDA, dtype)
    assert next(net.parameters()).dtype == torch.float32  # on CUDA the weights stay fp32: autocast
    reference = Denoiser.from_loaded(cpu_net, TINY_DIFFUSION, "10")
    low = Denoiser.from_loaded(net, TINY_DIFFUSION, "10", autocast_dtype=dtype)
    keys = [f"k{i}" for i in range(4)]
    x = NoiseSource(0, keys).randn((3, SIZE, SIZE))  # on the CPU, for both
    seen, handles = conv_output_dtypes(net)
    try:
        for batch in (x[:1], x):
            for i in (9, 5, 0):
                with torch.inference_mode():
                    want = reference.model_output(batch, i)
                    got = low.model_output(batch.to(CUDA), i)
                assert got.dtype == torch.float32 and got.device.type == "cuda"
                assert torch.isfinite(got).all()
                error = (got.cpu() - want).abs().max().item()
                assert error <= output_bound, f"{precision} batch {len(batch)} step {i}: {error}"
    finally:
        for handle in handles:
            handle.remove()
    assert seen and all(d == dtype for d in seen)

    fp32 = Denoiser.from_loaded(net, TINY_DIFFUSION, "10")
    results = []
    for denoiser in (fp32, low):
        states = list(sample_steps(denoiser, NoiseSource(1, keys, CUDA), shape=(3, SIZE, SIZE)))
        assert len(states) == 10
        assert all(s.x.dtype == torch.float32 and s.x.device.type == "cuda" for s in states)
        results.append(states[-1].x)
    assert torch.isfinite(results[1]).all()
    error = (results[1] - results[0]).abs().max().item()
    assert error <= sample_bound, f"{precision} x_0: {error}"


# ---------------------------------------------------------------------------------- training, autocast
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_on_cuda_with_autocast(tmp_path: Path, precision: str) -> None:
    """A few steps of ``train`` on CUDA: the convolutions run in the reduced dtype, the losses are finite,
    fp16 (and only fp16) keeps a GradScaler whose state is saved and restored, the CUDA RNG state is saved,
    a resumed run goes on, and the exports load on the CPU with finite weights."""
    from ilvr_cli.models.checkpoints import load_checkpoint
    from ilvr_cli.training import train
    from ilvr_cli.training.state import STATE_NAME, load_state

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("needs a CUDA device with bf16 support")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    data = image_folder(tmp_path / "data", count=8)
    run = tmp_path / "run"
    config = tiny_config(data, run, device="cuda", precision=precision, steps=4, save_every=2)
    seen: list[torch.dtype] = []

    def record(module: torch.nn.Module, _: object, output: object) -> None:
        if isinstance(module, torch.nn.Conv2d) and isinstance(output, torch.Tensor):
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train(config)
    finally:
        handle.remove()
    assert (result.step, result.precision, result.stopped) == (4, precision, False)
    assert seen and dtype in seen
    assert len(losses(run)) == 4 and all(math.isfinite(v) for v in losses(run))
    assert result.last_loss is None or math.isfinite(result.last_loss)

    state = load_state(run / STATE_NAME)
    assert "rng.cuda.0" in state.tensors
    scaler = state.info["scaler"]
    if precision == "fp16":
        assert isinstance(scaler, dict) and 0 < scaler["scale"] < math.inf
    else:
        assert scaler is None

    resumed = train(dataclasses.replace(config, steps=6), resume=True)
    assert resumed.step == 6 and len(losses(run)) == 6 and all(math.isfinite(v) for v in losses(run))
    for name in ("ema.safetensors", "model.safetensors"):
        loaded = load_checkpoint(run / name)
        assert all(torch.isfinite(p).all() for p in loaded.network.parameters()), name


# ------------------------------------------------------------------------------------- torchrun, NCCL
@needs_cuda
def test_train_command_under_torchrun_on_cuda(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 1 -m ilvr_cli train ... --device cuda``: rank 0 of 1 on cuda:0 reports
    once, and its checkpoint holds the CUDA RNG state and finite losses."""
    from ilvr_cli.training.state import STATE_NAME, load_state

    data = image_folder(tmp_path / "data", count=8)
    preset = tiny_config_json(tmp_path / "tiny.json")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "ilvr_cli", "train", str(data), "-o", str(tmp_path / "run"), "-p", str(preset),
        "--steps", "3", "--batch-size", "4", "--seed", "3", "--workers", "0", "--save-every", "3",
        "--sample-every", "0", "--log-every", "1", "--device", "cuda", "--precision", "bf16",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=torchrun_env(), timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("reached step 3/3") == 1
    state = load_state(tmp_path / "run" / STATE_NAME)
    assert state.info["world_size"] == 1 and "rng.cuda.0" in state.tensors
    assert len(losses(tmp_path / "run")) == 3 and all(math.isfinite(v) for v in losses(tmp_path / "run"))


#: Run under torchrun: one NCCL rank that takes the trainer's multi-rank paths, then prints what it saw.
NCCL_RUN = """
import json, sys
import torch
import torch.distributed as dist
from ilvr_cli.training import TrainConfig, train
from ilvr_cli.training.distributed import DistContext

torch.cuda.set_device(0)
dist.init_process_group("nccl", init_method="env://")
# One GPU holds one NCCL rank, and at world size 1 the trainer calls no collective: make it take its
# multi-rank paths anyway (the DDP wrapper, all_reduce, all_gather_object) over this one-rank NCCL group.
DistContext.distributed = property(lambda self: True)
wrapped = []


class RecordingDDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, **kwargs):
        wrapped.append(kwargs.get("device_ids"))
        super().__init__(module, **kwargs)


torch.nn.parallel.DistributedDataParallel = RecordingDDP
result = train(TrainConfig.from_dict(json.loads(sys.argv[1])))
print("NCCL_RUN " + json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                                "ddp_device_ids": wrapped, "step": result.step}))
dist.destroy_process_group()
"""


@needs_cuda
@pytest.mark.skipif(
    not dist.is_available() or not dist.is_nccl_available(),
    reason="needs a CUDA device with NCCL (this PyTorch build has none)",
)
def test_nccl_ddp_and_collectives_under_torchrun(tmp_path: Path) -> None:
    """The trainer's DDP wrapper and collectives over NCCL, as one torchrun rank (a machine with one GPU
    cannot hold two NCCL ranks); its first loss equals a plain run's, which saw the same weights and noise."""
    data = image_folder(tmp_path / "data", count=8)
    unet = dataclasses.replace(TINY_UNET, dropout=0.0)  # dropout masks come from each process's RNG
    config = tiny_config(
        data, tmp_path / "nccl", unet=unet, device="cuda", precision="bf16", steps=3, save_every=3
    )
    script = tmp_path / "nccl_run.py"
    script.write_text(NCCL_RUN, encoding="utf-8")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        str(script), json.dumps(config.to_dict()),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=torchrun_env(), timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("NCCL_RUN "))
    seen = json.loads(line.removeprefix("NCCL_RUN "))
    assert seen == {"backend": "nccl", "world_size": 1, "ddp_device_ids": [[0]], "step": 3}

    from ilvr_cli.training import train

    train(dataclasses.replace(config, out_dir=str(tmp_path / "plain")))
    nccl, plain = losses(tmp_path / "nccl"), losses(tmp_path / "plain")
    assert len(nccl) == len(plain) == 3 and all(math.isfinite(v) for v in nccl)
    assert nccl[0] == pytest.approx(plain[0], rel=1e-3)


# --------------------------------------------------------------------------------------------- low-pass
@needs_cuda
@pytest.mark.parametrize(
    ("height", "width", "factor", "kernel", "exact"),
    [
        (64, 64, 4, "cubic", False),
        (64, 64, 8, "lanczos3", False),
        (48, 64, 4, "linear", False),
        (64, 64, 4, "cubic", True),
        (256, 256, 8, "cubic", False),
    ],
)
def test_lowpass_on_the_device_matches_the_cpu(
    full_fp32: None, height: int, width: int, factor: int, kernel: str, exact: bool
) -> None:
    """down, up and phi_N = up(down(x)) on CUDA equal the CPU's within 1e-5 (float32), on the device."""
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu = LowPass(height, width, factor, kernel=kernel, exact=exact)
    gpu = LowPass(height, width, factor, kernel=kernel, exact=exact, device=CUDA)
    for name in ("down", "__call__"):
        got = getattr(gpu, name)(x.to(CUDA))
        assert got.device.type == "cuda" and got.dtype == torch.float32
        torch.testing.assert_close(got.cpu(), getattr(cpu, name)(x), rtol=0, atol=1e-5, msg=name)
    low = cpu.down(x)
    torch.testing.assert_close(gpu.up(low.to(CUDA)).cpu(), cpu.up(low), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------- a task command
@needs_cuda
@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_upscale_with_the_demo_model_on_cuda(tmp_path: Path, precision: str) -> None:
    """``ilvr upscale`` with the built-in demo model, offline, ``--device cuda``: every output is written,
    its PNG records device cuda and the precision that ran, and the result keeps the input's low
    frequencies (ILVR over the whole range), so the reduced-precision network produced an image."""
    from typer.testing import CliRunner

    from ilvr_cli.cli.app import app
    from ilvr_cli.io.write import read_png_params
    from test_tasks_support import read_pixels

    for i in range(3):
        write_png(tmp_path / "lr" / f"{i:03d}.png", smooth_image(i, 8))  # 8x8 for the 32x32 demo: N = 4
    args = ["upscale", str(tmp_path / "lr"), str(tmp_path / "out"), "--model", "demo", "--steps", "10"]
    args += ["--device", "cuda", "--precision", precision, "--json"]
    env = {"ILVR_OFFLINE": "1", "RANK": None, "WORLD_SIZE": None, "LOCAL_RANK": None}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"]) == (3, 0), summary

    lowpass = LowPass(SIZE, SIZE, 4)
    for i in range(3):
        out = tmp_path / "out" / f"{i:03d}.png"
        params = read_png_params(out)
        assert (params["device"], params["precision"]) == ("cuda", precision), params
        pixels = read_pixels(out)
        assert pixels.shape == (SIZE, SIZE, 3)
        thumbnail = to_unit(read_pixels(tmp_path / "lr" / f"{i:03d}.png")).float()
        drift = (lowpass.down(to_unit(pixels).float()) - thumbnail).abs().mean().item()
        assert drift < 0.05, f"{out.name}: its 8x8 low-pass is {drift:.3f} from the input (0.007 on the CPU)"
