"""An inter-process lock on a file: the ``filelock`` package (``fcntl.flock`` on POSIX, the Windows file lock
API on Windows) with the registry's messages.

The operating system releases the lock when its holder exits or crashes, so a lock is never stale; the
lock file itself stays behind (empty, harmless). Two threads of one process exclude each other too, since
each :class:`FileLock` is a lock of its own on the file. What this adds to ``filelock``: one note to the
user when the lock is busy, and a timeout that is a :class:`DownloadError` naming the lock file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ilvr_cli.errors import DownloadError

if TYPE_CHECKING:
    import filelock

__all__ = ["FileLock"]


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
        self._lock: filelock.FileLock | None = None

    def acquire(self) -> None:
        import filelock  # here, not at import: `ilvr models list` and friends never lock anything

        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        lock = filelock.FileLock(self.path)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            if self.on_wait is not None:
                self.on_wait(f"waiting for another process that is preparing {self.what} (lock {self.path})")
            left = -1.0 if self.timeout is None else max(0.0, self.timeout - (time.monotonic() - start))
            try:
                lock.acquire(timeout=left, poll_interval=self.poll)
            except filelock.Timeout:
                raise DownloadError(
                    f"timed out after {self.timeout:.0f} s waiting for the lock {self.path}; "
                    "is another ilvr process still downloading? If not, delete the lock file"
                ) from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            try:
                self._lock.release()
            finally:
                self._lock = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
