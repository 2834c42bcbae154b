"""``--model`` for the task commands: a cheap probe before anything loads, then the loaded model and its hash.

The probe answers what must be checked before a model is loaded (unknown name, missing file, the model's
resolution for ``--factor``, its T for ``--range``) from the catalog or a file's header only, so a
usage error costs no download and no load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilvr_cli.config import DiffusionConfig
from ilvr_cli.errors import CheckpointError, UsageError
from ilvr_cli.registry import DownloadProgress, ModelSpec, NullProgress, load_catalog, resolve_model
from ilvr_cli.registry.cache import CONVERTED_NAME, Manifest, sha256_file
from ilvr_cli.registry.resolve import looks_like_path


@dataclass(frozen=True)
class ModelProbe:
    """What is known of ``--model`` without loading it. ``image_size`` / ``diffusion`` may be None for a
    bare guided-diffusion ``.pt`` (then they are checked after loading)."""

    name: str
    spec: ModelSpec | None
    path: Path | None
    image_size: int | None
    diffusion: DiffusionConfig | None
    defaults: dict[str, Any] = field(default_factory=dict)


def _native_configs(path: Path) -> tuple[int | None, DiffusionConfig | None]:
    """Image size and diffusion config from an ilvr-cli file's header; (None, None) if they do not read
    cleanly (the load then names the problem)."""
    from ilvr_cli.models.checkpoints import read_native_configs

    try:
        unet, diffusion = read_native_configs(path)
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None, None
    return unet.image_size, diffusion


def _diffusers_size(folder: Path) -> int | None:
    for candidate in (folder / "config.json", folder / "unet" / "config.json"):
        if candidate.is_file():
            try:
                size = json.loads(candidate.read_text()).get("sample_size")
                return int(size[0] if isinstance(size, list) else size) if size else None
            except (OSError, ValueError, TypeError, IndexError, AttributeError):
                return None  # malformed: the loader names the file and the problem
    return None


def probe_model(name: str, cache_dir: str | Path | None = None) -> ModelProbe:
    """A catalog name, a checkpoint file or a diffusers folder; unknown ones raise a :class:`UsageError`
    (the closest catalog names suggested), before anything is downloaded or loaded."""
    catalog = load_catalog(cache_dir)
    if name in catalog:
        spec = catalog.get(name)
        if spec.kind != "diffusion":
            raise UsageError(f"{name} is {spec.title or 'not a diffusion model'}, not a diffusion model")
        return ModelProbe(name, spec, None, spec.image_size, spec.diffusion, dict(spec.defaults))
    path = Path(name).expanduser()
    if looks_like_path(name) or path.exists():
        if not path.exists():
            raise UsageError(f"--model {name}: no such checkpoint file or folder")
        if path.is_dir():
            return ModelProbe(name, None, path.absolute(), _diffusers_size(path), None)
        if path.suffix == ".safetensors":
            size, diffusion = _native_configs(path)
            return ModelProbe(name, None, path.absolute(), size, diffusion)
        return ModelProbe(name, None, path.absolute(), None, None)
    catalog.get(name)  # raises ModelNotFoundError (a UsageError) naming the closest entries
    raise AssertionError("unreachable")


@dataclass
class PreparedModel:
    """A network ready on its device, what it was trained for, and how to cite it in metadata."""

    network: Any
    diffusion_config: DiffusionConfig
    image_size: int
    name: str
    sha256: str
    in_channels: int = 3


def _weights_file(path: Path) -> Path:
    """The file whose hash identifies a checkpoint (the weights inside a diffusers folder)."""
    if path.is_file():
        return path
    for pattern in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        found = sorted(path.rglob(pattern))
        if found:
            return found[0]
    raise CheckpointError(f"{path}: no diffusion_pytorch_model weights found")


def _converted_sha256(path: Path) -> str:
    record = Manifest(path.parent).get(CONVERTED_NAME) if path.name == CONVERTED_NAME else None
    return record.sha256 if record is not None else sha256_file(path)


def load_task_model(
    probe: ModelProbe,
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    download_progress: DownloadProgress | None = None,
) -> PreparedModel:
    """Download (catalog names, once), load on the CPU and hash the weights that were loaded."""
    from ilvr_cli.models.checkpoints import load_checkpoint

    if probe.spec is not None:
        resolved = resolve_model(
            probe.name,
            cache_dir=cache_dir,
            offline=offline,
            progress=download_progress or NullProgress(),
            convert=True,
        )
        loaded = load_checkpoint(
            resolved.path, unet_config=probe.spec.unet, diffusion_config=probe.spec.diffusion
        )
        digest = _converted_sha256(resolved.path)
    else:
        assert probe.path is not None
        loaded = load_checkpoint(probe.path)
        digest = sha256_file(_weights_file(probe.path))
    if loaded.diffusion_config is None:
        raise UsageError(
            f"--model {probe.name}: the checkpoint does not say how it was trained (schedule, variance); "
            f"register it with `ilvr models add NAME {probe.name} --like ffhq` (or --config FLAGS.json)"
        )
    return PreparedModel(
        loaded.network,
        loaded.diffusion_config,
        loaded.unet_config.image_size,
        probe.name,
        digest,
        loaded.unet_config.in_channels,
    )
