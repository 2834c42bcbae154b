"""The runtime layer: device choice, precision, torchrun rank/world and process-wide memory settings.

Tasks, ``ilvr train`` and the metrics read these here, so that ``--device auto`` means the same everywhere
(CUDA, then Apple MPS, then the CPU) and rank/world come from one reader of torchrun's environment.
Only the standard library is imported at module level: the ``ilvr`` entry point imports this module (and
applies :func:`tune_memory`) before torch loads; the functions that need torch import it when called.

Memory settings. A 256x256 UNet forward allocates dozens of activations, and each one at 128 channels is
32 MiB in float32. Two allocator defaults make these allocations cost as much as the arithmetic done on them:

* glibc's malloc serves blocks over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns
  them with ``munmap``. The kernel then page-faults and zeroes 8,192 pages for every activation.
  :func:`reuse_freed_memory` raises the mmap and trim thresholds, so freed blocks stay in the heap and the
  next step reuses them, as a caching allocator would.
* PyTorch backs its CPU tensors with 4 KiB pages unless ``THP_MEM_ALLOC_ENABLE=1`` is set before its first
  allocation (pytorch/pytorch#115990). Then buffers of 2 MiB or more are 2 MiB-aligned and advised to use
  transparent huge pages, which cuts TLB misses. :func:`request_huge_pages` sets it, and it must run
  before ``import torch``.

What each setting gains is measured in docs/benchmarks.md (``python benchmarks/bench_unet.py``). The
process then keeps its peak heap until it exits, which is what a sampling or training run needs anyway.
A setting that the user has made already wins: ``THP_MEM_ALLOC_ENABLE``, ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ilvr_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "NATIVE_BF16_FLAGS",
    "PRECISION_VARIABLE",
    "Ranks",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "cpuinfo_has_native_bf16",
    "cuda_has_native_bf16",
    "launched_by_torchrun",
    "on_glibc",
    "pinned_precision",
    "place_network",
    "read_ranks",
    "request_huge_pages",
    "resolve_device",
    "resolve_precision",
    "reuse_freed_memory",
    "tune_memory",
]


#: ``mallopt`` parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, not from mmap.
MMAP_THRESHOLD_BYTES = 1 << 30
#: Free memory at the top of the heap is returned to the system only above this size.
TRIM_THRESHOLD_BYTES = 2**31 - 1
#: PyTorch's switch for huge-page-backed CPU tensors (c10/core/alloc_cpu.cpp, read once).
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
#: glibc's own environment settings for the thresholds; where the user set one, mallopt is left alone.
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_reuse_applied: bool | None = None


def tune_memory() -> tuple[bool, bool]:
    """Apply both settings; returns whether (huge pages, freed-memory reuse) are in effect."""
    return request_huge_pages(), reuse_freed_memory()


def request_huge_pages() -> bool:
    """Ask PyTorch for huge-page-backed CPU tensors, unless torch is already imported or the user chose.

    Returns True when ``THP_MEM_ALLOC_ENABLE`` is 1 and torch has not read it yet. This works on Linux
    only, where the kernel's THP mode is "always" or "madvise".
    """
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return False
    return os.environ.setdefault(HUGE_PAGES_VARIABLE, "1") == "1"


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed large blocks for reuse (see the module docstring).

    Returns True when the setting is in effect. It does nothing, and returns False, on other C libraries
    (macOS, Windows, musl) or where the user set glibc's ``MALLOC_*_THRESHOLD_`` variables. Only the
    first call does any work.
    """
    global _reuse_applied
    if _reuse_applied is None:
        _reuse_applied = _apply_mallopt()
    return _reuse_applied


