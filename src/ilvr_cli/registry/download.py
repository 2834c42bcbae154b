"""The cache's files, verified: :func:`ensure_file` returns ``models/<name>/<file>``, fetching it if needed.

1. Under a per-file lock (a second process waits, then finds the file), a cached copy is used only after
   rehashing it against the published sha256, else the one recorded at first use, else its manifest's (a
   kept size and mtime prove nothing); a bad copy is deleted (:func:`cached_file`).
2. Else a copy in the user's Hugging Face cache (:mod:`.hub`) is hard-linked or copied in and checked as a
   download would be; a wrong one is ignored with a note. The Hugging Face cache is only read.
3. Else each source is tried in order (:mod:`.fetch`); a good file is renamed into place atomically, and
   only then is a first-use hash recorded. Every source answering "not found" moves on to the fallback.

Offline (``ILVR_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) only local files are used: the caches, and local-path
sources of entries the user added; else OfflineError says where to put the file. Nothing here prints:
progress goes to a :class:`DownloadProgress`. The transfer itself is :mod:`.transfer` and :mod:`.gdrive`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from ilvr_cli.errors import DownloadError, OfflineError
from ilvr_cli.registry import hub
from ilvr_cli.registry.cache import KnownHashes, is_offline, offline_setting, sha256_file
from ilvr_cli.registry.cached import FetchedFile, cached_file, expected_sha256, file_lock, store_record
from ilvr_cli.registry.catalog import FileSpec
from ilvr_cli.registry.checks import ContentCheck, content_problem
from ilvr_cli.registry.fetch import fetch_from_source
from ilvr_cli.registry.lock import FileLock
from ilvr_cli.registry.progress import DownloadProgress, NullProgress, format_bytes
from ilvr_cli.registry.transfer import GDRIVE_DOWNLOAD_URL, Context, DownloadOptions, SourceFailed, opener

__all__ = [
    "GDRIVE_DOWNLOAD_URL",
    "DownloadOptions",
    "DownloadProgress",
    "FetchedFile",
    "NullProgress",
    "cached_file",
    "ensure_file",
    "format_bytes",
]


class _AllNotFound(Exception):
    """Every source of a file answered "not found": its fallback may be tried."""


def _lock(spec: FileSpec, directory: Path, ctx: Context) -> FileLock:
    return file_lock(
        spec, directory, timeout=ctx.options.lock_timeout, on_wait=ctx.progress.note, what=ctx.label
    )


def _adopt(found: Path, spec: FileSpec, final: Path, expected: str | None, ctx: Context) -> tuple[str, str]:
    """Hard-link (else copy) ``found`` to a temporary name beside ``final``, check it as a download, and
    rename it into place; returns (sha256, "") or ("", why it is not the file)."""
    tmp = final.with_name(f"{final.name}.hf-cache.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(found.resolve(), tmp)  # the same bytes, nothing written; never the .part name
        except OSError:
            shutil.copyfile(found, tmp)
        digest, size = sha256_file(tmp), tmp.stat().st_size
    except OSError as error:
        tmp.unlink(missing_ok=True)
        return "", f"cannot be read ({error})"
    problem = None
    if spec.size is not None and size != spec.size:
        problem = f"has {size} bytes, expected {spec.size}"
    else:
        problem = content_problem(tmp, spec.name, expected, digest, ctx.check)
    if problem is not None:
        tmp.unlink()
        return "", problem.removeprefix("served ")
    os.replace(tmp, final)
    return digest, ""


def _from_hub_cache(spec: FileSpec, directory: Path, *, root: Path, ctx: Context) -> FetchedFile | None:
    """``spec`` taken from the user's Hugging Face cache under the file's lock, checked like a download;
    None when no Hub source has it there, or the copy there is not the file (a note says so)."""
    found = [(s, p) for s in spec.sources if s.url and (p := hub.find_in_hub_cache(s.url)) is not None]
    if not found:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    with _lock(spec, directory, ctx):
        cached = cached_file(
            spec, directory, model=ctx.model, root=root, progress=ctx.progress, check=ctx.check
        )
        if cached is not None:
            return cached  # another process put it there while we waited
        known = KnownHashes(root)
        expected = expected_sha256(spec, ctx.model, known)
        for source, path in found:
            digest, problem = _adopt(path, spec, directory / spec.name, expected, ctx)
            if problem:
                ctx.progress.note(f"{ctx.label}: ignoring {path} in the Hugging Face cache: {problem}")
                continue
            for leftover in (f"{spec.name}.part", f"{spec.name}.part.json"):
                (directory / leftover).unlink(missing_ok=True)
            ctx.progress.note(f"{ctx.label}: using {path} from the Hugging Face cache (no download)")
            origin = f"{path} (Hugging Face cache of {source.describe()})"
            first_use = known if expected is None else None
            return store_record(spec, directory, digest, origin, model=ctx.model, first_use=first_use)
    return None


def _download(spec: FileSpec, directory: Path, *, root: Path, ctx: Context) -> FetchedFile:
    """Download one alternative under its lock; _AllNotFound if every source said "no such file".

    A first-use hash is recorded only after the file passed every check and was renamed into place.
    """
    model = ctx.model
    with _lock(spec, directory, ctx):
        found = cached_file(spec, directory, model=model, root=root, progress=ctx.progress, check=ctx.check)
        if found is not None:
            return found  # another process finished it while we waited
        known = KnownHashes(root)
        expected = expected_sha256(spec, model, known)
        failures: list[str] = []
        all_not_found = True
        for source in spec.sources:
            try:
                digest = fetch_from_source(source, spec, directory / spec.name, expected, ctx)
            except SourceFailed as error:
                failures.append(f"{source.describe()}: {error}")
                all_not_found &= error.not_found
                ctx.progress.note(f"{ctx.label}: bad source {source.describe()}: {error}")
                continue
            first_use = known if expected is None else None
            return store_record(spec, directory, digest, source.describe(), model=model, first_use=first_use)
    message = f"could not download {model}/{spec.name}: " + "; ".join(failures)
    if all_not_found:
        raise _AllNotFound(message)
    pinned = None if spec.sha256 else known.get(model, spec.name)
    if pinned is not None and any("sha256 mismatch" in f for f in failures):
        raise DownloadError(
            f"{message}; the expected sha256 was recorded at the first download ({pinned.get('recorded_at', '?')}"
            f" from {pinned.get('source', '?')}): if the publisher replaced the file, run "
            f"`ilvr models rm {model} --forget` and try again"
        )
    raise DownloadError(message + _by_hand_hint(model))


def _by_hand_hint(model: str) -> str:
    return f"; you can download it by hand and run `ilvr models add {model} FILE`"


def _offline_message(model: str, spec: FileSpec, directory: Path) -> str:
    size = spec.size or spec.approx_size
    return (
        f"{model} needs {spec.name} ({format_bytes(size)}), which is not in the cache, and "
        f"{offline_setting()} forbids downloading it: fetch it from {spec.sources[0].describe()} and put it "
        f"at {directory / spec.name}, or run `ilvr models add {model} FILE`"
    )


def _on_endpoint(spec: FileSpec) -> FileSpec:
    """``spec`` with its Hub URLs moved to ``HF_ENDPOINT`` (when set)."""
    sources = tuple(
        dataclasses.replace(s, url=hub.with_endpoint(s.url)) if s.url else s for s in spec.sources
    )
    return dataclasses.replace(spec, sources=sources)


def ensure_file(
    spec: FileSpec,
    directory: Path,
    *,
    model: str,
    root: Path,
    offline: bool | None = None,
    options: DownloadOptions | None = None,
    progress: DownloadProgress | None = None,
    allow_local: bool = False,
    check: ContentCheck | None = None,
) -> FetchedFile:
    """``directory/spec.name`` (or a fallback's), verified; fetched first if it is not in the cache.

    ``check`` is what a file without a published sha256 must pass before its hash is recorded on first use
    (see :mod:`ilvr_cli.registry.checks`). A copy in the Hugging Face cache is used before any source.
    When ``offline`` (default: ``ILVR_OFFLINE`` or ``HF_HUB_OFFLINE``) only local-path sources are tried;
    without one, a missing file raises OfflineError saying where to put it. Raises DownloadError naming
    every source and why it failed when no source delivers a good file.
    """
    progress = progress or NullProgress()
    options = options or DownloadOptions()
    for alternative in spec.alternatives():
        found = cached_file(alternative, directory, model=model, root=root, progress=progress, check=check)
        if found is not None:
            return found
    alternatives = [_on_endpoint(a) for a in spec.alternatives()]
    first = alternatives[0]

    def context(alternative: FileSpec) -> Context:
        target = directory / alternative.name
        return Context(
            options, progress, opener(), model, alternative.name, target, allow_local, check, alternative.size
        )

    try:
        for alternative in alternatives:
            found = _from_hub_cache(alternative, directory, root=root, ctx=context(alternative))
            if found is not None:
                return found
    except OSError as error:
        raise DownloadError(f"cannot write {directory}: {error}") from None
    offline = is_offline(offline)
    if offline:  # a copy from a local file never touches the network
        local = [
            dataclasses.replace(a, sources=tuple(s for s in a.sources if s.path is not None), fallback=None)
            for a in alternatives
        ]
        alternatives = [a for a in local if a.sources] if allow_local else []
        if not alternatives:
            raise OfflineError(_offline_message(model, first, directory))
    directory.mkdir(parents=True, exist_ok=True)
    not_found: list[str] = []
    for alternative in alternatives:
        try:
            return _download(alternative, directory, root=root, ctx=context(alternative))
        except _AllNotFound as error:
            not_found.append(str(error))
        except OSError as error:  # the network ones became Transient/SourceFailed: this is the disk
            raise DownloadError(f"cannot write {directory / alternative.name}: {error}") from None
        except DownloadError as error:
            if offline:
                raise OfflineError(f"{_offline_message(model, first, directory)} ({error})") from None
            raise
    if offline:
        raise OfflineError(f"{_offline_message(model, first, directory)} ({'; '.join(not_found)})")
    raise DownloadError("; ".join(not_found) + _by_hand_hint(model))
