"""What ``ilvr models list/info/rm/add`` do, as typed functions returning results (the CLI only renders)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import CheckpointError, InputError, UsageError
from ilvr_cli.registry.cache import (
    CONVERTED_NAME,
    MANIFEST_NAME,
    FileRecord,
    KnownHashes,
    Manifest,
    cache_root,
    model_dir,
    now_iso,
    read_json,
    sha256_file,
    update_json,
)
from ilvr_cli.registry.catalog import (
    USER_CATALOG_NAME,
    Catalog,
    FileSpec,
    ModelSpec,
    Source,
    load_catalog,
    parse_entry,
    validate_name,
)
from ilvr_cli.registry.checks import checkpoint_check
from ilvr_cli.registry.download import DownloadProgress, NullProgress, cached_file, ensure_file
from ilvr_cli.registry.lock import FileLock
from ilvr_cli.registry.resolve import ResolvedModel, prepare

__all__ = [
    "FileCheck",
    "FileInfo",
    "ModelStatus",
    "add_model",
    "check_files",
    "file_infos",
    "model_status",
    "remove_model",
    "verify_model",
]

State = Literal["builtin", "ready", "downloaded", "partial", "missing"]
#: Where a :class:`FileInfo`'s sha256 comes from.
HashTrust = Literal["published", "first-use", "none"]


@dataclass(frozen=True)
class ModelStatus:
    """``builtin``: shipped inside ilvr-cli (no cache); ``ready``: loadable now (converted, or a weights file
    present); ``downloaded``: needs converting; ``partial``: an interrupted download is waiting to be resumed."""

    state: State
    directory: Path
    path: Path | None
    bytes_on_disk: int


@dataclass(frozen=True)
class FileInfo:
    """A file of an entry: its expected sha256 and where that comes from, and what the cache holds."""

    name: str
    sha256: str | None
    trust: HashTrust
    size: int | None
    approx_size: int | None
    sources: tuple[Source, ...]
    cached: FileRecord | None


def _disk_usage(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def model_status(spec: ModelSpec, cache_dir: str | Path | None = None) -> ModelStatus:
    """Whether an entry is in the cache (cheap: file existence only, nothing is hashed)."""
    if (builtin := spec.builtin_path) is not None:
        exists = builtin.is_file()
        size = builtin.stat().st_size if exists else 0
        return ModelStatus(
            "builtin" if exists else "missing", builtin.parent, builtin if exists else None, size
        )
    directory = model_dir(cache_root(cache_dir), spec.name)
    usage = _disk_usage(directory)
    converted = directory / CONVERTED_NAME
    if spec.kind == "diffusion" and converted.is_file():
        return ModelStatus("ready", directory, converted, usage)
    present = [
        next((directory / a.name for a in f.alternatives() if (directory / a.name).is_file()), None)
        for f in spec.files
    ]
    if spec.files and all(present):
        path = present[0] if len(present) == 1 else directory
        return ModelStatus("ready" if spec.kind != "diffusion" else "downloaded", directory, path, usage)
    if directory.is_dir() and (any(directory.glob("*.part")) or any(present)):
        return ModelStatus("partial", directory, None, usage)
    return ModelStatus("missing", directory, None, usage)


def file_infos(spec: ModelSpec, cache_dir: str | Path | None = None) -> list[FileInfo]:
    """Every file of an entry (fallbacks included) with its published or first-use sha256."""
    root = cache_root(cache_dir)
    known, manifest = KnownHashes(root), Manifest(model_dir(root, spec.name))
    infos = []
    for top in spec.files:
        for f in top.alternatives():
            recorded = known.get(spec.name, f.name)
            sha = f.sha256 or None
            trust: HashTrust = "published" if sha else "none"
            if sha is None and recorded:
                sha, trust = recorded["sha256"], "first-use"
            infos.append(FileInfo(f.name, sha, trust, f.size, f.approx_size, f.sources, manifest.get(f.name)))
    return infos


@dataclass(frozen=True)
class FileCheck:
    """One file rehashed by :func:`check_files`. ``outcome``: ``ok``; ``deleted`` (it did not match and is
    gone: the next use downloads or converts it again); ``damaged`` (a file shipped inside ilvr-cli that does
    not match its catalog sha256: it cannot be deleted, reinstall ilvr-cli). ``detail`` says what differed."""

    name: str
    outcome: Literal["ok", "deleted", "damaged"]
    detail: str = ""


class _Notes(NullProgress):
    """Keeps the notes of a check (the reason a file was deleted) and passes them on."""

    def __init__(self, progress: DownloadProgress | None) -> None:
        self.progress = progress
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)
        if self.progress is not None:
            self.progress.note(message)


def check_files(
    spec: ModelSpec, cache_dir: str | Path | None = None, progress: DownloadProgress | None = None
) -> list[FileCheck]:
    """Rehash every cached file of an entry (downloads and the converted file) against its expected sha256
    now; a file that does not match is deleted (``deleted``), except a built-in one (``damaged``)."""
    if (builtin := spec.builtin_path) is not None:
        expected = spec.files[0].sha256
        if not builtin.is_file():
            return [FileCheck(builtin.name, "damaged", f"{builtin} is missing")]
        digest = sha256_file(builtin)
        if expected is not None and digest != expected:
            return [FileCheck(builtin.name, "damaged", f"sha256 {digest}, expected {expected}")]
        return [FileCheck(builtin.name, "ok")]
    root = cache_root(cache_dir)
    directory = model_dir(root, spec.name)
    check = checkpoint_check(spec) if spec.kind == "diffusion" else None
    results: list[FileCheck] = []
    for top in spec.files:
        for f in top.alternatives():
            if (directory / f.name).is_file():
                notes = _Notes(progress)
                found = cached_file(f, directory, model=spec.name, root=root, progress=notes, check=check)
                detail = notes.notes[-1].removeprefix(f"{directory / f.name}: ") if notes.notes else ""
                results.append(
                    FileCheck(f.name, "ok" if found else "deleted", detail.removesuffix("; deleting it"))
                )
    converted = directory / CONVERTED_NAME
    if converted.is_file():
        on_wait = progress.note if progress is not None else None
        with FileLock(directory / ".lock", on_wait=on_wait, what=spec.name):  # not while it is rewritten
            results.append(_check_converted(converted))
    return results


def _check_converted(converted: Path) -> FileCheck:
    """Rehash ``model.safetensors`` against its manifest record; delete it if it differs."""
    manifest = Manifest(converted.parent)
    record = manifest.get(CONVERTED_NAME)
    digest = sha256_file(converted)
    if record is None:
        manifest.set(CONVERTED_NAME, FileRecord.for_file(converted, digest, "converted"))
        return FileCheck(CONVERTED_NAME, "ok", "no sha256 was recorded; recorded now")
    if digest != record.sha256:
        converted.unlink()
        manifest.remove(CONVERTED_NAME)
        return FileCheck(CONVERTED_NAME, "deleted", f"sha256 {digest}, recorded {record.sha256}")
    return FileCheck(CONVERTED_NAME, "ok")


def verify_model(
    spec: ModelSpec, cache_dir: str | Path | None = None, progress: DownloadProgress | None = None
) -> dict[str, bool]:
    """:func:`check_files` as ``{file name: matched}``; a file that did not match is deleted (unless built in)."""
    return {c.name: c.outcome == "ok" for c in check_files(spec, cache_dir, progress)}


def remove_model(name: str, cache_dir: str | Path | None = None, *, forget: bool = False) -> int:
    """Delete an entry's files from the cache; returns the bytes freed.

    First-use sha256 records are kept, so a re-download is checked against what was first seen, unless
    ``forget``: then they are dropped too (to accept a file the publisher replaced), and an entry you
    added is dropped from your catalog.
    """
    root = cache_root(cache_dir)
    catalog = load_catalog(root)
    spec = catalog.get(name)
    if spec.builtin_path is not None:
        raise UsageError(
            f"{name} is built into ilvr-cli and takes no cache space; there is nothing to remove"
        )
    directory = model_dir(root, spec.name)
    freed = _disk_usage(directory)
    if directory.is_dir():
        with FileLock(directory / ".lock", what=name):
            shutil.rmtree(directory)
    if forget:
        KnownHashes(root).forget(spec.name)
        if spec.origin == "user":
            update_json(root / USER_CATALOG_NAME, lambda d: d.setdefault("models", {}).pop(name, None))
    return freed


def _only_leftovers(directory: Path) -> bool:
    """True when a model folder holds nothing but lock files and a manifest without files."""
    for path in directory.iterdir():
        if path.is_file() and path.name.startswith(".") and path.name.endswith(".lock"):
            continue
        if path.name == MANIFEST_NAME and path.is_file() and not read_json(path).get("files"):
            continue
        return False
    return True


def _remove_leftovers(directory: Path) -> None:
    """After a failed ``models add``: delete the model folder it created if nothing of value is in it."""
    try:
        if _only_leftovers(directory):
            shutil.rmtree(directory)
    except OSError:
        pass  # best effort: the original error is what the user needs to see


def _configs_from_file(path: Path) -> tuple[UNetConfig, DiffusionConfig]:
    """``{"unet": {...}, "diffusion": {...}}`` (config dicts), or guided-diffusion flags."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the config file {path}: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    if "unet" in data:
        if "diffusion" not in data:
            raise InputError(f"{path}: has 'unet' but no 'diffusion' config")
        return UNetConfig.from_dict(data["unet"]), DiffusionConfig.from_dict(data["diffusion"])
    return UNetConfig.from_guided_diffusion_flags(data), DiffusionConfig.from_guided_diffusion_flags(data)


