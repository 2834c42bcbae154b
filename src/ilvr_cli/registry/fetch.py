"""One file from one source: the transfer (an https URL, Google Drive, or a local path in an entry the user
added), retried with exponential backoff, then checked and renamed into place.

A retry that made progress starts a fresh budget. The size, the sha256 (published or recorded at first
use) and, with no hash to compare with, the content check decide; a bad file is deleted and the reason
names the source. Only a good file is renamed (atomically) from ``<file>.part`` to its final path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ilvr_cli.registry import hub
from ilvr_cli.registry.catalog import FileSpec, Source
from ilvr_cli.registry.checks import content_problem
from ilvr_cli.registry.gdrive import gdrive_attempt
from ilvr_cli.registry.transfer import (
    NETWORK_ERRORS,
    Context,
    HtmlPage,
    Part,
    SourceFailed,
    Transient,
    allowed_url,
    classify,
    http_attempt,
)

__all__ = ["fetch_from_source"]


def _copy_attempt(path: Path, part: Part, ctx: Context) -> None:
    """A local file (user-added source): copied like a download, so it is verified the same way."""
    if not path.is_file():
        raise SourceFailed(f"{path} does not exist", not_found=True)
    total = path.stat().st_size
    if part.size > total:
        part.restart()
    ctx.progress.start(ctx.label, total, part.size)
    with open(path, "rb") as f:
        f.seek(part.size)
        part.write_from(f, ctx.options.chunk_size, ctx.progress)


def _attempt(source: Source, part: Part, ctx: Context) -> None:
    endpoint = source.url is not None and hub.is_user_endpoint(source.url)  # the user's HF_ENDPOINT
    local_ok = ctx.allow_local or endpoint
    if source.is_local() and not local_ok:
        raise SourceFailed("local sources are allowed only in entries you added")
    try:
        if source.path is not None:
            _copy_attempt(Path(source.path).expanduser(), part, ctx)
        elif source.gdrive:
            gdrive_attempt(source.gdrive, part, ctx)
        else:
            assert source.url is not None
            if not allowed_url(source.url, local_ok):
                hint = (
                    f" ({hub.ENV_ENDPOINT}={hub.endpoint()} is neither https nor localhost)"
                    if endpoint
                    else ""
                )
                raise SourceFailed(f"only https URLs are allowed{hint}")
            http_attempt(source.url, part, ctx)
    except HtmlPage as page:
        raise SourceFailed(f"answered a web page ({page.url}) instead of the file") from None
    except NETWORK_ERRORS as error:
        raise classify(error) from None


def fetch_from_source(source: Source, spec: FileSpec, final: Path, expected: str | None, ctx: Context) -> str:
    """Download ``spec`` from one source into ``final``; returns its sha256 or raises SourceFailed."""
    ctx.source = source.describe()
    part = Part(final.with_name(final.name + ".part"), ctx.source)
    failures = 0
    try:
        while True:
            before = part.size
            try:
                _attempt(source, part, ctx)
                break
            except Transient as error:
                failures = 1 if part.size > before else failures + 1  # progress earns a fresh budget
                if failures > ctx.options.retries:
                    raise SourceFailed(f"{error} (gave up after {ctx.options.retries} retries)") from None
                delay = min(ctx.options.max_backoff, ctx.options.backoff * 2 ** (failures - 1))
                ctx.progress.note(f"{ctx.label}: {error}; retrying in {delay:.1f} s")
                time.sleep(delay)
    finally:
        ctx.progress.finish()
    digest = part.hasher.hexdigest()
    if spec.size is not None and part.size != spec.size:
        part.discard()
        raise SourceFailed(f"served {part.size} bytes, expected {spec.size}; the file was deleted")
    if expected is None or digest != expected:
        problem = content_problem(part.path, spec.name, expected, digest, ctx.check)
        if problem is not None:
            part.discard()
            raise SourceFailed(f"{problem}; the file was deleted")
    os.replace(part.path, final)
    part.meta_path.unlink(missing_ok=True)
    return digest
