"""The ILVR refinement hook: Algorithm 1 of Choi et al. (ICCV 2021), applied after each sampler proposal.

    x'_{t-1} ~ p_theta(x'_{t-1} | x_t)                      (the sampler's step)
    y_{t-1}  ~ q(y_{t-1} | y)                                (the reference, noised)
    x_{t-1}  = phi_N(y_{t-1}) + x'_{t-1} - phi_N(x'_{t-1})   (Eq. 8: swap the low frequencies)

Two flavours (``mode``):

- ``"paper"``: y_{t-1} is drawn at the noise level of the state the step PRODUCES (respaced index i-1;
  for the last step, i = 0, that is x_0 itself: alpha_bar = 1, y unchanged). The conditioning range is in
  the paper's time t = timestep_map[i] + 1 in 1..T (Eq. 10): a step is refined when t_stop <= t <= t_start.
- ``"ilvr_adm"``: the authors' code (jychoi118/ilvr_adm, ``p_sample_loop_progressive``): after
  ``p_sample`` at respaced index i, ``if i > range_t: x = x - up(down(x)) + up(down(q_sample(y, i, eps)))``,
  i.e. y is noised to the level of the INPUT x_i (alpha_bar[i]), and range_t is a respaced index.

All noise comes from the sampler's :class:`~ilvr_cli.diffusion.NoiseSource` (one draw of the sample's
shape per refined step, after the sampler's own draw; every step when masked), so results do not depend
on the batch size. See docs/ilvr.md for the range semantics at 25, 100 and 1000 steps.
"""

from __future__ import annotations

from typing import Literal

import torch

from ilvr_cli.diffusion.sampler import StepState
from ilvr_cli.diffusion.schedule import Schedule
from ilvr_cli.errors import UsageError
from ilvr_cli.ilvr.lowpass import LowPass

Mode = Literal["paper", "ilvr_adm"]
MODES: tuple[str, ...] = ("paper", "ilvr_adm")
TRange = tuple[int, int] | int | None


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be an integer, got {value!r}")
    return value


def conditioned_steps(schedule: Schedule, t_range: TRange = None, mode: Mode = "paper") -> tuple[bool, ...]:
    """Which respaced indices i = 0..len-1 the hook refines.

    ``paper``: ``t_range = (t_start, t_stop)`` in the original process's time (``schedule.original_num_steps``
    steps, no rescaling), step i refined when ``t_stop <= timestep_map[i] + 1 <= t_start``; None means
    every step. ``ilvr_adm``: ``t_range`` is the integer ``range_t`` (None means 0), step i refined when
    ``i > range_t`` (so range_t = 0 leaves the last step unrefined, as in ilvr_adm).
    """
    n = len(schedule)
    if mode == "ilvr_adm":
        if isinstance(t_range, (tuple, list)):
            raise UsageError("in ilvr_adm mode give t_range as the integer range_t (a respaced step index)")
        range_t = 0 if t_range is None else _as_int(t_range, "range_t")
        if range_t < 0:
            raise UsageError(f"range_t must be >= 0, got {range_t}")
        return tuple(i > range_t for i in range(n))
    if mode != "paper":
        raise UsageError(f"unknown ILVR mode {mode!r}; choose one of {', '.join(MODES)}")
    if t_range is None:
        t_start, t_stop = schedule.original_num_steps, 0
    elif isinstance(t_range, (tuple, list)) and len(t_range) == 2:
        t_start, t_stop = (_as_int(v, "t_range bounds") for v in t_range)
    else:
        raise UsageError(f"t_range must be (t_start, t_stop), e.g. (1000, 125), got {t_range!r}")
    if not 0 <= t_stop <= t_start:
        raise UsageError(f"t_range (t_start, t_stop) needs 0 <= t_stop <= t_start, got ({t_start}, {t_stop})")
    return tuple(t_stop <= int(schedule.timestep_map[i]) + 1 <= t_start for i in range(n))


def reference_levels(schedule: Schedule, mode: Mode = "paper") -> tuple[float, ...]:
    """alpha_bar to which the reference is noised at each respaced index i: ``paper`` the level of the
    output x_{i-1} (1.0 at i = 0), ``ilvr_adm`` the level of the input x_i."""
    ac = schedule.alphas_cumprod
    if mode == "ilvr_adm":
        return tuple(float(a) for a in ac)
    return tuple([1.0] + [float(a) for a in ac[:-1]])