def _add_builtin(
    spec: ModelSpec, src: Path, cache_dir: str | Path | None, progress: DownloadProgress | None
) -> ResolvedModel:
    """Put a hand-downloaded file where a built-in entry expects it, verified like a download."""
    root = cache_root(cache_dir)
    directory = model_dir(root, spec.name)
    if src.is_file() and len(spec.files) == 1:
        f = spec.files[0]
        local = FileSpec(name=f.name, sources=(Source(path=str(src)),), sha256=f.sha256, size=f.size)
        check = checkpoint_check(spec) if spec.kind == "diffusion" else None
        ensure_file(local, directory, model=spec.name, root=root, offline=False, progress=progress,
                    allow_local=True, check=check)  # fmt: skip
        (directory / CONVERTED_NAME).unlink(missing_ok=True)  # the file is verified: convert it afresh
        return prepare(
            spec, cache_dir=root, offline=True, progress=progress, convert=spec.kind == "diffusion"
        )
    if spec.kind != "diffusion":
        raise UsageError(f"{spec.name} expects the file {spec.files[0].name}, not the folder {src}")
    from ilvr_cli.registry.convert import convert_to_native

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CONVERTED_NAME
    with FileLock(directory / ".lock", what=spec.name):
        convert_to_native(src, target, unet_config=spec.unet, diffusion_config=spec.diffusion,
                          extra_metadata={"source_model": spec.name, "source_files": str(src)})  # fmt: skip
        Manifest(directory).set(
            CONVERTED_NAME, FileRecord.for_file(target, sha256_file(target), "user", str(src))
        )
    return ResolvedModel(spec.name, target, "ilvr-cli", spec)


