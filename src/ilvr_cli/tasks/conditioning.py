"""Conditioning: from an input file to what the ILVR hook of its samples gets (the task-specific part).

Per input, :meth:`Conditioning.reference` reads the image (and for ``edit --mask`` its mask) and prepares the
:class:`~ilvr_cli.tasks.reference.Reference` (the thumbnail for ``upscale``, the full-size reference for
the other tasks); per batch, :meth:`Conditioning.hooks` builds the refinement of the paper's Algorithm 1
(:class:`~ilvr_cli.ilvr.ILVRHook`, or the masked variant) over the batch's references, with the run's
phi_N (one :class:`~ilvr_cli.ilvr.LowPass` per N, built once) and t-range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ilvr_cli.diffusion import Schedule
from ilvr_cli.errors import InputError
from ilvr_cli.ilvr import ILVRHook, LowPass, MaskedILVRHook
from ilvr_cli.io.load import load_image, load_mask
from ilvr_cli.io.write import to_uint8
from ilvr_cli.tasks.config import TaskConfig
from ilvr_cli.tasks.plan import Settings, WorkUnit
from ilvr_cli.tasks.reference import Reference, find_mask, full_reference, upscale_reference
from ilvr_cli.tasks.writer import to_pixels


@dataclass
class Batch:
    """Samples run together: their units and references (all with the same N)."""

    units: list[WorkUnit] = field(default_factory=list)
    refs: list[Reference | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def factor(self) -> int | None:
        return None if not self.refs or self.refs[0] is None else self.refs[0].factor


class Conditioning:
    """The references and hooks of one run, for a model of ``size`` x ``size`` pixels."""

    def __init__(self, config: TaskConfig, settings: Settings, size: int) -> None:
        self.config, self.settings, self.size = config, settings, size
        self._lowpass: dict[int, LowPass] = {}

    def lowpass(self, factor: int) -> LowPass:
        """phi_N of the run (kernel, exact mode), built once per N."""
        if factor not in self._lowpass:
            self._lowpass[factor] = LowPass(
                self.size, self.size, factor, self.config.kernel, self.config.exact
            )
        return self._lowpass[factor]

    def reference(self, unit: WorkUnit) -> Reference | None:
        """Read and prepare the reference of ``unit``'s input (None for ``sample``)."""
        if unit.item is None:
            return None
        config = self.config
        data = load_image(unit.item.path, max_pixels=config.max_pixels)
        factor = self.settings.factor
        assert factor is not None, "conditioned tasks always have a factor"
        if config.task == "upscale":
            return upscale_reference(
                unit.label,
                data,
                model_size=self.size,
                factor=config.factor,
                default_factor=factor,
                fit=config.fit,
                kernel=config.kernel,
            )
        mask = None
        if config.mask is not None:
            mask_path = find_mask(Path(config.mask), unit.item.rel)
            if mask_path is None:
                raise InputError(
                    f"{unit.label}: no mask for it under {config.mask} (same relative path and name)"
                )
            mask = load_mask(mask_path, max_pixels=config.max_pixels)
        return full_reference(
            unit.label, data, model_size=self.size, factor=factor, fit=config.fit, mask=mask
        )

    def mask_name(self, unit: WorkUnit) -> str | None:
        """The file name of ``unit``'s mask (recorded in its output), or None."""
        if self.config.mask is None or unit.item is None:
            return None
        found = find_mask(Path(self.config.mask), unit.item.rel)
        return found.name if found is not None else None

    def hooks(self, batch: Batch, schedule: Schedule) -> list[ILVRHook]:
        """The refinement of the batch (none for ``sample``): x_{t-1} = phi_N(y_{t-1}) + x' - phi_N(x')."""
        refs = [r for r in batch.refs if r is not None]
        if not refs:
            return []
        assert batch.factor is not None
        lowpass, t_range = self.lowpass(batch.factor), self.settings.t_range
        images = torch.stack([r.image for r in refs])
        if refs[0].low_res:
            return [ILVRHook(lowpass, schedule, low_res=images, t_range=t_range)]
        if refs[0].mask is not None:
            masks = torch.stack([r.mask for r in refs if r.mask is not None])
            return [MaskedILVRHook(lowpass, schedule, reference=images, mask=masks, t_range=t_range)]
        return [ILVRHook(lowpass, schedule, reference=images, t_range=t_range)]

    def sheet_rows(self, batch: Batch, samples: list[np.ndarray]) -> list[list[np.ndarray]]:
        """A contact sheet's rows: per input, the reference as the model got it, its low-pass phi_N(y),
        then its samples (``sample``: one row of samples)."""
        rows: list[list[np.ndarray]] = []
        current: str | None = None
        for unit, ref, pixels in zip(batch.units, batch.refs, samples, strict=True):
            if ref is None:
                if not rows:
                    rows.append([])
                rows[0].append(pixels)
                continue
            if unit.label != current:
                lowpass, image = self.lowpass(ref.factor), ref.image.unsqueeze(0)
                phi = lowpass.up(image) if ref.low_res else lowpass(image)
                rows.append([to_uint8(to_pixels(ref.image)), to_uint8(to_pixels(phi[0]))])
                current = unit.label
            rows[-1].append(pixels)
        return rows
