"""A network plus what it was trained for: the one object the sampler calls.

The respaced index ``i`` is mapped to the network's own time exactly as guided-diffusion ``respace.py``'s
``_WrappedModel`` does: ``timestep_map[i]``, or ``timestep_map[i] * 1000 / original_num_steps`` (float32)
when the model was trained with ``rescale_timesteps``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from ilvr_cli.config import DiffusionConfig, VarianceType
from ilvr_cli.diffusion.posterior import VARIANCE_TYPES, Posterior, p_mean_variance
from ilvr_cli.diffusion.schedule import Schedule
from ilvr_cli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from ilvr_cli.models.checkpoints import LoadedModel
    from ilvr_cli.registry.handle import ModelHandle

#: A network ``f(x, timesteps) -> output`` with timesteps of shape (B,) in the network's own time.
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)

#: ``steps`` not given to :meth:`Denoiser.from_loaded` (then "100", guided-diffusion's usual respacing).
_DEFAULT_STEPS: Any = object()


def _unpack(model: Any) -> tuple[Network, DiffusionConfig | None]:
    """(network, diffusion config or None) of a ``LoadedModel``, a ``ModelHandle`` (loaded now) or a network."""
    if hasattr(model, "network") and hasattr(model, "diffusion_config"):  # LoadedModel
        return model.network, model.diffusion_config
    if callable(getattr(model, "load", None)) and hasattr(model, "diffusion_config"):  # ModelHandle
        network = model.load()
        return network, model.diffusion_config
    return model, None


def _model_name(model: Any) -> str:
    name = getattr(model, "name", None)
    return name if isinstance(name, str) else type(model).__name__


class Denoiser:
    """Wraps ``network`` with its (respaced) ``schedule`` and ``variance_type``; eps prediction only."""

    def __init__(
        self,
        network: Network,
        schedule: Schedule,
        variance_type: VarianceType,
        rescale_timesteps: bool = False,
        clip_denoised: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise CheckpointError(
                f"unknown variance type {variance_type!r}; expected one of {VARIANCE_TYPES}"
            )
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise UsageError(f"autocast dtype must be one of {AUTOCAST_DTYPES}, got {autocast_dtype}")
        self.network = network
        self.schedule = schedule
        self.variance_type: VarianceType = variance_type
        self.rescale_timesteps = rescale_timesteps
        self.clip_denoised = clip_denoised
        self.autocast_dtype = autocast_dtype

    @overload
    @classmethod
    def from_loaded(
        cls,
        model: Network,
        diffusion_config: DiffusionConfig,
        steps: str | int | None = "100",
        *,
        clip_denoised: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> Denoiser: ...

    @overload
    @classmethod
    def from_loaded(
        cls,
        model: LoadedModel | ModelHandle,
        steps: str | int | None = "100",
        *,
        diffusion_config: DiffusionConfig | None = None,
        clip_denoised: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> Denoiser: ...

    @classmethod
    def from_loaded(
        cls,
        model: Any,
        *args: Any,
        diffusion_config: DiffusionConfig | None = None,
        steps: Any = _DEFAULT_STEPS,
        clip_denoised: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> Denoiser:
        """The training schedule respaced to ``steps`` ("100", "ddim50", "" = all), around a network.

        ``model`` is what :func:`ilvr_cli.registry.load_model` returns (a ``LoadedModel``), an
        :func:`ilvr_cli.registry.open_model` handle (loaded here, once), or a bare network followed by its
        ``DiffusionConfig``: ``from_loaded(load_model("demo"), "100")`` and
        ``from_loaded(loaded.network, loaded.diffusion_config, steps="100")`` are the same denoiser.
        """
        rest = list(args)
        if rest and isinstance(rest[0], DiffusionConfig):
            if diffusion_config is not None:
                raise TypeError("from_loaded() got diffusion_config twice")
            diffusion_config = rest.pop(0)
        if rest:
            if len(rest) > 1 or steps is not _DEFAULT_STEPS:
                raise TypeError(
                    "from_loaded(model, [diffusion_config,] steps): too many positional arguments"
                )
            steps = rest[0]
        if steps is _DEFAULT_STEPS:
            steps = "100"
        network, own_config = _unpack(model)
        if diffusion_config is None:
            diffusion_config = own_config
        if diffusion_config is None:
            raise CheckpointError(
                f"{_model_name(model)}: the checkpoint does not say how it was trained (schedule, "
                "variance); pass its DiffusionConfig: Denoiser.from_loaded(network, diffusion_config, steps)"
            )
        if diffusion_config.prediction != "eps":
            raise CheckpointError(
                f"only eps-prediction models are supported, got {diffusion_config.prediction!r}"
            )
        return cls(
            network,
            Schedule.from_config(diffusion_config).respace(steps),
            diffusion_config.variance_type,
            rescale_timesteps=diffusion_config.rescale_timesteps,
            clip_denoised=clip_denoised,
            autocast_dtype=autocast_dtype,
        )

    def network_time(self, i: int) -> int | float:
        """The timestep the network sees for respaced index ``i`` (guided-diffusion ``_WrappedModel``)."""
        t = self.schedule.timestep(i)
        if not self.rescale_timesteps:
            return t
        # new_ts.float() * (1000.0 / original_num_steps), in float32 as guided-diffusion computes it.
        return float(np.float32(t) * np.float32(1000.0 / self.schedule.original_num_steps))

    def _weights_dtype(self) -> torch.dtype | None:
        parameter = next(iter(getattr(self.network, "parameters", lambda: iter(()))()), None)
        return None if parameter is None else parameter.dtype

    def _autocast(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def model_output(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The raw network output at respaced index ``i`` for the batch ``x`` (all samples at step i).

        With ``autocast_dtype``: a network whose weights are in that dtype (the CPU path,
        :func:`ilvr_cli.runtime.place_network`) gets ``x`` in that dtype; any other runs under autocast.
        The caller's arithmetic on the output is float32 (:func:`~ilvr_cli.diffusion.posterior.p_mean_variance`).
        """
        t = self.network_time(i)
        dtype = torch.float32 if self.rescale_timesteps else torch.int64
        timesteps = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
        if self.autocast_dtype is not None and self._weights_dtype() == self.autocast_dtype:
            return self.network(x.to(self.autocast_dtype), timesteps)
        with self._autocast(x):
            return self.network(x, timesteps)

    def posterior(self, x: torch.Tensor, i: int) -> Posterior:
        """p(x_{i-1} | x_i): mean, log-variance and the (clipped) x_0 prediction, in float32."""
        return p_mean_variance(
            self.schedule, self.model_output(x, i), x, i, self.variance_type, clip_denoised=self.clip_denoised
        )

    __call__ = posterior

    def __repr__(self) -> str:
        return (
            f"Denoiser({type(self.network).__name__}, {self.schedule!r}, "
            f"variance_type={self.variance_type!r}, rescale_timesteps={self.rescale_timesteps})"
        )
