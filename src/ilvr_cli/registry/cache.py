"""Where models live on disk, and the small JSON records that say what is there and why it is trusted.

Layout (docs/registry.md)::

    <root>/                              --cache-dir, else ILVR_CACHE_DIR, else platformdirs' user cache dir
      catalog.json                       your entries (`ilvr models add`), merged over the built-in catalog
      known_hashes.json                  sha256 recorded at first download where none is published
                                         (kept by `ilvr models rm`, dropped by `ilvr models rm --forget`)
      models/<name>/
        <file>                           a downloaded file, as published
        <file>.part, <file>.part.json    an interrupted download and where it came from (resumed with Range)
        model.safetensors                the converted weights that are loaded (memory-mapped)
        manifest.json                    size, sha256, source and trust of each file here (every use
                                         rehashes a file and compares it with this sha256)
        .lock, .<file>.lock              inter-process locks (empty files)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ilvr_cli.atomic import atomic_write_text
from ilvr_cli.registry.lock import FileLock
from ilvr_cli.registry.names import validate_name

__all__ = [
    "CONVERTED_NAME",
    "ENV_CACHE_DIR",
    "ENV_HF_OFFLINE",
    "ENV_OFFLINE",
    "FileRecord",
    "KnownHashes",
    "Manifest",
    "cache_root",
    "is_offline",
    "model_dir",
    "offline_setting",
    "sha256_file",
]

ENV_CACHE_DIR = "ILVR_CACHE_DIR"
ENV_OFFLINE = "ILVR_OFFLINE"
ENV_HF_OFFLINE = "HF_HUB_OFFLINE"
APP_NAME = "ilvr"
CONVERTED_NAME = "model.safetensors"
MANIFEST_NAME = "manifest.json"
KNOWN_HASHES_NAME = "known_hashes.json"

Trust = Literal["published", "first-use", "user", "converted"]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir`` if given, else ``$ILVR_CACHE_DIR``, else ``user_cache_dir("ilvr")``."""
    if cache_dir is None:
        cache_dir = os.environ.get(ENV_CACHE_DIR) or None
    if cache_dir is None:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir(APP_NAME, appauthor=False)
    return Path(cache_dir).expanduser().absolute()


def _env_true(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``ILVR_OFFLINE`` or the Hugging Face Hub's ``HF_HUB_OFFLINE`` is
    set to 1/true/yes/on (either one closes the network: no source is contacted)."""
    if offline is not None:
        return offline
    return _env_true(ENV_OFFLINE) or _env_true(ENV_HF_OFFLINE)


def offline_setting() -> str:
    """What forbids the network, for messages: ``HF_HUB_OFFLINE=1`` when only that is set, else
    ``ILVR_OFFLINE=1``."""
    only_hf = _env_true(ENV_HF_OFFLINE) and not _env_true(ENV_OFFLINE)
    return f"{ENV_HF_OFFLINE if only_hf else ENV_OFFLINE}=1"


def model_dir(root: Path, name: str) -> Path:
    """``<root>/models/<name>``; the name is validated so it can never point outside the cache."""
    return root / "models" / validate_name(name)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or unreadable file reads as empty (it is only a record)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_json(path: Path, change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """Read-modify-write ``path`` under its own lock, so concurrent writers never lose an update."""
    with FileLock(path.with_name(f".{path.name}.lock")):
        data = read_json(path)
        change(data)
        write_json_atomic(path, data)
    return data


@dataclass(frozen=True)
class FileRecord:
    """What we know about a file in the cache: its checked content (sha256, compared on every use), and the
    size and mtime it had then (informational: a corruption can keep both, so they never replace the hash)."""

    sha256: str
    size: int
    mtime_ns: int
    trust: Trust
    source: str = ""
    recorded_at: str = ""

    @classmethod
    def for_file(cls, path: Path, sha256: str, trust: Trust, source: str = "") -> FileRecord:
        st = path.stat()
        return cls(sha256, st.st_size, st.st_mtime_ns, trust, source, now_iso())

    def stamp_matches(self, path: Path) -> bool:
        """True when size and modification time are unchanged since the file was hashed (not proof that
        the content is: only used to decide whether the record needs refreshing)."""
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


class Manifest:
    """``models/<name>/manifest.json``: one :class:`FileRecord` per file (downloads, converted file)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / MANIFEST_NAME

    def get(self, file_name: str) -> FileRecord | None:
        entry = read_json(self.path).get("files", {}).get(file_name)
        try:
            return FileRecord(**entry) if isinstance(entry, dict) else None
        except TypeError:
            return None

    def set(self, file_name: str, record: FileRecord) -> None:
        update_json(self.path, lambda d: d.setdefault("files", {}).__setitem__(file_name, asdict(record)))

    def remove(self, file_name: str) -> None:
        update_json(self.path, lambda d: d.setdefault("files", {}).pop(file_name, None))


class KnownHashes:
    """``<root>/known_hashes.json``: sha256 recorded at the first download of files without a published one.

    Kept when a model is removed, so a later download is checked against what was first seen.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / KNOWN_HASHES_NAME

    @staticmethod
    def key(model: str, file_name: str) -> str:
        return f"{model}/{file_name}"

    def get(self, model: str, file_name: str) -> dict[str, Any] | None:
        entry = read_json(self.path).get(self.key(model, file_name))
        return entry if isinstance(entry, dict) and "sha256" in entry else None

    def record(self, model: str, file_name: str, sha256: str, size: int, source: str) -> None:
        entry = {"sha256": sha256, "size": size, "source": source, "recorded_at": now_iso()}
        update_json(self.path, lambda d: d.setdefault(self.key(model, file_name), entry))

    def forget(self, model: str) -> int:
        """Drop every hash recorded for ``model``'s files (``ilvr models rm --forget``); how many there were."""
        prefix = self.key(model, "")
        dropped: list[str] = []

        def drop(data: dict[str, Any]) -> None:
            dropped.extend(k for k in data if k.startswith(prefix))
            for key in dropped:
                del data[key]

        if self.path.exists():
            update_json(self.path, drop)
        return len(dropped)
