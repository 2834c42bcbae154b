"""``ilvr train`` under torchrun with 2 CPU processes (gloo): the same run as one process, rank 0 writes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from ilvr_cli.training import train
from ilvr_cli.training.state import STATE_NAME, load_state
from training_helpers import TINY_UNET, image_folder, tiny_config


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    """Each rank trains on its half of every global batch with its slice of the shared noise, and DDP
    averages the gradients: the weights equal a single-process run's up to float summation order."""
    data = image_folder(tmp_path / "data", count=8)
    unet = dataclasses.replace(TINY_UNET, dropout=0.0)  # dropout masks are per rank
    config = tiny_config(data, tmp_path / "single", unet=unet, steps=3, save_every=3, log_every=3)
    preset = tmp_path / "tiny.json"
    preset.write_text(
        __import__("json").dumps({"unet": unet.to_dict(), "diffusion": config.diffusion.to_dict()})
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "ilvr_cli", "train", str(data), "-o", str(tmp_path / "ddp"), "-p", str(preset),
        "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--ema", "0.9", "--grad-clip", "1.0",
        "--seed", "3", "--workers", "0", "--save-every", "3", "--sample-every", "0", "--log-every", "3", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # --standalone's agent binds its store on port 0 and the ranks meet there: no free port is guessed and
    # no two runs can collide, unless this opt-out makes torchrun probe for a free port instead
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    # the timeout is a safety net for a hung run, far above what a loaded machine needs
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("reached step 3/3") == 1  # only rank 0 reports

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config)
    finally:
        torch.set_num_threads(threads)
    ddp, single = load_state(tmp_path / "ddp" / STATE_NAME), load_state(tmp_path / "single" / STATE_NAME)
    assert ddp.info["world_size"] == 2 and {"rng.cpu.0", "rng.cpu.1"} <= set(ddp.tensors)
    assert torch.equal(ddp.tensors["rng.noise"], single.tensors["rng.noise"])
    for name, value in single.group("model").items():
        torch.testing.assert_close(ddp.tensors[f"model.{name}"], value, rtol=1e-4, atol=1e-5, msg=name)
    assert len((tmp_path / "ddp" / "loss.jsonl").read_text().splitlines()) == 1
    assert not [p for p in (tmp_path / "ddp").rglob("*.tmp")]
