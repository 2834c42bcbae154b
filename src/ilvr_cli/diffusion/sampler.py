"""One sampling loop; DDPM ancestral and DDIM are step functions over it; hooks refine each proposal.

``sample_steps`` runs i = N-1 .. 0 (or ``start_index`` .. 0), and after each step yields a
:class:`StepState` (for progress bars, animations, or early stopping); ``sample`` consumes it. Each step:
draw the sampler noise z, propose x_{i-1} with the step function, apply ``hook(x_prev, state)`` in order.
Step indices are Python ints and coefficients Python floats: the loop never synchronises with the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from ilvr_cli.diffusion.noise import NoiseSource
from ilvr_cli.diffusion.posterior import Posterior, predict_eps_from_xstart
from ilvr_cli.diffusion.schedule import Schedule
from ilvr_cli.errors import UsageError

Method = Literal["ddpm", "ddim"]


class DenoiserLike(Protocol):
    """What the sampler needs: a schedule and p(x_{i-1} | x_i) (see :class:`~.denoiser.Denoiser`)."""

    schedule: Schedule

    def posterior(self, x: torch.Tensor, i: int) -> Posterior: ...


@dataclass(frozen=True, eq=False)
class StepState:
    """The state after step ``i``: ``x`` is now at level i-1 (x_0 after i = 0); ``t`` is step i's original
    timestep; ``pred_xstart`` the clipped x_0 prediction made at step i. Hooks receive the state with
    ``x`` set to the sampler's proposal; the loop yields it with ``x`` after all hooks."""

    i: int
    t: int
    x: torch.Tensor
    pred_xstart: torch.Tensor
    schedule: Schedule
    noise: NoiseSource


#: ``hook(x_prev, state) -> x_prev``, applied after each proposal, in order (ILVR is one).
Hook = Callable[[torch.Tensor, StepState], torch.Tensor]


def ddpm_step(
    denoiser: DenoiserLike, x: torch.Tensor, i: int, noise: torch.Tensor, eta: float = 0.0
) -> tuple[torch.Tensor, Posterior]:
    """Ancestral sampling (Ho et al. Algorithm 2; guided-diffusion ``p_sample``): mean + exp(log_var / 2) z.

    ``noise`` is z, shaped like x; at i = 0 it is ignored (x_0 is the mean). ``eta`` is unused (uniform
    signature with :func:`ddim_step`).
    """
    post = denoiser.posterior(x, i)
    if i == 0:
        return post.mean, post
    return post.mean + torch.exp(0.5 * post.log_variance) * noise, post


def ddim_coefficients(schedule: Schedule, i: int, eta: float) -> tuple[float, float, float]:
    """(sqrt(abar_prev), sqrt(1 - abar_prev - sigma^2), sigma) with DDIM eq. 16's
    sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev), computed in float32 from
    float32 alpha_bars as guided-diffusion's ``ddim_sample`` does on its tensors."""
    abar = np.float32(schedule.alphas_cumprod[i])
    abar_prev = np.float32(schedule.alphas_cumprod_prev[i])
    one, eta32 = np.float32(1), np.float32(eta)
    sigma = eta32 * np.sqrt((one - abar_prev) / (one - abar)) * np.sqrt(one - abar / abar_prev)
    eps_coef = np.sqrt(np.maximum(one - abar_prev - sigma**2, np.float32(0)))
    return float(np.sqrt(abar_prev)), float(eps_coef), float(sigma)


def ddim_step(
    denoiser: DenoiserLike, x: torch.Tensor, i: int, noise: torch.Tensor, eta: float = 0.0
) -> tuple[torch.Tensor, Posterior]:
    """DDIM (Song et al. eq. 12; guided-diffusion ``ddim_sample``): eps is re-derived from the clipped x_0,
    x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z. eta = 0 is deterministic."""
    post = denoiser.posterior(x, i)
    eps = predict_eps_from_xstart(denoiser.schedule, x, i, post.pred_xstart)
    xstart_coef, eps_coef, sigma = ddim_coefficients(denoiser.schedule, i, eta)
    x_prev = post.pred_xstart * xstart_coef + eps_coef * eps
    if i == 0 or sigma == 0.0:
        return x_prev, post
    return x_prev + sigma * noise, post


