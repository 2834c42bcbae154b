"""Everything that can be checked before a model is loaded: inputs, output folder, model, options.

The settings themselves are decided in :mod:`~ilvr_cli.tasks.settings` (re-exported here).

:func:`plan_task` turns a :class:`TaskConfig` into a :class:`TaskPlan` (the list of samples to make, with
their noise keys and output names) or raises a :class:`~ilvr_cli.errors.UsageError`: missing INPUT,
OUTPUT equal to INPUT, an unknown model, a factor that does not divide the model size, a bad range or
respacing, a device or precision that is not available. Nothing is downloaded or loaded here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.io.manifest import MANIFEST_NAME
from ilvr_cli.io.scan import InputItem, InputSet, glob_root, is_glob, scan_inputs
from ilvr_cli.registry.handle import ModelHandle, open_model
from ilvr_cli.runtime import autocast_dtype, resolve_device, resolve_precision
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.distributed import dist_info
from ilvr_cli.tasks.presets import preset
from ilvr_cli.tasks.settings import (
    UPSCALE_DEFAULT_NOTE,
    Origin,
    Settings,
    input_factors,
    recipe,
    resolve_settings,
    with_precision,
)


@dataclass(frozen=True)
class WorkUnit:
    """One sample to make: sample ``k`` of input ``label``, its noise key and its output path.

    ``index`` is its place in the whole job (inputs sorted by relative path, then k): the order ranks
    shard. The key is ``"<relative path>#<k>"`` (``"sample/<n>"`` for ``ilvr sample``), so a sample's noise
    never depends on batch size, order or rank.
    """

    index: int
    label: str
    item: InputItem | None
    k: int
    key: str
    output: PurePosixPath


@dataclass(frozen=True)
class TaskPlan:
    """A checked run: what to read, where to write, with which model and settings, on which device."""

    config: TaskConfig
    inputs: InputSet | None
    output_dir: Path
    model: ModelHandle
    settings: Settings
    units: tuple[WorkUnit, ...]
    device: torch.device
    autocast: torch.dtype | None
    #: N per input label, from the image headers (empty when the model's size is not known yet).
    input_factors: Mapping[str, int] = field(default_factory=dict)
    #: The inputs whose N their own size decided (upscale thumbnails: model size / input size).
    factor_from_input: frozenset[str] = frozenset()

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / MANIFEST_NAME

    def reported_settings(self) -> dict[str, Any]:
        """The settings a summary reports: for ``upscale``, the N the inputs actually get (model size /
        input size for thumbnails), not only the default for model-size references."""
        settings = self.settings.to_dict()
        used = sorted(set(self.input_factors.values()))
        if not used or (used == [self.settings.factor] and not self.factor_from_input):
            return settings
        settings["factor"] = used[0] if len(used) == 1 else used
        source = f"{Origin.INPUT.value} (model size / input size)"
        others = len(self.input_factors) - len(self.factor_from_input)
        if others and self.factor_from_input:
            source += (
                f" for {len(self.factor_from_input)} input(s); {settings['sources']['factor']} for {others}"
            )
        elif others:
            source = settings["sources"]["factor"]
        settings["sources"] = {**settings["sources"], "factor": source}
        return settings


def default_output(input_spec: str, task: str) -> Path:
    """OUTPUT when none is given: ``<name>-<task>`` beside the input, where name is the input folder's
    name, the input file's stem (``photos/a.png`` -> ``photos/a-upscale/``) or, for a glob, the name of
    the folder it starts in (``'photos/*.jpg'`` -> ``photos-upscale/``)."""
    path = Path(input_spec).expanduser()
    if path.is_file():
        return path.absolute().parent / f"{path.stem}-{task}"
    if not path.is_dir() and is_glob(input_spec):
        path = glob_root(os.path.expanduser(input_spec))
    folder = path.absolute()
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    return folder.parent / f"{folder.name}-{task}"


def _check_output(output: Path, input_spec: str) -> None:
    """OUTPUT must be a folder other than the input's (its results would overwrite the inputs)."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"OUTPUT {output} is a file; give a folder (it is created if missing)")
    path = Path(input_spec).expanduser()
    if path.is_file():
        taken = {path.resolve(), path.resolve().parent}
    elif path.is_dir():
        taken = {path.resolve()}
    elif is_glob(input_spec):
        taken = {glob_root(os.path.expanduser(input_spec)).resolve()}
    else:
        raise UsageError(f"input {input_spec} does not exist")
    if output.resolve() in taken:
        raise UsageError(
            f"OUTPUT {output} is the input's folder: the results would overwrite the inputs; choose another folder"
        )


