"""One way to open a model: :func:`open_model` (a catalog name, a checkpoint file or a diffusers folder) ->
:class:`ModelHandle`.

The handle answers the cheap questions at once, from the catalog entry or the file's header (name, image
size, T, configs, suggested defaults), with no download and no tensor read, so that a usage error costs
nothing. It downloads, converts and loads the network once, on demand (:meth:`ModelHandle.load`), and
names the weights it loaded (:attr:`ModelHandle.sha256`). The task commands, ``ilvr train --init-from``,
``ilvr models`` and the FID Inception weights all go through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import CheckpointError, InputError, UsageError
from ilvr_cli.registry.cache import CONVERTED_NAME, Manifest, sha256_file
from ilvr_cli.registry.catalog import Catalog, ModelSpec, load_catalog
from ilvr_cli.registry.download import DownloadOptions, DownloadProgress
from ilvr_cli.registry.resolve import ResolvedModel, looks_like_path, path_format, prepare, prepare_and_load

if TYPE_CHECKING:
    from torch import nn

    from ilvr_cli.models.checkpoints import LoadedModel

__all__ = ["ModelHandle", "fetch", "load_model", "open_entry", "open_model", "resolve_model"]


class ModelHandle:
    """A model opened by name or path: its facts now, its network once, on demand.

    ``spec`` is the catalog entry (None for a path), ``path`` the local file or folder of a path (None for a
    catalog name until :meth:`fetch`). ``unet_config`` / ``diffusion_config`` are None where nothing but the
    weights tells (a bare guided-diffusion ``.pt``); loading then decides them.
    """

    def __init__(
        self,
        name: str,
        *,
        spec: ModelSpec | None = None,
        path: Path | None = None,
        unet_config: UNetConfig | None = None,
        diffusion_config: DiffusionConfig | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.path = path
        self.unet_config = unet_config
        self.diffusion_config = diffusion_config
        self.cache_dir = cache_dir
        #: The loaded checkpoint (network, configs, format, metadata) once :meth:`load` ran.
        self.checkpoint: LoadedModel | None = None
        self._network: nn.Module | None = None
        self._image_size = unet_config.image_size if unet_config is not None else None
        self._in_channels = unet_config.in_channels if unet_config is not None else None
        self._sha256: str | None = None

    @classmethod
    def from_network(
        cls,
        network: nn.Module,
        diffusion_config: DiffusionConfig,
        image_size: int,
        *,
        name: str = "in-memory",
        sha256: str = "0" * 64,
        in_channels: int = 3,
    ) -> ModelHandle:
        """A handle around a network already in memory (notebooks, tests): any callable
        ``(x, timesteps) -> output`` with the training facts given here; nothing is read or downloaded."""
        handle = cls(name, diffusion_config=diffusion_config)
        handle._network, handle._sha256 = network, sha256
        handle._image_size, handle._in_channels = image_size, in_channels
        return handle

    @classmethod
    def from_loaded(
        cls, loaded: LoadedModel, *, name: str = "in-memory", sha256: str = "0" * 64
    ) -> ModelHandle:
        """A handle around what :func:`load_model` / ``load_checkpoint`` returned."""
        handle = cls(name, unet_config=loaded.unet_config, diffusion_config=loaded.diffusion_config)
        handle.checkpoint, handle._network, handle._sha256 = loaded, loaded.network, sha256
        return handle

    # ------------------------------------------------------------------ the cheap facts
    @property
    def image_size(self) -> int | None:
        if self._image_size is not None:
            return self._image_size
        return self.spec.image_size if self.spec is not None else None

    @property
    def in_channels(self) -> int | None:
        return self._in_channels

    @property
    def num_timesteps(self) -> int | None:
        return self.diffusion_config.num_timesteps if self.diffusion_config is not None else None

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The catalog entry's suggested option values (empty for a path)."""
        return self.spec.defaults if self.spec is not None else {}

    def task_defaults(self, task: str) -> dict[str, Any]:
        """Suggested option values for ``task`` (see :meth:`ModelSpec.task_defaults`)."""
        return self.spec.task_defaults(task) if self.spec is not None else {}

    def require_diffusion(self) -> ModelHandle:
        """This handle, or a UsageError if the catalog entry is not a diffusion model (e.g. Inception)."""
        if self.spec is not None and self.spec.kind != "diffusion":
            raise UsageError(
                f"{self.name} is {self.spec.title or 'not a diffusion model'}, not a diffusion model"
            )
        return self

    # ------------------------------------------------------------------ files and network, on demand
    def fetch(
        self,
        *,
        offline: bool | None = None,
        progress: DownloadProgress | None = None,
        options: DownloadOptions | None = None,
        convert: bool = True,
        keep_original: bool = False,
    ) -> Path:
        """The local file (or folder): a catalog entry is downloaded and, for a diffusion model with
        ``convert``, converted once to safetensors; a path is itself."""
        if self.spec is None:
            assert self.path is not None
            return self.path
        return prepare(
            self.spec,
            cache_dir=self.cache_dir,
            offline=offline,
            progress=progress,
            options=options,
            convert=convert,
            keep_original=keep_original,
        ).path

    def load(
        self,
        *,
        offline: bool | None = None,
        progress: DownloadProgress | None = None,
        options: DownloadOptions | None = None,
        map_location: str = "cpu",
    ) -> nn.Module:
        """The network, downloaded, converted and loaded once (later calls return the same object); its
        configs are then in :attr:`checkpoint` and on the handle.

        A catalog model loads from its converted safetensors (memory-mapped, no unpickling) checked against
        the catalog's architecture; a path with the configs it carries or implies.
        """
        if self._network is None:
            self.require_diffusion()
            loaded, self._sha256 = self._load_checkpoint(offline, progress, options, map_location)
            self.checkpoint, self._network = loaded, loaded.network
            self.unet_config = loaded.unet_config
            self._image_size, self._in_channels = (
                loaded.unet_config.image_size,
                loaded.unet_config.in_channels,
            )
            self.diffusion_config = self.diffusion_config or loaded.diffusion_config
        return self._network

    def _load_checkpoint(
        self,
        offline: bool | None,
        progress: DownloadProgress | None,
        options: DownloadOptions | None,
        map_location: str,
    ) -> tuple[LoadedModel, str]:
        from ilvr_cli.models.checkpoints import load_checkpoint

        if self.spec is None:
            assert self.path is not None
            loaded = load_checkpoint(self.path, map_location=map_location)
            return loaded, sha256_file(_weights_file(self.path))
        resolved, converted_now = prepare_and_load(
            self.spec, cache_dir=self.cache_dir, offline=offline, progress=progress, options=options
        )
        loaded = converted_now or load_checkpoint(
            resolved.path,
            unet_config=self.spec.unet,
            diffusion_config=self.spec.diffusion,
            map_location=map_location,
        )
        return loaded, _recorded_sha256(resolved)

    @property
    def is_loaded(self) -> bool:
        return self._network is not None

    @property
    def sha256(self) -> str:
        """The sha256 of the weights that were loaded (what output metadata cites); loads if needed."""
        if self._sha256 is None:
            self.load()
        assert self._sha256 is not None
        return self._sha256