StepFn = Callable[[DenoiserLike, torch.Tensor, int, torch.Tensor, float], tuple[torch.Tensor, Posterior]]

STEPS: dict[str, StepFn] = {"ddpm": ddpm_step, "ddim": ddim_step}


def _check_start(noise: NoiseSource, shape: Sequence[int] | None, x_T: torch.Tensor | None) -> None:
    if (shape is None) == (x_T is None):
        raise UsageError("give exactly one of shape (per sample, e.g. (3, 256, 256)) or x_T")
    if x_T is not None and x_T.shape[0] != len(noise):
        raise UsageError(f"x_T holds {x_T.shape[0]} samples but the noise source has {len(noise)} keys")


def _start_index(schedule: Schedule, start_index: int | None) -> int:
    if start_index is None:
        return len(schedule) - 1
    if not 0 <= start_index < len(schedule):
        raise UsageError(f"start index {start_index} is outside 0..{len(schedule) - 1}")
    return start_index


def sample_steps(
    denoiser: DenoiserLike,
    noise: NoiseSource,
    *,
    shape: Sequence[int] | None = None,
    x_T: torch.Tensor | None = None,
    method: Method = "ddpm",
    eta: float = 0.0,
    hooks: Sequence[Hook] = (),
    start_index: int | None = None,
    inference_mode: bool = True,
) -> Iterator[StepState]:
    """Run i = start .. 0 from x_T (given, or drawn from ``noise`` with per-sample ``shape``), yielding
    the state after each step and its hooks. ``start_index`` (default N-1) starts from an x already at
    level ``start_index`` (SDEdit-style: ``q_sample`` a reference to ``schedule.noise_level(start_index)``).
    Runs under ``torch.inference_mode`` unless ``inference_mode=False`` (e.g. for guidance by gradients).
    Arguments are checked on the call; nothing is drawn or computed until the first ``next()``."""
    if method not in STEPS:
        raise UsageError(f"unknown sampling method {method!r}; expected one of {sorted(STEPS)}")
    if eta < 0:
        raise UsageError(f"eta must be >= 0, got {eta}")
    _check_start(noise, shape, x_T)
    start = _start_index(denoiser.schedule, start_index)
    mode = torch.inference_mode if inference_mode else contextlib.nullcontext
    return _loop(denoiser, noise, shape, x_T, STEPS[method], eta, tuple(hooks), start, mode)


def _loop(
    denoiser: DenoiserLike,
    noise: NoiseSource,
    shape: Sequence[int] | None,
    x_T: torch.Tensor | None,
    step: StepFn,
    eta: float,
    hooks: tuple[Hook, ...],
    start: int,
    mode: Callable[[], contextlib.AbstractContextManager],
) -> Iterator[StepState]:
    """The loop itself. Each step runs in its own ``mode()`` context, so inference mode never leaks into
    the caller's code between yields."""
    schedule = denoiser.schedule
    with mode():
        if x_T is None:
            assert shape is not None, "_check_start lets exactly one of shape and x_T through"
            x = noise.randn(shape)
        else:
            x = x_T
    for i in range(start, -1, -1):
        with mode():
            z = noise.randn(x.shape[1:], dtype=torch.float32)
            x_prev, post = step(denoiser, x, i, z, eta)
            state = StepState(i, schedule.timestep(i), x_prev, post.pred_xstart, schedule, noise)
            for hook in hooks:
                x_prev = hook(x_prev, state)
        state = dataclasses.replace(state, x=x_prev)
        yield state
        x = x_prev


def sample(
    denoiser: DenoiserLike,
    noise: NoiseSource,
    *,
    shape: Sequence[int] | None = None,
    x_T: torch.Tensor | None = None,
    method: Method = "ddpm",
    eta: float = 0.0,
    hooks: Sequence[Hook] = (),
    start_index: int | None = None,
    inference_mode: bool = True,
) -> torch.Tensor:
    """Run :func:`sample_steps` to the end and return x_0."""
    steps = sample_steps(
        denoiser,
        noise,
        shape=shape,
        x_T=x_T,
        method=method,
        eta=eta,
        hooks=hooks,
        start_index=start_index,
        inference_mode=inference_mode,
    )
    x = x_T
    for state in steps:
        x = state.x
    assert x is not None  # at least one step always runs
    return x
