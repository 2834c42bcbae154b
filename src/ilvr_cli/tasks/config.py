"""``TaskConfig``: everything one task run needs, as a frozen value (the CLI parses options into it).

``None`` for ``factor``, ``t_range`` or ``steps`` means "the default": the option given, else the model's
catalog suggestion, else the task preset (see :mod:`ilvr_cli.tasks.presets` and docs/tasks.md). This module
imports neither torch nor numpy.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ilvr_cli.errors import UsageError

TaskName = Literal["upscale", "translate", "edit", "paint2img", "sample"]
FitPolicy = Literal["none", "crop", "resize", "pad"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Method = Literal["ddpm", "ddim"]
KernelName = Literal["cubic", "linear", "lanczos2", "lanczos3"]

TASKS: tuple[str, ...] = get_args(TaskName)
FIT_POLICIES: tuple[str, ...] = get_args(FitPolicy)
PRECISIONS: tuple[str, ...] = get_args(Precision)
METHODS: tuple[str, ...] = get_args(Method)
KERNELS: tuple[str, ...] = get_args(KernelName)

#: Decompression-bomb guard (pixels per input image), the same default as :mod:`ilvr_cli.io`.
DEFAULT_MAX_PIXELS = 50_000_000

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def parse_range(text: str) -> tuple[int, int]:
    """``"1000:200"`` (or ``"1000,200"``, ``"1000-200"``) -> (1000, 200): the conditioned part of the
    trajectory in the paper's time t (1..T), from t_start down to t_stop; ``"all"`` -> (10**9, 0), i.e.
    every step (clamped to the model's T)."""
    value = text.strip().lower()
    if value in ("all", "full"):
        return (10**9, 0)
    match = re.fullmatch(r"(\d+)\s*[:,-]\s*(\d+)", value)
    if not match:
        raise UsageError(
            f"--range {text!r}: expected T_START:T_STOP in the paper's time, e.g. 1000:200, or 'all'"
        )
    start, stop = int(match.group(1)), int(match.group(2))
    if stop > start:
        raise UsageError(f"--range {text!r}: T_START must be >= T_STOP (sampling runs from t = T down to 0)")
    return start, stop


@dataclass(frozen=True)
class TaskConfig:
    """One run of ``ilvr upscale | translate | edit | paint2img | sample`` (see docs/tasks.md)."""

    task: TaskName
    #: ``--model``; None: the task preset's default model (``TaskPreset.default_model``).
    model: str | None = None
    #: INPUT: a file, a folder or a glob (None for ``sample``).
    input: str | None = None
    #: OUTPUT folder; None: ``<input>-<task>`` beside the input (:func:`ilvr_cli.tasks.plan.default_output`).
    output: Path | None = None
    factor: int | None = None
    kernel: KernelName = "cubic"
    #: Exact low-pass: the up-sampler is the pseudo-inverse of the down-sampler (phi is a projection).
    exact: bool = False
    #: Respacing spec ("100", "ddim50", "10,10,10"); None: the catalog's, else "100".
    steps: str | None = None
    #: (t_start, t_stop) in the paper's time; None: the task preset (or the catalog's suggestion).
    t_range: tuple[int, int] | None = None
    samples: int = 1
    #: ``sample`` only: how many images.
    count: int = 8
    seed: int = 0
    batch_size: int = 4
    device: str = "auto"
    #: The network's precision: ``auto`` is bf16 where the hardware computes it natively, else fp32
    #: (:func:`ilvr_cli.runtime.resolve_precision`).
    precision: Precision = "auto"
    method: Method = "ddpm"
    eta: float = 0.0
    overwrite: bool = False
    grid: bool = False
    animate: bool = False
    fit: FitPolicy = "none"
    #: ``edit`` only: one mask file for every input, or a folder of masks mirroring INPUT's relative paths.
    mask: Path | None = None
    cache_dir: Path | None = None
    offline: bool | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        # accept any path-like for the paths (frozen: set through object.__setattr__)
        if self.input is not None:
            object.__setattr__(self, "input", os.fspath(self.input))
        for name in ("output", "mask", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        self._check_choices()
        self._check_numbers()
        if self.task == "sample" and self.input is not None:
            raise UsageError("ilvr sample takes no INPUT: it draws unconditional samples")
        if self.task != "sample" and self.input is None:
            raise UsageError(f"ilvr {self.task} needs an INPUT file, folder or glob")
        if self.mask is not None and self.task != "edit":
            raise UsageError("--mask is only for ilvr edit")
        if self.task == "sample" and self.output is None:
            raise UsageError("ilvr sample needs an OUTPUT folder")

    def _check_choices(self) -> None:
        for value, choices, what in (
            (self.task, TASKS, "task"),
            (self.fit, FIT_POLICIES, "--fit"),
            (self.precision, PRECISIONS, "--precision"),
            (self.method, METHODS, "--sampler"),
            (self.kernel, KERNELS, "--filter"),
        ):
            if value not in choices:
                raise UsageError(f"{what} {value!r} is not one of {', '.join(choices)}")
        if not _DEVICE.fullmatch(self.device):
            raise UsageError(f"--device {self.device!r}: choose auto, cpu, cuda (or cuda:N) or mps")

    def _check_numbers(self) -> None:
        for value, what, low in (
            (self.samples, "--samples", 1),
            (self.count, "--count", 1),
            (self.batch_size, "--batch-size", 1),
            (self.max_pixels, "the pixel limit", 1),
        ):
            if value < low:
                raise UsageError(f"{what} must be at least {low}, got {value}")
        if self.factor is not None and self.factor < 1:
            raise UsageError(f"--factor must be a positive integer, got {self.factor}")
        if not math.isfinite(self.eta) or self.eta < 0:
            raise UsageError(f"--eta must be a finite number >= 0 (0 = deterministic DDIM), got {self.eta}")
        if self.t_range is not None:
            start, stop = self.t_range
            if not 0 <= stop <= start:
                raise UsageError(f"--range needs 0 <= T_STOP <= T_START, got {start}:{stop}")

    def replace(self, **changes: Any) -> TaskConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)
