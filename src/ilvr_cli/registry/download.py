"""Safe, resumable downloads into the cache (stdlib ``urllib`` only).

One file, :func:`ensure_file`:

1. under a per-file lock (a second process waits, then finds the file), reuse a cached copy only after
   rehashing it: its bytes must match the published sha256, else the one recorded at first use, else the
   one in its manifest (a size and mtime kept by a corruption prove nothing); a mismatch deletes it;
2. else try each source in order: stream to ``<file>.part`` (resuming a previous ``.part`` from the same
   source with an HTTP ``Range`` request), retrying transient errors with exponential backoff; a read that
   stalls for ``timeout`` seconds counts as a transient error;
3. check the size and the sha256 (published, or recorded on first download); a web page instead of the
   file, a mismatch, or (first use: no hash to compare with) a file that fails the entry's content check
   (:mod:`ilvr_cli.registry.checks`) deletes the file and names the bad source, and the next source is
   tried; a good file is renamed into place atomically, and only then is a first-use hash recorded.

Offline (``ILVR_OFFLINE=1``), only local-path sources are used: the network stays closed.

Google Drive sources go through the ``drive.usercontent.google.com`` endpoint and its confirm form. URLs
must be https, except local paths and localhost URLs in entries the user added. Nothing here prints:
progress goes to a :class:`DownloadProgress`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urljoin, urlsplit
from urllib.request import HTTPRedirectHandler, OpenerDirector, Request, build_opener

from ilvr_cli import __version__
from ilvr_cli.errors import DownloadError, IlvrError, OfflineError
from ilvr_cli.registry.cache import (
    FileRecord,
    KnownHashes,
    Manifest,
    Trust,
    is_offline,
    read_json,
    sha256_file,
    write_json_atomic,
)
from ilvr_cli.registry.catalog import LOCAL_HOSTS, FileSpec, Source
from ilvr_cli.registry.checks import ContentCheck, looks_like_web_page
from ilvr_cli.registry.lock import FileLock

__all__ = [
    "GDRIVE_DOWNLOAD_URL",
    "DownloadOptions",
    "DownloadProgress",
    "FetchedFile",
    "NullProgress",
    "ensure_file",
    "format_bytes",
]

GDRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download"
_HTML_LIMIT = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadProgress(Protocol):
    """What a download reports; the CLI renders it as a rich progress bar (bytes, speed, ETA)."""

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

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class DownloadOptions:
    """Network knobs. ``timeout``: seconds without a byte (or to connect) before an attempt is abandoned;
    ``retries``: attempts per source that make no progress; ``backoff``: first wait, doubled each retry."""

    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    chunk_size: int = 1 << 20
    gdrive_url: str = GDRIVE_DOWNLOAD_URL
    lock_timeout: float | None = None
    user_agent: str = f"ilvr-cli/{__version__}"


@dataclass(frozen=True)
class FetchedFile:
    """A verified file in the cache; ``source`` is empty when it was already there."""

    path: Path
    sha256: str
    trust: Trust
    source: str = ""


def format_bytes(n: float | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as download sizes are usually quoted)."""
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


# ------------------------------------------------------------------------------------------ failures


class _Transient(Exception):
    """Worth retrying from the same source (timeout, reset, truncated body, 5xx, 429)."""


class _SourceFailed(Exception):
    """This source cannot deliver the file; ``not_found`` when it answered 404/410 or has no such file."""

    def __init__(self, reason: str, *, not_found: bool = False) -> None:
        super().__init__(reason)
        self.not_found = not_found


class _HtmlPage(Exception):
    """The server answered with a web page instead of the file (Drive's confirm page, an error page)."""

    def __init__(self, url: str, body: str) -> None:
        super().__init__(url)
        self.url = url
        self.body = body


class _AllNotFound(Exception):
    """Every source of a file answered "not found": its fallback may be tried."""