def add_model(
    name: str,
    path: str | Path,
    *,
    like: str | None = None,
    config: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: DownloadProgress | None = None,
) -> ResolvedModel:
    """Register a checkpoint obtained by hand (``ilvr models add``) and convert it into the cache.

    For a built-in name (e.g. a Drive-only model) the file is checked against the entry's sha256 (or
    recorded as its first-use hash) and used as if downloaded. For a new name, the architecture comes from
    ``like`` (another entry), ``config`` (a JSON file) or the checkpoint itself, and the entry is written to
    ``<cache>/catalog.json`` with the file as its (local) source.
    """
    validate_name(name)
    src = Path(path).expanduser().absolute()
    if not src.exists():
        raise InputError(f"no such checkpoint file or folder: {src}")
    if like is not None and config is not None:
        raise UsageError("give --like or --config, not both")
    root = cache_root(cache_dir)
    catalog = load_catalog(root)
    directory = model_dir(root, name)
    existed = directory.exists()
    try:
        return _add(name, src, like, config, root, catalog, progress)
    except BaseException:
        if not existed:
            _remove_leftovers(directory)
        raise


def _add(
    name: str,
    src: Path,
    like: str | None,
    config: str | Path | None,
    root: Path,
    catalog: Catalog,
    progress: DownloadProgress | None,
) -> ResolvedModel:
    existing = catalog.models.get(name)
    if existing is not None and existing.origin == "builtin":
        if existing.builtin_path is not None:
            raise UsageError(f"{name} is built into ilvr-cli; add your checkpoint under another name")
        if like is not None or config is not None:
            raise UsageError(
                f"{name} is a built-in model with a fixed config; add your checkpoint under another name"
            )
        return _add_builtin(existing, src, root, progress)
    unet = diffusion = None
    if like is not None:
        base = catalog.get(like)
        if base.kind != "diffusion":
            raise UsageError(f"--like {like}: not a diffusion model")
        unet, diffusion = base.unet, base.diffusion
    elif config is not None:
        unet, diffusion = _configs_from_file(Path(config).expanduser())
    return _add_new(name, src, unet, diffusion, root, progress)


