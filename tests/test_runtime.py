"""Process-wide memory settings (ilvr_cli.runtime). Each test runs in a fresh interpreter: the settings are
global to a process and cannot be undone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ilvr_cli.runtime import on_glibc

pytestmark = pytest.mark.skipif(
    not on_glibc(), reason="needs Linux with glibc (the settings apply there only)"
)


def _run(code: str, *args: str, **env: str) -> list[str]:
    """Run ``code`` with ``args`` in a fresh interpreter, without the caller's allocator settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("THP_", "MALLOC_"))}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


#: Bytes in mmap-backed blocks after allocating and keeping a 48 MiB tensor (glibc's mallinfo2.hblkhd).
MMAPPED_AFTER_ALLOCATION = """
    import ctypes, sys
    from ilvr_cli import runtime
    applied = runtime.reuse_freed_memory() if sys.argv[1] == "reuse" else False

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    import torch
    before = libc.mallinfo2().hblkhd
    kept = torch.empty(12 * 2**20)  # 48 MiB of float32: over glibc's largest automatic mmap threshold
    print(applied, (libc.mallinfo2().hblkhd - before) // 2**20)
"""


@pytest.mark.parametrize("setting", ["default", "reuse"])
def test_large_tensors_come_from_the_heap_once_reuse_is_on(setting: str) -> None:
    applied, mmapped_mib = _run(MMAPPED_AFTER_ALLOCATION, setting)
    if setting == "reuse":
        assert applied == "True" and int(mmapped_mib) == 0
    else:  # glibc's default: a fresh mmap, so a fresh set of page faults on every allocation
        assert applied == "False" and int(mmapped_mib) >= 48


def test_user_malloc_settings_win() -> None:
    code = "from ilvr_cli import runtime; print(runtime.reuse_freed_memory(), runtime.reuse_freed_memory())"
    assert _run(code, MALLOC_MMAP_THRESHOLD_="131072") == ["False", "False"]
    assert _run(code) == ["True", "True"]


def test_huge_pages_are_requested_only_before_torch() -> None:
    before = "from ilvr_cli import runtime; import os; print(runtime.request_huge_pages(), os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    after = "import torch; " + before
    assert _run(before) == ["True", "1"]
    assert _run(after) == ["False", "None"]
    assert _run(before, THP_MEM_ALLOC_ENABLE="0") == ["False", "0"]


def test_the_console_script_tunes_memory_before_torch_loads() -> None:
    code = """
        import os, sys
        from unittest import mock
        from ilvr_cli.cli import app
        with mock.patch.object(sys, "argv", ["ilvr", "--version"]):
            try:
                app.main()
            except SystemExit:
                pass
        print(os.environ.get("THP_MEM_ALLOC_ENABLE"), "torch" in sys.modules)
    """
    assert _run(code)[-2:] == ["1", "False"]  # after the "ilvr-cli <version>" line