def _classify(error: BaseException) -> Exception:
    """Map a network exception to _Transient or _SourceFailed."""
    if isinstance(error, HTTPError):
        if error.code in _RETRY_STATUS:
            return _Transient(f"HTTP {error.code} {error.reason}")
        return _SourceFailed(f"HTTP {error.code} {error.reason}", not_found=error.code in (404, 410))
    reason = error.reason if isinstance(error, URLError) else error
    if isinstance(reason, ssl.SSLCertVerificationError):
        return _SourceFailed(f"TLS certificate check failed: {reason.verify_message}")
    if isinstance(reason, socket.gaierror):
        return _SourceFailed(f"cannot resolve the host ({reason.strerror}); check the network")
    if isinstance(reason, TimeoutError):
        return _Transient("no data received before the timeout (stalled)")
    return _Transient(f"{type(reason).__name__}: {reason}")


_NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError)


# ------------------------------------------------------------------------------------ HTTP plumbing


def _allowed_url(url: str, allow_local: bool) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or (
        allow_local and parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
    )


class _SafeRedirects(HTTPRedirectHandler):
    """Follow redirects only to https (or, from a localhost URL, to localhost): never downgrade to http."""

    def redirect_request(
        self, req: Request, fp: IO[bytes], code: int, msg: str, headers: http.client.HTTPMessage, newurl: str
    ) -> Request | None:
        local = urlsplit(req.full_url).hostname in LOCAL_HOSTS
        if not _allowed_url(newurl, allow_local=local):
            raise _SourceFailed(f"refused a redirect to the insecure URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> OpenerDirector:
    return build_opener(_SafeRedirects())


class _Part:
    """``<file>.part`` and its sidecar ``.part.json`` (source and validators); hashes bytes as they arrive."""

    def __init__(self, path: Path, source_id: str) -> None:
        self.path = path
        self.meta_path = path.with_name(path.name + ".json")
        meta = read_json(self.meta_path)
        if path.exists() and meta.get("source") != source_id:
            path.unlink()  # a leftover from another source: its bytes may belong to a different file
            meta = {}
        self.meta: dict[str, Any] = {
            "source": source_id,
            **{k: meta[k] for k in ("etag", "last_modified") if k in meta},
        }
        write_json_atomic(self.meta_path, self.meta)
        self.hasher = hashlib.sha256()
        self.size = 0
        if path.exists():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    self.hasher.update(chunk)
                    self.size += len(chunk)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.hasher, self.size = hashlib.sha256(), 0

    def set_validators(self, etag: str | None, last_modified: str | None) -> None:
        new = {"source": self.meta["source"], "etag": etag, "last_modified": last_modified}
        new = {k: v for k, v in new.items() if v}
        if new != self.meta:
            self.meta = new
            write_json_atomic(self.meta_path, new)

    def write_from(self, stream: IO[bytes], chunk_size: int, progress: DownloadProgress) -> None:
        read = getattr(stream, "read1", stream.read)  # what has arrived: a stall loses nothing already sent
        with open(self.path, "ab") as f:
            while chunk := read(chunk_size):
                f.write(chunk)
                self.hasher.update(chunk)
                self.size += len(chunk)
                progress.advance(len(chunk))
            f.flush()
            os.fsync(f.fileno())

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _http_attempt(url: str, part: _Part, name: str, ctx: _Context) -> None:
    """One GET of ``url`` appended to ``part`` (with Range when resuming); raises _Transient on a cut."""
    headers = {"User-Agent": ctx.options.user_agent, "Accept-Encoding": "identity"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
        etag = part.meta.get("etag", "")
        if etag and not etag.startswith("W/"):
            headers["If-Range"] = etag
    try:
        response = ctx.opener.open(Request(url, headers=headers), timeout=ctx.options.timeout)
    except HTTPError as error:
        if error.code == 416 and part.size:
            if error.headers.get("Content-Range", "").endswith(f"/{part.size}"):
                return  # the part already holds the whole file
            part.restart()
            raise _Transient("the server refused to resume; starting over") from None
        raise _classify(error) from None
    with response:
        content_type = response.headers.get("Content-Type", "")
        if "text/html" in content_type and not name.endswith((".html", ".htm")):
            body = response.read(_HTML_LIMIT).decode("utf-8", "replace")
            raise _HtmlPage(response.geturl(), body)
        total = _expected_total(response, part)
        part.set_validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
        ctx.progress.start(ctx.label, total, part.size)
        part.write_from(response, ctx.options.chunk_size, ctx.progress)
    if total is not None and part.size != total:
        if part.size > total:
            part.restart()
            raise _SourceFailed(f"sent {part.size} bytes but announced {total}")
        raise _Transient(f"connection closed after {part.size} of {total} bytes")


def _expected_total(response: http.client.HTTPResponse, part: _Part) -> int | None:
    """The full size from Content-Range / Content-Length; restarts the part if the server ignored Range."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = _CONTENT_RANGE.search(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != part.size:
            part.restart()
            raise _Transient("the server answered a different byte range; starting over")
        return int(match.group(3)) if match.group(3) != "*" else None
    if part.size:
        part.restart()  # 200 to a Range request: the whole file follows
    return int(length) if length and length.isdigit() else None


class _FormParser(HTMLParser):
    """Collect Drive's confirm form (``<form action>`` and its ``<input>`` fields) and any confirm link."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.confirm_href: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        is_download_form = "download" in a.get("action", "") or a.get("id") == "download-form"
        if tag == "form" and self.action is None and is_download_form:
            self.action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", "") and self.confirm_href is None:
            self.confirm_href = a["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _drive_confirm_url(page: _HtmlPage, file_id: str) -> str:
    """The URL behind Drive's "can't scan this file for viruses" page (its form, or an older confirm link)."""
    parser = _FormParser()
    parser.feed(page.body)
    if parser.action is not None:
        fields = parser.fields or {"id": file_id, "export": "download", "confirm": "t"}
        return urljoin(page.url, parser.action) + "?" + urlencode(fields)
    if parser.confirm_href:
        return urljoin(page.url, parser.confirm_href)
    text = page.body.lower()
    if "quota" in text or "too many users" in text:
        raise _SourceFailed("Google Drive refuses: the file's download quota is exceeded; try again in a day")
    if "not found" in text or "does not exist" in text or "404" in text:
        raise _SourceFailed("Google Drive: no such file (removed, or not shared)", not_found=True)
    raise _SourceFailed("Google Drive answered a web page without a download form (access denied?)")


def _gdrive_attempt(file_id: str, part: _Part, name: str, ctx: _Context) -> None:
    """Drive's usercontent endpoint; large files first answer an HTML confirm page, whose form we submit."""
    if not _allowed_url(ctx.options.gdrive_url, allow_local=True):
        raise _SourceFailed(f"the Google Drive endpoint {ctx.options.gdrive_url} is not https")
    url = f"{ctx.options.gdrive_url}?{urlencode({'id': file_id, 'export': 'download'})}"
    try:
        _http_attempt(url, part, name, ctx)
    except _HtmlPage as page:
        confirm = _drive_confirm_url(page, file_id)
        try:
            _http_attempt(confirm, part, name, ctx)
        except _HtmlPage as again:
            _drive_confirm_url(again, file_id)  # raises the specific reason if it can tell
            raise _SourceFailed("Google Drive answered a web page again after the confirm step") from None


def _copy_attempt(path: Path, part: _Part, ctx: _Context) -> None:
    """A local file (user-added source): copied like a download, so it is verified the same way."""
    if not path.is_file():
        raise _SourceFailed(f"{path} does not exist", not_found=True)
    total = path.stat().st_size
    if part.size > total:
        part.restart()
    ctx.progress.start(ctx.label, total, part.size)
    with open(path, "rb") as f:
        f.seek(part.size)
        part.write_from(f, ctx.options.chunk_size, ctx.progress)


@dataclass
class _Context:
    options: DownloadOptions
    progress: DownloadProgress
    opener: OpenerDirector
    label: str
    allow_local: bool
    check: ContentCheck | None = None


def _attempt(source: Source, part: _Part, name: str, ctx: _Context) -> None:
    if source.is_local() and not ctx.allow_local:
        raise _SourceFailed("local sources are allowed only in entries you added")
    try:
        if source.path is not None:
            _copy_attempt(Path(source.path).expanduser(), part, ctx)
        elif source.gdrive:
            _gdrive_attempt(source.gdrive, part, name, ctx)
        else:
            assert source.url is not None
            if not _allowed_url(source.url, ctx.allow_local):
                raise _SourceFailed("only https URLs are allowed")
            _http_attempt(source.url, part, name, ctx)
    except _HtmlPage as page:
        raise _SourceFailed(f"answered a web page ({page.url}) instead of the file") from None
    except _NETWORK_ERRORS as error:
        raise _classify(error) from None


def _fetch_from_source(
    source: Source, spec: FileSpec, final: Path, expected: str | None, ctx: _Context
) -> str:
    """Download ``spec`` from one source into ``final``; returns its sha256 or raises _SourceFailed."""
    part = _Part(final.with_name(final.name + ".part"), source.describe())
    failures = 0
    try:
        while True:
            before = part.size
            try:
                _attempt(source, part, spec.name, ctx)
                break
            except _Transient as error:
                failures = 1 if part.size > before else failures + 1  # progress earns a fresh budget
                if failures > ctx.options.retries:
                    raise _SourceFailed(f"{error} (gave up after {ctx.options.retries} retries)") from None
                delay = min(ctx.options.max_backoff, ctx.options.backoff * 2 ** (failures - 1))
                ctx.progress.note(f"{ctx.label}: {error}; retrying in {delay:.1f} s")
                time.sleep(delay)
    finally:
        ctx.progress.finish()
    digest = part.hasher.hexdigest()
    if spec.size is not None and part.size != spec.size:
        part.discard()
        raise _SourceFailed(f"served {part.size} bytes, expected {spec.size}; the file was deleted")
    if expected is None or digest != expected:
        problem = _content_problem(part.path, spec.name, expected, digest, ctx.check)
        if problem is not None:
            part.discard()
            raise _SourceFailed(f"{problem}; the file was deleted")
    os.replace(part.path, final)
    part.meta_path.unlink(missing_ok=True)
    return digest


def _content_problem(
    path: Path, name: str, expected: str | None, digest: str, check: ContentCheck | None
) -> str | None:
    """Why a file whose sha256 is ``digest`` cannot be ``name`` (None if it can): a web page, a hash that
    differs from ``expected``, or (no hash to compare with: first use) a failed content ``check``."""
    if expected is not None and digest == expected:
        return None
    if looks_like_web_page(path, name):
        return "served a web page (a sign-in, quota or error page?) instead of the file"
    if expected is not None:
        return f"sha256 mismatch (got {digest}, expected {expected})"
    if check is not None:
        try:
            check(path, name)
        except IlvrError as error:
            reason = str(error).removeprefix(f"{path}: ")
            return f"does not load as a checkpoint ({reason})"
    return None


# ---------------------------------------------------------------------------------------- the entry


def _expected_sha256(spec: FileSpec, model: str, known: KnownHashes) -> str | None:
    if spec.sha256:
        return spec.sha256
    entry = known.get(model, spec.name)
    return entry["sha256"] if entry else None


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
    expected = _expected_sha256(spec, model, known) or (record.sha256 if record else None)
    digest, size = sha256_file(final), final.stat().st_size
    problem = None
    if spec.size is not None and size != spec.size:
        problem = f"size {size} is not {spec.size}"
    elif (problem := _content_problem(final, spec.name, expected, digest, check)) is not None:
        problem = problem.removeprefix("served ")
    if problem is not None:
        progress.note(f"{final}: {problem}; deleting it")
        final.unlink()
        manifest.remove(spec.name)
        return None
    trust: Trust = "published" if spec.sha256 else "first-use"
    if expected is None:
        known.record(model, spec.name, digest, size, "placed in the cache by hand")
    if record is None or not record.stamp_matches(final) or record.sha256 != digest:
        source = record.source if record else "placed in the cache by hand"
        manifest.set(spec.name, FileRecord.for_file(final, digest, trust, source))
    return FetchedFile(final, digest, trust)


def _offline_message(model: str, spec: FileSpec, directory: Path) -> str:
    size = spec.size or spec.approx_size
    return (
        f"{model} needs {spec.name} ({format_bytes(size)}), which is not in the cache, and ILVR_OFFLINE=1 "
        f"forbids downloading it: fetch it from {spec.sources[0].describe()} and put it at "
        f"{directory / spec.name}, or run `ilvr models add {model} FILE`"
    )


def _download(spec: FileSpec, directory: Path, *, model: str, root: Path, ctx: _Context) -> FetchedFile:
    """Download one alternative under its lock; _AllNotFound if every source said "no such file".

    A first-use hash is recorded only here, after the file passed every check and was renamed into place.
    """
    lock = FileLock(
        directory / f".{spec.name}.lock",
        timeout=ctx.options.lock_timeout,
        on_wait=ctx.progress.note,
        what=f"{model}/{spec.name}",
    )
    with lock:
        found = cached_file(spec, directory, model=model, root=root, progress=ctx.progress, check=ctx.check)
        if found is not None:
            return found  # another process finished it while we waited
        known = KnownHashes(root)
        expected = _expected_sha256(spec, model, known)
        failures: list[str] = []
        all_not_found = True
        for source in spec.sources:
            try:
                digest = _fetch_from_source(source, spec, directory / spec.name, expected, ctx)
            except _SourceFailed as error:
                failures.append(f"{source.describe()}: {error}")
                all_not_found &= error.not_found
                ctx.progress.note(f"{ctx.label}: bad source {source.describe()}: {error}")
                continue
            trust: Trust = "published" if spec.sha256 else "first-use"
            final = directory / spec.name
            if expected is None:
                known.record(model, spec.name, digest, final.stat().st_size, source.describe())
            Manifest(directory).set(spec.name, FileRecord.for_file(final, digest, trust, source.describe()))
            return FetchedFile(final, digest, trust, source.describe())
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
    """``directory/spec.name`` (or a fallback's), verified; downloaded first if it is not in the cache.

    ``check`` is what a file without a published sha256 must pass before its hash is recorded on first use
    (see :mod:`ilvr_cli.registry.checks`). When ``offline`` (default: ``ILVR_OFFLINE``) only local-path
    sources are tried; without one, a missing file raises OfflineError saying where to put it. Raises
    DownloadError naming every source and why it failed when no source delivers a good file.
    """
    progress = progress or NullProgress()
    options = options or DownloadOptions()
    for alternative in spec.alternatives():
        found = cached_file(alternative, directory, model=model, root=root, progress=progress, check=check)
        if found is not None:
            return found
    alternatives = list(spec.alternatives())
    offline = is_offline(offline)
    if offline:  # a copy from a local file never touches the network
        local = [
            dataclasses.replace(a, sources=tuple(s for s in a.sources if s.path is not None), fallback=None)
            for a in alternatives
        ]
        alternatives = [a for a in local if a.sources] if allow_local else []
        if not alternatives:
            raise OfflineError(_offline_message(model, spec, directory))
    directory.mkdir(parents=True, exist_ok=True)
    not_found: list[str] = []
    for alternative in alternatives:
        ctx = _Context(options, progress, _opener(), f"{model}/{alternative.name}", allow_local, check)
        try:
            return _download(alternative, directory, model=model, root=root, ctx=ctx)
        except _AllNotFound as error:
            not_found.append(str(error))
        except OSError as error:  # the network ones became _Transient/_SourceFailed: this is the disk
            raise DownloadError(f"cannot write {directory / alternative.name}: {error}") from None
        except DownloadError as error:
            if offline:
                raise OfflineError(f"{_offline_message(model, spec, directory)} ({error})") from None
            raise
    if offline:
        raise OfflineError(f"{_offline_message(model, spec, directory)} ({'; '.join(not_found)})")
    raise DownloadError("; ".join(not_found) + _by_hand_hint(model))
