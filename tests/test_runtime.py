"""The runtime layer (ilvr_cli.runtime): device choice, precision, torchrun ranks, memory settings.

The memory-setting tests each run in a fresh interpreter: the settings are global to a process and cannot
be undone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ilvr_cli.errors import UsageError
from ilvr_cli.runtime import Ranks, autocast_dtype, launched_by_torchrun, on_glibc, read_ranks, resolve_device
from ilvr_cli.tasks.distributed import DistInfo
from ilvr_cli.training.distributed import DistContext

glibc_only = pytest.mark.skipif(
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


@glibc_only
@pytest.mark.parametrize("setting", ["default", "reuse"])
def test_large_tensors_come_from_the_heap_once_reuse_is_on(setting: str) -> None:
    applied, mmapped_mib = _run(MMAPPED_AFTER_ALLOCATION, setting)
    if setting == "reuse":
        assert applied == "True" and int(mmapped_mib) == 0
    else:  # glibc's default: a fresh mmap, so a fresh set of page faults on every allocation
        assert applied == "False" and int(mmapped_mib) >= 48


@glibc_only
def test_user_malloc_settings_win() -> None:
    code = "from ilvr_cli import runtime; print(runtime.reuse_freed_memory(), runtime.reuse_freed_memory())"
    assert _run(code, MALLOC_MMAP_THRESHOLD_="131072") == ["False", "False"]
    assert _run(code) == ["True", "True"]


@glibc_only
def test_huge_pages_are_requested_only_before_torch() -> None:
    before = "from ilvr_cli import runtime; import os; print(runtime.request_huge_pages(), os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    after = "import torch; " + before
    assert _run(before) == ["True", "1"]
    assert _run(after) == ["False", "None"]
    assert _run(before, THP_MEM_ALLOC_ENABLE="0") == ["False", "0"]


@glibc_only
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


# ------------------------------------------------------------------------------------- device, precision


def test_resolve_device_checks_what_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moved from test_training_robustness.py: tasks, training and metrics share this function."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    for name, message in (
        ("cuda:3", "1 CUDA device"),
        ("mps", "MPS is not available"),
        ("meta", "auto, cpu"),
    ):
        with pytest.raises(UsageError, match=message):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda:0"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_means_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)


def test_cuda_under_torchrun_is_the_local_rank_wrapped_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match="there are 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(UsageError, match="is not a device"):
        resolve_device("cuda:x")


def test_autocast_dtype_bf16_on_cpu_or_cuda_fp16_on_cuda_only() -> None:
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda", 0)) is torch.float16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="choose auto, fp32, bf16 or fp16"):
        autocast_dtype("fp8", torch.device("cuda", 0))


# ------------------------------------------------------------------------------------------ rank, world


def test_one_reader_of_the_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert read_ranks() == Ranks(0, 1, 0) and read_ranks().is_main and not read_ranks().distributed
    assert not launched_by_torchrun()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert read_ranks() == Ranks(2, 4, 0) and not read_ranks().is_main and read_ranks().distributed
    assert not launched_by_torchrun()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert launched_by_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(UsageError, match="LOCAL_RANK='x' is not an integer"):
        read_ranks()


def test_task_and_training_contexts_are_ranks() -> None:
    assert isinstance(DistInfo(), Ranks) and isinstance(DistContext(), Ranks)
    context = DistContext(1, 2, 1)
    assert (context.rank, context.is_main, context.distributed, context.device.type) == (
        1,
        False,
        True,
        "cpu",
    )


def test_runtime_reads_ranks_without_importing_torch() -> None:
    code = "import sys, ilvr_cli.runtime as r; r.read_ranks(); r.launched_by_torchrun(); print('torch' in sys.modules)"
    assert _run(code) == ["False"]
