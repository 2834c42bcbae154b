"""The batch loop: every task is this one loop over the one sampler; a run is three parts.

:func:`run_task` plans (:mod:`~ilvr_cli.tasks.plan`: every usage error before any model is loaded), takes
this rank's share of the inputs, checks and skips the samples whose outputs exist
(:mod:`~ilvr_cli.tasks.outputs`), loads the model only if something is left, then per batch: the
references and ILVR hooks (:mod:`~ilvr_cli.tasks.conditioning`; a bad file fails alone),
:func:`~ilvr_cli.diffusion.sample_steps`, and each result written with its parameters and manifest line
(:mod:`~ilvr_cli.tasks.writer`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilvr_cli.diffusion import Denoiser, NoiseSource
from ilvr_cli.errors import IlvrError, UsageError
from ilvr_cli.io.scan import GRID_DIR
from ilvr_cli.io.write import to_uint8
from ilvr_cli.registry.handle import ModelHandle
from ilvr_cli.runtime import place_network
from ilvr_cli.tasks.conditioning import Batch, Conditioning
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.distributed import (
    DistInfo,
    gather_objects,
    setup_distributed,
    shard,
    teardown_distributed,
)
from ilvr_cli.tasks.outputs import OutputLock, check_plan_outputs, prepare_output_dir
from ilvr_cli.tasks.plan import Settings, TaskPlan, WorkUnit, check_rgb, plan_task, recipe
from ilvr_cli.tasks.progress import RunStart, TaskProgress
from ilvr_cli.tasks.reference import Reference
from ilvr_cli.tasks.result import Failure, TaskResult
from ilvr_cli.tasks.sampling import ANIMATION_FRAMES, sample_batch
from ilvr_cli.tasks.writer import OutputWriter, output_params, to_pixels


def run_task(
    config: TaskConfig, progress: TaskProgress | None = None, *, model: ModelHandle | None = None
) -> TaskResult:
    """Run one task over its inputs (see the module docstring); ``model``: a model opened by the caller
    (e.g. ``ModelHandle.from_network`` for a network in memory), else ``config.model`` is opened.

    Raises :class:`~ilvr_cli.errors.UsageError` for bad usage (before any model is loaded); inputs that
    fail are listed in the result's ``failed`` and the run goes on. Under torchrun the returned result
    covers every rank.
    """
    started = time.perf_counter()
    return run_plan(plan_task(config, model), progress, started=started)


def run_plan(
    plan: TaskPlan, progress: TaskProgress | None = None, *, started: float | None = None
) -> TaskResult:
    """Run a plan made by :func:`~ilvr_cli.tasks.plan.plan_task` (what :func:`run_task` does after planning;
    a caller that inspected the plan first runs it without planning again). ``started``: when the run's
    total time starts (default now)."""
    started = time.perf_counter() if started is None else started
    progress = progress or TaskProgress()
    info = setup_distributed(plan.device)
    try:
        result = _Run(plan, info, progress).execute()
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


class _Run:
    """One rank's share of a planned run."""

    def __init__(self, plan: TaskPlan, info: DistInfo, progress: TaskProgress):
        self.plan, self.info, self.progress, self.model = plan, info, progress, plan.model
        self.config = plan.config
        self.out = plan.output_dir
        self.settings: Settings = plan.settings
        self.result = TaskResult(
            self.config.task,
            self.out,
            plan.manifest_path,
            world_size=info.world_size,
            settings=plan.reported_settings(),
        )
        self.remaining: dict[str, int] = {}
        self.outputs: dict[str, list[Path]] = {}
        self.seconds: dict[str, float] = {}
        self.failed_labels: set[str] = set()
        self.denoiser: Denoiser | None = None
        self.conditioning: Conditioning | None = None
        self.writer = OutputWriter(
            self.out, plan.manifest_path, info.rank, self.config.task, self.config.animate
        )
        self.size = 0
        self.lock: OutputLock | None = None

    # ------------------------------------------------------------------ plan -> pending work
    def _check_existing(self) -> None:
        """Existing outputs this run would skip must have been made the same way (tasks/outputs.py)."""
        if not self.config.overwrite:
            check_plan_outputs(self.plan)

    def _prepare_output(self) -> None:
        """Lock OUTPUT (main rank), clean up after a killed run and bring the manifest up to date."""
        if self.info.is_main:
            self.lock = prepare_output_dir(self.plan, self.progress.note)

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
        try:
            return self._execute()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _execute(self) -> TaskResult:
        self._check_existing()
        pending = self._pending()
        if pending:
            self._prepare_output()
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
        if self.plan.inputs is not None and self.info.is_main:
            for folder in self.plan.inputs.unreadable:
                self._fail(
                    str(folder),
                    f"{folder}: cannot list this folder (permission denied?); its images were not processed",
                )
        if not pending:
            return self.result
        self._load_model()
        for batch in self._batches(pending):
            self._run_batch(batch)
        return self.result

    # ------------------------------------------------------------------ model
    def _load_model(self) -> None:
        """Load the network once (downloading it first if needed); the settings stay the plan's."""
        started = time.perf_counter()
        model = self.model
        self.progress.model_loading(model.name)
        network: Any = model.load(offline=self.config.offline, progress=self.progress.downloads())
        if model.diffusion_config is None:
            raise UsageError(
                f"--model {model.name}: the checkpoint does not say how it was trained (schedule, variance); "
                f"register it with `ilvr models add NAME {model.name} --like ffhq` (or --config FLAGS.json)"
            )
        check_rgb(model)
        assert model.image_size is not None
        if hasattr(network, "to"):  # on the device in channels_last; on the CPU in bf16 when that runs
            network = place_network(network, self.plan.device, self.plan.autocast)
        self.size = model.image_size
        self.conditioning = Conditioning(self.config, self.settings, self.size)
        self.denoiser = Denoiser.from_loaded(
            network, model.diffusion_config, self.settings.steps, autocast_dtype=self.plan.autocast
        )
        self.result.timings.model_load = time.perf_counter() - started

    def _fail(self, label: str, message: str) -> None:
        if label in self.failed_labels:
            return
        if label not in message:
            message = f"{label}: {message}"
        self.failed_labels.add(label)
        self.result.failed.append(Failure(label, message))
        self.progress.image_failed(label, message)
        self.writer.failed(label, message)

    def _batches(self, pending: list[list[WorkUnit]]) -> Iterator[Batch]:
        """Batches of up to ``batch_size`` samples sharing one N, references read one input at a time."""
        batch = Batch()
        for group in pending:
            try:
                ref = self._conditioning().reference(group[0])
            except IlvrError as error:
                self._fail(group[0].label, str(error))
                continue
            for unit in group:
                if unit.label in self.failed_labels:
                    break
                if batch and ref is not None and batch.factor != ref.factor:
                    yield batch
                    batch = Batch()
                batch.units.append(unit)
                batch.refs.append(ref)
                if len(batch) == self.config.batch_size:
                    yield batch
                    batch = Batch()
        if batch:
            yield batch

    # ------------------------------------------------------------------ sampling
    def _sample(self, batch: Batch) -> tuple[torch.Tensor, list[list[np.ndarray]]]:
        assert self.denoiser is not None
        self.progress.batch_start([u.output.as_posix() for u in batch.units], len(self.denoiser.schedule))
        return sample_batch(
            self.denoiser,
            NoiseSource(self.config.seed, [u.key for u in batch.units], self.plan.device),
            self.size,
            self.config,
            self._conditioning().hooks(batch, self.denoiser.schedule),
            self.progress.step,
        )

    def _params(self, unit: WorkUnit, ref: Reference | None) -> dict[str, Any]:
        """What an output PNG records about how it was made (its ``ilvr-cli`` text chunk)."""
        assert self.denoiser is not None
        made = recipe(
            self.config, self.model.name, self.settings, self.plan.device, None if ref is None else ref.factor
        )
        return output_params(
            made,
            model_sha256=self.model.sha256,
            unit=unit,
            num_steps=len(self.denoiser.schedule),
            mask=self._conditioning().mask_name(unit),
            size=self.size,
        )

    def _run_batch(self, batch: Batch) -> None:
        """Sample a batch (an error fails its samples) and write each result (an output-side error ends
        the run: :class:`OutputError`, after everything finished so far was recorded)."""
        started = time.perf_counter()
        try:
            try:
                x0, frames = self._sample(batch)
            except (IlvrError, OSError, torch.OutOfMemoryError) as error:
                for unit in batch.units:
                    self._fail(
                        unit.label,
                        f"{type(error).__name__}: {error}"
                        if not isinstance(error, IlvrError)
                        else str(error),
                    )
                return
            self._write(batch, x0, frames, (time.perf_counter() - started) / len(batch))
        finally:
            self.result.timings.sampling += time.perf_counter() - started

    def _write(
        self, batch: Batch, x0: torch.Tensor, frames: list[list[np.ndarray]], per_sample: float
    ) -> None:
        written: list[np.ndarray] = []
        for j, (unit, ref) in enumerate(zip(batch.units, batch.refs, strict=True)):
            if not bool(torch.isfinite(x0[j]).all()):
                self._fail(
                    unit.label,
                    f"{unit.output.as_posix()}: the sampler produced non-finite values (NaN/Inf), nothing was "
                    "written; try --precision fp32, or report it with the command line",
                )
                continue
            pixels = to_uint8(to_pixels(x0[j]))
            written.append(pixels)
            params = self._params(unit, ref)
            target = self.writer.write(unit, pixels, params, frames[j], len(self.result.done))
            self.result.done.append(unit.output.as_posix())
            self._count(unit, target, per_sample)
        if self.config.grid and len(written) == len(batch):
            self._write_grid(batch, written)

    def _count(self, unit: WorkUnit, target: Path, seconds: float) -> None:
        self.outputs.setdefault(unit.label, []).append(target)
        self.seconds[unit.label] = self.seconds.get(unit.label, 0.0) + seconds
        self.remaining[unit.label] -= 1
        if self.remaining[unit.label] == 0:
            self.result.images_done += 1
            self.progress.image_done(unit.label, self.outputs.pop(unit.label), self.seconds.pop(unit.label))

    def _write_grid(self, batch: Batch, samples: list[np.ndarray]) -> None:
        self.writer.grid(batch.units, self._conditioning().sheet_rows(batch, samples))

    def _conditioning(self) -> Conditioning:
        assert self.conditioning is not None, "the model is loaded before any reference is read"
        return self.conditioning


__all__ = ["ANIMATION_FRAMES", "GRID_DIR", "group_by_input", "run_plan", "run_task", "to_pixels"]
