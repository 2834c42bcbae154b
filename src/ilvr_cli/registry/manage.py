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
    FileRecord,
    KnownHashes,
    Manifest,
    cache_root,
    model_dir,
    now_iso,
    sha256_file,
    update_json,
)
from ilvr_cli.registry.catalog import (
    USER_CATALOG_NAME,
    FileSpec,
    ModelSpec,
    Source,
    load_catalog,
    parse_entry,
    validate_name,
)
from ilvr_cli.registry.download import DownloadProgress, cached_file, ensure_file
from ilvr_cli.registry.lock import FileLock
from ilvr_cli.registry.resolve import ResolvedModel, prepare

__all__ = [
    "FileInfo",
    "ModelStatus",
    "add_model",
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


def verify_model(
    spec: ModelSpec, cache_dir: str | Path | None = None, progress: DownloadProgress | None = None
) -> dict[str, bool]:
    """Rehash every cached file of an entry against its expected sha256; a bad file is deleted (False)."""
    if (builtin := spec.builtin_path) is not None:
        expected = spec.files[0].sha256
        return {builtin.name: builtin.is_file() and (expected is None or sha256_file(builtin) == expected)}
    root = cache_root(cache_dir)
    directory = model_dir(root, spec.name)
    results: dict[str, bool] = {}
    for top in spec.files:
        for f in top.alternatives():
            if (directory / f.name).is_file():
                ok = cached_file(f, directory, model=spec.name, root=root, full_check=True, progress=progress)
                results[f.name] = ok is not None
    converted = directory / CONVERTED_NAME
    record = Manifest(directory).get(CONVERTED_NAME)
    if converted.is_file() and record is not None:
        results[CONVERTED_NAME] = sha256_file(converted) == record.sha256
    return results


def remove_model(name: str, cache_dir: str | Path | None = None, *, forget: bool = False) -> int:
    """Delete an entry's files from the cache (first-use hashes are kept); returns the bytes freed.

    ``forget`` also drops an entry you added from your catalog.
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
        if spec.origin != "user":
            raise UsageError(f"{name} is a built-in model; only entries you added can be forgotten")
        update_json(root / USER_CATALOG_NAME, lambda d: d.setdefault("models", {}).pop(name, None))
    return freed


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
        ensure_file(
            local, directory, model=spec.name, root=root, offline=False, progress=progress, allow_local=True
        )
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
    from ilvr_cli.registry.convert import convert_to_native

    directory = model_dir(root, name)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CONVERTED_NAME
    if progress is not None:
        progress.note(f"{name}: checking and converting {src}")
    file_entry: list[dict[str, Any]] = []
    if src.is_file():
        file_entry = [{"name": src.name, "sha256": sha256_file(src), "size": src.stat().st_size,
                       "sources": [{"path": str(src)}]}]  # fmt: skip
    with FileLock(directory / ".lock", what=name):
        target.unlink(missing_ok=True)
        extra = {"source_model": name, "source_files": str(src)}
        loaded = convert_to_native(
            src, target, unet_config=unet, diffusion_config=diffusion, extra_metadata=extra
        )
        if loaded.diffusion_config is None:
            target.unlink()
            raise CheckpointError(
                f"{src}: the checkpoint does not say how it was trained (schedule, variance); "
                "give --like MODEL or --config FILE"
            )
        Manifest(directory).set(
            CONVERTED_NAME, FileRecord.for_file(target, sha256_file(target), "user", str(src))
        )
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
    update_json(
        root / USER_CATALOG_NAME,
        lambda d: (d.setdefault("version", 1), d.setdefault("models", {}).__setitem__(name, entry)),
    )
    return ResolvedModel(name, target, "ilvr-cli", spec)
