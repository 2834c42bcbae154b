"""Atomic file writes, shared by everything that writes a file a user or a later run relies on.

A file is written under a temporary name in its own folder, flushed to disk, given the permissions a
plainly created file would have (0666 & ~umask; ``mkstemp`` alone gives 0600), then renamed over the
target: a reader, or a run killed at any moment, sees the old file or the new one, never a partial one.
No torch, numpy or PIL here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_path", "atomic_write_text"]


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_path(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)`` (for writers that take a file name, e.g. safetensors' ``save_file``),
    then fsync and rename it over ``path``. On any exception the temporary file is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a binary file opened under a temporary name, then rename it to ``path``."""

    def write_to(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write_path(path, write_to)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_path(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