def _batch4(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4:
        raise UsageError(f"{what} must be (B, C, H, W) or (C, H, W), got shape {tuple(tensor.shape)}")
    return tensor.detach().to(torch.float32)


class ILVRHook:
    """``hook(x_prev, state) -> x_prev`` refining each proposal towards a reference (paper Algorithm 1).

    Give exactly one of ``reference`` y (B or 1, C, H, W) in [-1, 1], or ``low_res`` l = down_N(y)
    (B or 1, C, H/N, W/N), e.g. a 16x16 thumbnail for a 256x256 model with N = 16. With ``low_res``,
    phi_N(y_t) = up(sqrt(abar) l + sqrt(1 - abar) down(eps)): the same distribution as phi_N(q_sample(y)).

    ``mask`` (B or 1, 1, H, W) in [0, 1], 1 = may change (needs ``reference``): inside, ILVR as above;
    outside, x_{t-1} is replaced by the noised reference y_{t-1}, at every step, so the original is kept.
    """

    def __init__(
        self,
        lowpass: LowPass,
        schedule: Schedule,
        *,
        reference: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        t_range: TRange = None,
        mode: Mode = "paper",
        mask: torch.Tensor | None = None,
    ) -> None:
        if (reference is None) == (low_res is None):
            raise UsageError(
                "give exactly one of reference (full-resolution image) or low_res (down_N of it)"
            )
        self.lowpass, self.schedule, self.mode, self.t_range = lowpass, schedule, mode, t_range
        self.conditioned = conditioned_steps(schedule, t_range, mode)
        self._levels = [(a**0.5, (1.0 - a) ** 0.5) for a in reference_levels(schedule, mode)]
        size = (lowpass.height, lowpass.width)
        self.reference = None if reference is None else self._checked(reference, size, "reference")
        self.low_res = None if low_res is None else self._checked(low_res, lowpass.low_size, "low_res")
        self.mask = self._checked_mask(mask, size)
        self._on_device: dict[torch.device, tuple[torch.Tensor | None, ...]] = {}

    @staticmethod
    def _checked(tensor: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
        tensor = _batch4(tensor, what)
        if tuple(tensor.shape[-2:]) != size:
            raise UsageError(f"{what} must be {size[0]}x{size[1]} pixels, got {tuple(tensor.shape[-2:])}")
        return tensor

    def _checked_mask(self, mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
        if mask is None:
            return None
        if self.reference is None:
            raise UsageError("a mask needs the full-resolution reference, not low_res")
        mask = self._checked(mask, size, "mask")
        if mask.shape[1] != 1:
            raise UsageError(f"mask must have one channel, got {mask.shape[1]}")
        if bool(((mask < 0) | (mask > 1)).any()):  # checked once, at construction
            raise UsageError("mask values must lie in [0, 1] (1 = may change)")
        return mask

    def is_conditioned(self, i: int) -> bool:
        """Whether the step at respaced index ``i`` is refined (a Python bool: no device work)."""
        return self.conditioned[i]

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor | None, ...]:
        """reference, low_res and mask on ``device``, moved once per device."""
        cached = self._on_device.get(device)
        if cached is None:
            cached = tuple(
                None if t is None else t.to(device) for t in (self.reference, self.low_res, self.mask)
            )
            self._on_device[device] = cached
        return cached

    def _check_state(self, x: torch.Tensor, state: StepState) -> None:
        if len(state.schedule) != len(self.conditioned):
            raise UsageError(
                f"ILVR hook built for {len(self.conditioned)} steps but the sampler runs "
                f"{len(state.schedule)}; build it with the sampler's (respaced) schedule"
            )
        for what, ref in (("reference", self.reference), ("low_res", self.low_res), ("mask", self.mask)):
            if ref is not None and ref.shape[0] not in (1, x.shape[0]):
                raise UsageError(f"{what} holds {ref.shape[0]} images for a batch of {x.shape[0]}")

    def _phi_noised_low_res(self, low_res: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """phi_N(y_t) from the thumbnail: up(sqrt(abar) l + sqrt(1 - abar) down(eps)), by linearity of phi."""
        a, b = self._levels[i]
        return self.lowpass.up(a * low_res + b * self.lowpass.down(eps))

    def __call__(self, x_prev: torch.Tensor, state: StepState) -> torch.Tensor:
        """Refine the proposal x'_{i-1} of step ``state.i`` (Eq. 8); a no-op on unconditioned steps."""
        i = state.i
        self._check_state(x_prev, state)
        refine = self.conditioned[i]
        if not refine and self.mask is None:
            return x_prev
        x = x_prev.to(torch.float32)
        reference, low_res, mask = self._tensors(x.device)
        eps = state.noise.randn(x.shape[1:], dtype=torch.float32).to(x.device)
        a, b = self._levels[i]
        y_t = None if reference is None else a * reference + b * eps  # q(y_t | y), Ho et al. Eq. 4
        out = x
        if refine:
            if y_t is not None:
                phi_y = self.lowpass(y_t)
            else:
                assert low_res is not None, "the constructor demands reference or low_res"
                phi_y = self._phi_noised_low_res(low_res, eps, i)
            out = phi_y + x - self.lowpass(x)
        if mask is not None:
            assert y_t is not None, "a mask needs the reference (_checked_mask)"
            out = mask * out + (1.0 - mask) * y_t
        return out.to(x_prev.dtype)

    def __repr__(self) -> str:
        kind = "reference" if self.reference is not None else "low_res"
        return (
            f"ILVRHook({self.lowpass!r}, {kind}, mode={self.mode!r}, t_range={self.t_range!r}, "
            f"refined={sum(self.conditioned)}/{len(self.conditioned)} steps, masked={self.mask is not None})"
        )


class MaskedILVRHook(ILVRHook):
    """ILVR inside ``mask`` (1 = may change), the noised original outside it (``ilvr edit --mask``)."""

    def __init__(
        self,
        lowpass: LowPass,
        schedule: Schedule,
        *,
        reference: torch.Tensor,
        mask: torch.Tensor,
        t_range: TRange = None,
        mode: Mode = "paper",
    ) -> None:
        if mask is None:
            raise UsageError("MaskedILVRHook needs a mask (B, 1, H, W) in [0, 1]")
        super().__init__(lowpass, schedule, reference=reference, t_range=t_range, mode=mode, mask=mask)
