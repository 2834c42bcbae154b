"""A catalog entry to files on disk: :func:`prepare` downloads what is missing and converts a diffusion model
once to safetensors, under the entry's lock (``ilvr models download``, and under
:class:`~ilvr_cli.registry.handle.ModelHandle`, which every command opens models with).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import CheckpointError, DownloadError, InputError
from ilvr_cli.registry.cache import (
    CONVERTED_NAME,
    FileRecord,
    Manifest,
    cache_root,
    model_dir,
    sha256_file,
)
from ilvr_cli.registry.catalog import ModelSpec
from ilvr_cli.registry.checks import checkpoint_check
from ilvr_cli.registry.download import (
    DownloadOptions,
    DownloadProgress,
    FetchedFile,
    NullProgress,
    ensure_file,
)
from ilvr_cli.registry.lock import FileLock

if TYPE_CHECKING:
    from ilvr_cli.models.checkpoints import LoadedModel

__all__ = ["ResolvedModel", "looks_like_path", "path_format", "prepare", "prepare_and_load"]

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model is on disk and what the catalog says about it (``spec`` is None for a plain path).

    ``format``: ``"ilvr-cli"`` for the converted file in the cache, else the entry's format
    (``"guided-diffusion"``, ``"diffusers"``, ...) or, for a path, what its name suggests.
    """

    name: str
    path: Path
    format: str
    spec: ModelSpec | None = None

    @property
    def converted(self) -> bool:
        return self.format == "ilvr-cli" and self.spec is not None

    @property
    def unet_config(self) -> UNetConfig | None:
        return self.spec.unet if self.spec else None

    @property
    def diffusion_config(self) -> DiffusionConfig | None:
        return self.spec.diffusion if self.spec else None


