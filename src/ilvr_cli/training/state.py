"""The run directory: the training-state file and the loss log.

``state.safetensors`` holds everything a resumed run needs, in one file written atomically (the commit
point of a checkpoint): the weights, the EMA weights, the optimiser's tensors and every RNG state as
tensors; the step, the optimiser's hyperparameters and the run config as JSON in its metadata. Nothing is
pickled, so loading it never executes code. ``model.safetensors`` and ``ema.safetensors`` beside it are
exports for inference (:func:`ilvr_cli.models.checkpoints.save_native`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ilvr_cli.atomic import atomic_write_text
from ilvr_cli.errors import CheckpointError
from ilvr_cli.models.safetensors_file import write_safetensors

__all__ = [
    "STATE_NAME",
    "LossLog",
    "TrainingState",
    "load_state",
    "save_state",
]

STATE_NAME = "state.safetensors"
STATE_FORMAT = "1"
_META_KEY = "ilvr_cli.training_state"


@dataclass
class TrainingState:
    """What :func:`save_state` writes: tensors by name (``model.*``, ``ema.*``, ``optim.*``, ``rng.*``)
    and JSON-able ``info`` (step, config, optimiser hyperparameters, ...)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix.`` with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def save_state(path: Path, state: TrainingState) -> Path:
    """Write the state atomically (:mod:`ilvr_cli.atomic`; tensors in safetensors, ``info`` as JSON in its
    metadata)."""
    metadata = {_META_KEY: json.dumps({"format": STATE_FORMAT, **state.info}, sort_keys=True)}
    write_safetensors(path, state.tensors, metadata)
    return Path(path)


def load_state(path: Path, map_location: str = "cpu") -> TrainingState:
    """Read a state written by :func:`save_state` (no unpickling)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
        tensors = load_file(str(path), device=map_location)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable training state ({error})") from error
    if raw is None:
        raise CheckpointError(f"{path}: not an ilvr-cli training state (no {_META_KEY} metadata)")
    info = json.loads(raw)
    if info.pop("format", None) != STATE_FORMAT:
        raise CheckpointError(f"{path}: training state format is not {STATE_FORMAT}; upgrade ilvr-cli")
    return TrainingState(tensors=tensors, info=info)


# ---------------------------------------------------------------------------------------- optimiser


def optimizer_to_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``<param index>.<key>``) and JSON (the rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_state` (tensors are moved to the parameters' device by torch)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in info.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in info["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------------- loss log


class LossLog:
    """``loss.jsonl``: one JSON object per logged interval (``step``, ``loss``, ``mse``, ...)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (logged by a run that was killed before its next checkpoint)."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and _record_step(line) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [
            json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: drop it
