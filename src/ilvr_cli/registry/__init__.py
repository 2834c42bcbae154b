"""The model registry: catalog names -> verified files in the user cache -> a loaded model.

``resolve_model("ffhq", convert=True)`` gives the verified, converted file (the task commands then load it
with ``models.checkpoints.load_checkpoint``, see ``tasks/model.py``); ``load_model("ffhq")`` resolves and
loads in one call (``ilvr train --init-from``); ``fetch("fid-inception")`` gives the local path of any
entry's files. Importing this package does not import torch (conversion and loading import it lazily).
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
from ilvr_cli.registry.manage import ModelStatus, add_model, model_status, remove_model
from ilvr_cli.registry.resolve import ResolvedModel, fetch, load_model, prepare, resolve_model

__all__ = [
    "Catalog",
    "CatalogError",
    "DownloadOptions",
    "DownloadProgress",
    "FileSpec",
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
    "prepare",
    "remove_model",
    "resolve_model",
    "validate_name",
]
