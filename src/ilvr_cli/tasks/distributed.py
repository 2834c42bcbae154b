"""Rank sharding under torchrun: each rank takes a disjoint share of the work; the union is the whole.

Rank and world size come from ``torch.distributed`` when a process group is initialised, else from the
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables torchrun sets. When torchrun launched us
(``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` set) and nobody initialised a group, :func:`setup_distributed`
initialises one: gloo on CPU, nccl on CUDA. The group is only used to gather the per-rank results at the
end; sampling needs no communication, because every sample's noise depends on its key alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ilvr_cli.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. ``owns_group``: we initialised the process group (and destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def has_group(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_info() -> DistInfo:
    """Rank and world size: from the initialised process group, else from torchrun's environment."""
    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} / WORLD_SIZE={world} do not describe a rank of the job")
    return DistInfo(rank, world, local)


def launched_by_torchrun() -> bool:
    """True when the environment asks for a process group (torchrun sets these)."""
    return _env_int("WORLD_SIZE", 1) > 1 and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ


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
