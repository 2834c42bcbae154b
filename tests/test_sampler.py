"""The sampler loop, DDPM / DDIM steps, hooks and the noise contract, on small stand-in networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from extras import require_extra
from ilvr_cli.diffusion import Denoiser, NoiseSource, Schedule, StepState, sample, sample_steps
from ilvr_cli.diffusion.noise import stream_seed
from ilvr_cli.diffusion.sampler import ddim_step, ddpm_step
from ilvr_cli.errors import UsageError

SHAPE = (3, 8, 8)
KEYS = ["a.png", "b.png", "c.png", "d.png"]


class TinyNet(nn.Module):
    """A (x, t) -> eps [, v] stand-in: one conv modulated by the timestep, run sample by sample so that its
    output never depends on the batch it is in."""

    def __init__(self, out_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows = []
        for b in range(x.shape[0]):
            scale = 1 + torch.sin(t[b].float() / 100)
            rows.append(torch.tanh(self.conv(x[b : b + 1]) * scale))
        return torch.cat(rows)


def make_denoiser(variance_type: str = "learned_range", steps: str = "10") -> Denoiser:
    schedule = Schedule.named("linear", 1000).respace(steps)
    return Denoiser(TinyNet(6 if variance_type == "learned_range" else 3), schedule, variance_type)


def noisy_hook(x_prev: torch.Tensor, state: StepState) -> torch.Tensor:
    """A hook that draws noise, as ILVR does, to show hook draws follow the per-sample contract."""
    return x_prev + 0.01 * state.noise.randn(x_prev.shape[1:])


# --- determinism -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "eta"), [("ddpm", 0.0), ("ddim", 0.5)])
def test_samples_do_not_depend_on_batching_or_order(method, eta):
    denoiser = make_denoiser()
    kwargs = {"shape": SHAPE, "method": method, "eta": eta, "hooks": [noisy_hook]}
    full = sample(denoiser, NoiseSource(7, KEYS), **kwargs)
    split = torch.cat(
        [
            sample(denoiser, NoiseSource(7, KEYS[:1]), **kwargs),
            sample(denoiser, NoiseSource(7, KEYS[1:]), **kwargs),
        ]
    )
    reverse = sample(denoiser, NoiseSource(7, KEYS[::-1]), **kwargs).flip(0)
    assert torch.equal(full, split)
    assert torch.equal(full, reverse)


def test_different_keys_or_seeds_differ():
    denoiser = make_denoiser()
    base = sample(denoiser, NoiseSource(7, KEYS), shape=SHAPE)
    other_keys = sample(denoiser, NoiseSource(7, [k + "x" for k in KEYS]), shape=SHAPE)
    other_seed = sample(denoiser, NoiseSource(8, KEYS), shape=SHAPE)
    for other in (other_keys, other_seed):
        assert all(not torch.equal(base[b], other[b]) for b in range(len(KEYS)))
    assert not torch.equal(base[0], base[1])


def test_noise_streams_are_sha256_seeded_and_stable():
    assert stream_seed(7, "a.png") == stream_seed(7, "a.png")
    assert len({stream_seed(s, k) for s in (0, 1) for k in ("a", "b")}) == 4
    assert 0 <= stream_seed(2**70, "x") < 2**63
    noise = NoiseSource(3, ["a", "b"])
    first = noise.randn((5,))
    replay = torch.randn((5,), generator=torch.Generator().manual_seed(stream_seed(3, "b")))
    assert first.shape == (2, 5) and torch.equal(first[1], replay)
    assert not torch.equal(noise.randn((5,)), first)  # the stream advances
    with pytest.raises(UsageError):
        NoiseSource(3, "abc")
    with pytest.raises(UsageError):
        NoiseSource(3, [])


def test_ddim_eta0_is_deterministic_and_ignores_the_noise_source():
    denoiser = make_denoiser("fixed_small")
    x_T = NoiseSource(0, KEYS).randn(SHAPE)
    a = sample(denoiser, NoiseSource(1, KEYS), x_T=x_T, method="ddim", eta=0.0)
    b = sample(denoiser, NoiseSource(2, ["p", "q", "r", "s"]), x_T=x_T, method="ddim", eta=0.0)
    assert torch.equal(a, b)
    c = sample(denoiser, NoiseSource(1, KEYS), x_T=x_T, method="ddim", eta=1.0)
    d = sample(denoiser, NoiseSource(2, KEYS), x_T=x_T, method="ddim", eta=1.0)
    assert not torch.equal(c, d)


# --- the loop ----------------------------------------------------------------------------------------------


def test_loop_yields_every_step_in_decreasing_order():
    denoiser = make_denoiser(steps="ddim25")
    states = list(sample_steps(denoiser, NoiseSource(0, KEYS[:2]), shape=SHAPE))
    assert [s.i for s in states] == list(range(24, -1, -1))
    assert [s.t for s in states] == [int(denoiser.schedule.timestep_map[s.i]) for s in states]
    assert all(s.x.shape == (2, *SHAPE) and s.pred_xstart.shape == (2, *SHAPE) for s in states)
    assert all(s.schedule is denoiser.schedule for s in states)
    assert all(float(s.pred_xstart.abs().max()) <= 1.0 for s in states)
    partial = list(sample_steps(denoiser, NoiseSource(0, KEYS[:2]), x_T=states[9].x, start_index=14))
    assert [s.i for s in partial] == list(range(14, -1, -1))


def test_hooks_see_the_proposal_in_order_and_feed_the_next_step():
    inputs: list[torch.Tensor] = []
    inner = TinyNet(3)

    def network(x, t):
        inputs.append(x.clone())
        return inner(x, t)

    denoiser = Denoiser(network, Schedule.named("linear", 1000).respace("5"), "fixed_small")
    calls = []

    def first(x_prev, state):
        assert torch.equal(x_prev, state.x)  # the sampler's proposal
        calls.append(("first", state.i))
        return x_prev + 1

    def second(x_prev, state):
        assert torch.equal(x_prev, state.x + 1)  # first's output; the state still holds the proposal
        calls.append(("second", state.i))
        return x_prev * 2

    states = list(sample_steps(denoiser, NoiseSource(0, KEYS[:1]), shape=SHAPE, hooks=[first, second]))
    assert calls == [(name, i) for i in range(4, -1, -1) for name in ("first", "second")]
    for state, next_input in zip(states[:-1], inputs[1:], strict=True):
        assert torch.equal(state.x, next_input)


def test_loop_runs_in_inference_mode_without_leaking_it():
    denoiser = make_denoiser()
    for state in sample_steps(denoiser, NoiseSource(0, KEYS[:1]), shape=SHAPE):
        assert state.x.is_inference()
        assert not torch.is_inference_mode_enabled()
    states = sample_steps(denoiser, NoiseSource(0, KEYS[:1]), shape=SHAPE, inference_mode=False)
    assert not next(states).x.is_inference()


def test_bad_arguments_are_refused_on_the_call():
    denoiser = make_denoiser()
    noise = NoiseSource(0, KEYS)
    x_T = torch.zeros(4, *SHAPE)
    with pytest.raises(UsageError, match="method"):
        sample_steps(denoiser, noise, shape=SHAPE, method="euler")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="exactly one"):
        sample_steps(denoiser, noise, shape=SHAPE, x_T=x_T)
    with pytest.raises(UsageError, match="exactly one"):
        sample_steps(denoiser, noise)
    with pytest.raises(UsageError, match="keys"):
        sample_steps(denoiser, noise, x_T=x_T[:2])
    with pytest.raises(UsageError, match="start index"):
        sample_steps(denoiser, noise, x_T=x_T, start_index=10)
    with pytest.raises(UsageError, match="eta"):
        sample_steps(denoiser, noise, x_T=x_T, method="ddim", eta=-1)


# --- correctness with an oracle network ---------------------------------------------------------------------


class Oracle:
    """The ideal eps-network for a single known x_0: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), in the
    network's own (original) time, so it also checks that the denoiser maps indices to timesteps."""

    def __init__(self, x0: torch.Tensor, original: Schedule) -> None:
        self.x0 = x0.double()
        self.abar = torch.tensor(original.alphas_cumprod)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t].view(-1, 1, 1, 1)
        return ((x.double() - abar.sqrt() * self.x0) / (1 - abar).sqrt()).float()


