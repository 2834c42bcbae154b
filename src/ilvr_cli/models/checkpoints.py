"""Load any supported checkpoint into the one :class:`~ilvr_cli.models.unet.UNet`.

Three formats, one small adapter each (``matches(path)`` / ``convert(path, ...)``), behind
:func:`load_checkpoint`:

- ``guided-diffusion``: a ``.pt`` / ``.pth`` state dict (guided-diffusion, ilvr_adm, P2-weighting), read with
  ``torch.load(weights_only=True)`` only; the architecture is inferred from tensor shapes when not given.
- ``diffusers``: a ``UNet2DModel`` folder (Ho et al.'s DDPM from google/ddpm-*), converted to
  guided-diffusion names; ``scheduler_config.json`` gives the :class:`DiffusionConfig`.
- ``ilvr-cli``: the project's own ``.safetensors`` with both configs as JSON in its metadata
  (:func:`save_native`).

Nothing here unpickles arbitrary objects: safetensors never does, and ``torch.load`` is always
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import CheckpointError
from ilvr_cli.models import diffusers_format
from ilvr_cli.models.safetensors_file import write_safetensors
from ilvr_cli.models.shape_inference import explain_mismatch, infer_unet_config
from ilvr_cli.models.unet import UNet

__all__ = [
    "FORMAT_VERSION",
    "META_DIFFUSION_CONFIG",
    "META_FORMAT_VERSION",
    "META_UNET_CONFIG",
    "Converted",
    "LoadedModel",
    "load_checkpoint",
    "read_configs",
    "read_native_configs",
    "read_native_metadata",
    "read_state_dict",
    "save_native",
]

META_UNET_CONFIG = "ilvr_cli.unet_config"
META_DIFFUSION_CONFIG = "ilvr_cli.diffusion_config"
META_FORMAT_VERSION = "ilvr_cli.format_version"
FORMAT_VERSION = "1"

MapLocation = str | torch.device


@dataclass
class LoadedModel:
    """A network ready for inference (eval mode, float32) and what it was trained for.

    ``diffusion_config`` is None only for a bare guided-diffusion ``.pt`` loaded without one. ``format`` is
    ``"guided-diffusion"``, ``"diffusers"`` or ``"ilvr-cli"``; ``metadata`` holds a native file's extra
    metadata.
    """

    network: UNet
    unet_config: UNetConfig
    diffusion_config: DiffusionConfig | None
    format: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Converted:
    """What an adapter read: a state dict in guided-diffusion names and the configs the file records."""

    state_dict: dict[str, Tensor]
    unet_config: UNetConfig | None
    diffusion_config: DiffusionConfig | None
    metadata: dict[str, str] = field(default_factory=dict)


class Adapter(Protocol):
    """One checkpoint format."""

    name: str

    def matches(self, path: Path) -> bool:
        """Cheap test (path kind, file header) that ``path`` is in this format."""

    def read_configs(self, path: Path) -> tuple[UNetConfig | None, DiffusionConfig | None]:
        """The configs ``path`` records, read without its tensors (None where it records none)."""

    def convert(self, path: Path, map_location: MapLocation, image_size: int | None) -> Converted:
        """Read ``path`` into guided-diffusion names (``image_size``: caller default for inference)."""


class NativeAdapter:
    """The project's own ``.safetensors``: configs as JSON strings in the metadata (:func:`save_native`)."""

    name = "ilvr-cli"

    def matches(self, path: Path) -> bool:
        return (
            path.is_file()
            and path.suffix == ".safetensors"
            and META_UNET_CONFIG in _safetensors_metadata(path)
        )

    def read_configs(self, path: Path) -> tuple[UNetConfig | None, DiffusionConfig | None]:
        return read_native_configs(path)

    def convert(self, path: Path, map_location: MapLocation, image_size: int | None) -> Converted:
        meta = read_native_metadata(path)
        unet, diffusion = _pop_native_configs(meta, path)
        return Converted(_load_safetensors(path, map_location), unet, diffusion, meta)


