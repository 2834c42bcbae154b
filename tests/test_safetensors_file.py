"""The deterministic safetensors writer: files the safetensors package reads back exactly, with the same
bytes (so the same sha256) in every process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ilvr_cli.models.safetensors_file import write_safetensors

WRITE = """
import sys, torch
from ilvr_cli.models.safetensors_file import write_safetensors
g = torch.Generator().manual_seed(0)
tensors = {f"t{i}": torch.randn(3, i + 1, generator=g) for i in range(12)}
write_safetensors(sys.argv[1], tensors, {f"k{i}": str(i) for i in range(12)})
"""


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "w.f32": torch.randn(4, 5, generator=g),
        "w.bf16": torch.randn(3, 2, generator=g).bfloat16(),
        "w.f16": torch.randn(7, generator=g).half(),
        "a.f64": torch.randn(2, 2, generator=g).double(),
        "step": torch.tensor(12345, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
    }


def test_round_trip_through_the_safetensors_package(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, {"b": "2", "a": "1"})
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"a": "1", "b": "2"}


def test_same_content_same_bytes_in_every_process(tmp_path: Path) -> None:
    digests = set()
    for seed in ("0", "1", "12345"):
        out = tmp_path / f"{seed}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", WRITE, str(out)], check=True, env=env)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
