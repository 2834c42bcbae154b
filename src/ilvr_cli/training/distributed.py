"""torchrun support: the process group (NCCL on CUDA, gloo on CPU), the device of each rank, collectives.

A plain ``ilvr train`` is world size 1 and calls no collective. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment, one or many nodes) each process joins the group from the ``env://`` variables torchrun sets
and uses ``cuda:LOCAL_RANK`` when CUDA is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ilvr_cli.errors import UsageError
from ilvr_cli.runtime import Ranks, read_ranks, resolve_device

__all__ = ["DistContext", "setup_distributed"]


@dataclass(frozen=True)
class DistContext(Ranks):
    """:class:`~ilvr_cli.runtime.Ranks` plus this rank's device and whether it owns the process group."""

    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (just ``[obj]`` without torchrun)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place (identity without torchrun)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a stop request)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self) -> None:
        """Leave the process group if this context created it (once: the group is gone afterwards)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device_name: str = "auto") -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (or reuse one the caller initialised).

    Rank and world come from :func:`ilvr_cli.runtime.read_ranks`, the device from
    :func:`ilvr_cli.runtime.resolve_device`; under torchrun each rank needs its own CUDA device.
    """
    ranks = read_ranks()
    device = resolve_device(device_name, ranks.local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistContext(ranks.rank, ranks.world_size, ranks.local_rank, device, owns_group=False)
    if not ranks.distributed:
        return DistContext(device=device)
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if ranks.local_rank >= count and ":" not in device_name:
            raise UsageError(
                f"--device {device_name}: LOCAL_RANK={ranks.local_rank} needs its own GPU, and there are "
                f"{count} CUDA device(s) here, cuda:0 to cuda:{count - 1}"
            )
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(dist.get_rank(), dist.get_world_size(), ranks.local_rank, device, owns_group=True)