def _pop_native_configs(meta: dict[str, str], path: Path) -> tuple[UNetConfig, DiffusionConfig | None]:
    """Take the configs and the format version out of an ilvr-cli file's metadata (what is left is the
    user's extra metadata); a CheckpointError if they are corrupt or of another format version."""
    try:
        unet = UNetConfig.from_dict(json.loads(meta.pop(META_UNET_CONFIG)))
        raw_diffusion = json.loads(meta.pop(META_DIFFUSION_CONFIG, "null"))
        diffusion = None if raw_diffusion is None else DiffusionConfig.from_dict(raw_diffusion)
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{path}: corrupt ilvr-cli config metadata ({err})") from err
    version = meta.pop(META_FORMAT_VERSION, None)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: ilvr-cli checkpoint format version {version!r} is not {FORMAT_VERSION!r}; "
            "upgrade ilvr-cli or re-export the checkpoint"
        )
    return unet, diffusion


def read_native_configs(path: str | os.PathLike[str]) -> tuple[UNetConfig, DiffusionConfig | None]:
    """The UNet and diffusion configs of an ilvr-cli ``.safetensors`` from its header alone (no tensor is
    read); a CheckpointError if the file is not one or its configs are unreadable."""
    return _pop_native_configs(read_native_metadata(path), Path(path))