def on_glibc() -> bool:
    """True under GNU libc (``confstr`` answers "glibc 2.36" there, and fails or is missing elsewhere)."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
        return version is not None and version.startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def _apply_mallopt() -> bool:
    if not on_glibc() or any(name in os.environ for name in _GLIBC_VARIABLES):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


# --------------------------------------------------------------------------------------------- devices


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``--device`` -> a torch device that exists here; a :class:`UsageError` otherwise (nothing is loaded yet).

    ``auto``: CUDA if available, else Apple MPS, else the CPU. ``cuda`` (and ``auto`` on CUDA) means
    ``cuda:LOCAL_RANK`` under torchrun, wrapped round the devices there are; ``cuda:N`` is that device.
    """
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise UsageError(
            f"--device {spec!r} is not a device (auto, cpu, cuda, cuda:1, ...): {error}"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"--device {spec}: CUDA is not available here (no CUDA device found); use --device cpu"
            )
        index = local_rank % count if device.index is None else device.index
        device = torch.device("cuda", index)
        if index >= count:
            raise UsageError(
                f"--device {spec}: there are {count} CUDA device(s) here, cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not _mps_available():
            raise UsageError(f"--device {spec}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: choose auto, cpu, cuda, cuda:N or mps")
    return device


#: Set to fp32 (bf16, fp16), it is what ``--precision auto`` means on every machine.
PRECISION_VARIABLE = "ILVR_PRECISION"
#: The CPU flags of native bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16; Arm's BF16 extension).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (then a bf16 network runs about twice as fast as fp32;
    elsewhere bf16 is emulated and slower). torch's own CPU capability query where it has one, else the
    flags of /proc/cpuinfo."""
    import platform

    import torch

    if platform.machine().lower() in ("x86_64", "amd64"):
        names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        queries = [q for q in (getattr(torch.cpu, name, None) for name in names) if callable(q)]
        if queries:
            return any(bool(q()) for q in queries)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return cpuinfo_has_native_bf16(cpuinfo.read())
    except OSError:
        return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 tensor cores (compute capability 8.0, Ampere, or newer; ROCm's bf16 GPUs).
    Not ``torch.cuda.is_bf16_supported()``: that asks about the current device, and by default counts the
    emulated bf16 of older cards (V100, T4), where bf16 runs slower than fp32."""
    import torch

    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def cpuinfo_has_native_bf16(text: str) -> bool:
    """Whether /proc/cpuinfo's ``flags`` (x86) or ``Features`` (Arm) lines list a native bf16 flag."""
    flags = {
        word
        for line in text.splitlines()
        if line.startswith(("flags", "Features"))
        for word in line.partition(":")[2].split()
    }
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def pinned_precision() -> str | None:
    """What ``ILVR_PRECISION`` makes ``--precision auto`` mean (None when it is not set)."""
    return os.environ.get(PRECISION_VARIABLE) or None


def resolve_precision(precision: str, device: torch.device) -> str:
    """``--precision`` -> what runs: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` (the default) is bf16 where the hardware computes it natively (a CPU with AVX512-BF16 / AMX /
    Arm BF16, a CUDA device with bf16 support) and fp32 elsewhere (older CPUs emulate bf16 slowly; MPS);
    ``ILVR_PRECISION=fp32`` (or bf16, fp16) makes ``auto`` mean that instead, on every machine.
    An explicit ``bf16`` runs on any CPU or CUDA device; ``fp16`` on CUDA only.
    """

    pinned = pinned_precision()
    if precision == "auto" and pinned:
        if pinned not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"{PRECISION_VARIABLE}={pinned!r}: choose fp32, bf16 or fp16")
        return resolve_precision(pinned, device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(
            f"--precision fp16 needs a CUDA device; on {device.type} use --precision bf16 or fp32"
        )
    if precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise UsageError(f"--precision bf16 runs on CUDA or the CPU; on {device.type} use --precision fp32")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The network's reduced dtype for ``--precision`` (resolved first: see :func:`resolve_precision`), or
    None for fp32. On CUDA the network runs under autocast; on the CPU in that dtype itself (bf16 weights:
    measured faster than CPU autocast, docs/benchmarks.md). The schedule, posterior, noise and ILVR
    refinement stay float32 whatever the precision."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision, device)]


def place_network(
    network: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
) -> torch.nn.Module:
    """The network on ``device`` in channels_last (oneDNN / cuDNN convolutions run faster in NHWC; same
    math), and on the CPU with a reduced ``dtype``, its weights in that dtype (see :func:`autocast_dtype`)."""
    import torch

    network = network.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    if dtype is not None and device.type == "cpu":
        network = network.to(dtype=dtype)
    return network


# ---------------------------------------------------------------------------------------- rank / world


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes shared files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer") from None


def read_ranks() -> Ranks:
    """Rank and world size of the initialised ``torch.distributed`` group, else from torchrun's ``RANK`` /
    ``WORLD_SIZE``; ``LOCAL_RANK`` always from the environment. Inconsistent values are a UsageError.

    Without ``torch.distributed`` imported no group can exist, so this never imports torch itself.
    """
    local = _env_int("LOCAL_RANK", 0)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} / WORLD_SIZE={world} do not describe a rank of the job")
    return Ranks(rank, world, local)


def launched_by_torchrun() -> bool:
    """True when the environment asks for a process group: ``WORLD_SIZE`` > 1 and a rendezvous address."""
    return _env_int("WORLD_SIZE", 1) > 1 and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
