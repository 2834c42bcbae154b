"""The configs of the model that ``ilvr train --init-from`` fine-tunes, read without loading its weights
where possible (the run loads them once, in :mod:`~ilvr_cli.training.trainer`).

Through :func:`~ilvr_cli.registry.open_model`: a catalog name is made ready in the cache first (downloaded
and converted once, so that a download error comes before the run starts) and its entry gives the configs;
a checkpoint path gives what its header or JSON config records; a bare guided-diffusion ``.pt`` (or a file
whose configs do not read cleanly) is loaded, since only its weights say (and loading names what is wrong).
"""

from __future__ import annotations

from pathlib import Path

from ilvr_cli.config import DiffusionConfig, UNetConfig


def init_configs(
    init_from: str, cache_dir: str | Path | None = None
) -> tuple[UNetConfig, DiffusionConfig | None]:
    """The UNet and diffusion configs of ``init_from`` (a catalog name or a checkpoint path); the
    diffusion config is None when the checkpoint does not record it. Errors as
    :func:`ilvr_cli.registry.load_model` raises them (unknown name, missing file, download, bad file)."""
    from ilvr_cli.registry import open_model

    model = open_model(init_from, cache_dir=cache_dir).require_diffusion()
    if model.spec is not None:
        model.fetch()
    if model.unet_config is None:
        model.load()
    assert model.unet_config is not None
    return model.unet_config, model.diffusion_config


__all__ = ["init_configs"]
