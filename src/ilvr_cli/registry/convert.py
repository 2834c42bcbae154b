"""One-time conversion of a downloaded checkpoint to the project's safetensors format.

A guided-diffusion ``.pt`` is a pickle and a diffusers folder needs its keys renamed on every load; the
converted ``model.safetensors`` carries both configs in its metadata, loads memory-mapped, and is never
unpickled. The conversion goes through :func:`ilvr_cli.models.checkpoints.load_checkpoint` (strict, so a
checkpoint that does not fit the catalog's architecture fails here, with the reason) and
:func:`~ilvr_cli.models.checkpoints.save_native` (atomic).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ilvr_cli.config import DiffusionConfig, UNetConfig

if TYPE_CHECKING:
    from ilvr_cli.models.checkpoints import LoadedModel

__all__ = ["convert_to_native"]


def convert_to_native(
    source: Path,
    target: Path,
    *,
    unet_config: UNetConfig | None = None,
    diffusion_config: DiffusionConfig | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> LoadedModel:
    """Load ``source`` (``.pt``, diffusers folder or safetensors) and write it to ``target`` in native format.

    Returns the loaded model, so a caller that converts on first use need not read the file twice.
    """
    from ilvr_cli.models.checkpoints import load_checkpoint, save_native

    loaded = load_checkpoint(source, unet_config=unet_config, diffusion_config=diffusion_config)
    save_native(target, loaded.network, loaded.unet_config, loaded.diffusion_config, extra_metadata)
    return loaded