def _add_new(
    name: str,
    src: Path,
    unet: UNetConfig | None,
    diffusion: DiffusionConfig | None,
    root: Path,
    progress: DownloadProgress | None,
) -> ResolvedModel:
    from ilvr_cli.models.checkpoints import load_checkpoint, save_native

    if progress is not None:
        progress.note(f"{name}: checking and converting {src}")
    loaded = load_checkpoint(src, unet_config=unet, diffusion_config=diffusion)  # strict: fails here
    if loaded.diffusion_config is None:
        raise CheckpointError(
            f"{src}: the checkpoint does not say how it was trained (schedule, variance); "
            "give --like MODEL or --config FILE"
        )
    file_entry: list[dict[str, Any]] = []
    if src.is_file():
        file_entry = [{"name": src.name, "sha256": sha256_file(src), "size": src.stat().st_size,
                       "sources": [{"path": str(src)}]}]  # fmt: skip
    entry = {
        "kind": "diffusion",
        "family": "user",
        "title": f"added from {src.name}",
        "format": loaded.format,
        "image_size": loaded.unet_config.image_size,
        "params": sum(p.numel() for p in loaded.network.parameters()),
        "unet": loaded.unet_config.to_dict(),
        "diffusion": loaded.diffusion_config.to_dict(),
        "files": file_entry,
        "source_page": str(src),
        "added_from": str(src),
        "added_at": now_iso(),
    }
    spec = parse_entry(name, entry, origin="user")  # validate before writing
    directory = model_dir(root, name)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CONVERTED_NAME
    with FileLock(directory / ".lock", what=name):
        # atomic: a model already there under this name stays intact until this one is complete
        extra = {"source_model": name, "source_files": str(src)}
        save_native(target, loaded.network, loaded.unet_config, loaded.diffusion_config, extra)
        Manifest(directory).set(
            CONVERTED_NAME, FileRecord.for_file(target, sha256_file(target), "user", str(src))
        )
    update_json(
        root / USER_CATALOG_NAME,
        lambda d: (d.setdefault("version", 1), d.setdefault("models", {}).__setitem__(name, entry)),
    )
    return ResolvedModel(name, target, "ilvr-cli", spec)
