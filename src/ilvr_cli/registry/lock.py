"""An inter-process lock on a file: ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows (stdlib only).

The operating system releases the lock when its holder exits or crashes, so a lock is never stale; the
lock file itself stays behind (empty, harmless). Two threads of one process exclude each other too, since
each acquisition opens the file anew.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ilvr_cli.errors import DownloadError

__all__ = ["FileLock"]

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class FileLock:
    """``with FileLock(path):`` holds an exclusive lock on ``path`` (created if missing).

    ``on_wait(message)`` is called once if the lock is busy (to tell the user why nothing happens);
    ``timeout`` (seconds, None = forever) raises DownloadError naming the lock file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float | None = None,
        poll: float = 0.05,
        on_wait: Callable[[str], None] | None = None,
        what: str = "this file",
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.poll = poll
        self.on_wait = on_wait
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        waited = False
        while not _try_lock(fd):
            if not waited and self.on_wait is not None:
                self.on_wait(f"waiting for another process that is preparing {self.what} (lock {self.path})")
            waited = True
            if deadline is not None and time.monotonic() > deadline:
                os.close(fd)
                raise DownloadError(
                    f"timed out after {self.timeout:.0f} s waiting for the lock {self.path}; "
                    "is another ilvr process still downloading? If not, delete the lock file"
                )
            time.sleep(self.poll)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                _unlock(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
