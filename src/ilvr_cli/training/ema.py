"""Exponential moving average of the weights (guided-diffusion ``update_ema``), the model that samples."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * params`` after every optimiser step.

    With ``warmup`` the decay at update n (1-based) is min(decay, (1 + n) / (10 + n)) (diffusers'
    ``EMAModel``), so short runs and fine-tunes are not dominated by the initial weights; without it the
    decay is constant, as in guided-diffusion.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, update: int) -> float:
        """The decay used by the ``update``-th update (1-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self, model: nn.Module, update: int) -> None:
        """Move the shadow weights towards ``model``'s (the same architecture, unwrapped from DDP)."""
        weight = 1.0 - self.decay_at(update)
        shadow: list[torch.Tensor] = [p for p in self.shadow.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, params, weight)
        for b_shadow, b_model in zip(self.shadow.buffers(), model.buffers(), strict=True):
            b_shadow.copy_(b_model)
