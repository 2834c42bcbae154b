"""Is this path a file we can read? One answer for the task commands, the metrics and training.

No torch, numpy or PIL here.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

from ilvr_cli.errors import InputError

__all__ = ["DECODE_ERRORS", "check_regular_file", "not_regular_file"]

#: What Pillow raises on broken files besides ``UnidentifiedImageError``.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file with content, or None if it can.

    A broken or looping symlink is named as such; FIFOs would block a reader; files of /proc and /sys
    report a size of 0 but have content, so they are not regular files either.
    """
    try:
        info = path.stat()
    except OSError as error:
        reason = str(error.strerror or error)
        return f"broken symlink ({reason})" if os.path.islink(path) else reason
    for test, kind in _KINDS:
        if test(info.st_mode):
            return f"not a regular file ({kind})"
    if info.st_size > 0:
        return None
    try:
        with open(path, "rb") as handle:
            content = handle.read(1)
    except OSError as error:
        return str(error.strerror or error)
    if content:
        return "not a regular file (a pseudo-file such as /proc/...: its size is reported as 0)"
    return "empty file (0 bytes)"


def check_regular_file(path: Path, what: str = "image") -> None:
    """InputError naming ``path`` unless it is a regular file with content (:func:`not_regular_file`)."""
    problem = not_regular_file(path)
    if problem is not None:
        raise InputError(f"cannot read {what} {path}: {problem}")
