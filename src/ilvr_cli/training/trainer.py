"""The training loop: data, noise, loss, optimiser, EMA, checkpoints with exact resume, torchrun.

Exactness: every random draw comes from a stream seeded by the run seed: the data order and flips from
(seed, epoch) (:class:`~ilvr_cli.training.data.DataOrder`), the timesteps and noise of each step from one
generator shared by all ranks (each rank uses its slice of the global batch's draws), dropout from the
global torch RNG of each rank. Checkpoints store all of their states, so a run resumed from a
checkpoint ends bitwise where an uninterrupted run ends (on CPU; CUDA kernels are not bitwise
deterministic in general). Nothing here prints: progress goes to a :class:`TrainProgress`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ilvr_cli.atomic import atomic_write_text
from ilvr_cli.diffusion.schedule import Schedule
from ilvr_cli.errors import CheckpointError, UsageError
from ilvr_cli.models.checkpoints import save_native
from ilvr_cli.models.unet import UNet
from ilvr_cli.runtime import autocast_dtype, resolve_precision
from ilvr_cli.training.data import (
    DataOrder,
    ImageFolder,
    StepBatchSampler,
    UnreadableImageWarning,
    derive_seed,
    scan_images,
)
from ilvr_cli.training.distributed import DistContext, setup_distributed
from ilvr_cli.training.ema import EMA
from ilvr_cli.training.losses import ScheduleTensors, q_sample, training_losses
from ilvr_cli.training.presets import TrainConfig
from ilvr_cli.training.samples import sample_images, save_grid
from ilvr_cli.training.state import (
    STATE_NAME,
    LossLog,
    TrainingState,
    load_state,
    optimizer_from_state,
    optimizer_to_state,
    save_state,
)

__all__ = [
    "NullTrainProgress",
    "RunInfo",
    "StepUpdate",
    "TrainProgress",
    "TrainResult",
    "saved_config",
    "train",
]

MODEL_NAME, EMA_NAME, CONFIG_NAME, LOG_NAME = (
    "model.safetensors",
    "ema.safetensors",
    "config.json",
    "loss.jsonl",
)
DISPLAY_EVERY = 10


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do (``TrainProgress.start``)."""

    run_dir: Path
    start_step: int
    total_steps: int
    num_images: int
    params: int
    global_batch: int
    world_size: int
    device: str
    resumed: bool
    #: What the forward runs in: fp32, bf16 or fp16.
    precision: str = "fp32"


@dataclass(frozen=True)
class StepUpdate:
    """After each step (rank 0): ``loss`` is smoothed over recent steps (None until the first window);
    ``images_per_s`` counts all ranks."""

    step: int
    total: int
    loss: float | None
    images_per_s: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainResult:
    """Where a run stopped and what it wrote. ``stopped`` is True when a stop request ended it early."""

    run_dir: Path
    step: int
    total_steps: int
    stopped: bool
    model_path: Path
    ema_path: Path
    state_path: Path
    elapsed_s: float
    images_per_s: float
    last_loss: float | None
    #: What the forward ran in: fp32, bf16 or fp16.
    precision: str = "fp32"


class TrainProgress(Protocol):
    """Receives a run's progress (only on rank 0). The CLI renders it; the library never prints."""

    def start(self, info: RunInfo) -> None: ...

    def step(self, update: StepUpdate) -> None: ...

    def note(self, message: str) -> None: ...

    def finish(self, result: TrainResult) -> None: ...

    # Optional: ``logged(record)`` receives each loss.jsonl record (every ``log_every`` steps), if defined.


