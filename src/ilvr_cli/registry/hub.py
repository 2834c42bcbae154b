"""The Hugging Face Hub's conventions, for sources ``https://huggingface.co/<repo>/resolve/<rev>/<file>``.

- ``HF_ENDPOINT`` (a mirror) replaces the ``https://huggingface.co`` prefix of such URLs;
- ``HF_TOKEN`` is sent as ``Authorization: Bearer`` to the endpoint's origin (scheme, host, port) only:
  never to another host, not even after a redirect (the Hub sends large files to its CDN);
- ``HF_HUB_OFFLINE=1`` closes the network like ``ILVR_OFFLINE=1`` (:func:`~ilvr_cli.registry.cache.is_offline`);
- a file already in the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``; ``<type>s--<org>--<name>/snapshots/<commit>/<path>``, the commit of a
  branch in ``refs/<branch>``) is found by :func:`find_in_hub_cache`; that cache is only ever read.

Hand-written with the standard library, as the rest of the downloader: ``huggingface_hub`` is not a
dependency, and our sha256 pinning, resume, locks and messages apply to Hub files as to any other.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ilvr_cli.registry.catalog import LOCAL_HOSTS

__all__ = [
    "HUB_URL",
    "HubFile",
    "auth_headers",
    "endpoint",
    "find_in_hub_cache",
    "hub_cache_dir",
    "is_user_endpoint",
    "parse_hub_url",
    "with_endpoint",
]

HUB_URL = "https://huggingface.co"
ENV_ENDPOINT = "HF_ENDPOINT"
ENV_TOKEN = "HF_TOKEN"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO_TYPES = {"datasets": "dataset", "spaces": "space"}
_DEFAULT_PORTS = {"https": 443, "http": 80}


def endpoint() -> str:
    """``$HF_ENDPOINT`` without a trailing slash, else ``https://huggingface.co``."""
    return os.environ.get(ENV_ENDPOINT, "").strip().rstrip("/") or HUB_URL


def with_endpoint(url: str) -> str:
    """A Hub URL moved to ``HF_ENDPOINT``; any other URL (or with no endpoint set) unchanged."""
    base = endpoint()
    return base + url[len(HUB_URL) :] if url.startswith(HUB_URL + "/") and base != HUB_URL else url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def is_user_endpoint(url: str) -> bool:
    """True for a URL on the endpoint the user set in ``HF_ENDPOINT`` (so a mirror on localhost may be
    plain http, as the user's own catalog entries may)."""
    return bool(os.environ.get(ENV_ENDPOINT, "").strip()) and _origin(url) == _origin(endpoint())


def auth_headers(url: str) -> dict[str, str]:
    """``Authorization: Bearer $HF_TOKEN`` for a URL on the Hub endpoint's origin, over https (or to
    localhost); nothing for any other URL, so a redirect elsewhere never carries the token."""
    token = os.environ.get(ENV_TOKEN, "").strip()
    scheme, host, _ = origin = _origin(url)
    if not token or origin != _origin(endpoint()) or (scheme != "https" and host not in LOCAL_HOSTS):
        return {}
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository at a revision (a branch, tag or commit), as a ``resolve`` URL names it."""

    repo_type: str  # "model", "dataset" or "space"
    repo_id: str  # "org/name"
    revision: str
    path: str  # inside the repository, "/"-separated

    @property
    def folder(self) -> str:
        """The repository's folder in the Hugging Face cache: ``models--org--name``."""
        return "--".join([f"{self.repo_type}s", *self.repo_id.split("/")])


def _safe(part: str) -> bool:
    return part not in ("", ".", "..") and not any(c in part for c in "\\\0:")


def parse_hub_url(url: str) -> HubFile | None:
    """The repository file a ``<hub>/[datasets/|spaces/]<org>/<name>/resolve/<rev>/<path>`` URL names
    (on huggingface.co or on ``HF_ENDPOINT``); None for any other URL, or one whose parts could climb
    out of a folder (``..``)."""
    for base in (HUB_URL, endpoint()):
        if url.startswith(base + "/"):
            rest = url[len(base) + 1 :].split("?", 1)[0].split("#", 1)[0]
            break
    else:
        return None
    segments = rest.split("/")
    repo_type = _REPO_TYPES.get(segments[0], "model")
    if repo_type != "model":
        segments = segments[1:]
    at = 2 if len(segments) > 2 and segments[2] == "resolve" else 1  # org/name, or a legacy "name"
    if len(segments) < at + 3 or segments[at] != "resolve":
        return None
    repo_id, revision = "/".join(segments[:at]), unquote(segments[at + 1])
    path = "/".join(unquote(s) for s in segments[at + 2 :])
    parts = [*repo_id.split("/"), *revision.split("/"), *path.split("/")]
    return HubFile(repo_type, repo_id, revision, path) if all(map(_safe, parts)) else None


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE`` (or the older ``$HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``: huggingface_hub's order."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _commit(repo: Path, revision: str) -> str | None:
    if _COMMIT.fullmatch(revision):
        return revision
    try:
        commit = (repo / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if _COMMIT.fullmatch(commit) else None


def find_in_hub_cache(url: str) -> Path | None:
    """The Hugging Face cache's copy of the file a Hub URL names (usually a symlink into ``blobs/``), or
    None. Only the revision the URL names counts: a branch through ``refs/<branch>``, or a commit hash.
    Nothing is verified here: the caller checks the bytes as it would a download."""
    hub_file = parse_hub_url(url)
    if hub_file is None:
        return None
    repo = hub_cache_dir() / hub_file.folder
    commit = _commit(repo, hub_file.revision)
    if commit is None:
        return None
    candidate = repo / "snapshots" / commit / hub_file.path
    try:
        return candidate if candidate.is_file() else None
    except OSError:
        return None
