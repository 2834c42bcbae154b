"""What the registry tells its caller while it fetches files; nothing in the registry prints.

Per file downloaded: one :meth:`DownloadProgress.announce` before its first byte (what, how big, from
where, stored where), then ``start``/``advance``/``finish`` for the transfer; notes for everything else
(retries, lock waits, a bad source, a file reused from the Hugging Face cache). Cache hits say nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["DownloadProgress", "NullProgress", "announce", "announce_line", "format_bytes"]


class DownloadProgress(Protocol):
    """What a download reports; the CLI renders it as a rich progress bar (bytes, speed, ETA)."""

    def announce(self, model: str, file_name: str, size: int | None, source: str, target: Path) -> None:
        """A download of ``model``'s ``file_name`` (``size`` bytes, None if unknown) from ``source`` (a URL
        or a source's description) into ``target`` (its final path) is about to start. Once per file and
        source, before its first byte; never for a file already in the cache or reused from elsewhere."""

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        """A transfer (re)starts: ``completed`` of ``total`` bytes (None if unknown) are already here."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes arrived."""

    def finish(self) -> None:
        """The transfer of the current file ended (successfully or not)."""

    def note(self, message: str) -> None:
        """A one-line status message: retrying, waiting on a lock, a bad source..."""


class NullProgress:
    """Reports nothing."""

    def announce(self, model: str, file_name: str, size: int | None, source: str, target: Path) -> None:
        pass

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def announce(
    progress: DownloadProgress, model: str, file_name: str, size: int | None, source: str, target: Path
) -> None:
    """``progress.announce(...)``; a progress object written before ``announce`` existed gets the same
    facts as a note."""
    method = getattr(progress, "announce", None)
    if method is not None:
        method(model, file_name, size, source, target)
    else:
        progress.note(announce_line(model, file_name, size, source, target))


def announce_line(model: str, file_name: str, size: int | None, source: str, target: Path) -> str:
    """The announcement as one line: what, how big, from where, where it is stored."""
    how_big = format_bytes(size) if size else "size unknown"
    return f"downloading {model}: {file_name} ({how_big}) from {source} to {target}"


def format_bytes(n: float | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as download sizes are usually quoted)."""
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
