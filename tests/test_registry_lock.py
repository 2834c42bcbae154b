"""registry.lock.FileLock: the registry's messages over the ``filelock`` package."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ilvr_cli.errors import DownloadError
from ilvr_cli.registry.lock import FileLock


def test_a_free_lock_is_taken_silently_and_released(tmp_path: Path) -> None:
    notes: list[str] = []
    path = tmp_path / "models" / "m" / ".lock"  # parents are created
    with FileLock(path, on_wait=notes.append):
        assert path.exists()
    with FileLock(path, timeout=0.5):  # released: free again at once
        pass
    assert notes == [] and path.exists() and path.stat().st_size == 0  # the empty lock file stays


def test_a_busy_lock_says_once_that_it_waits_then_times_out(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    notes: list[str] = []
    with FileLock(path):
        start = time.monotonic()
        with pytest.raises(DownloadError) as error:
            FileLock(path, timeout=0.3, poll=0.01, on_wait=notes.append, what="ffhq").acquire()
        assert 0.25 < time.monotonic() - start < 10
    assert notes == [f"waiting for another process that is preparing ffhq (lock {path})"]
    assert str(error.value) == (
        f"timed out after 0 s waiting for the lock {path}; "
        "is another ilvr process still downloading? If not, delete the lock file"
    )


def test_threads_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    inside: list[int] = []
    overlaps: list[int] = []

    def work() -> None:
        for _ in range(20):
            with FileLock(path, poll=0.001):
                inside.append(1)
                overlaps.extend([1] if len(inside) > 1 else [])
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and overlaps == []


HOLD = """
import sys, time
from ilvr_cli.registry.lock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_another_process_holds_it_and_its_death_frees_it(tmp_path: Path) -> None:
    """Exclusion between processes; a holder that dies (SIGKILL) leaves no stale lock behind."""
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DownloadError, match="timed out"):
            FileLock(path, timeout=0.2).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(path, timeout=5):
        pass


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl")
def test_a_plain_flock_holder_excludes_it(tmp_path: Path) -> None:
    """Locks taken by earlier ilvr-cli versions (a bare ``fcntl.flock``) and by filelock exclude each other,
    so an older and a newer ilvr never download into the same cache at once."""
    import fcntl
    import os

    path = tmp_path / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DownloadError):
            FileLock(path, timeout=0.1).acquire()
        fcntl.flock(fd, fcntl.LOCK_UN)
        with FileLock(path, timeout=1), pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
