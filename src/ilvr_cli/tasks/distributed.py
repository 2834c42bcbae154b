"""Rank sharding under torchrun: each rank takes a disjoint share of the work; the union is the whole.

Rank and world size come from :func:`ilvr_cli.runtime.read_ranks`: the initialised ``torch.distributed``
group, else the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables torchrun sets. When torchrun launched us
(``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` set) and nobody initialised a group, :func:`setup_distributed`
initialises one: gloo on CPU, nccl on CUDA. The group is only used to gather the per-rank results at the
end; sampling needs no communication, because every sample's noise depends on its key alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ilvr_cli.errors import UsageError
from ilvr_cli.runtime import Ranks, launched_by_torchrun, read_ranks

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo(Ranks):
    """:class:`~ilvr_cli.runtime.Ranks`; ``owns_group``: we initialised the process group (and destroy it)."""

    owns_group: bool = False

    @property
    def has_group(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    """Rank and world size (:func:`ilvr_cli.runtime.read_ranks`) as a :class:`DistInfo`."""
    ranks = read_ranks()
    return DistInfo(ranks.rank, ranks.world_size, ranks.local_rank)


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise the process group when torchrun launched us and none exists yet (gloo / nccl)."""
    if dist.is_available() and not dist.is_initialized() and launched_by_torchrun():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        info = dist_info()
        return DistInfo(info.rank, info.world_size, info.local_rank, owns_group=True)
    return dist_info()


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share: every ``world_size``-th item starting at ``rank`` (disjoint, covering)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in a job of {world_size}")
    return list(items[rank::world_size])


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank (rank order) when a process group exists, else ``[obj]``."""
    if not info.has_group:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