def _weights_file(path: Path) -> Path:
    """The file whose hash identifies a checkpoint (the weights inside a diffusers folder)."""
    if path.is_file():
        return path
    for pattern in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        found = sorted(path.rglob(pattern))
        if found:
            return found[0]
    raise CheckpointError(f"{path}: no diffusion_pytorch_model weights found")


def _recorded_sha256(resolved: ResolvedModel) -> str:
    """A converted file's hash as its manifest records it (checked when it was resolved), else hashed."""
    path = resolved.path
    record = Manifest(path.parent).get(CONVERTED_NAME) if path.name == CONVERTED_NAME else None
    return record.sha256 if record is not None else sha256_file(path)


def _path_configs(path: Path) -> tuple[UNetConfig | None, DiffusionConfig | None]:
    """The configs a checkpoint records (header / JSON only); (None, None) where they do not read cleanly
    (loading it then names the problem)."""
    from ilvr_cli.models.checkpoints import read_configs

    try:
        unet, diffusion = read_configs(path)
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None, None
    inconsistent = diffusion is not None and diffusion.variance_type == "learned_range"
    if inconsistent and unet is not None and not unet.learn_sigma:
        return None, None  # loading raises the error that says so
    return unet, diffusion


def open_entry(
    name: str, *, cache_dir: str | Path | None = None, catalog: Catalog | None = None
) -> ModelHandle:
    """A catalog entry of any kind (diffusion model or weights such as the FID Inception network) by name;
    ModelNotFoundError naming the closest entries if there is none. For ``ilvr models`` and :func:`fetch`."""
    spec = (catalog or load_catalog(cache_dir)).get(name)
    return ModelHandle(
        name, spec=spec, unet_config=spec.unet, diffusion_config=spec.diffusion, cache_dir=cache_dir
    )


