"""Each setting of a run decided once: the option, else the model's suggestion, else the task preset, and
where each value came from (:class:`Origin`); plus the values that decide an output's pixels (:func:`recipe`).

Nothing here loads a model: the checks run on the catalog entry or the checkpoint's header
(:class:`~ilvr_cli.registry.handle.ModelHandle`'s facts) and, for N per input, on the images' headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ilvr_cli.diffusion.schedule import space_timesteps
from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.io.load import read_image_size
from ilvr_cli.io.scan import InputSet
from ilvr_cli.registry.handle import ModelHandle
from ilvr_cli.runtime import PRECISION_VARIABLE, pinned_precision
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.presets import DEFAULT_STEPS, preset
from ilvr_cli.tasks.reference import full_size_check, is_thumbnail, upscale_factor

#: Assumed until the model says otherwise (all published ILVR models use T = 1000).
DEFAULT_NUM_TIMESTEPS = 1000


class Origin(str, Enum):
    """Where a setting's value came from; the value is what summaries and ``--json`` print."""

    OPTION = "option"  #: given on the command line
    MODEL = "catalog"  #: the model's suggestion (its catalog entry's defaults)
    PRESET = "preset"  #: the task preset (docs/tasks.md, "Defaults and why")
    INPUT = "input"  #: derived from the input (upscale: model size / input size)
    HARDWARE = "auto"  #: chosen for this machine (``--precision auto``: bf16 where it is native)


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
    #: What the network runs in: fp32, bf16 or fp16 (``--precision``, resolved for the device).
    precision: str = "fp32"

    def source_text(self, key: str) -> str:
        """``origin`` or ``origin (note)``, as summaries print it."""
        origin = self.sources[key].value
        return f"{origin} ({self.notes[key]})" if key in self.notes else origin

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "range": list(self.t_range) if self.t_range else None,
            "steps": self.steps,
            "precision": self.precision,
            "sources": {key: self.source_text(key) for key in self.sources},
        }


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


def resolve_settings(config: TaskConfig, model: ModelHandle) -> Settings:
    """Option, else the model's catalog suggestion, else the task preset; checked against the model."""
    task_preset = preset(config.task)
    suggested = model.task_defaults(config.task)
    t_count = model.num_timesteps or DEFAULT_NUM_TIMESTEPS
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


def with_precision(settings: Settings, requested: str, resolved: str, device_type: str) -> Settings:
    """``settings`` with the network precision that runs (``resolved`` from ``requested``) and its origin:
    the option, or for ``auto`` this machine (a note says why)."""
    import dataclasses

    sources, notes = dict(settings.sources), dict(settings.notes)
    if requested == "auto":
        sources["precision"] = Origin.HARDWARE
        pinned = pinned_precision()
        native = "native bf16 here" if resolved == "bf16" else f"no native bf16 on this {device_type}"
        notes["precision"] = f"{PRECISION_VARIABLE}={pinned}" if pinned else native
    else:
        sources["precision"] = Origin.OPTION
    return dataclasses.replace(settings, precision=resolved, sources=sources, notes=notes)


def input_factors(
    config: TaskConfig, inputs: InputSet | None, model: ModelHandle, settings: Settings
) -> tuple[dict[str, int], frozenset[str]]:
    """N for each input, from its header (size and format only), and the inputs whose N their own size
    decides (``upscale`` thumbnails: model size / input size): the checks of
    :mod:`~ilvr_cli.tasks.reference` that need no pixels and no model. An input that fails them is left
    out (it fails alone when the run reads it); if every input fails, nothing could run: a
    :class:`UsageError` before any model is loaded or OUTPUT is created."""
    if inputs is None or model.image_size is None or settings.factor is None:
        return {}, frozenset()
    size, factors, from_input, errors = model.image_size, {}, set(), []
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
                if is_thumbnail(h, w, size):
                    from_input.add(label)
            else:
                full_size_check(label, h, w, model_size=size, factor=settings.factor, fit=config.fit)
                factors[label] = settings.factor
        except InputError as error:
            errors.append(str(error))
    if errors and not factors:
        more = f" (and {len(errors) - 1} more input(s) that cannot be used either)" if len(errors) > 1 else ""
        raise UsageError(f"no input can be used: {errors[0]}{more}")
    return factors, frozenset(from_input)


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
        "precision": settings.precision,
        "device": device.type,
        "fit": config.fit if conditioned else None,
    }
