"""The files already in our cache: :func:`cached_file` finds one and proves it intact (every use rehashes
it), and :func:`store_record` records a file just renamed into place (its manifest entry and, on first
use, its sha256 in ``known_hashes.json``). Each file has its own lock (:func:`file_lock`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ilvr_cli.registry.cache import FileRecord, KnownHashes, Manifest, Trust, sha256_file
from ilvr_cli.registry.catalog import FileSpec
from ilvr_cli.registry.checks import ContentCheck, content_problem
from ilvr_cli.registry.lock import FileLock
from ilvr_cli.registry.progress import DownloadProgress, NullProgress

__all__ = ["FetchedFile", "cached_file", "expected_sha256", "file_lock", "store_record"]


@dataclass(frozen=True)
class FetchedFile:
    """A verified file in the cache; ``source`` is empty when it was already there."""

    path: Path
    sha256: str
    trust: Trust
    source: str = ""


def expected_sha256(spec: FileSpec, model: str, known: KnownHashes) -> str | None:
    if spec.sha256:
        return spec.sha256
    entry = known.get(model, spec.name)
    return entry["sha256"] if entry else None


def trust_of(spec: FileSpec) -> Trust:
    return "published" if spec.sha256 else "first-use"


def cached_file(
    spec: FileSpec,
    directory: Path,
    *,
    model: str,
    root: Path,
    progress: DownloadProgress | None = None,
    check: ContentCheck | None = None,
) -> FetchedFile | None:
    """The cached copy of ``spec`` if present and intact; a bad copy is deleted (and None returned).

    The file is always rehashed: its bytes must match the published sha256, else the first-use one, else
    the one its manifest recorded (a size and mtime that were kept say nothing about the content). A file
    with no hash to compare with (placed in the cache by hand) must pass the checks of a first download
    (size, not a web page, ``check``) before its hash is recorded.
    """
    final = directory / spec.name
    if not final.is_file():
        return None
    progress = progress or NullProgress()
    manifest, known = Manifest(directory), KnownHashes(root)
    record = manifest.get(spec.name)
    expected = expected_sha256(spec, model, known) or (record.sha256 if record else None)
    digest, size = sha256_file(final), final.stat().st_size
    problem = None
    if spec.size is not None and size != spec.size:
        problem = f"size {size} is not {spec.size}"
    elif (problem := content_problem(final, spec.name, expected, digest, check)) is not None:
        problem = problem.removeprefix("served ")
    if problem is not None:
        progress.note(f"{final}: {problem}; deleting it")
        final.unlink()
        manifest.remove(spec.name)
        return None
    if expected is None:
        known.record(model, spec.name, digest, size, "placed in the cache by hand")
    if record is None or not record.stamp_matches(final) or record.sha256 != digest:
        source = record.source if record else "placed in the cache by hand"
        manifest.set(spec.name, FileRecord.for_file(final, digest, trust_of(spec), source))
    return FetchedFile(final, digest, trust_of(spec))


def file_lock(
    spec: FileSpec, directory: Path, *, timeout: float | None, on_wait: Callable[[str], None], what: str
) -> FileLock:
    """``<directory>/.<file>.lock``: one process at a time fetches or replaces this file."""
    return FileLock(directory / f".{spec.name}.lock", timeout=timeout, on_wait=on_wait, what=what)


def store_record(
    spec: FileSpec, directory: Path, digest: str, source: str, *, model: str, first_use: KnownHashes | None
) -> FetchedFile:
    """Record a verified file just renamed into place: its manifest entry and, with ``first_use`` (no hash
    was expected), its first-use hash there."""
    final = directory / spec.name
    if first_use is not None:
        first_use.record(model, spec.name, digest, final.stat().st_size, source)
    Manifest(directory).set(spec.name, FileRecord.for_file(final, digest, trust_of(spec), source))
    return FetchedFile(final, digest, trust_of(spec), source)
