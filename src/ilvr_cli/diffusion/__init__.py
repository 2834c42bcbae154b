"""The diffusion engine: schedules and respacing, the posterior, the denoiser, noise streams and the sampler.

Importing this package imports torch (``ilvr_cli`` itself and ``ilvr_cli.config`` do not).
"""

from __future__ import annotations

from ilvr_cli.diffusion.denoiser import Denoiser
from ilvr_cli.diffusion.noise import NoiseSource
from ilvr_cli.diffusion.posterior import Posterior, p_mean_variance, q_sample
from ilvr_cli.diffusion.sampler import Hook, StepState, ddim_step, ddpm_step, sample, sample_steps
from ilvr_cli.diffusion.schedule import Schedule, space_timesteps

__all__ = [
    "Denoiser",
    "Hook",
    "NoiseSource",
    "Posterior",
    "Schedule",
    "StepState",
    "ddim_step",
    "ddpm_step",
    "p_mean_variance",
    "q_sample",
    "sample",
    "sample_steps",
    "space_timesteps",
]
