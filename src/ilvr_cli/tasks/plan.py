"""Everything that can be checked before a model is loaded: inputs, output folder, model, options.

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
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ilvr_cli.diffusion.schedule import space_timesteps
from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.io.load import read_image_size
from ilvr_cli.io.manifest import MANIFEST_NAME
from ilvr_cli.io.scan import InputItem, InputSet, glob_root, is_glob, scan_inputs
from ilvr_cli.runtime import autocast_dtype, resolve_device
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.distributed import dist_info
from ilvr_cli.tasks.model import ModelProbe, probe_model
from ilvr_cli.tasks.presets import DEFAULT_STEPS, preset
from ilvr_cli.tasks.reference import full_size_check, upscale_factor

#: Assumed until the model says otherwise (all published ILVR models use T = 1000).
DEFAULT_NUM_TIMESTEPS = 1000


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


class Origin(str, Enum):
    """Where a setting's value came from; the value is what summaries and ``--json`` print."""

    OPTION = "option"  #: given on the command line
    MODEL = "catalog"  #: the model's suggestion (its catalog entry's defaults)
    PRESET = "preset"  #: the task preset (docs/tasks.md, "Defaults and why")
    INPUT = "input"  #: derived from the input (upscale: model size / input size)


#: What ``upscale`` adds to a default N: it holds for model-size references only.
UPSCALE_DEFAULT_NOTE = "for model-size inputs; smaller ones: model size / input size"


@dataclass(frozen=True)
class Settings:
    """The values a run uses, each decided once, with where it came from (:class:`Origin`) and, where
    that alone would mislead, a note."""

    factor: int | None
    t_range: tuple[int, int] | None
    steps: str
    sources: Mapping[str, Origin] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)

    def source_text(self, key: str) -> str:
        """``origin`` or ``origin (note)``, as summaries print it."""
        origin = self.sources[key].value
        return f"{origin} ({self.notes[key]})" if key in self.notes else origin

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "range": list(self.t_range) if self.t_range else None,
            "steps": self.steps,
            "sources": {key: self.source_text(key) for key in self.sources},
        }


@dataclass(frozen=True)
class TaskPlan:
    """A checked run: what to read, where to write, with which model and settings, on which device."""

    config: TaskConfig
    inputs: InputSet | None
    output_dir: Path
    model: ModelProbe
    settings: Settings
    units: tuple[WorkUnit, ...]
    device: torch.device
    autocast: torch.dtype | None
    #: N per input label, from the image headers (empty when the model's size is not known yet).
    input_factors: Mapping[str, int] = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / MANIFEST_NAME

    def reported_settings(self) -> dict[str, Any]:
        """The settings a summary reports: for ``upscale``, the N the inputs actually get (model size /
        input size for thumbnails), not only the default for model-size references."""
        settings = self.settings.to_dict()
        used = sorted(set(self.input_factors.values()))
        if used and used != [self.settings.factor]:
            settings["factor"] = used[0] if len(used) == 1 else used
            settings["sources"] = {
                **settings["sources"],
                "factor": f"{Origin.INPUT.value} (model size / input size)",
            }
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


def _catalog_range(defaults: Mapping[str, Any], num_timesteps: int) -> tuple[int, int] | None:
    """The catalog's suggestion in the paper's time: ``range`` [start, stop], or the reference code's
    ``range_t`` (refine respaced steps i > range_t at the entry's respacing) converted: t_stop is the
    paper time of the first refined step, timestep_map[range_t + 1] + 1."""
    if "range" in defaults:
        start, stop = (int(v) for v in defaults["range"])
        return start, stop
    if "range_t" in defaults:
        kept = space_timesteps(num_timesteps, str(defaults.get("respacing", DEFAULT_STEPS)))
        index = int(defaults["range_t"]) + 1
        return num_timesteps, (kept[index] + 1 if index < len(kept) else num_timesteps + 1)
    return None


def _check_factor(factor: int, size: int | None, source: Origin) -> None:
    if size is None:
        return
    if factor > size or size % factor:
        divisors = ", ".join(str(d) for d in range(1, size + 1) if size % d == 0 and d <= 64)
        what = f"--factor {factor}" if source is Origin.OPTION else f"the {source.value} default N={factor}"
        raise UsageError(f"{what} does not divide the model size {size}; choose one of {divisors}")


