"""Noise schedules and timestep respacing, with the semantics of improved/guided diffusion.

Everything here is float64 numpy, computed once per schedule: the sampler reads Python floats out of these
arrays, so it never synchronises with the device. Formulas follow guided-diffusion's
``gaussian_diffusion.get_named_beta_schedule`` / ``GaussianDiffusion.__init__`` and ``respace.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ilvr_cli.config import DiffusionConfig
from ilvr_cli.errors import CheckpointError, UsageError

#: Ho et al.'s linear schedule endpoints for T = 1000 (rescaled by 1000 / T for other lengths).
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
#: Nichol & Dhariwal clip the cosine schedule's betas at this value to avoid a singularity at t = T.
COSINE_MAX_BETA = 0.999
COSINE_OFFSET = 0.008

RESPACING_HELP = (
    'use a step count ("100"), comma-separated section counts ("10,15,20") or "ddimN" (an exact integer '
    'stride giving N steps, e.g. "ddim50")'
)


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al. (2020) linear betas, scaled by 1000 / T as guided-diffusion's ``get_named_beta_schedule``."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_timesteps, dtype=np.float64)


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = COSINE_MAX_BETA
) -> np.ndarray:
    """Discretise a continuous alpha_bar(t), t in [0, 1] (guided-diffusion ``betas_for_alpha_bar``):
    beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta)."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def cosine_betas(num_timesteps: int) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)^2, s = 0.008."""
    return betas_for_alpha_bar(
        num_timesteps, lambda t: math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    )


NAMED_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {"linear": linear_betas, "cosine": cosine_betas}


def _parse_counts(spec: str) -> list[int]:
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise UsageError(f"bad timestep respacing {spec!r}: {RESPACING_HELP}") from None
    if any(c < 0 for c in counts):
        raise UsageError(f"bad timestep respacing {spec!r}: step counts must not be negative")
    return counts