def looks_like_path(text: str) -> bool:
    """True for text that can only be a path: a separator, a leading ``.``/``~``, or a checkpoint suffix."""
    return (
        os.sep in text
        or "/" in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith((".", "~"))
        or text.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def path_format(path: Path) -> str:
    """What a checkpoint path's kind and suffix suggest its format is."""
    if path.is_dir():
        return "diffusers"
    return "safetensors" if path.suffix == ".safetensors" else "guided-diffusion"


def _converted_record(directory: Path, progress: DownloadProgress, *, locked: bool) -> Path | None:
    """The converted file if present and intact: rehashed on every use and compared with its manifest
    record (its size and mtime prove nothing). A damaged one is never returned; it is deleted (so it is
    converted again) only when the caller holds the entry's lock, since another process may be writing it.

    Cost: one sha256 pass over the file (measured in docs/benchmarks.md, "Loading checkpoints").
    """
    converted = directory / CONVERTED_NAME
    if not converted.is_file():
        return None
    manifest = Manifest(directory)
    record = manifest.get(CONVERTED_NAME)
    digest = sha256_file(converted)
    if record is not None and digest != record.sha256:
        if not locked:
            return None  # looked at again under the lock
        progress.note(
            f"{converted}: sha256 {digest} is not the recorded {record.sha256} (damaged); "
            "deleting it and converting again"
        )
        converted.unlink()
        manifest.remove(CONVERTED_NAME)
        return None
    if record is None or not record.stamp_matches(converted):
        trust = record.trust if record else "converted"
        source = record.source if record else ""
        manifest.set(CONVERTED_NAME, FileRecord.for_file(converted, digest, trust, source))
    return converted


def _download_all(
    spec: ModelSpec,
    directory: Path,
    root: Path,
    *,
    offline: bool | None,
    options: DownloadOptions,
    progress: DownloadProgress,
) -> list[FetchedFile]:
    if not spec.files:
        raise DownloadError(
            f"{spec.name}: its converted file is gone and the entry has no source; "
            f"run `ilvr models add {spec.name} FILE` again"
        )
    return [
        ensure_file(
            f,
            directory,
            model=spec.name,
            root=root,
            offline=offline,
            options=options,
            progress=progress,
            allow_local=spec.origin == "user",
            check=checkpoint_check(spec) if spec.kind == "diffusion" else None,
        )
        for f in spec.files
    ]


def _convert(
    spec: ModelSpec, directory: Path, fetched: list[FetchedFile], *, keep_original: bool
) -> tuple[Path, LoadedModel]:
    """Convert the downloaded files to ``model.safetensors``, record it, and drop the originals."""
    from ilvr_cli.registry.convert import convert_to_native

    source = fetched[0].path if len(fetched) == 1 else directory
    target = directory / CONVERTED_NAME
    extra = {
        "source_model": spec.name,
        "source_files": ",".join(f"{f.path.name}:{f.sha256}" for f in fetched),
    }
    loaded = convert_to_native(
        source, target, unet_config=spec.unet, diffusion_config=spec.diffusion, extra_metadata=extra
    )
    manifest = Manifest(directory)
    manifest.set(CONVERTED_NAME, FileRecord.for_file(target, sha256_file(target), "converted", source.name))
    if not keep_original:
        for f in fetched:
            f.path.unlink(missing_ok=True)
            manifest.remove(f.path.name)
    return target, loaded


def prepare(
    spec: ModelSpec,
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: DownloadProgress | None = None,
    options: DownloadOptions | None = None,
    convert: bool = True,
    keep_original: bool = False,
) -> ResolvedModel:
    """Make a catalog entry usable: download what is missing and (diffusion models) convert it once.

    Runs under the entry's lock (``models/<name>/.lock``), so a second process waits and then finds the
    work done. With ``convert=False`` the downloaded file (or, for several files, the folder) is returned.
    """
    resolved, _ = _prepare(spec, cache_dir, offline, progress, options, convert, keep_original)
    return resolved


def _prepare(
    spec: ModelSpec,
    cache_dir: str | Path | None,
    offline: bool | None,
    progress: DownloadProgress | None,
    options: DownloadOptions | None,
    convert: bool,
    keep_original: bool,
) -> tuple[ResolvedModel, LoadedModel | None]:
    if spec.builtin_path is not None:
        return _builtin(spec), None
    root = cache_root(cache_dir)
    progress = progress or NullProgress()
    options = options or DownloadOptions()
    directory = model_dir(root, spec.name)
    diffusion = spec.kind == "diffusion"
    if diffusion and (path := _converted_record(directory, progress, locked=False)) is not None:
        return ResolvedModel(spec.name, path, "ilvr-cli", spec), None
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory / ".lock", timeout=options.lock_timeout, on_wait=progress.note, what=spec.name)
    with lock:
        if diffusion and (path := _converted_record(directory, progress, locked=True)) is not None:
            return ResolvedModel(spec.name, path, "ilvr-cli", spec), None
        fetched = _download_all(spec, directory, root, offline=offline, options=options, progress=progress)
        if not (diffusion and convert):
            raw = fetched[0].path if len(fetched) == 1 else directory
            return ResolvedModel(spec.name, raw, spec.format, spec), None
        progress.note(f"{spec.name}: converting to safetensors (once)")
        path, loaded = _convert(spec, directory, fetched, keep_original=keep_original)
        return ResolvedModel(spec.name, path, "ilvr-cli", spec), loaded


def _builtin(spec: ModelSpec) -> ResolvedModel:
    """An entry shipped inside the package (e.g. ``demo``): no cache, no download, no conversion; its bytes
    are checked against the catalog's sha256 on every use (a few ms for the 7 MB demo)."""
    path = spec.builtin_path
    assert path is not None
    if not path.is_file():
        raise InputError(f"{spec.name}: the built-in file {path} is missing; reinstall ilvr-cli")
    expected = spec.files[0].sha256
    if expected is not None and (digest := sha256_file(path)) != expected:
        raise CheckpointError(
            f"{spec.name}: the file shipped with ilvr-cli ({path}) is damaged (sha256 {digest}, "
            f"expected {expected}); reinstall ilvr-cli"
        )
    return ResolvedModel(spec.name, path, spec.format or "ilvr-cli", spec)


def prepare_and_load(
    spec: ModelSpec,
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: DownloadProgress | None = None,
    options: DownloadOptions | None = None,
) -> tuple[ResolvedModel, LoadedModel | None]:
    """:func:`prepare` (converting), plus the network when it was converted just now (already in memory, so
    :class:`~ilvr_cli.registry.handle.ModelHandle` need not read the file it just wrote)."""
    return _prepare(spec, cache_dir, offline, progress, options, True, False)