def resolve_settings(config: TaskConfig, model: ModelProbe, num_timesteps: int | None = None) -> Settings:
    """Option, else the model's catalog suggestion, else the task preset; checked against the model."""
    task_preset = preset(config.task)
    suggested = model.spec.task_defaults(config.task) if model.spec is not None else {}
    t_count = num_timesteps or (model.diffusion.num_timesteps if model.diffusion else DEFAULT_NUM_TIMESTEPS)
    sources: dict[str, Origin] = {}
    notes: dict[str, str] = {}

    steps, sources["steps"] = (
        (config.steps, Origin.OPTION)
        if config.steps is not None
        else (str(suggested["respacing"]), Origin.MODEL)
        if "respacing" in suggested
        else (DEFAULT_STEPS, Origin.PRESET)
    )
    try:
        kept = space_timesteps(t_count, steps)
    except UsageError as error:
        raise UsageError(f"--steps {steps}: {error}") from None
    if not kept:
        raise UsageError(f"--steps {steps} keeps no sampling step; give at least 1 (e.g. 100, or ddim50)")

    factor: int | None = None
    t_range: tuple[int, int] | None = None
    if task_preset.factor is not None:
        if config.factor is not None:
            factor, sources["factor"] = config.factor, Origin.OPTION
        elif "factor" in suggested:
            factor, sources["factor"] = int(suggested["factor"]), Origin.MODEL
        else:
            factor, sources["factor"] = task_preset.factor, Origin.PRESET
        _check_factor(factor, model.image_size, sources["factor"])
        if config.task == "upscale" and config.factor is None:
            notes["factor"] = UPSCALE_DEFAULT_NOTE
        catalog_range = _catalog_range(suggested, t_count)
        if config.t_range is not None:
            t_range, sources["range"] = config.t_range, Origin.OPTION
        elif catalog_range is not None:
            t_range, sources["range"] = catalog_range, Origin.MODEL
        else:
            t_range, sources["range"] = task_preset.t_range(t_count), Origin.PRESET
        assert t_range is not None, "every preset with a factor has a range_fraction"
        t_range = (min(t_range[0], t_count), min(t_range[1], t_count + 1))
    return Settings(factor, t_range, steps, sources, notes)


def input_factors(
    config: TaskConfig, inputs: InputSet | None, model: ModelProbe, settings: Settings
) -> dict[str, int]:
    """N for each input, from its header (size and format only): the checks of
    :mod:`~ilvr_cli.tasks.reference` that need no pixels and no model. An input that fails them is left
    out (it fails alone when the run reads it); if every input fails, nothing could run: a
    :class:`UsageError` before any model is loaded or OUTPUT is created."""
    if inputs is None or model.image_size is None or settings.factor is None:
        return {}
    size, factors, errors = model.image_size, {}, []
    for item in inputs.items:
        label = item.rel.as_posix()
        try:
            h, w = read_image_size(item.path, max_pixels=config.max_pixels)
            if config.task == "upscale":
                factors[label] = upscale_factor(
                    label,
                    h,
                    w,
                    model_size=size,
                    factor=config.factor,
                    default_factor=settings.factor,
                    fit=config.fit,
                )
            else:
                full_size_check(label, h, w, model_size=size, factor=settings.factor, fit=config.fit)
                factors[label] = settings.factor
        except InputError as error:
            errors.append(str(error))
    if errors and not factors:
        more = f" (and {len(errors) - 1} more input(s) that cannot be used either)" if len(errors) > 1 else ""
        raise UsageError(f"no input can be used: {errors[0]}{more}")
    return factors


def recipe(
    config: TaskConfig, model_name: str, settings: Settings, device: torch.device, factor: int | None
) -> dict[str, Any]:
    """The recorded values that decide an output's pixels (:data:`~ilvr_cli.tasks.outputs.RECIPE_FIELDS`),
    as the output's PNG and manifest line record them."""
    conditioned = config.task != "sample"
    return {
        "task": config.task,
        "model": model_name,
        "seed": config.seed,
        "steps": settings.steps,
        "factor": factor if conditioned else None,
        "kernel": config.kernel if conditioned else None,
        "exact": config.exact if conditioned else None,
        "range": list(settings.t_range) if conditioned and settings.t_range else None,
        "sampler": config.method,
        "eta": config.eta if config.method == "ddim" else None,
        "precision": config.precision,
        "device": device.type,
        "fit": config.fit if conditioned else None,
    }


def plan_task(config: TaskConfig, model: ModelProbe | None = None) -> TaskPlan:
    """Check everything that needs no model (module docstring) and list the samples to make.

    ``model``: what is known of a model the caller supplies itself (then ``config.model`` is only its name).
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
    model = model or probe_model(config.model, config.cache_dir)
    settings = resolve_settings(config, model)
    device = resolve_device(config.device, dist_info().local_rank)
    autocast = autocast_dtype(config.precision, device)
    units = build_units(config, inputs)
    factors = input_factors(config, inputs, model, settings)
    return TaskPlan(config, inputs, output, model, settings, units, device, autocast, factors)