class NullTrainProgress:
    """Ignores everything."""

    def start(self, info: RunInfo) -> None:
        pass

    def step(self, update: StepUpdate) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def finish(self, result: TrainResult) -> None:
        pass


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The config of the run saved in ``run_dir`` (for ``--resume``); UsageError if there is none."""
    path = Path(run_dir) / STATE_NAME
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {STATE_NAME} to resume from; start a run with `ilvr train` first")
    return TrainConfig.from_dict(load_state(path).info["config"])


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: TrainProgress | None = None,
    stop: Callable[[], bool] | None = None,
    cache_dir: str | Path | None = None,
) -> TrainResult:
    """Train (or with ``resume`` continue) the run ``config.out_dir`` up to ``config.steps`` steps.

    ``stop()`` is polled after every step; when it returns True (on any rank) the run saves a checkpoint
    and returns with ``stopped=True``. Under torchrun every rank calls this; only rank 0 writes files and
    reports to ``progress``. ``cache_dir`` is the model cache for ``init_from`` catalog names.
    """
    ctx = setup_distributed(config.device)
    try:
        trainer = _Trainer(config, ctx, progress or NullTrainProgress(), stop, cache_dir)
        return trainer.run(resume)
    finally:
        ctx.close()


def _grad_scaler() -> Any:
    """fp16's loss scaler (``torch.amp.GradScaler`` from torch 2.3, ``torch.cuda.amp`` before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # pragma: no cover - torch < 2.3


