"""Schedules and respacing against guided-diffusion's outputs (tests/data/parity), diffusers and closed
forms."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from extras import require_extra
from ilvr_cli.config import DiffusionConfig
from ilvr_cli.diffusion.schedule import Schedule, space_timesteps
from ilvr_cli.errors import UsageError

FIXTURES = ["adm_learned_sigma", "adm_fixed_sigma_cosine"]


@pytest.mark.parametrize("name", FIXTURES)
def test_schedule_matches_guided_diffusion_fixture(parity_dir, name):
    root = parity_dir / name
    flags = json.loads((root / "flags.json").read_text())
    expected = load_file(str(root / "expected.safetensors"))
    schedule = Schedule.from_config(DiffusionConfig.from_guided_diffusion_flags(flags))
    schedule = schedule.respace(flags["timestep_respacing"])
    np.testing.assert_array_equal(schedule.timestep_map, expected["timestep_map"])
    np.testing.assert_allclose(schedule.betas, expected["betas"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(schedule.alphas_cumprod, expected["alphas_cumprod"], rtol=0, atol=1e-12)
    assert schedule.original_num_steps == flags["diffusion_steps"]


def _strided_reference(start: int, size: int, count: int) -> list[int]:
    """guided-diffusion's section rule stated independently: ``count`` steps over ``size``, first and last
    included, at positions accumulated stride by stride (``cur_idx += frac_stride``), each rounded."""
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    positions = np.cumsum([0.0] + [stride] * (count - 1))[:count]  # sequential sums, as the reference
    return [start + round(float(p)) for p in positions]


@pytest.mark.parametrize(
    ("num_timesteps", "spec", "sections"),
    [
        # guided-diffusion's docstring: 300 steps, [10, 15, 20] -> 10 of the first 100, 15, then 20.
        (300, "10,15,20", [(0, 100, 10), (100, 100, 15), (200, 100, 20)]),
        (1000, "10", [(0, 1000, 10)]),
        (1000, "100", [(0, 1000, 100)]),
        (1000, "250", [(0, 1000, 250)]),
        (100, "25", [(0, 100, 25)]),
        # 21 steps in 2 sections: the first section takes the extra step.
        (21, "7,3", [(0, 11, 7), (11, 10, 3)]),
        (10, "1,1", [(0, 5, 1), (5, 5, 1)]),
    ],
)
def test_space_timesteps_section_counts(num_timesteps, spec, sections):
    expected = [step for start, size, count in sections for step in _strided_reference(start, size, count)]
    assert space_timesteps(num_timesteps, spec) == expected


def test_space_timesteps_rounds_accumulated_positions_like_guided_diffusion():
    """15 steps over 100: step 7 sits at 7 * 99 / 14 = 49.5 exactly, but guided-diffusion accumulates the
    stride (49.49999...) and rounds down; a linspace would round to 50."""
    stride = 99 / 14
    accumulated = 0.0
    for _ in range(7):
        accumulated += stride
    assert accumulated < 49.5
    kept = space_timesteps(300, "10,15,20")
    assert 100 + 49 in kept and 100 + 50 not in kept


def test_space_timesteps_docstring_example_sections():
    kept = np.array(space_timesteps(300, "10,15,20"))
    assert [int(np.sum((kept >= lo) & (kept < lo + 100))) for lo in (0, 100, 200)] == [10, 15, 20]
    assert {0, 99, 100, 199, 200, 299} <= set(kept.tolist())


@pytest.mark.parametrize(
    ("num_timesteps", "count"), [(1000, 25), (1000, 50), (1000, 10), (250, 50), (100, 100)]
)
def test_ddim_respacing_gives_exact_stride(num_timesteps, count):
    kept = space_timesteps(num_timesteps, f"ddim{count}")
    assert len(kept) == count
    strides = set(np.diff(kept).tolist())
    assert len(strides) == 1 and kept[0] == 0
    # guided-diffusion takes the smallest stride that gives exactly `count` steps.
    stride = strides.pop()
    assert all(len(range(0, num_timesteps, s)) != count for s in range(1, stride))


@pytest.mark.parametrize(
    ("num_timesteps", "spec", "match"),
    [
        (1000, "abc", "bad timestep respacing"),
        (1000, "10,x", "bad timestep respacing"),
        (1000, "ddim", "bad timestep respacing"),
        (1000, "ddimx", "bad timestep respacing"),
        (1000, "-5", "negative"),
        (1000, "2000", "cannot take 2000 steps"),
        (300, "10,150,20", "cannot take 150 steps"),
        (10, "ddim7", "exactly 7 steps"),
        (1000, "ddim2000", "exactly 2000 steps"),
    ],
)
def test_bad_respacing_raises_usage_error(num_timesteps, spec, match):
    with pytest.raises(UsageError, match=match):
        space_timesteps(num_timesteps, spec)


def test_respacing_to_a_single_step_is_refused():
    with pytest.raises(UsageError, match="at least 2 steps"):
        Schedule.named("linear", 1000).respace("1")


def test_empty_respacing_keeps_the_schedule():
    schedule = Schedule.named("linear", 1000)
    assert schedule.respace("") is schedule
    assert schedule.respace(None) is schedule
    assert not schedule.is_respaced and schedule.respace(100).is_respaced


def test_respaced_betas_follow_guided_diffusion_rule():
    base = Schedule.named("linear", 1000)
    spaced = base.respace("ddim25")
    kept = space_timesteps(1000, "ddim25")
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    # SpacedDiffusion: the respaced process has the same alpha_bar at every kept step.
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
    np.testing.assert_allclose(spaced.betas[0], base.betas[0], rtol=1e-12)


def test_respacing_composes():
    base = Schedule.named("cosine", 1000)
    twice = base.respace("100").respace("10,5")
    first = space_timesteps(1000, "100")
    composed = [first[k] for k in space_timesteps(100, "10,5")]
    np.testing.assert_array_equal(twice.timestep_map, composed)
    direct = base.keep_steps(composed)
    np.testing.assert_allclose(twice.betas, direct.betas, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[composed], rtol=0, atol=1e-12)
    assert twice.original_num_steps == 1000


@pytest.mark.parametrize("num_timesteps", [1000, 250, 100])
def test_linear_betas_against_formula(num_timesteps):
    betas = Schedule.named("linear", num_timesteps).betas
    scale = 1000 / num_timesteps
    assert betas[0] == pytest.approx(1e-4 * scale, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * scale, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) * scale / (num_timesteps - 1), rtol=1e-9)


@pytest.mark.parametrize("num_timesteps", [1000, 100])
def test_cosine_alphas_cumprod_against_closed_form(num_timesteps):
    """Nichol & Dhariwal eq. 17: alpha_bar_i = f((i + 1) / T) / f(0) wherever beta is not clipped."""
    schedule = Schedule.named("cosine", num_timesteps)

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    unclipped = np.flatnonzero(np.cumsum(schedule.betas >= 0.999) == 0)
    assert len(unclipped) >= num_timesteps - 2 and schedule.betas.max() <= 0.999
    closed = np.array([f((i + 1) / num_timesteps) / f(0) for i in unclipped])
    np.testing.assert_allclose(schedule.alphas_cumprod[unclipped], closed, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(("name", "diffusers_name"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(name, diffusers_name):
    diffusers = require_extra("diffusers")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    ours = Schedule.named(name, 1000)
    # diffusers keeps its betas in float32.
    np.testing.assert_allclose(ours.betas, scheduler.betas.double().numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("spec", ["", "100", "ddim25", "10,15,20"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_coefficients_are_consistent(name, spec):
    """q(x_{i-1} | x_i, x_0) composed with q(x_i | x_0) must give q(x_{i-1} | x_0) (Ho et al. eq. 6-7)."""
    s = Schedule.named(name, 300).respace(spec)
    mean_coef = s.posterior_mean_coef1 + s.posterior_mean_coef2 * np.sqrt(s.alphas_cumprod)
    np.testing.assert_allclose(mean_coef, np.sqrt(s.alphas_cumprod_prev), rtol=1e-10)
    var = s.posterior_mean_coef2**2 * (1 - s.alphas_cumprod) + s.posterior_variance
    np.testing.assert_allclose(var, 1 - s.alphas_cumprod_prev, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod**2 * s.alphas_cumprod, 1.0, rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod**2, 1 / s.alphas_cumprod - 1, rtol=1e-10)
    assert s.posterior_variance[0] == 0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]))
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(np.exp(s.fixed_large_log_variance[1:]), s.betas[1:], rtol=1e-12)
    assert s.fixed_large_log_variance[0] == s.posterior_log_variance_clipped[1]


def test_noise_level():
    s = Schedule.named("linear", 1000).respace("10")
    assert s.noise_level(-1) == 1.0
    assert [s.noise_level(i) for i in range(len(s))] == s.alphas_cumprod.tolist()
    assert s.noise_level(0) == pytest.approx(1 - 1e-4)
    for bad in (-2, len(s)):
        with pytest.raises(UsageError):
            s.noise_level(bad)


def test_schedule_is_frozen():
    s = Schedule.named("linear", 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = s.betas  # type: ignore[misc]
    with pytest.raises(ValueError):
        s.alphas_cumprod[0] = 0.5


def test_unknown_schedule_and_bad_lengths_are_refused():
    from ilvr_cli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unknown noise schedule"):
        Schedule.named("quadratic", 1000)
    with pytest.raises(CheckpointError, match="betas"):
        Schedule.named("linear", 10)  # beta_end = 0.02 * 100 > 1
