"""One batch through the sampler: x_0 of each sample and, with ``--animate``, the frames of its predicted x_0."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ilvr_cli.diffusion import Denoiser, Hook, NoiseSource, sample_steps
from ilvr_cli.io.write import to_uint8
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.writer import to_pixels

#: ``--animate`` keeps at most this many frames of the predicted x_0 (evenly spaced, the last included).
ANIMATION_FRAMES = 40


def sample_batch(
    denoiser: Denoiser,
    noise: NoiseSource,
    size: int,
    config: TaskConfig,
    hooks: Sequence[Hook],
    on_step: Callable[[int, int], None],
) -> tuple[torch.Tensor, list[list[np.ndarray]]]:
    """x_0 of the batch (one sample per noise key) and, with ``config.animate``, per sample up to
    :data:`ANIMATION_FRAMES` frames of the predicted x_0 (the last frame is x_0 itself)."""
    steps = len(denoiser.schedule)
    every = max(1, math.ceil(steps / ANIMATION_FRAMES))
    frames: list[list[np.ndarray]] = [[] for _ in range(len(noise))]
    state = None
    for done, state in enumerate(
        sample_steps(
            denoiser, noise, shape=(3, size, size), method=config.method, eta=config.eta, hooks=hooks
        ),
        start=1,
    ):
        on_step(done, steps)
        if config.animate and (done % every == 0 or done == steps):
            shown = state.x if done == steps else state.pred_xstart
            for j, sample_frames in enumerate(frames):
                sample_frames.append(to_uint8(to_pixels(shown[j])))
    assert state is not None
    return state.x, frames
