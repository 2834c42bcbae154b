"""The configs of the model that ``ilvr train --init-from`` fine-tunes, read without loading its weights
where possible (the run loads them once, in :mod:`~ilvr_cli.training.trainer`).

- a catalog name: made ready in the cache first (downloaded and converted once, so that a download error
  comes before the run starts, as the run needs the file), then the catalog's configs (or, where the
  catalog leaves one out, the converted file's metadata);
- an ilvr-cli ``.safetensors``: the configs in its metadata (header only);
- anything else (a guided-diffusion ``.pt``, a diffusers folder), or metadata that does not read cleanly:
  loaded, since only the weights say (and loading names what is wrong).
"""

from __future__ import annotations

from pathlib import Path

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import CheckpointError


def _native_configs(path: Path) -> tuple[UNetConfig, DiffusionConfig | None] | None:
    """The configs in an ilvr-cli ``.safetensors``'s metadata; None if it is not one or they do not read
    cleanly (the loader then says why)."""
    from ilvr_cli.models.checkpoints import read_native_configs

    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    try:
        unet, diffusion = read_native_configs(path)
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None
    if diffusion is not None and diffusion.variance_type == "learned_range" and not unet.learn_sigma:
        return None  # inconsistent: the loader raises the error that says so
    return unet, diffusion


def init_configs(
    init_from: str, cache_dir: str | Path | None = None
) -> tuple[UNetConfig, DiffusionConfig | None]:
    """The UNet and diffusion configs of ``init_from`` (a catalog name or a checkpoint path); the
    diffusion config is None when the checkpoint does not record it. Errors as
    :func:`ilvr_cli.registry.load_model` raises them (unknown name, missing file, download, bad file)."""
    from ilvr_cli.registry import load_model, resolve_model

    resolved = resolve_model(init_from, cache_dir=cache_dir, convert=True)
    spec = resolved.spec
    if spec is not None and spec.unet is not None and spec.diffusion is not None:
        return spec.unet, spec.diffusion
    native = _native_configs(resolved.path)
    if native is not None:
        if spec is None:
            return native
        return spec.unet or native[0], spec.diffusion or native[1]
    loaded = load_model(init_from, cache_dir=cache_dir)
    return loaded.unet_config, loaded.diffusion_config


__all__ = ["init_configs"]