class GuidedDiffusionAdapter:
    """A guided-diffusion ``UNetModel`` state dict: ``.pt`` / ``.pth`` (or a bare ``.safetensors`` of one)."""

    name = "guided-diffusion"

    def matches(self, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix in (".pt", ".pth"):
            return True
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    return "time_embed.0.weight" in set(f.keys())
            except Exception:  # noqa: BLE001 - not a readable safetensors file: not ours
                return False
        return False

    def read_configs(self, path: Path) -> tuple[UNetConfig | None, DiffusionConfig | None]:
        return None, None  # only the tensor shapes tell the architecture; nothing tells the schedule

    def convert(self, path: Path, map_location: MapLocation, image_size: int | None) -> Converted:
        if path.suffix == ".safetensors":
            state_dict = _load_safetensors(path, map_location)
        else:
            state_dict = _strip_prefix(_torch_load(path, map_location), "module.")
        return Converted(state_dict, None, None)


class DiffusersAdapter:
    """A diffusers ``UNet2DModel`` folder (Ho et al.'s DDPM published by Google), or a file inside one."""

    name = "diffusers"

    @staticmethod
    def _folder(path: Path) -> Path:
        """The folder itself, or the folder of its ``config.json`` / weight file."""
        names = ("config.json", *diffusers_format.WEIGHT_NAMES)
        return path.parent if path.is_file() and path.name in names else path

    def matches(self, path: Path) -> bool:
        folder = self._folder(path)
        return folder.is_dir() and diffusers_format.find_files(folder) is not None

    def read_configs(self, path: Path) -> tuple[UNetConfig, DiffusionConfig | None]:
        found = diffusers_format.find_files(self._folder(path))
        assert found is not None  # matches() said so
        config_path, _, scheduler_path = found
        with _config_errors(config_path):
            unet = diffusers_format.unet_config_from_diffusers(diffusers_format.read_json(config_path))
        diffusion = None
        if scheduler_path is not None:
            with _config_errors(scheduler_path):
                diffusion = diffusers_format.diffusion_config_from_scheduler(
                    diffusers_format.read_json(scheduler_path)
                )
        return unet, diffusion

    def convert(self, path: Path, map_location: MapLocation, image_size: int | None) -> Converted:
        found = diffusers_format.find_files(self._folder(path))
        assert found is not None  # matches() said so
        weights_path = found[1]
        unet, diffusion = self.read_configs(path)
        if weights_path.suffix == ".safetensors":
            raw = _load_safetensors(weights_path, map_location)
        else:
            raw = _torch_load(weights_path, map_location)
        return Converted(diffusers_format.convert_state_dict(raw, unet), unet, diffusion)


#: What reading a JSON config with a wrong value type or a missing key raises (int("x"), cfg["key"], ...).
_CONFIG_ERRORS = (
    KeyError,
    TypeError,
    ValueError,
    IndexError,
    ZeroDivisionError,
    AttributeError,
    OverflowError,
)


@contextmanager
def _config_errors(path: Path) -> Iterator[None]:
    """Turn any error while interpreting the JSON config ``path`` into a CheckpointError naming it."""
    try:
        yield
    except CheckpointError as err:
        if str(err).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {err}") from err
    except _CONFIG_ERRORS as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: malformed diffusers config ({detail})") from err


#: Tried in order; the first whose ``matches`` is true reads the file.
ADAPTERS: tuple[Adapter, ...] = (NativeAdapter(), DiffusersAdapter(), GuidedDiffusionAdapter())


def read_configs(path: str | os.PathLike[str]) -> tuple[UNetConfig | None, DiffusionConfig | None]:
    """What a checkpoint file or folder records about its architecture and schedule, without reading a
    tensor: an ilvr-cli file's header, a diffusers folder's ``config.json`` and ``scheduler_config.json``;
    ``(None, None)`` for a bare guided-diffusion state dict or a path no adapter reads (loading it names the
    problem). A CheckpointError for configs that are there but do not read."""
    p = Path(path)
    adapter = next((a for a in ADAPTERS if a.matches(p)), None) if p.exists() else None
    return (None, None) if adapter is None else adapter.read_configs(p)


def load_checkpoint(
    path: str | os.PathLike[str],
    unet_config: UNetConfig | None = None,
    diffusion_config: DiffusionConfig | None = None,
    map_location: MapLocation = "cpu",
    *,
    image_size: int | None = None,
) -> LoadedModel:
    """Load a guided-diffusion ``.pt``, a diffusers folder or an ilvr-cli ``.safetensors`` strictly.

    ``unet_config``: the expected architecture; a checkpoint that differs raises a :class:`CheckpointError`
    saying how (e.g. "checkpoint has 6 output channels (learned sigma) but the config says 3 ..."). Without
    it the file's own config is used, or for a guided-diffusion ``.pt`` one inferred from tensor shapes
    (``image_size``, default 256, and 64 channels per attention head are assumed: see
    :mod:`~ilvr_cli.models.shape_inference`). ``diffusion_config``, when given, replaces the file's.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    adapter = next((a for a in ADAPTERS if a.matches(p)), None)
    if adapter is None:
        raise CheckpointError(
            f"{p}: not a guided-diffusion .pt, a diffusers folder or an ilvr-cli .safetensors"
        )
    try:
        converted = adapter.convert(p, map_location, image_size)
    except CheckpointError as err:
        if str(err).startswith(str(p)):
            raise
        raise CheckpointError(f"{p}: {err}") from err
    config = _resolve_unet_config(p, converted, unet_config, image_size)
    diffusion = diffusion_config if diffusion_config is not None else converted.diffusion_config
    if diffusion is not None and diffusion.variance_type == "learned_range" and not config.learn_sigma:
        raise CheckpointError(
            f"{p}: variance type learned_range needs {2 * config.in_channels} output channels "
            f"but the checkpoint has {config.out_channels} (eps only); use fixed_small or fixed_large"
        )
    network = _build(p, config, converted.state_dict)
    return LoadedModel(network, config, diffusion, adapter.name, converted.metadata)


def _resolve_unet_config(
    path: Path, converted: Converted, given: UNetConfig | None, image_size: int | None
) -> UNetConfig:
    """The caller's config, checked against the file's; else the file's; else one inferred from shapes."""
    recorded = converted.unet_config
    if given is not None and recorded is not None:
        differences = [
            f"{name}: checkpoint {getattr(recorded, name)!r}, config {getattr(given, name)!r}"
            for name in UNetConfig.__dataclass_fields__
            if name != "dropout" and getattr(recorded, name) != getattr(given, name)
        ]
        if differences:
            raise CheckpointError(f"{path}: checkpoint does not match the config ({'; '.join(differences)})")
    if given is not None:
        return given
    if recorded is not None:
        return recorded
    try:
        return infer_unet_config(converted.state_dict, image_size)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err


def _build(path: Path, config: UNetConfig, state_dict: dict[str, Tensor]) -> UNet:
    """Instantiate on the meta device and assign the checkpoint's tensors (strict, float32, eval mode)."""
    problem = explain_mismatch(config, state_dict)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    with torch.device("meta"):
        network = UNet(config)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    network.load_state_dict(tensors, strict=True, assign=True)
    return network.eval()


def save_native(
    path: str | os.PathLike[str],
    network_or_state_dict: nn.Module | Mapping[str, Tensor],
    unet_config: UNetConfig,
    diffusion_config: DiffusionConfig | None,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write an ilvr-cli ``.safetensors`` atomically (temporary file in the same folder, then rename).

    The configs go into the metadata as JSON (``ilvr_cli.unet_config``, ``ilvr_cli.diffusion_config``) with
    ``ilvr_cli.format_version`` "1"; ``extra_metadata`` (str -> str) is stored beside them.
    """
    target = Path(path)
    if target.suffix != ".safetensors":
        raise CheckpointError(f"{target}: ilvr-cli checkpoints end in .safetensors")
    state = (
        network_or_state_dict.state_dict()
        if isinstance(network_or_state_dict, nn.Module)
        else network_or_state_dict
    )
    problem = explain_mismatch(unet_config, state)
    if problem is not None:
        raise CheckpointError(f"{target}: the weights do not fit the UNet config ({problem})")
    extra = dict(extra_metadata or {})
    reserved = sorted(k for k in extra if k.startswith("ilvr_cli."))
    if reserved:
        raise CheckpointError(f"extra metadata may not use the reserved ilvr_cli.* keys {reserved}")
    metadata = {
        **extra,
        META_UNET_CONFIG: json.dumps(unet_config.to_dict(), sort_keys=True),
        META_DIFFUSION_CONFIG: json.dumps(None if diffusion_config is None else diffusion_config.to_dict()),
        META_FORMAT_VERSION: FORMAT_VERSION,
    }
    write_safetensors(target, state, metadata)  # deterministic bytes: the sha256 identifies the weights
    return target


def read_state_dict(path: str | os.PathLike[str], map_location: MapLocation = "cpu") -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pt``/``.pth``/``.bin`` state dict read with
    ``torch.load(weights_only=True)`` (a ``module.`` prefix on every key dropped); CheckpointError if it is
    neither a readable file nor a plain state dict of tensors. No network is built."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return _load_safetensors(p, map_location)
    return _strip_prefix(_torch_load(p, map_location), "module.")


def read_native_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (header only; no tensor is read)."""
    return dict(_safetensors_metadata(Path(path), strict=True))


def _safetensors_metadata(path: Path, strict: bool = False) -> Mapping[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        if strict:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({err})") from err
        return {}


def _load_safetensors(path: Path, map_location: MapLocation) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({err})") from err


#: The start of torch's warning about a pickle protocol other than 2 (``warnings`` matches it as a regex).
_PROTOCOL_WARNING = r"Detected pickle protocol \d+ in the checkpoint"


def _torch_load(path: Path, map_location: MapLocation) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    try:
        with warnings.catch_warnings():
            # torch warns about any pickle protocol but 2 (older guided-diffusion .pt files use 3 or 4);
            # the file either loads as plain tensors or fails below with a clear error: not the user's concern
            warnings.filterwarnings("ignore", message=_PROTOCOL_WARNING, category=UserWarning)
            obj: Any = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it needs {found.group(1)}" if found else "it holds more than tensors"
        raise CheckpointError(
            f"{path}: refused to unpickle non-tensor objects ({what}); only plain state dicts of tensors "
            "are loaded: re-save the model's state_dict() with trusted code"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, zipfile errors...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {detail})"
        ) from err
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    return dict(obj)


def _strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop a prefix every key shares (``module.`` from DistributedDataParallel)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict
