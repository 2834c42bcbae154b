"""The run manifest: one JSON object per line (JSON Lines), appended as each output is written.

Each line is written with a single ``write`` on a file opened with ``O_APPEND``, so lines from several
processes (torchrun ranks) appending to the same manifest do not interleave on a local file system.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: The manifest's file name inside OUTPUT.
MANIFEST_NAME = "manifest.jsonl"


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line (created if missing), flushed to disk."""
    line = (json.dumps(dict(record), sort_keys=True, separators=(",", ":")) + "\n").encode()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a manifest, in order; a torn last line (a crash mid-write) is skipped."""
    target = Path(path)
    if not target.exists():
        return
    with target.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