def oracle_run(method: str, eta: float, steps: str = "50"):
    original = Schedule.named("linear", 1000)
    x0 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    denoiser = Denoiser(Oracle(x0, original), original.respace(steps), "fixed_small")
    noise = NoiseSource(5, ["oracle"])
    x_T = noise.randn((3, 64, 64))
    return x0, x_T, denoiser.schedule, list(sample_steps(denoiser, noise, x_T=x_T, method=method, eta=eta))


@pytest.mark.parametrize(("method", "eta"), [("ddpm", 0.0), ("ddim", 1.0)])
def test_oracle_ancestral_sampling_follows_the_forward_marginals(method, eta):
    """With a perfect x_0 prediction each step samples q(x_{i-1} | x_i, x_0) (DDIM with eta = 1 coincides),
    so every level must be distributed as q(x_{i-1} | x_0) = N(sqrt(abar) x_0, (1 - abar) I)."""
    x0, _, schedule, states = oracle_run(method, eta)
    for state in states[:-1]:
        abar = schedule.noise_level(state.i - 1)
        z = (state.x - np.sqrt(abar) * x0) / np.sqrt(1 - abar)
        assert abs(float(z.mean())) < 0.05, state.i
        assert abs(float(z.std()) - 1) < 0.04, state.i
    torch.testing.assert_close(states[-1].x, x0, rtol=0, atol=1e-4)