class _Trainer:
    """One run's objects and the loop over them."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: DistContext,
        progress: TrainProgress,
        stop: Callable[[], bool] | None,
        cache_dir: str | Path | None,
    ) -> None:
        self.config, self.ctx, self.stop, self.cache_dir = config, ctx, stop, cache_dir
        self.progress = progress if ctx.is_main else NullTrainProgress()
        self.run_dir = Path(config.out_dir)
        self.device = ctx.device
        self._check_setup()
        self.step = 0
        self.elapsed_before = 0.0
        self.schedule = Schedule.from_config(config.diffusion)
        self.tables = ScheduleTensors(self.schedule, self.device)
        self.log = LossLog(self.run_dir / LOG_NAME)

    # ----------------------------------------------------------------------------------------- setup

    def _check_setup(self) -> None:
        c, ctx = self.config, self.ctx
        if c.batch_size % ctx.world_size:
            raise UsageError(
                f"--batch-size {c.batch_size} (the global batch) is not divisible by {ctx.world_size} ranks"
            )
        if c.sample_every and c.sample_count:
            Schedule.from_config(c.diffusion).respace(c.sample_steps)  # a bad --sample-steps fails now
        #: What the forward runs in (the tasks' rule; ``auto``: bf16 where native): autocast, fp32 weights.
        self.precision = resolve_precision(c.precision, self.device)
        self.autocast = autocast_dtype(self.precision, self.device)

    def _build(self, load_init: bool) -> None:
        c = self.config
        with warnings.catch_warnings():
            if not self.ctx.is_main:
                warnings.simplefilter("ignore", UnreadableImageWarning)
            paths = scan_images(c.data_dir)
        self.dataset = ImageFolder(paths, c.unet.image_size, c.unet.in_channels)
        self.order = DataOrder(len(paths), c.batch_size, c.seed, c.flip)
        torch.manual_seed(derive_seed(c.seed, "init"))
        model = UNet(c.unet)
        if c.init_from and load_init:
            self._load_init(model, c.init_from)
        memory = torch.channels_last if c.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory).train()  # type: ignore[call-overload]  # Module.to takes both; its stubs' overloads don't
        self.ema = EMA(self.model, c.ema_decay, c.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scaler = _grad_scaler() if self.precision == "fp16" else None
        self.noise = torch.Generator(device=self.device).manual_seed(derive_seed(c.seed, "noise"))
        torch.manual_seed(derive_seed(c.seed, "dropout", self.ctx.rank))

    def _check_architecture(self) -> None:
        """Warn about a GroupNorm of one channel per group: it removes every channel's spatial mean, so the
        network can hardly pass on the mean brightness or colour of its input (samples get colour casts)."""
        u = self.config.unet
        if u.model_channels * min(u.channel_mult) <= u.norm_groups:
            self.progress.note(
                f"norm_groups {u.norm_groups} leaves one channel per group at width {u.model_channels}: "
                "the network cannot carry mean colours well; use fewer groups (e.g. width / 4)"
            )

    def _load_init(self, model: UNet, init_from: str) -> None:
        """Fine-tuning: the weights of a catalog model or checkpoint (its architecture must match)."""
        from ilvr_cli.registry import load_model

        loaded = load_model(init_from, cache_dir=self.cache_dir)
        expected = dataclasses.replace(self.config.unet, dropout=0.0)
        if dataclasses.replace(loaded.unet_config, dropout=0.0) != expected:
            differences = [
                f"{f.name} {getattr(loaded.unet_config, f.name)!r} vs {getattr(expected, f.name)!r}"
                for f in dataclasses.fields(expected)
                if f.name != "dropout" and getattr(loaded.unet_config, f.name) != getattr(expected, f.name)
            ]
            raise CheckpointError(
                f"--init-from {init_from}: its architecture differs from the training config "
                f"({'; '.join(differences)}); leave out --preset to train its own architecture"
            )
        model.load_state_dict(loaded.network.state_dict(), strict=True)

    # ----------------------------------------------------------------------------------------- state

    def _rng_states(self) -> dict[str, torch.Tensor]:
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _save(self) -> None:
        """Every rank contributes its RNG states; rank 0 writes the exports, then the state (the commit)."""
        rng = self.ctx.all_gather_object({k: v.cpu() for k, v in self._rng_states().items()})
        if not self.ctx.is_main:
            return
        c = self.config
        extra = self._export_metadata()
        exports = [
            (self.run_dir / MODEL_NAME, self.model, "raw"),
            (self.run_dir / EMA_NAME, self.ema.shadow, "ema"),
        ]
        if c.keep_every and self.step % c.keep_every == 0:
            kept = self.run_dir / "checkpoints" / f"ema_{self.step:07d}.safetensors"
            exports.append((kept, self.ema.shadow, "ema"))
        for path, network, kind in exports:
            save_native(path, network, c.unet, c.diffusion, {**extra, "train_weights": kind})
        opt_tensors, opt_info = optimizer_to_state(self.optimizer)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.shadow.state_dict().items()}
        tensors |= {f"optim.{k}": v for k, v in opt_tensors.items()}
        tensors["rng.noise"] = self.noise.get_state()
        for rank, states in enumerate(rng):
            tensors |= {f"rng.{kind}.{rank}": state for kind, state in states.items()}
        info = {
            "step": self.step,
            "config": c.to_dict(),
            "world_size": self.ctx.world_size,
            "num_images": self.order.num_images,
            "elapsed_s": self.elapsed_before + self._run_time(),
            "optimizer": opt_info,
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        save_state(self.run_dir / STATE_NAME, TrainingState(tensors, info))
        self.progress.note(f"step {self.step}: saved {self.run_dir / EMA_NAME}")

    def _export_metadata(self) -> dict[str, str]:
        c = self.config
        return {
            "train_step": str(self.step),
            "train_images_seen": str(self.step * c.batch_size),
            "train_seed": str(c.seed),
            "train_preset": c.preset,
            "train_init_from": c.init_from or "",
            "train_data": Path(c.data_dir).name,
            "train_ema_decay": str(c.ema_decay),
        }

    def _restore(self) -> None:
        state = load_state(self.run_dir / STATE_NAME)
        info = state.info
        saved = TrainConfig.from_dict(info["config"])
        changes = {
            f.name: getattr(self.config, f.name)
            for f in dataclasses.fields(self.config)
            if getattr(self.config, f.name) != getattr(saved, f.name)
        }
        saved.resumed_with(changes)  # raises if a fixed option differs
        if info["num_images"] != self.order.num_images:
            raise UsageError(
                f"the data folder now has {self.order.num_images} images, the run was started with "
                f"{info['num_images']}; resume needs the same data (or start a new run with --init-from)"
            )
        self.model.load_state_dict(state.group("model"), strict=True)
        self.ema.shadow.load_state_dict(state.group("ema"), strict=True)
        optimizer_from_state(self.optimizer, state.group("optim"), info["optimizer"])
        if self.scaler is not None and info.get("scaler"):
            self.scaler.load_state_dict(info["scaler"])
        self.noise.set_state(state.tensors["rng.noise"])
        self._restore_rank_rng(state, info["world_size"])
        self.step, self.elapsed_before = int(info["step"]), float(info.get("elapsed_s", 0.0))
        if self.step > self.config.steps:
            raise UsageError(f"the run is already at step {self.step}; give --steps above it to continue")

    def _restore_rank_rng(self, state: TrainingState, saved_world: int) -> None:
        rank = self.ctx.rank
        if saved_world != self.ctx.world_size or f"rng.cpu.{rank}" not in state.tensors:
            self.progress.note(
                f"the run was saved with {saved_world} ranks and resumes with {self.ctx.world_size}: "
                "dropout masks are reseeded, so the result is not bitwise that of an uninterrupted run"
            )
            torch.manual_seed(derive_seed(self.config.seed, "dropout", rank, "resumed", state.info["step"]))
            return
        torch.set_rng_state(state.tensors[f"rng.cpu.{rank}"])
        if self.device.type == "cuda" and f"rng.cuda.{rank}" in state.tensors:
            torch.cuda.set_rng_state(state.tensors[f"rng.cuda.{rank}"], self.device)

    def _prepare_run_dir(self, resume: bool) -> None:
        state_path = self.run_dir / STATE_NAME
        if resume and not state_path.is_file():
            raise UsageError(f"{self.run_dir} has no {STATE_NAME} to resume from; drop --resume to start")
        if not resume and state_path.exists():
            raise UsageError(
                f"{self.run_dir} already holds a run; add --resume to continue it, or use another --out"
            )
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------------------------------ loop

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def _loader(self) -> torch.utils.data.DataLoader:
        c, ctx = self.config, self.ctx
        sampler = StepBatchSampler(self.order, self.step, c.steps, ctx.rank, ctx.world_size)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=c.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG (dropout's)
        )

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and noise of the whole global batch from the shared generator; this rank's slice."""
        c, ctx = self.config, self.ctx
        shape = (c.batch_size, c.unet.in_channels, c.unet.image_size, c.unet.image_size)
        t = torch.randint(
            0, self.tables.num_timesteps, (c.batch_size,), generator=self.noise, device=self.device
        )
        noise = torch.randn(shape, generator=self.noise, device=self.device)
        local = c.batch_size // ctx.world_size
        part = slice(ctx.rank * local, (ctx.rank + 1) * local)
        return t[part], noise[part]

    def _train_step(self, network: nn.Module, x0: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns the local (loss, mse, vb) sums over this rank's samples."""
        c = self.config
        t, noise = self._draw()
        x_t = q_sample(self.tables, x0, t, noise)
        if c.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            output = network(x_t, t)
        terms = training_losses(
            output, self.tables, x0, x_t, t, noise, learn_sigma=c.hybrid,
            p2_gamma=c.p2_gamma, p2_k=c.p2_k, vlb_weight=c.vlb_weight,
        )  # fmt: skip
        loss = terms.loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if c.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return torch.stack([terms.loss.sum(), terms.mse.sum(), terms.vb.sum()]).detach()

    def _run_time(self) -> float:
        return time.perf_counter() - self.started

    def run(self, resume: bool) -> TrainResult:
        self._prepare_run_dir(resume)
        self._build(load_init=not resume)
        self._check_architecture()
        if resume:
            self._restore()
        self.started = time.perf_counter()
        if self.ctx.is_main:
            self.log.truncate_after(self.step)
        network: nn.Module = self.model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        c = self.config
        self.progress.start(
            RunInfo(self.run_dir, self.step, c.steps, self.order.num_images,
                    sum(p.numel() for p in self.model.parameters()), c.batch_size, self.ctx.world_size,
                    str(self.device), resume, self.precision)
        )  # fmt: skip
        stopped = self._loop(network)
        result = TrainResult(
            self.run_dir, self.step, c.steps, stopped, self.run_dir / MODEL_NAME, self.run_dir / EMA_NAME,
            self.run_dir / STATE_NAME, self.elapsed_before + self._run_time(), self._images_per_s(), self._smoothed,
            self.precision,
        )  # fmt: skip
        self.progress.finish(result)
        return result

    def _images_per_s(self) -> float:
        steps = self.step - self._first_step
        return steps * self.config.batch_size / max(self._run_time(), 1e-9)

    def _loop(self, network: nn.Module) -> bool:
        c = self.config
        self._first_step, self._smoothed = self.step, None
        log_sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        window = torch.zeros(2, dtype=torch.float64, device=self.device)
        local = c.batch_size // self.ctx.world_size
        memory = torch.channels_last if c.channels_last else torch.contiguous_format
        stopped = False
        for batch in self._loader():
            x0 = batch.to(self.device, non_blocking=True).contiguous(memory_format=memory)
            sums = self._train_step(network, x0)
            log_sums[:3] += sums
            log_sums[3] += local
            window += torch.stack([sums[0], sums.new_tensor(float(local))])
            if self.step % c.log_every == 0 or self.step == c.steps:
                self._write_log(log_sums)
                log_sums.zero_()
            if self.ctx.is_main:
                self._report(window)
            stopped = self.stop is not None and self.ctx.any(bool(self.stop()))
            if self.step % c.save_every == 0 or self.step == c.steps or stopped:
                self._save()
            if c.sample_every and c.sample_count and self.step % c.sample_every == 0 and self.ctx.is_main:
                self._sample_grid()
            if stopped:
                break
        return stopped

    def _report(self, window: torch.Tensor) -> None:
        if self.step % DISPLAY_EVERY == 0 or self.step == self.config.steps:
            total, count = window.tolist()
            mean = total / max(count, 1.0)
            self._smoothed = mean if self._smoothed is None else 0.7 * self._smoothed + 0.3 * mean
            window.zero_()
        run_time = self._run_time()
        self.progress.step(
            StepUpdate(
                self.step,
                self.config.steps,
                self._smoothed,
                self._images_per_s(),
                self.elapsed_before + run_time,
            )
        )

    def _write_log(self, sums: torch.Tensor) -> None:
        totals = self.ctx.all_reduce_sum(sums.clone()).tolist()
        if not self.ctx.is_main:
            return
        count = max(totals[3], 1.0)
        record: dict[str, Any] = {"step": self.step, "loss": totals[0] / count, "mse": totals[1] / count}
        if self.config.hybrid:
            record["vb"] = totals[2] / count
        record |= {
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": round(self._images_per_s(), 3),
            "elapsed_s": round(self.elapsed_before + self._run_time(), 3),
        }
        if not all(math.isfinite(v) for v in totals):
            self.progress.note(f"step {self.step}: the loss is not finite; lower --lr or add --grad-clip")
        self.log.append(record)
        logged = getattr(self.progress, "logged", None)  # optional in TrainProgress (older displays lack it)
        if logged is not None:
            logged(record)

    def _sample_grid(self) -> None:
        c = self.config
        images = sample_images(
            self.ema.shadow, c.diffusion, count=c.sample_count, image_size=c.unet.image_size,
            channels=c.unet.in_channels, seed=c.seed, steps=c.sample_steps, device=self.device,
        )  # fmt: skip
        params = {"step": self.step, "seed": c.seed, "sample_steps": c.sample_steps, "weights": "ema"}
        path = save_grid(images, self.run_dir / "samples" / f"step_{self.step:07d}.png", params=params)
        self.progress.note(f"step {self.step}: samples in {path}")
