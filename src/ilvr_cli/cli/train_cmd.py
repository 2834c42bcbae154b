"""``ilvr train``: train or fine-tune an unconditional DDPM on a folder of images (docs/training.md).

Parses the options into a :class:`~ilvr_cli.training.presets.TrainConfig` (or, with ``--resume``, the
run's saved config plus the options that may change), runs :func:`ilvr_cli.training.train` with a rich
progress display on rank 0, and prints a summary. torch and the training library are imported inside the
command, so ``ilvr --help`` stays light. The first Ctrl-C saves a checkpoint and stops (exit 130); a second
one stops at once. Registered by ``cli/app.py`` with :func:`register`.
"""

from __future__ import annotations

import signal
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ilvr_cli.cli.common import err, handle_errors
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.options import (
    CacheDirOpt,
    JsonOpt,
    Precision,
    QuietOpt,
    choice_value,
    complete_model_names,
    examples,
)
from ilvr_cli.cli.progress import warn
from ilvr_cli.cli.render import print_json, train_result_dict, train_summary
from ilvr_cli.cli.run_progress import RichTrainProgress
from ilvr_cli.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType
    from typing import TextIO

    from ilvr_cli.training import TrainConfig


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the root app."""
    app.command("train", no_args_is_help=True, epilog=EXAMPLES)(train)


EXAMPLES = examples(
    "ilvr train faces/ runs/faces --max-steps 20000  # ILVR's light ADM",
    "ilvr train metfaces/ runs/mf --init-from ffhq --max-steps 20000  # fine-tune",
    "ilvr train faces/ runs/faces --resume  # continue after a stop",
    "torchrun --nproc_per_node 8 -m ilvr_cli train faces/ runs/faces -b 64",
)


@contextmanager
def _graceful_interrupt() -> Iterator[list[bool]]:
    """The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) sets the flag: the run finishes its
    step, saves and stops. The handlers are then reset, so a second signal stops at once."""
    flag = [False]
    signals = [signal.SIGINT, signal.SIGTERM]
    defaults: dict[signal.Signals, Callable[[int, FrameType | None], Any] | signal.Handlers] = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: signal.SIG_DFL,
    }

    def handler(signum: int, frame: object) -> None:
        flag[0] = True
        for s in signals:
            signal.signal(s, defaults[s])
        err.print("[yellow]stopping after this step and saving a checkpoint (Ctrl-C again to abort)[/]")

    try:
        previous = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread (e.g. embedded): no graceful stop
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _warnings_to_console(show: bool) -> Iterator[None]:
    """Render warnings (e.g. skipped unreadable images) as one yellow line each, on rank 0 only."""
    original = warnings.showwarning

    def render(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if show:
            err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    warnings.showwarning = render
    try:
        yield
    finally:
        warnings.showwarning = original


def _new_config(
    data_dir: Path,
    out_dir: Path,
    preset: str | None,
    init_from: str | None,
    options: dict[str, Any],
    cache_dir: Path | None,
) -> TrainConfig:
    """A new run's config: the preset's (or ``--init-from`` model's) architecture with the options applied."""
    from ilvr_cli.training.presets import TrainConfig, model_configs

    arch: dict[str, Any] = {
        k: options.pop(k) for k in ("image_size", "learn_sigma", "dropout") if k in options
    }
    if preset is None and init_from is not None:
        unet, diffusion = _init_configs(init_from, cache_dir, arch)
        name = f"init-from:{init_from}"
    else:
        name = preset or "adm-small"
        unet, diffusion = model_configs(name, **arch)
    return TrainConfig(
        data_dir=str(data_dir.expanduser().absolute()), out_dir=str(out_dir.expanduser().absolute()), unet=unet,
        diffusion=diffusion, preset=name, init_from=init_from, **options,
    )  # fmt: skip


def _init_configs(init_from: str, cache_dir: Path | None, arch: dict[str, Any]) -> tuple[Any, Any]:
    """The architecture and diffusion of the model to fine-tune (only dropout may be overridden)."""
    import dataclasses

    from ilvr_cli.training.init import init_configs

    unet, diffusion = init_configs(init_from, cache_dir)
    if diffusion is None:
        raise UsageError(
            f"--init-from {init_from} does not record how it was trained; add --preset CONFIG.json with its "
            '{"unet": ..., "diffusion": ...}'
        )
    fixed = {k: v for k, v in arch.items() if k != "dropout"}
    if fixed:
        raise UsageError(
            f"--init-from keeps the model's architecture; drop {', '.join('--' + k.replace('_', '-') for k in fixed)}"
        )
    if "dropout" in arch:
        unet = dataclasses.replace(unet, dropout=arch["dropout"])
    return unet, diffusion


@handle_errors
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of training images (recursive; resized and centre-cropped).", show_default=False)],
    output: Annotated[Path | None, typer.Argument(help="Run folder: weights, training state, loss log, sample grids.", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="ddpm (Ho et al.), adm-small (ILVR's light ADM) or a JSON config file. Default: adm-small, or the --init-from model's.", show_default=False)] = None,
    init_from: Annotated[str | None, typer.Option("--init-from", help="Fine-tune from a catalog model or checkpoint (weights only; fresh optimiser).", show_default=False, autocompletion=complete_model_names)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUTPUT from its last checkpoint (bitwise on CPU).")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Train up to this many steps in total. \\[default: 100000]", show_default=False)] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Training resolution. \\[default: the preset's, 256]", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Global batch size (split over torchrun ranks). \\[default: 8]", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Constant AdamW learning rate. \\[default: 2e-5]", show_default=False)] = None,
    ema: Annotated[float | None, typer.Option("--ema", help="EMA decay of the weights. \\[default: 0.9999]", show_default=False)] = None,
    ema_warmup: Annotated[bool | None, typer.Option("--ema-warmup/--no-ema-warmup", help="EMA decay min(decay, (1+n)/(10+n)) for short runs. \\[default: off]", show_default=False)] = None,
    grad_clip: Annotated[float | None, typer.Option("--grad-clip", help="Clip the gradient norm to this value.", show_default=False)] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help="auto: bf16 autocast where the CPU or GPU computes bf16 natively, else fp32; or fp32, bf16, fp16 (CUDA). \\[default: auto]", show_default=False)] = None,
    learn_sigma: Annotated[bool | None, typer.Option("--learn-sigma/--no-learn-sigma", help="Learn the variance with the hybrid loss. \\[default: the preset's]", show_default=False)] = None,
    p2_gamma: Annotated[float | None, typer.Option("--p2-gamma", help="P2 weighting exponent (0 = off; the P2 paper uses 1). \\[default: 0]", show_default=False)] = None,
    p2_k: Annotated[float | None, typer.Option("--p2-k", help="P2 weighting offset k. \\[default: 1]", show_default=False)] = None,
    dropout: Annotated[float | None, typer.Option("--dropout", help="Dropout rate. \\[default: the preset's]", show_default=False)] = None,
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Random horizontal flips. \\[default: on]", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Data loading processes per rank. \\[default: 2]", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the initialisation, data order and noise. \\[default: 0]", show_default=False)] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="Checkpoint every N steps. \\[default: 5000]", show_default=False)] = None,
    sample_every: Annotated[int | None, typer.Option("--sample-every", help="EMA sample grid every N steps (0 = never). \\[default: --save-every]", show_default=False)] = None,
    grid_images: Annotated[int | None, typer.Option("--grid-images", help="Images per sample grid. \\[default: 16]", show_default=False)] = None,
    sample_steps: Annotated[str | None, typer.Option("--sample-steps", help="Sampler of the grids: ddimN, or a respacing such as 50 for DDPM. \\[default: ddim50]", show_default=False)] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", help="Loss log line every N steps. \\[default: 100]", show_default=False)] = None,
    keep_every: Annotated[int | None, typer.Option("--keep-every", help="Also keep checkpoints/ema_STEP.safetensors every N steps (0 = no).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1, ... \\[default: auto]", show_default=False)] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", hidden=True, help="Deprecated: give the run folder as OUTPUT.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", hidden=True, help="Deprecated: --max-steps.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", hidden=True, help="Deprecated: --grid-images.")] = None,
) -> None:  # fmt: skip
    """Train an unconditional diffusion model on a folder of images (or fine-tune one with --init-from)."""
    out = _renamed("OUTPUT", output, "--out", out, required=True)
    max_steps = _renamed("--max-steps", max_steps, "--steps", steps)
    grid_images = _renamed("--grid-images", grid_images, "--samples", samples)
    _check_data_dir(data_dir)
    from ilvr_cli.runtime import read_ranks
    from ilvr_cli.training import saved_config
    from ilvr_cli.training import train as run_training

    options = {
        "steps": max_steps, "image_size": image_size, "batch_size": batch_size, "lr": lr, "ema_decay": ema,
        "ema_warmup": ema_warmup, "grad_clip": grad_clip, "precision": choice_value(precision),
        "learn_sigma": learn_sigma, "p2_gamma": p2_gamma, "p2_k": p2_k, "dropout": dropout, "flip": flip,
        "workers": workers, "seed": seed, "save_every": save_every, "sample_every": sample_every,
        "sample_count": grid_images, "sample_steps": sample_steps, "log_every": log_every, "keep_every": keep_every,
        "device": device,
    }  # fmt: skip
    given = {k: v for k, v in options.items() if v is not None}
    if "sample_every" not in given and "save_every" in given:
        given["sample_every"] = given["save_every"]
    if resume:
        if (
            preset is not None
            or init_from is not None
            or {"image_size", "learn_sigma", "dropout"} & set(given)
        ):
            raise UsageError(
                "--resume continues the saved run; drop --preset, --init-from and architecture options"
            )
        config = saved_config(out).resumed_with({"data_dir": str(data_dir.expanduser().absolute()), **given})
    else:
        config = _new_config(data_dir, out, preset, init_from, given, cache_dir)
    main_rank = read_ranks().is_main
    progress = RichTrainProgress(quiet) if main_rank else None
    with _warnings_to_console(main_rank), _graceful_interrupt() as interrupted:
        try:
            result = run_training(
                config, resume=resume, progress=progress, stop=lambda: interrupted[0], cache_dir=cache_dir
            )
        finally:
            if progress is not None:
                progress.progress.stop()
    if main_rank and as_json:
        print_json(train_result_dict(result))
    elif main_rank and not quiet:
        train_summary(result)
    if result.stopped:
        raise typer.Exit(ExitCode.INTERRUPTED)


