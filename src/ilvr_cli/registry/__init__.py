"""The model registry: catalog names -> verified files in the user cache -> a loaded model.

``open_model("ffhq")`` is the one way every command opens a model: a :class:`ModelHandle` with the cheap
facts (image size, T, configs, suggested defaults) and the network loaded once, on demand
(``handle.load()``). ``load_model("ffhq")`` is ``open_model(...).load()`` returning the loaded checkpoint;
``fetch("fid-inception")`` gives the local path of any entry's files. Importing this package does not import torch (conversion and loading import it lazily).
See docs/registry.md for the catalog format, the cache layout and the download guarantees.
"""

from ilvr_cli.registry.cache import cache_root, is_offline
from ilvr_cli.registry.catalog import (
    Catalog,
    CatalogError,
    FileSpec,
    ModelSpec,
    Source,
    load_catalog,
    validate_name,
)
from ilvr_cli.registry.download import DownloadOptions, DownloadProgress, NullProgress
from ilvr_cli.registry.handle import ModelHandle, fetch, load_model, open_entry, open_model, resolve_model
from ilvr_cli.registry.manage import ModelStatus, add_model, model_status, remove_model
from ilvr_cli.registry.resolve import ResolvedModel, prepare

__all__ = [
    "Catalog",
    "CatalogError",
    "DownloadOptions",
    "DownloadProgress",
    "FileSpec",
    "ModelHandle",
    "ModelSpec",
    "ModelStatus",
    "NullProgress",
    "ResolvedModel",
    "Source",
    "add_model",
    "cache_root",
    "fetch",
    "is_offline",
    "load_catalog",
    "load_model",
    "model_status",
    "open_entry",
    "open_model",
    "prepare",
    "remove_model",
    "resolve_model",
    "validate_name",
]