def test_oracle_ddim_eta0_keeps_the_initial_noise():
    """DDIM eta = 0 with the oracle: x_{i-1} = sqrt(abar') x_0 + sqrt(1 - abar') eps with the same eps."""
    x0, x_T, schedule, states = oracle_run("ddim", 0.0)
    abar_T = schedule.noise_level(len(schedule) - 1)
    eps = (x_T - np.sqrt(abar_T) * x0) / np.sqrt(1 - abar_T)
    for state in states[:-1]:
        abar = schedule.noise_level(state.i - 1)
        expected = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
        torch.testing.assert_close(state.x, expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(states[-1].x, x0, rtol=0, atol=2e-5)


# --- one step against diffusers -----------------------------------------------------------------------------


def _step_inputs(seed: int, channels: int = 3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    out = torch.randn(2, channels, 16, 16, generator=generator) * 0.8
    if channels == 6:
        out[:, 3:] = out[:, 3:].tanh()
    return x, out


def _constant(out: torch.Tensor):
    return lambda x, t: out


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("spec", ["", "ddim10"])
def test_ddpm_step_matches_diffusers(spec, variance_type):
    """diffusers' DDPMScheduler with 10 "leading" inference steps walks 900, 800, ..., 0: guided-diffusion's
    ddim10 respacing of T = 1000; with no respacing it walks t -> t - 1."""
    diffusers = require_extra("diffusers")
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, variance_type=variance_type, clip_sample=True
    )
    schedule = Schedule.named("linear", 1000).respace(spec)
    if spec:
        scheduler.set_timesteps(10)
    for i in [9, 5, 1, 0] if spec else [999, 500, 3, 0]:
        x, out = _step_inputs(i, 6 if variance_type == "learned_range" else 3)
        denoiser = Denoiser(_constant(out), schedule, variance_type)
        t = schedule.timestep(i)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i))
        ref = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(100 + i))
        ours, post = ddpm_step(denoiser, x, i, z)
        torch.testing.assert_close(post.pred_xstart, ref.pred_original_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours, ref.prev_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(eta):
    diffusers = require_extra("diffusers")
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True)
    scheduler.set_timesteps(20)
    schedule = Schedule.named("linear", 1000).respace("ddim20")
    assert [schedule.timestep(i) for i in range(19, -1, -1)] == scheduler.timesteps.tolist()
    for i in (19, 10, 1, 0):
        x, out = _step_inputs(i)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        denoiser = Denoiser(_constant(out), schedule, "fixed_small")
        # guided-diffusion re-derives eps from the clipped x_0: diffusers' use_clipped_model_output.
        ref = scheduler.step(
            out, schedule.timestep(i), x, eta=eta, use_clipped_model_output=True, variance_noise=z
        )
        ours, post = ddim_step(denoiser, x, i, z, eta)
        torch.testing.assert_close(post.pred_xstart, ref.pred_original_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours, ref.prev_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_noise_and_autocast():
    """On CUDA: per-sample generators live on the device; autocast runs the network only, in low precision."""
    noise = NoiseSource(7, KEYS, device="cuda")
    draws = noise.randn(SHAPE)
    assert draws.device.type == "cuda"
    assert torch.equal(draws[1:], NoiseSource(7, KEYS[1:], device="cuda").randn(SHAPE))
    dtypes = []

    def network(x, t):
        out = torch.nn.functional.conv2d(x, torch.ones(3, 3, 1, 1, device=x.device) / 3)
        dtypes.append(out.dtype)
        return out

    schedule = Schedule.named("linear", 1000).respace("5")
    denoiser = Denoiser(network, schedule, "fixed_small", autocast_dtype=torch.bfloat16)
    x = sample(denoiser, noise, shape=SHAPE)
    assert x.dtype == torch.float32 and x.device.type == "cuda"
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
