"""One HTTP transfer into ``<file>.part`` (stdlib ``urllib``), and what can go wrong with it.

A ``.part`` resumes with ``Range``, guarded by ``If-Range`` with the server's ETag; a server that ignores
the range restarts the file. Only https is followed, also through redirects (localhost only from
localhost). A web page instead of the file is caught by its ``Content-Type``. Failures are sorted into
:class:`Transient` (retry this source) and :class:`SourceFailed` (try the next). The Hub token goes only
to the Hub endpoint, re-decided at each redirect (:func:`ilvr_cli.registry.hub.auth_headers`). The
first response that delivers bytes from a source is announced to the progress object.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import HTTPRedirectHandler, OpenerDirector, Request, build_opener

from ilvr_cli import __version__
from ilvr_cli.registry import hub
from ilvr_cli.registry.cache import read_json, write_json_atomic
from ilvr_cli.registry.catalog import LOCAL_HOSTS
from ilvr_cli.registry.checks import ContentCheck
from ilvr_cli.registry.progress import DownloadProgress, announce

__all__ = [
    "GDRIVE_DOWNLOAD_URL",
    "NETWORK_ERRORS",
    "Context",
    "DownloadOptions",
    "HtmlPage",
    "Part",
    "SourceFailed",
    "Transient",
    "allowed_url",
    "classify",
    "http_attempt",
    "opener",
]

GDRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download"
_HTML_LIMIT = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


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


@dataclass
class Context:
    """One file being fetched: where it goes, how, and (set per source) where it comes from."""

    options: DownloadOptions
    progress: DownloadProgress
    opener: OpenerDirector
    model: str
    name: str
    target: Path
    allow_local: bool
    check: ContentCheck | None = None
    size: int | None = None  # the published size, if any
    source: str = ""  # the source being tried (its description)
    announced: str = ""  # the source already announced

    @property
    def label(self) -> str:
        return f"{self.model}/{self.name}"


# ------------------------------------------------------------------------------------------ failures


class Transient(Exception):
    """Worth retrying from the same source (timeout, reset, truncated body, 5xx, 429)."""


class SourceFailed(Exception):
    """This source cannot deliver the file; ``not_found`` when it answered 404/410 or has no such file."""

    def __init__(self, reason: str, *, not_found: bool = False) -> None:
        super().__init__(reason)
        self.not_found = not_found


class HtmlPage(Exception):
    """The server answered with a web page instead of the file (Drive's confirm page, an error page)."""

    def __init__(self, url: str, body: str) -> None:
        super().__init__(url)
        self.url = url
        self.body = body


def classify(error: BaseException) -> Exception:
    """Map a network exception to Transient or SourceFailed."""
    if isinstance(error, HTTPError):
        if error.code in _RETRY_STATUS:
            return Transient(f"HTTP {error.code} {error.reason}")
        return SourceFailed(f"HTTP {error.code} {error.reason}", not_found=error.code in (404, 410))
    reason = error.reason if isinstance(error, URLError) else error
    if isinstance(reason, ssl.SSLCertVerificationError):
        return SourceFailed(f"TLS certificate check failed: {reason.verify_message}")
    if isinstance(reason, socket.gaierror):
        return SourceFailed(f"cannot resolve the host ({reason.strerror}); check the network")
    if isinstance(reason, TimeoutError):
        return Transient("no data received before the timeout (stalled)")
    return Transient(f"{type(reason).__name__}: {reason}")


NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError)


# ------------------------------------------------------------------------------------ HTTP plumbing


def allowed_url(url: str, allow_local: bool) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or (
        allow_local and parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
    )


class _SafeRedirects(HTTPRedirectHandler):
    """Follow redirects only to https (or, from a localhost URL, to localhost): never downgrade to http.
    The Hub token is an unredirected header, added again only where the new URL is the Hub endpoint."""

    def redirect_request(
        self, req: Request, fp: IO[bytes], code: int, msg: str, headers: http.client.HTTPMessage, newurl: str
    ) -> Request | None:
        local = urlsplit(req.full_url).hostname in LOCAL_HOSTS
        if not allowed_url(newurl, allow_local=local):
            raise SourceFailed(f"refused a redirect to the insecure URL {newurl}")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            for key, value in hub.auth_headers(new.full_url).items():
                new.add_unredirected_header(key, value)
        return new


def opener() -> OpenerDirector:
    return build_opener(_SafeRedirects())


class Part:
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


def http_attempt(url: str, part: Part, ctx: Context) -> None:
    """One GET of ``url`` appended to ``part`` (with Range when resuming); raises Transient on a cut."""
    request = Request(url, headers={"User-Agent": ctx.options.user_agent, "Accept-Encoding": "identity"})
    for key, value in hub.auth_headers(url).items():
        request.add_unredirected_header(key, value)  # never copied into a redirect by urllib
    if part.size:
        request.add_header("Range", f"bytes={part.size}-")
        etag = part.meta.get("etag", "")
        if etag and not etag.startswith("W/"):
            request.add_header("If-Range", etag)
    try:
        response = ctx.opener.open(request, timeout=ctx.options.timeout)
    except HTTPError as error:
        if error.code == 416 and part.size:
            if error.headers.get("Content-Range", "").endswith(f"/{part.size}"):
                return  # the part already holds the whole file
            part.restart()
            raise Transient("the server refused to resume; starting over") from None
        raise classify(error) from None
    with response:
        content_type = response.headers.get("Content-Type", "")
        if "text/html" in content_type and not ctx.name.endswith((".html", ".htm")):
            body = response.read(_HTML_LIMIT).decode("utf-8", "replace")
            raise HtmlPage(response.geturl(), body)
        total = _expected_total(response, part)
        part.set_validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
        if ctx.announced != ctx.source:
            ctx.announced = ctx.source
            size = total if total is not None else ctx.size
            announce(ctx.progress, ctx.model, ctx.name, size, ctx.source, ctx.target)
        ctx.progress.start(ctx.label, total, part.size)
        part.write_from(response, ctx.options.chunk_size, ctx.progress)
    if total is not None and part.size != total:
        if part.size > total:
            part.restart()
            raise SourceFailed(f"sent {part.size} bytes but announced {total}")
        raise Transient(f"connection closed after {part.size} of {total} bytes")


def _expected_total(response: http.client.HTTPResponse, part: Part) -> int | None:
    """The full size from Content-Range / Content-Length; restarts the part if the server ignored Range."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = _CONTENT_RANGE.search(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != part.size:
            part.restart()
            raise Transient("the server answered a different byte range; starting over")
        return int(match.group(3)) if match.group(3) != "*" else None
    if part.size:
        part.restart()  # 200 to a Range request: the whole file follows
    return int(length) if length and length.isdigit() else None
