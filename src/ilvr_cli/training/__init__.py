"""``ilvr train``: DDPM training and fine-tuning with exact resume and torchrun (see docs/training.md).

Importing this package imports torch; the torch-free parts (:class:`TrainConfig`, the presets) live in
:mod:`ilvr_cli.training.presets`.
"""

from __future__ import annotations

from ilvr_cli.training.data import DataOrder, ImageFolder, UnreadableImageWarning, scan_images
from ilvr_cli.training.ema import EMA
from ilvr_cli.training.losses import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    p2_weight,
    training_losses,
)
from ilvr_cli.training.presets import PRESETS, TrainConfig, model_configs
from ilvr_cli.training.trainer import (
    NullTrainProgress,
    RunInfo,
    StepUpdate,
    TrainProgress,
    TrainResult,
    saved_config,
    train,
)

__all__ = [
    "EMA",
    "PRESETS",
    "DataOrder",
    "ImageFolder",
    "NullTrainProgress",
    "RunInfo",
    "StepUpdate",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "UnreadableImageWarning",
    "discretized_gaussian_log_likelihood",
    "model_configs",
    "normal_kl",
    "p2_weight",
    "saved_config",
    "scan_images",
    "train",
    "training_losses",
]
