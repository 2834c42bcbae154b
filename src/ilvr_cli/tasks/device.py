"""``--device`` and ``--precision`` -> a torch device and an autocast dtype, refused early when impossible."""

from __future__ import annotations

import torch

from ilvr_cli.errors import UsageError

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available, else MPS, else CPU. Under torchrun, ``cuda`` means ``cuda:LOCAL_RANK``.

    Asking for a device that is not there is a :class:`UsageError` (nothing is loaded yet).
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank % torch.cuda.device_count()}"
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not _mps_available():
        raise UsageError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The network's autocast dtype for ``--precision``; bf16 / fp16 autocast runs on CUDA only.

    The sampler's arithmetic (posterior, ILVR refinement) stays float32 whatever the precision.
    """
    if precision not in _AUTOCAST:
        raise UsageError(f"--precision {precision!r}: choose fp32, bf16 or fp16")
    dtype = _AUTOCAST[precision]
    if dtype is not None and device.type != "cuda":
        raise UsageError(
            f"--precision {precision} needs a CUDA device (autocast); on {device.type} use --precision fp32"
        )
    return dtype
