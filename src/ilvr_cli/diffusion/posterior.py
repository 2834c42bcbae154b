"""The reverse-process posterior p(x_{i-1} | x_i) from a network output (guided-diffusion
``p_mean_variance``).

``i`` is a Python int shared by the whole batch, so every coefficient is a Python float read from the
schedule's float64 arrays and rounded to float32, exactly what guided-diffusion's ``_extract_into_tensor``
does (``th.from_numpy(arr)[t].float()``) before it multiplies: results match it bit for bit and nothing
here synchronises with the device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ilvr_cli.config import VarianceType
from ilvr_cli.diffusion.schedule import Schedule
from ilvr_cli.errors import CheckpointError, UsageError

VARIANCE_TYPES: tuple[str, ...] = ("learned_range", "fixed_small", "fixed_large")


class Posterior(NamedTuple):
    """Mean and log-variance of p(x_{i-1} | x_i), and the x_0 prediction they were built from."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


def f32(value: float) -> float:
    """``value`` rounded to float32: what a float32 tensor op multiplies with."""
    return float(np.float32(value))


def coef(array: np.ndarray, i: int) -> float:
    """``array[i]`` as the float32 value guided-diffusion's ``_extract_into_tensor`` multiplies with."""
    return f32(array[i])


def _check_index(schedule: Schedule, i: int) -> None:
    if not 0 <= i < len(schedule):
        raise UsageError(f"step index {i} is outside 0..{len(schedule) - 1}")


def q_sample(x0: torch.Tensor, alpha_bar: float, noise: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_i | x_0) (Ho et al. eq. 4): sqrt(abar) x_0 + sqrt(1 - abar) noise."""
    return f32(np.sqrt(alpha_bar)) * x0 + f32(np.sqrt(1.0 - alpha_bar)) * noise


def predict_xstart_from_eps(schedule: Schedule, x: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(1 / abar) x_i - sqrt(1 / abar - 1) eps (guided-diffusion ``_predict_xstart_from_eps``)."""
    return (
        coef(schedule.sqrt_recip_alphas_cumprod, i) * x - coef(schedule.sqrt_recipm1_alphas_cumprod, i) * eps
    )


def predict_eps_from_xstart(
    schedule: Schedule, x: torch.Tensor, i: int, xstart: torch.Tensor
) -> torch.Tensor:
    """eps = (sqrt(1 / abar) x_i - x_0) / sqrt(1 / abar - 1) (guided-diffusion
    ``_predict_eps_from_xstart``)."""
    return (coef(schedule.sqrt_recip_alphas_cumprod, i) * x - xstart) / coef(
        schedule.sqrt_recipm1_alphas_cumprod, i
    )


def q_posterior_mean(schedule: Schedule, xstart: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
    """Mean of q(x_{i-1} | x_i, x_0) (Ho et al. eq. 7): coef1 x_0 + coef2 x_i."""
    return coef(schedule.posterior_mean_coef1, i) * xstart + coef(schedule.posterior_mean_coef2, i) * x


def _log_variance(
    schedule: Schedule, var_values: torch.Tensor | None, x: torch.Tensor, i: int, variance_type: str
) -> torch.Tensor:
    """The model's log-variance at step i, broadcast to x's shape."""
    if variance_type == "learned_range":
        # Nichol & Dhariwal eq. 15: interpolate in log space between beta~ (posterior) and beta.
        min_log = coef(schedule.posterior_log_variance_clipped, i)
        max_log = coef(schedule.log_betas, i)
        assert var_values is not None, "learned_range outputs carry v (split_model_output)"
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log
    tables = {
        "fixed_small": schedule.posterior_log_variance_clipped,
        "fixed_large": schedule.fixed_large_log_variance,
    }
    table = tables[variance_type]
    # A broadcast view, as guided-diffusion's _extract_into_tensor returns: no full-size allocation.
    return x.new_full((1,) * x.ndim, coef(table, i), dtype=torch.float32).expand(x.shape)


def split_model_output(
    model_output: torch.Tensor, x: torch.Tensor, variance_type: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eps, v): with ``learned_range`` the network returns 2C channels, eps first; else eps alone."""
    channels = x.shape[1]
    expected = 2 * channels if variance_type == "learned_range" else channels
    if model_output.shape[1] != expected:
        raise CheckpointError(
            f"the network returns {model_output.shape[1]} channels but variance type {variance_type!r} needs "
            f"{expected}; check the model's diffusion config (learn_sigma / variance_type)"
        )
    model_output = model_output.float()
    if variance_type == "learned_range":
        eps, var_values = torch.split(model_output, channels, dim=1)
        return eps, var_values
    return model_output, None


def p_mean_variance(
    schedule: Schedule,
    model_output: torch.Tensor,
    x: torch.Tensor,
    i: int,
    variance_type: VarianceType,
    clip_denoised: bool = True,
) -> Posterior:
    """p(x_{i-1} | x_i) for an eps-predicting network, as guided-diffusion's ``p_mean_variance``.

    ``model_output`` is cast to float32 (the network may have run under autocast); x_0 is predicted from
    eps, clipped to [-1, 1] when ``clip_denoised``, and plugged into the posterior mean (Ho et al. eq. 7).
    """
    if variance_type not in VARIANCE_TYPES:
        raise CheckpointError(f"unknown variance type {variance_type!r}; expected one of {VARIANCE_TYPES}")
    _check_index(schedule, i)
    eps, var_values = split_model_output(model_output, x, variance_type)
    log_variance = _log_variance(schedule, var_values, x, i, variance_type)
    pred_xstart = predict_xstart_from_eps(schedule, x, i, eps)
    if clip_denoised:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean = q_posterior_mean(schedule, pred_xstart, x, i)
    return Posterior(mean=mean, log_variance=log_variance, pred_xstart=pred_xstart)
