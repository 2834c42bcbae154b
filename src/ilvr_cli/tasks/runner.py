"""The batch runner: every task is this one loop over the one sampler, with a task-specific reference.

:func:`run_task` plans (:mod:`~ilvr_cli.tasks.plan`: all usage errors before any model is loaded), takes
this rank's share of the inputs, skips the samples whose outputs exist (resume), loads the model only if
something is left, then per batch: reads the references (a bad file fails alone), builds the ILVR hook,
runs :func:`~ilvr_cli.diffusion.sample_steps`, and writes each result atomically with its parameters, a
manifest line, and optionally a contact sheet and an animation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilvr_cli import __version__
from ilvr_cli.diffusion import Denoiser, NoiseSource, sample_steps
from ilvr_cli.errors import IlvrError, InputError, UsageError
from ilvr_cli.ilvr import ILVRHook, LowPass, MaskedILVRHook
from ilvr_cli.io.grid import make_grid
from ilvr_cli.io.load import load_image, load_mask
from ilvr_cli.io.manifest import append_record
from ilvr_cli.io.write import save_gif, save_png, to_uint8
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.distributed import (
    DistInfo,
    gather_objects,
    setup_distributed,
    shard,
    teardown_distributed,
)
from ilvr_cli.tasks.model import ModelProbe, PreparedModel, load_task_model
from ilvr_cli.tasks.plan import Settings, TaskPlan, WorkUnit, plan_task, resolve_settings
from ilvr_cli.tasks.progress import RunStart, TaskProgress
from ilvr_cli.tasks.reference import Reference, find_mask, full_reference, upscale_reference
from ilvr_cli.tasks.result import Failure, TaskResult

#: ``--animate`` keeps at most this many frames of the predicted x_0 (evenly spaced, the last included).
ANIMATION_FRAMES = 40
#: Contact sheets go here inside OUTPUT, named after the first output of their batch.
GRID_DIR = "_grids"


def run_task(
    config: TaskConfig, progress: TaskProgress | None = None, *, model: PreparedModel | None = None
) -> TaskResult:
    """Run one task over its inputs (see the module docstring); ``model`` skips loading (tests, notebooks).

    Raises :class:`~ilvr_cli.errors.UsageError` for bad usage (before any model is loaded); inputs that
    fail are listed in the result's ``failed`` and the run goes on. Under torchrun the returned result
    covers every rank.
    """
    started = time.perf_counter()
    progress = progress or TaskProgress()
    given = (
        None
        if model is None
        else ModelProbe(config.model, None, None, model.image_size, model.diffusion_config)
    )
    plan = plan_task(config, given)
    info = setup_distributed(plan.device)
    try:
        result = _Run(plan, info, progress, model).execute()
        result.timings.total = time.perf_counter() - started
        merged = TaskResult.merge(gather_objects(result, info))
    finally:
        teardown_distributed(info)
    return merged


def group_by_input(units: Sequence[WorkUnit]) -> list[list[WorkUnit]]:
    """Consecutive units of the same input (its K samples) as one group: the unit ranks shard."""
    groups: list[list[WorkUnit]] = []
    for unit in units:
        if groups and groups[-1][0].label == unit.label:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) float in [0, 1] on the CPU."""
    return ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) / 2.0).permute(1, 2, 0).numpy()