def open_model(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | Path | None = None,
    catalog: Catalog | None = None,
) -> ModelHandle:
    """Open a catalog name, a checkpoint file or a diffusers folder; nothing is downloaded or loaded.

    A catalog name wins over a file of the same name in the working directory (write ``./ffhq`` for the
    file). Unknown names raise ModelNotFoundError (a UsageError) naming the closest catalog entries; a
    path that does not exist raises an InputError.
    """
    text = os.fspath(name_or_path)
    catalog = catalog or load_catalog(cache_dir)
    if text in catalog:
        return open_entry(text, cache_dir=cache_dir, catalog=catalog)
    path = Path(text).expanduser()
    if looks_like_path(text) or path.exists():
        if not path.exists():
            raise InputError(f"no such checkpoint file or folder: {path}")
        unet, diffusion = _path_configs(path)
        return ModelHandle(
            text, path=path.absolute(), unet_config=unet, diffusion_config=diffusion, cache_dir=cache_dir
        )
    catalog.get(text)  # raises ModelNotFoundError naming the closest entries
    raise AssertionError("unreachable")


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: DownloadProgress | None = None,
    options: DownloadOptions | None = None,
    map_location: str = "cpu",
    catalog: Catalog | None = None,
) -> LoadedModel:
    """``open_model(name_or_path).load()`` in one call: a catalog name or a path to a loaded network."""
    handle = open_model(name_or_path, cache_dir=cache_dir, catalog=catalog)
    handle.load(offline=offline, progress=progress, options=options, map_location=map_location)
    assert handle.checkpoint is not None
    return handle.checkpoint


def resolve_model(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: DownloadProgress | None = None,
    options: DownloadOptions | None = None,
    convert: bool = False,
    catalog: Catalog | None = None,
) -> ResolvedModel:
    """Where a diffusion model is on disk (a catalog entry downloaded, and converted with ``convert``)."""
    handle = open_model(name_or_path, cache_dir=cache_dir, catalog=catalog).require_diffusion()
    if handle.spec is None:
        assert handle.path is not None
        return ResolvedModel(handle.name, handle.path, path_format(handle.path))
    return prepare(
        handle.spec, cache_dir=cache_dir, offline=offline, progress=progress, options=options, convert=convert
    )


def fetch(
    name: str,
    cache_dir: str | Path | None = None,
    progress: DownloadProgress | None = None,
    *,
    offline: bool | None = None,
    options: DownloadOptions | None = None,
) -> Path:
    """Any catalog entry's file(s), downloaded but not converted (the folder if several); for a diffusion
    model already converted (its download removed), the converted file. Used for the FID Inception weights."""
    handle = open_entry(name, cache_dir=cache_dir)
    return handle.fetch(offline=offline, progress=progress, options=options, convert=False)