def _output_names(items: tuple[InputItem, ...]) -> dict[PurePosixPath, PurePosixPath]:
    """rel -> output stem path: the relative path without extension; inputs that differ only by their
    extension (``a.jpg``, ``a.png``) keep it in the name (``a_jpg``, ``a_png``)."""
    stems = Counter((item.rel.parent, item.rel.stem) for item in items)
    names: dict[PurePosixPath, PurePosixPath] = {}
    for item in items:
        stem = item.rel.stem
        if stems[(item.rel.parent, stem)] > 1:
            stem = f"{stem}_{item.rel.suffix.lstrip('.').lower()}"
        names[item.rel] = item.rel.parent / stem
    return names


def build_units(config: TaskConfig, inputs: InputSet | None) -> tuple[WorkUnit, ...]:
    """The samples of the job in their canonical order, with keys and output names (module docstring)."""
    units: list[WorkUnit] = []
    if inputs is None:
        for n in range(config.count):
            name = f"{n:06d}"
            units.append(WorkUnit(n, name, None, 0, f"sample/{name}", PurePosixPath(f"{name}.png")))
        return tuple(units)
    names = _output_names(inputs.items)
    for item in inputs.items:
        stem = names[item.rel]
        for k in range(config.samples):
            suffix = "" if config.samples == 1 else f"_{k}"
            output = stem.parent / f"{stem.name}{suffix}.png"
            units.append(
                WorkUnit(len(units), item.rel.as_posix(), item, k, f"{item.rel.as_posix()}#{k}", output)
            )
    clashes = [name for name, n in Counter(u.output for u in units).items() if n > 1]
    if clashes:
        raise UsageError(
            f"two outputs would be named {clashes[0]} (e.g. an input a_1.png beside a.png with --samples); "
            "rename one of the inputs"
        )
    return tuple(units)


def open_task_model(config: TaskConfig) -> ModelHandle:
    """``--model`` opened (no download, no load): an unknown name, a missing path, a catalog entry that is not
    a diffusion model or a model that is not RGB is a UsageError here."""
    name = config.model or preset(config.task).default_model
    try:
        model = open_model(name, cache_dir=config.cache_dir).require_diffusion()
    except InputError:
        raise UsageError(f"--model {name}: no such checkpoint file or folder") from None
    check_rgb(model)
    return model


def check_rgb(model: ModelHandle) -> None:
    """The tasks read and write RGB images: a model with another channel count is a UsageError."""
    if model.in_channels not in (None, 3):
        raise UsageError(
            f"--model {model.name}: {model.in_channels}-channel models are not supported (RGB only)"
        )


def plan_task(config: TaskConfig, model: ModelHandle | None = None) -> TaskPlan:
    """Check everything that needs no model (module docstring) and list the samples to make.

    ``model``: a model the caller opened (or built in memory) itself; else ``config.model`` is opened.
    """
    inputs: InputSet | None = None
    if config.input is not None:
        output = Path(config.output or default_output(config.input, config.task)).expanduser().absolute()
        _check_output(output, config.input)
        inputs = scan_inputs(config.input, exclude=output)
    else:
        assert config.output is not None
        output = Path(config.output).expanduser().absolute()
        if output.exists() and not output.is_dir():
            raise UsageError(f"OUTPUT {output} is a file; give a folder (it is created if missing)")
    if config.mask is not None and not Path(config.mask).exists():
        raise UsageError(f"--mask {config.mask} does not exist")
    model = model or open_task_model(config)
    settings = resolve_settings(config, model)
    device = resolve_device(config.device, dist_info().local_rank)
    precision = resolve_precision(config.precision, device)
    settings = with_precision(settings, config.precision, precision, device.type)
    autocast = autocast_dtype(precision, device)
    units = build_units(config, inputs)
    factors, from_input = input_factors(config, inputs, model, settings)
    return TaskPlan(config, inputs, output, model, settings, units, device, autocast, factors, from_input)


__all__ = [
    "UPSCALE_DEFAULT_NOTE",
    "Origin",
    "Settings",
    "TaskPlan",
    "WorkUnit",
    "build_units",
    "check_rgb",
    "default_output",
    "input_factors",
    "open_task_model",
    "plan_task",
    "recipe",
    "resolve_settings",
]