@dataclass
class _Batch:
    units: list[WorkUnit] = field(default_factory=list)
    refs: list[Reference | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def factor(self) -> int | None:
        return None if not self.refs or self.refs[0] is None else self.refs[0].factor


class _Run:
    """One rank's share of a planned run."""

    def __init__(self, plan: TaskPlan, info: DistInfo, progress: TaskProgress, model: PreparedModel | None):
        self.plan, self.info, self.progress, self.model = plan, info, progress, model
        self.config = plan.config
        self.out = plan.output_dir
        self.settings: Settings = plan.settings
        self.result = TaskResult(
            self.config.task,
            self.out,
            plan.manifest_path,
            world_size=info.world_size,
            settings=plan.settings.to_dict(),
        )
        self.remaining: dict[str, int] = {}
        self.outputs: dict[str, list[Path]] = {}
        self.seconds: dict[str, float] = {}
        self.failed_labels: set[str] = set()
        self.lowpass: dict[int, LowPass] = {}
        self.denoiser: Denoiser | None = None
        self.size = 0

    # ------------------------------------------------------------------ plan -> pending work
    def _pending(self) -> list[list[WorkUnit]]:
        mine = shard(group_by_input(self.plan.units), self.info.rank, self.info.world_size)
        pending: list[list[WorkUnit]] = []
        for group in mine:
            todo = [u for u in group if self.config.overwrite or not (self.out / u.output).exists()]
            self.result.skipped += [u.output.as_posix() for u in group if u not in todo]
            if todo:
                pending.append(todo)
                self.remaining[todo[0].label] = len(todo)
        return pending

    def execute(self) -> TaskResult:
        pending = self._pending()
        total_inputs = len(group_by_input(self.plan.units))
        self.progress.start(
            RunStart(
                self.config.task,
                len(pending),
                sum(len(g) for g in pending),
                len(self.result.skipped),
                total_inputs,
                self.info.rank,
                self.info.world_size,
                self.out,
            )
        )
        if self.plan.inputs is not None and self.plan.inputs.ignored and self.info.is_main:
            self.progress.note(f"ignored {len(self.plan.inputs.ignored)} file(s) that are not images")
        if not pending:
            return self.result
        self._load_model()
        for batch in self._batches(pending):
            self._run_batch(batch)
        return self.result

    # ------------------------------------------------------------------ model
    def _load_model(self) -> None:
        started = time.perf_counter()
        self.progress.model_loading(self.plan.model.name)
        if self.model is None:
            self.model = load_task_model(
                self.plan.model,
                cache_dir=self.config.cache_dir,
                offline=self.config.offline,
                download_progress=self.progress.downloads(),
            )
        model = self.model
        if model.in_channels != 3:
            raise UsageError(
                f"--model {model.name}: {model.in_channels}-channel models are not supported (RGB only)"
            )
        if self.plan.model.image_size is None or self.plan.model.diffusion is None:
            probe = dataclasses.replace(
                self.plan.model, image_size=model.image_size, diffusion=model.diffusion_config
            )
            self.settings = resolve_settings(self.config, probe, model.diffusion_config.num_timesteps)
            self.result.settings = self.settings.to_dict()
        if hasattr(model.network, "to"):
            # channels_last: oneDNN / cuDNN convolutions run faster in NHWC (about 11% per forward on this
            # project's CPU benchmark: benchmarks/bench_unet.py vs --no-channels-last); same math.
            model.network = model.network.to(self.plan.device, memory_format=torch.channels_last)
        self.size = model.image_size
        self.denoiser = Denoiser.from_loaded(
            model.network, model.diffusion_config, self.settings.steps, autocast_dtype=self.plan.autocast
        )
        self.result.timings.model_load = time.perf_counter() - started

    # ------------------------------------------------------------------ references
    def _reference(self, unit: WorkUnit) -> Reference | None:
        """Read and prepare the reference of ``unit``'s input (None for ``sample``)."""
        if unit.item is None:
            return None
        data = load_image(unit.item.path, max_pixels=self.config.max_pixels)
        factor = self.settings.factor
        assert factor is not None
        if self.config.task == "upscale":
            return upscale_reference(
                unit.label,
                data,
                model_size=self.size,
                factor=self.config.factor,
                default_factor=factor,
                fit=self.config.fit,
                kernel=self.config.kernel,
            )
        mask = None
        if self.config.mask is not None:
            mask_path = find_mask(Path(self.config.mask), unit.item.rel)
            if mask_path is None:
                raise InputError(
                    f"{unit.label}: no mask for it under {self.config.mask} (same relative path and name)"
                )
            mask = load_mask(mask_path, max_pixels=self.config.max_pixels)
        return full_reference(
            unit.label, data, model_size=self.size, factor=factor, fit=self.config.fit, mask=mask
        )

    def _fail(self, label: str, message: str) -> None:
        if label in self.failed_labels:
            return
        if label not in message:
            message = f"{label}: {message}"
        self.failed_labels.add(label)
        self.result.failed.append(Failure(label, message))
        self.progress.image_failed(label, message)
        append_record(
            self.plan.manifest_path,
            {
                "status": "failed",
                "input": label,
                "error": message,
                "rank": self.info.rank,
                "task": self.config.task,
            },
        )

    def _batches(self, pending: list[list[WorkUnit]]) -> Iterator[_Batch]:
        """Batches of up to ``batch_size`` samples sharing one N, references read one input at a time."""
        batch = _Batch()
        for group in pending:
            try:
                ref = self._reference(group[0])
            except IlvrError as error:
                self._fail(group[0].label, str(error))
                continue
            for unit in group:
                if unit.label in self.failed_labels:
                    break
                if batch and ref is not None and batch.factor != ref.factor:
                    yield batch
                    batch = _Batch()
                batch.units.append(unit)
                batch.refs.append(ref)
                if len(batch) == self.config.batch_size:
                    yield batch
                    batch = _Batch()
        if batch:
            yield batch

    # ------------------------------------------------------------------ sampling
    def _lowpass(self, factor: int) -> LowPass:
        if factor not in self.lowpass:
            self.lowpass[factor] = LowPass(
                self.size, self.size, factor, self.config.kernel, self.config.exact
            )
        return self.lowpass[factor]

    def _hooks(self, batch: _Batch) -> list[ILVRHook]:
        refs = [r for r in batch.refs if r is not None]
        if not refs:
            return []
        assert self.denoiser is not None and batch.factor is not None
        lowpass, schedule = self._lowpass(batch.factor), self.denoiser.schedule
        images = torch.stack([r.image for r in refs])
        if refs[0].low_res:
            return [ILVRHook(lowpass, schedule, low_res=images, t_range=self.settings.t_range)]
        if refs[0].mask is not None:
            masks = torch.stack([r.mask for r in refs if r.mask is not None])
            return [
                MaskedILVRHook(lowpass, schedule, reference=images, mask=masks, t_range=self.settings.t_range)
            ]
        return [ILVRHook(lowpass, schedule, reference=images, t_range=self.settings.t_range)]

    def _sample(self, batch: _Batch) -> tuple[torch.Tensor, list[list[np.ndarray]]]:
        """x_0 of the batch and, with ``--animate``, per sample the frames of the predicted x_0."""
        assert self.denoiser is not None
        noise = NoiseSource(self.config.seed, [u.key for u in batch.units], self.plan.device)
        steps = len(self.denoiser.schedule)
        every = max(1, math.ceil(steps / ANIMATION_FRAMES))
        frames: list[list[np.ndarray]] = [[] for _ in batch.units]
        self.progress.batch_start([u.output.as_posix() for u in batch.units], steps)
        state = None
        for done, state in enumerate(
            sample_steps(
                self.denoiser,
                noise,
                shape=(3, self.size, self.size),
                method=self.config.method,
                eta=self.config.eta,
                hooks=self._hooks(batch),
            ),
            start=1,
        ):
            self.progress.step(done, steps)
            if self.config.animate and (done % every == 0 or done == steps):
                shown = state.x if done == steps else state.pred_xstart
                for j in range(len(batch)):
                    frames[j].append(to_uint8(to_pixels(shown[j])))
        assert state is not None
        return state.x, frames

    def _params(self, unit: WorkUnit, ref: Reference | None) -> dict[str, Any]:
        """What an output PNG records about how it was made (its ``ilvr-cli`` text chunk)."""
        assert self.model is not None and self.denoiser is not None
        conditioned = ref is not None
        mask = None
        if self.config.mask is not None and unit.item is not None:
            found = find_mask(Path(self.config.mask), unit.item.rel)
            mask = found.name if found is not None else None
        return {
            "tool": "ilvr-cli",
            "version": __version__,
            "task": self.config.task,
            "model": self.model.name,
            "model_sha256": self.model.sha256,
            "input": unit.item.rel.as_posix() if unit.item is not None else None,
            "sample": unit.k,
            "key": unit.key,
            "seed": self.config.seed,
            "factor": ref.factor if ref is not None else None,
            "kernel": self.config.kernel if conditioned else None,
            "exact": self.config.exact if conditioned else None,
            "range": list(self.settings.t_range) if conditioned and self.settings.t_range else None,
            "steps": self.settings.steps,
            "num_steps": len(self.denoiser.schedule),
            "sampler": self.config.method,
            "eta": self.config.eta if self.config.method == "ddim" else None,
            "precision": self.config.precision,
            "device": self.plan.device.type,
            "fit": self.config.fit if conditioned else None,
            "mask": mask,
            "size": [self.size, self.size],
        }

    def _run_batch(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            x0, frames = self._sample(batch)
            self._write(batch, x0, frames, (time.perf_counter() - started) / len(batch))
        except (IlvrError, OSError, torch.OutOfMemoryError) as error:
            for unit in batch.units:
                self._fail(
                    unit.label,
                    f"{type(error).__name__}: {error}" if not isinstance(error, IlvrError) else str(error),
                )
        finally:
            elapsed = time.perf_counter() - started
            self.result.timings.sampling += elapsed

    def _write(
        self, batch: _Batch, x0: torch.Tensor, frames: list[list[np.ndarray]], per_sample: float
    ) -> None:
        written: list[np.ndarray] = []
        for j, (unit, ref) in enumerate(zip(batch.units, batch.refs, strict=True)):
            pixels = to_uint8(to_pixels(x0[j]))
            written.append(pixels)
            params = self._params(unit, ref)
            target = save_png(
                self.out / unit.output, pixels, params, text={"Software": f"ilvr-cli {__version__}"}
            )
            if self.config.animate:
                save_gif(target.with_suffix(".gif"), frames[j])
            append_record(
                self.plan.manifest_path,
                {
                    "status": "done",
                    "output": unit.output.as_posix(),
                    "input": params["input"],
                    "sample": unit.k,
                    "key": unit.key,
                    "rank": self.info.rank,
                    "params": params,
                },
            )
            self.result.done.append(unit.output.as_posix())
            self._count(unit, target, per_sample)
        if self.config.grid:
            self._write_grid(batch, written)

    def _count(self, unit: WorkUnit, target: Path, seconds: float) -> None:
        self.outputs.setdefault(unit.label, []).append(target)
        self.seconds[unit.label] = self.seconds.get(unit.label, 0.0) + seconds
        self.remaining[unit.label] -= 1
        if self.remaining[unit.label] == 0:
            self.result.images_done += 1
            self.progress.image_done(unit.label, self.outputs.pop(unit.label), self.seconds.pop(unit.label))

    def _write_grid(self, batch: _Batch, samples: list[np.ndarray]) -> None:
        """One row per input: the reference as the model got it, its low-pass phi_N(y), the samples."""
        rows: list[list[np.ndarray]] = []
        current: str | None = None
        for unit, ref, pixels in zip(batch.units, batch.refs, samples, strict=True):
            if ref is None:
                if not rows:
                    rows.append([])
                rows[0].append(pixels)
                continue
            if unit.label != current:
                lowpass = self._lowpass(ref.factor)
                image = ref.image.unsqueeze(0)
                phi = lowpass.up(image) if ref.low_res else lowpass(image)
                rows.append([to_uint8(to_pixels(ref.image)), to_uint8(to_pixels(phi[0]))])
                current = unit.label
            rows[-1].append(pixels)
        save_png(self.out / GRID_DIR / batch.units[0].output, make_grid(rows))


__all__ = ["ANIMATION_FRAMES", "GRID_DIR", "group_by_input", "run_task", "to_pixels"]