def _ddim_steps(num_timesteps: int, spec: str) -> list[int]:
    """guided-diffusion's "ddimN": the smallest integer stride s with len(range(0, T, s)) == N."""
    try:
        desired = int(spec[len("ddim") :])
    except ValueError:
        raise UsageError(f"bad timestep respacing {spec!r}: {RESPACING_HELP}") from None
    if desired < 1:
        raise UsageError(f"{spec!r} keeps no step: give at least 1 (e.g. ddim50)")
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return list(range(0, num_timesteps, stride))
    raise UsageError(
        f"cannot take exactly {desired} steps out of {num_timesteps} with an integer stride ({spec!r}); "
        f'choose another count or use plain "{desired}"'
    )


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """The original-process steps to keep, sorted (guided-diffusion ``respace.space_timesteps``).

    ``spec`` is a step count ("100"), section counts ("10,15,20": the T steps are cut into as many
    equal sections, the first ``T % sections`` one step longer, and each section is strided evenly with
    rounding, first and last step included), or "ddimN" (an exact integer stride, DDIM paper style).
    With T = 300, "10,15,20" keeps 10 of steps 0..99, 15 of 100..199 and 20 of 200..299; "ddim25" over
    1000 steps keeps 0, 40, ..., 960.
    """
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        return _ddim_steps(num_timesteps, spec)
    counts = _parse_counts(spec)
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for index, count in enumerate(counts):
        size = size_per + (1 if index < extra else 0)
        if size < count:
            raise UsageError(
                f"cannot take {count} steps out of a section of {size} in respacing {spec!r} "
                f"({num_timesteps} steps in {len(counts)} sections)"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulate, as guided-diffusion does, so rounding ties match it
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Schedule:
    """A (possibly respaced) discrete diffusion process: float64 ``betas`` and derived coefficients.

    ``timestep_map[i]`` is the original (training) timestep of respaced index ``i``;
    ``original_num_steps`` is the length of the training process (guided-diffusion ``original_num_steps``).
    Derived arrays follow ``GaussianDiffusion.__init__`` exactly.
    """

    betas: np.ndarray
    timestep_map: np.ndarray
    original_num_steps: int
    alphas_cumprod: np.ndarray = field(init=False)
    alphas_cumprod_prev: np.ndarray = field(init=False)
    sqrt_alphas_cumprod: np.ndarray = field(init=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = field(init=False)
    sqrt_recip_alphas_cumprod: np.ndarray = field(init=False)
    sqrt_recipm1_alphas_cumprod: np.ndarray = field(init=False)
    posterior_variance: np.ndarray = field(init=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False)
    posterior_mean_coef1: np.ndarray = field(init=False)
    posterior_mean_coef2: np.ndarray = field(init=False)
    #: log(beta): the upper end of ``learned_range`` (Nichol & Dhariwal eq. 15).
    log_betas: np.ndarray = field(init=False)
    #: log of [posterior_variance[1], betas[1:]]: guided-diffusion's FIXED_LARGE variance.
    fixed_large_log_variance: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        betas = np.array(self.betas, dtype=np.float64)
        tmap = np.array(self.timestep_map, dtype=np.int64)
        self._validate(betas, tmap)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        derived = {
            "betas": betas,
            "timestep_map": tmap,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
            "posterior_variance": post_var,
            # The posterior variance is 0 at the first step: guided-diffusion clips its log with step 1's.
            "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            "log_betas": np.log(betas),
            "fixed_large_log_variance": np.log(np.append(post_var[1], betas[1:])),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, _frozen(value))

    def _validate(self, betas: np.ndarray, tmap: np.ndarray) -> None:
        if betas.ndim != 1 or len(betas) < 2:
            raise UsageError(f"a diffusion schedule needs at least 2 steps, got {betas.size}")
        if not np.all((betas > 0) & (betas < 1)):
            raise CheckpointError(
                "diffusion betas must lie in (0, 1); a linear schedule needs at least 21 steps"
            )
        if tmap.shape != betas.shape or np.any(np.diff(tmap) <= 0) or tmap[0] < 0:
            raise CheckpointError("timestep_map must be increasing non-negative steps, one per beta")
        if tmap[-1] >= self.original_num_steps:
            raise CheckpointError(
                f"timestep_map reaches {tmap[-1]} but the process has {self.original_num_steps}"
            )

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_betas(cls, betas: Sequence[float] | np.ndarray) -> Schedule:
        """An unrespaced schedule: timestep_map is the identity."""
        betas = np.asarray(betas, dtype=np.float64)
        return cls(betas=betas, timestep_map=np.arange(len(betas)), original_num_steps=len(betas))

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> Schedule:
        """ "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal) with ``num_timesteps`` steps."""
        if name not in NAMED_SCHEDULES:
            raise CheckpointError(
                f"unknown noise schedule {name!r}; expected one of {sorted(NAMED_SCHEDULES)}"
            )
        return cls.from_betas(NAMED_SCHEDULES[name](num_timesteps))

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> Schedule:
        """The training schedule a model was built for (``schedule`` and ``num_timesteps``)."""
        return cls.named(config.schedule, config.num_timesteps)

    # -- respacing ---------------------------------------------------------------------------------------

    def respace(self, spec: str | int | None) -> Schedule:
        """A shorter process keeping the steps ``space_timesteps(len(self), spec)`` picks (guided-diffusion
        ``SpacedDiffusion``); ``None`` or "" keeps every step. Respacing a respaced schedule composes:
        ``spec`` counts the steps of this schedule, and ``timestep_map`` still points to training time."""
        if spec is None or str(spec).strip() == "":
            return self
        return self.keep_steps(space_timesteps(len(self), spec))

    def keep_steps(self, indices: Iterable[int]) -> Schedule:
        """Keep the given indices of this schedule (guided-diffusion ``SpacedDiffusion``):
        beta'_k = 1 - abar[i_k] / abar[i_{k-1}], with abar[i_{-1}] = 1."""
        kept = sorted({int(i) for i in indices})
        if not kept or kept[0] < 0 or kept[-1] >= len(self):
            raise UsageError(f"steps to keep must lie in 0..{len(self) - 1}, got {kept[:3]}...{kept[-3:]}")
        abar = self.alphas_cumprod[kept]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return dataclasses.replace(
            self,
            betas=betas,
            timestep_map=self.timestep_map[kept],
            original_num_steps=self.original_num_steps,
        )

    # -- per-step lookups --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.betas)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def is_respaced(self) -> bool:
        return len(self) != self.original_num_steps

    def timestep(self, i: int) -> int:
        """The original (training) timestep of respaced index ``i``."""
        return int(self.timestep_map[i])

    def noise_level(self, i: int) -> float:
        """alpha_bar of the state at respaced index ``i`` (x_i ~ N(sqrt(abar) x_0, (1 - abar) I));
        ``i = -1`` is x_0 itself (alpha_bar = 1). The ILVR hook noises its reference to level i - 1."""
        if not -1 <= i < len(self):
            raise UsageError(f"step index {i} is outside -1..{len(self) - 1}")
        return 1.0 if i == -1 else float(self.alphas_cumprod[i])

    def __repr__(self) -> str:
        return f"Schedule(steps={len(self)}, original_num_steps={self.original_num_steps})"
