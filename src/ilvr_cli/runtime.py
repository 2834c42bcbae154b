"""Process-wide memory settings that make CPU sampling fast. Only the standard library is imported here.

A 256x256 UNet forward allocates dozens of activations, and each one at 128 channels is 32 MiB in float32.
Two allocator defaults make these allocations cost as much as the arithmetic done on them:

* glibc's malloc serves blocks over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns
  them with ``munmap``. The kernel then page-faults and zeroes 8,192 pages for every activation. On the
  project's 2-core benchmark machine, an out-of-place SiLU on such a tensor took 9.4 ms, against 1.5 ms in
  place. :func:`reuse_freed_memory` raises the mmap and trim thresholds, so freed blocks stay in the heap
  and the next step reuses them, as a caching allocator would.
* PyTorch backs its CPU tensors with 4 KiB pages unless ``THP_MEM_ALLOC_ENABLE=1`` is set before its first
  allocation (pytorch/pytorch#115990). Then buffers of 2 MiB or more are 2 MiB-aligned and advised to use
  transparent huge pages, which cuts TLB misses. :func:`request_huge_pages` sets it, and it must run
  before ``import torch``.

With both settings, the ffhq-config forward took 1.15-1.25 s instead of 1.48-1.57 s
(``python benchmarks/bench_unet.py``; see docs/benchmarks.md). The process then keeps its peak heap until
it exits, which is what a sampling or training run needs anyway. The ``ilvr`` entry point applies both.
A setting that the user has made already wins: ``THP_MEM_ALLOC_ENABLE``, ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["on_glibc", "request_huge_pages", "reuse_freed_memory", "tune_memory"]

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
