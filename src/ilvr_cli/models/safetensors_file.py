"""Write a ``.safetensors`` file whose bytes depend only on its content.

The ``safetensors`` package serialises the header (tensor entries and ``__metadata__``) from a hash map, so
the same tensors and metadata give different bytes, and a different sha256, in every process. Checkpoints
here are identified by their sha256 (the registry, ``model_sha256`` in every output), so this writer emits
the same format (https://github.com/huggingface/safetensors, "Format") with the header's keys sorted and
the tensors laid out in name order: 8-byte little-endian header length, the JSON header padded with spaces
to a multiple of 8, then each tensor's bytes, contiguous and little-endian.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import BinaryIO

import torch

from ilvr_cli.atomic import atomic_write

#: torch dtype -> the format's dtype name.
DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def header_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix and the padded JSON header of :func:`write_safetensors` (sorted, deterministic)."""
    header: dict[str, object] = {}
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors here")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A contiguous CPU tensor's bytes in memory order (little-endian on every platform torch supports)."""
    flat = tensor.reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) and ``metadata`` atomically, deterministically."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}

    def write(handle: BinaryIO) -> None:
        handle.write(header_bytes(cpu, metadata))
        for name in sorted(cpu):
            handle.write(_tensor_bytes(cpu[name]))

    atomic_write(path, write)
