"""Training losses against independent references: torch.distributions, the engine's posterior, identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ilvr_cli.diffusion import Schedule, p_mean_variance
from ilvr_cli.diffusion import q_sample as engine_q_sample
from ilvr_cli.training.losses import (
    ScheduleTensors,
    discretized_gaussian_log_likelihood,
    normal_kl,
    p2_weight,
    q_sample,
    training_losses,
    vb_terms_bpd,
)

T = 50


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return Schedule.named("linear", T)


def test_normal_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(100, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    lv1, lv2 = (
        torch.randn(100, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-12)


def test_discretized_likelihood_integrates_the_gaussian_over_each_bin() -> None:
    """Interior bins: CDF(x + 1/255) - CDF(x - 1/255); the first and last bins extend to -inf / +inf."""
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean = torch.full_like(x, 0.3)
    log_scale = torch.full_like(x, math.log(0.4))
    normal = Normal(mean, log_scale.exp())
    expected = (normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)).log()
    edge = Normal(0.3, 0.4)
    expected[0] = edge.cdf(x[0] + 1 / 255).log()
    expected[-1] = (1 - edge.cdf(x[-1] - 1 / 255)).log()
    got = discretized_gaussian_log_likelihood(x, mean, log_scale)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    assert got.exp().sum().item() == pytest.approx(1.0, abs=1e-9)  # the 256 bins partition the real line


def test_p2_weight_is_one_minus_alpha_bar_for_gamma_1_k_1(schedule: Schedule) -> None:
    """1 / (1 + abar / (1 - abar)) = 1 - abar; gamma = 0 switches the weighting off."""
    np.testing.assert_allclose(
        p2_weight(schedule.alphas_cumprod, 1.0, 1.0), 1 - schedule.alphas_cumprod, rtol=1e-9
    )
    np.testing.assert_array_equal(p2_weight(schedule.alphas_cumprod, 0.0, 1.0), np.ones(T))


def test_q_sample_per_sample_matches_the_engine(schedule: Schedule) -> None:
    st = ScheduleTensors(schedule)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 7, 23, T - 1])
    got = q_sample(st, x0, t, noise)
    for k, step in enumerate(t.tolist()):
        expected = engine_q_sample(x0[k], schedule.noise_level(step), noise[k])
        torch.testing.assert_close(got[k], expected, rtol=1e-6, atol=1e-6)


def _reference_vb(
    schedule: Schedule, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, i: int
) -> torch.Tensor:
    """L_i from the engine's posterior (one step index for the whole batch) and torch.distributions."""
    post = p_mean_variance(schedule, output, x_t, i, "learned_range", clip_denoised=False)
    c1, c2 = schedule.posterior_mean_coef1[i], schedule.posterior_mean_coef2[i]
    true_mean = c1 * x0.double() + c2 * x_t.double()
    true_std = math.exp(0.5 * schedule.posterior_log_variance_clipped[i])
    model = Normal(post.mean.double(), (0.5 * post.log_variance.double()).exp())
    if i == 0:
        x = x0.double()
        lower = torch.where(x < -0.999, torch.zeros_like(x), model.cdf(x - 1 / 255))
        upper = torch.where(x > 0.999, torch.ones_like(x), model.cdf(x + 1 / 255))
        per_dim = -(upper - lower).log()
    else:
        per_dim = kl_divergence(Normal(true_mean, torch.full_like(true_mean, true_std)), model)
    return per_dim.mean(dim=(1, 2, 3)) / math.log(2)


@pytest.mark.parametrize("i", [0, 1, 17, T - 1])
def test_vb_terms_match_the_engine_posterior(schedule: Schedule, i: int) -> None:
    st = ScheduleTensors(schedule)
    g = torch.Generator().manual_seed(i)
    x0 = (torch.randint(0, 256, (3, 3, 8, 8), generator=g).float() / 127.5 - 1).clamp(-1, 1)
    noise = torch.randn(3, 3, 8, 8, generator=g)
    x_t = engine_q_sample(x0, schedule.noise_level(i), noise)
    eps = noise + 0.3 * torch.randn(3, 3, 8, 8, generator=g)
    output = torch.cat([eps, torch.rand(3, 3, 8, 8, generator=g) * 2 - 1], 1)
    t = torch.full((3,), i)
    got = vb_terms_bpd(st, output[:, :3], output[:, 3:], x0, x_t, t)
    expected = _reference_vb(schedule, output, x0, x_t, i).float()
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=1e-5)


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean(schedule: Schedule) -> None:
    """d loss / d eps comes from L_simple alone; the VLB term reaches only the variance channels."""
    st = ScheduleTensors(schedule)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 5, 20, 40])
    x_t = q_sample(st, x0, t, noise)
    output = torch.randn(4, 6, 8, 8, generator=g).requires_grad_()
    terms = training_losses(output, st, x0, x_t, t, noise, learn_sigma=True, vlb_weight=1e-3)
    (grad,) = torch.autograd.grad(terms.loss.sum(), output)
    expected_eps_grad = -2 * (noise - output[:, :3].detach()) / (3 * 8 * 8)
    torch.testing.assert_close(grad[:, :3], expected_eps_grad)
    assert grad[:, 3:].abs().sum() > 0
    torch.testing.assert_close(terms.loss, terms.mse + 1e-3 * T * terms.vb)


def test_fixed_variance_loss_is_the_p2_weighted_mse(schedule: Schedule) -> None:
    st = ScheduleTensors(schedule)
    g = torch.Generator().manual_seed(4)
    x0, noise, eps = (torch.randn(5, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 1, 10, 30, 49])
    x_t = q_sample(st, x0, t, noise)
    plain = training_losses(eps, st, x0, x_t, t, noise, learn_sigma=False)
    weighted = training_losses(eps, st, x0, x_t, t, noise, learn_sigma=False, p2_gamma=1.0, p2_k=1.0)
    torch.testing.assert_close(plain.loss, ((noise - eps) ** 2).mean(dim=(1, 2, 3)))
    assert torch.equal(plain.vb, torch.zeros(5))
    one_minus_abar = torch.tensor(1 - schedule.alphas_cumprod[t.numpy()], dtype=torch.float32)
    torch.testing.assert_close(weighted.loss, plain.loss * one_minus_abar)