#: Why the old names were renamed: in the task commands --steps is the sampling respacing and --samples
#: the results per reference; OUTPUT is positional there.
_RENAMED_BECAUSE = {
    "--out": "the run folder is the second argument, as OUTPUT is in the task commands",
    "--steps": "in the task commands --steps is the sampling respacing",
    "--samples": "in the task commands --samples is the number of results per reference",
}


def _renamed(new: str, new_value: Any, old: str, old_value: Any, required: bool = False) -> Any:
    """The value of a renamed option: the new name's, or the deprecated old name's with a warning; both
    given is a usage error (and, with ``required``, neither)."""
    if old_value is not None and new_value is not None:
        raise UsageError(f"give {new} only ({old} is its deprecated name)")
    if old_value is not None:
        warn(
            f"{old} is deprecated for ilvr train, use {new} ({_RENAMED_BECAUSE[old]}); it will be removed in 1.0"
        )
        return old_value
    if new_value is None and required:
        raise UsageError(f"missing {new}: ilvr train DATA_DIR OUTPUT (the run folder)")
    return new_value


def _check_data_dir(data_dir: Path) -> None:
    """A missing DATA_DIR, or one that is not a folder, is a usage error (exit 2), before torch loads."""
    path = data_dir.expanduser()
    if not path.exists():
        raise UsageError(f"DATA_DIR {data_dir} does not exist; give the folder of training images")
    if not path.is_dir():
        raise UsageError(f"DATA_DIR {data_dir} is not a folder; give the folder of training images")
