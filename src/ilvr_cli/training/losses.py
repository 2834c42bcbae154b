"""Training losses of eps-prediction diffusion models, with per-sample timesteps.

- ``L_simple`` (Ho et al. eq. 14): || eps - eps_theta(x_t, t) ||^2, optionally P2-weighted (Choi et al. 2022,
  eq. 8: lambda'_t = lambda_t / (k + SNR(t))^gamma, SNR(t) = abar_t / (1 - abar_t)).
- the hybrid loss of Nichol & Dhariwal (2021, sec. 3.1) for learned sigma: L_simple + lambda L_vlb with
  lambda = 0.001 and a stop-gradient on the mean, so L_vlb trains only the variance. L_vlb = T E_t[L_t] with
  L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits per dimension for t > 0 and the discretised
  Gaussian decoder NLL at t = 0 (Ho et al. sec. 3.3), as improved-diffusion's ``_vb_terms_bpd``.

The sampler's posterior (:mod:`ilvr_cli.diffusion.posterior`) takes one step index per batch; training
draws one timestep per sample, so the coefficients here are gathered per sample from float32 copies of
the schedule's float64 arrays (guided-diffusion ``_extract_into_tensor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ilvr_cli.diffusion.schedule import Schedule

__all__ = [
    "ScheduleTensors",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "p2_weight",
    "LossTerms",
    "q_sample",
    "training_losses",
    "vb_terms_bpd",
]

_COEFFICIENTS = (
    "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2",
    "posterior_log_variance_clipped", "log_betas",
)  # fmt: skip


class ScheduleTensors:
    """A schedule's coefficient arrays as float32 tensors on a device, gathered per sample with ``at``."""

    def __init__(self, schedule: Schedule, device: torch.device | str = "cpu") -> None:
        if schedule.is_respaced:
            raise ValueError("train on the full schedule, not a respaced one")
        self.num_timesteps = len(schedule)
        self.device = torch.device(device)
        self._alphas_cumprod = np.asarray(schedule.alphas_cumprod)
        self.tables = {name: self._tensor(getattr(schedule, name)) for name in _COEFFICIENTS}

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(array, dtype=np.float64), device=self.device).float()

    def p2_weights(self, gamma: float, k: float) -> torch.Tensor:
        """The (T,) P2 weight table (cached)."""
        key = f"p2:{gamma}:{k}"
        if key not in self.tables:
            self.tables[key] = self._tensor(p2_weight(self._alphas_cumprod, gamma, k))
        return self.tables[key]

    def at(self, name: str, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """``table[t]`` shaped (B, 1, 1, ...) to broadcast against a (B, ...) tensor of ``ndim`` dims."""
        return self.tables[name][t].reshape(-1, *([1] * (ndim - 1)))


def p2_weight(alphas_cumprod: np.ndarray, gamma: float, k: float = 1.0) -> np.ndarray:
    """P2 weighting (Choi et al. 2022): 1 / (k + SNR)^gamma with SNR = abar / (1 - abar), in float64
    (P2-weighting's ``1 / (k + snr) ** gamma`` table); exactly 1 when gamma = 0."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    snr = 1.0 / (1.0 - abar) - 1.0
    return (k + snr) ** -float(gamma)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(x) of 8-bit data x in [-1, 1] under N(means, e^(2 log_scales)) integrated over each pixel's
    bin of width 2/255; the outermost bins extend to -inf and +inf (Ho et al. sec. 3.3).

    Uses the exact normal CDF (``log_ndtr``) where improved-diffusion uses a tanh approximation
    (they differ by less than 2e-4 in the CDF).
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    upper = inv_stdv * (centered + 1.0 / 255.0)
    lower = inv_stdv * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    cdf_delta = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_delta = torch.log(cdf_delta.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


@dataclass(frozen=True)
class LossTerms:
    """Per-sample terms, shape (B,): ``loss`` is what is minimised; ``mse`` the (weighted) L_simple;
    ``vb`` L_t in bits per dimension (zeros when sigma is fixed)."""

    loss: torch.Tensor
    mse: torch.Tensor
    vb: torch.Tensor


def q_sample(st: ScheduleTensors, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps per sample (Ho et al. eq. 4)."""
    return (
        st.at("sqrt_alphas_cumprod", t, x0.ndim) * x0
        + st.at("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * noise
    )


def vb_terms_bpd(
    st: ScheduleTensors,
    eps: torch.Tensor,
    var_values: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """L_t in bits per dimension, per sample: the KL to the true posterior for t > 0, the decoder NLL at 0.

    The model's mean comes from the unclipped x_0 prediction, its log-variance interpolates between
    log(beta~) and log(beta) with frac = (v + 1) / 2 (Nichol & Dhariwal eq. 15).
    """
    n = x0.ndim
    true_mean = st.at("posterior_mean_coef1", t, n) * x0 + st.at("posterior_mean_coef2", t, n) * x_t
    true_log_var = st.at("posterior_log_variance_clipped", t, n)
    pred_x0 = (
        st.at("sqrt_recip_alphas_cumprod", t, n) * x_t - st.at("sqrt_recipm1_alphas_cumprod", t, n) * eps
    )
    model_mean = st.at("posterior_mean_coef1", t, n) * pred_x0 + st.at("posterior_mean_coef2", t, n) * x_t
    frac = (var_values + 1.0) / 2.0
    model_log_var = frac * st.at("log_betas", t, n) + (1.0 - frac) * true_log_var
    kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(
        2.0
    )
    return torch.where(t == 0, nll, kl)


def training_losses(
    model_output: torch.Tensor,
    st: ScheduleTensors,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    learn_sigma: bool,
    p2_gamma: float = 0.0,
    p2_k: float = 1.0,
    vlb_weight: float = 1e-3,
) -> LossTerms:
    """The per-sample loss of an eps-prediction network output at (x_t, t) (guided-diffusion
    ``training_losses`` with ``RESCALED_MSE``; P2-weighting's ``mse`` weighting).

    With ``learn_sigma`` the output holds eps then v; the VLB sees eps through a stop-gradient and is
    weighted by ``vlb_weight * T`` (lambda L_vlb, L_vlb = T E_t[L_t]).
    """
    output = model_output.float()
    channels = x0.shape[1]
    if learn_sigma:
        eps, var_values = torch.split(output, channels, dim=1)
    else:
        eps, var_values = output, None
    weight = st.p2_weights(p2_gamma, p2_k)[t]
    mse = weight * _mean_flat((noise - eps) ** 2)
    if var_values is None:
        return LossTerms(loss=mse, mse=mse, vb=torch.zeros_like(mse))
    vb = vb_terms_bpd(st, eps.detach(), var_values, x0, x_t, t)
    return LossTerms(loss=mse + vlb_weight * st.num_timesteps * vb, mse=mse, vb=vb)
