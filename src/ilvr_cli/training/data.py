"""Training data: a folder of images, their preprocessing, and a data order that a resumed run reproduces.

The order is a pure function of (seed, epoch): each epoch draws a permutation of the images and one flip
bit per image from its own generator, so the batch of any step is known without replaying the run.
Under torchrun every rank computes the same global batch and takes its own contiguous slice of it
(``DistributedSampler``-style sharding of each batch), so the images seen per step do not depend on the
number of ranks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ilvr_cli.diffusion.noise import hashed_seed
from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.io.files import DECODE_ERRORS, not_regular_file
from ilvr_cli.io.scan import IMAGE_EXTENSIONS as TASK_IMAGE_EXTENSIONS
from ilvr_cli.metrics.images import scan_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataOrder",
    "ImageFolder",
    "StepBatchSampler",
    "UnreadableImageWarning",
    "derive_seed",
    "load_image",
    "resize_center_crop",
    "scan_images",
]

#: The task commands' extensions, plus the Netpbm formats common in training sets.
IMAGE_EXTENSIONS = TASK_IMAGE_EXTENSIONS | {".ppm", ".pgm"}
#: What reading a broken image raises: Pillow's decode errors, and its decompression-bomb refusal (an
#: image over twice ``PIL.Image.MAX_IMAGE_PIXELS``, 179 megapixels, from its header).
_READ_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, *DECODE_ERRORS)
_NAMESPACE = "ilvr-cli/train/v1"


class UnreadableImageWarning(UserWarning):
    """An image in the training folder could not be read and is skipped."""


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from sha256 of (seed, parts): :func:`~ilvr_cli.diffusion.noise.hashed_seed` under
    training's namespace; independent streams that are stable across platforms."""
    return hashed_seed(_NAMESPACE, seed, *parts)


def scan_images(folder: str | Path) -> list[Path]:
    """Every image under ``folder``, sorted by relative path, listed by the task commands' scanner.

    The rules of :func:`ilvr_cli.metrics.images.scan_folder`: recursive, hidden entries, ``_grids/``
    contact sheets and subfolders holding a ``manifest.jsonl`` (outputs of earlier runs) skipped; with
    :data:`IMAGE_EXTENSIONS`. Files of other known image formats (gif, heic, ...), files that are not
    regular files and files whose header cannot be read are skipped with an :class:`UnreadableImageWarning`
    naming them; a missing folder or one without a readable image raises :class:`InputError`.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"training data folder not found: {root}")
    scan = scan_folder(root)
    candidates = [item.path for item in scan.items if item.path.suffix.lower() in IMAGE_EXTENSIONS]
    other = [item.rel.as_posix() for item in scan.items if item.path.suffix.lower() not in IMAGE_EXTENSIONS]
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        warnings.warn(
            f"skipping {len(other)} file(s) of image formats training does not read ({shown}); convert them "
            f"to one of {', '.join(sorted(IMAGE_EXTENSIONS))}",
            UnreadableImageWarning,
            stacklevel=2,
        )
    readable = [p for p in candidates if _header_ok(p)]
    if not readable:
        found = f"{len(candidates)} unreadable image files" if candidates else "no image files"
        raise InputError(
            f"{root} has {found} ({', '.join(sorted(IMAGE_EXTENSIONS))}); point DATA_DIR at a folder of images"
        )
    return readable


def _header_ok(path: Path) -> bool:
    """True if ``path`` is a regular file with an image header; else a warning naming it."""
    problem = not_regular_file(path)
    if problem is None:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is parsed on open; size proves it
            return True
        except _READ_ERRORS as error:
            problem = str(error)
    warnings.warn(f"skipping unreadable image {path}: {problem}", UnreadableImageWarning, stacklevel=3)
    return False


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and crop the centre (guided-diffusion ``center_crop_arr``):
    box-filter halvings while the image is at least twice the size, then one bicubic resize."""
    while min(image.size) >= 2 * size:
        width, height = image.size
        image = image.resize((width // 2, height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    width, height = image.size
    image = image.resize((round(width * scale), round(height * scale)), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """(channels, size, size) float32 in [-1, 1]."""
    with Image.open(path) as opened:
        image = opened.convert("RGB" if channels == 3 else "L")
    array = np.asarray(resize_center_crop(image, size), dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1).contiguous() if tensor.ndim == 3 else tensor[None]


class ImageFolder(torch.utils.data.Dataset):
    """Images of a folder, resized and centre-cropped; an item is ``(index, flip)`` (see :class:`DataOrder`).

    An image that fails to decode is replaced, with a warning, by the next readable one, so a batch
    always has its full size.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, channels: int = 3) -> None:
        if not paths:
            raise InputError("no training images")
        self.paths = list(paths)
        self.image_size, self.channels = int(image_size), int(channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, bool]) -> torch.Tensor:
        index, flip = item
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                image = load_image(path, self.image_size, self.channels)
            except _READ_ERRORS as error:
                warnings.warn(
                    f"skipping unreadable image {path}: {error}", UnreadableImageWarning, stacklevel=2
                )
                continue
            return image.flip(-1) if flip else image
        raise InputError(f"none of the {len(self.paths)} training images could be decoded")


class DataOrder:
    """Which images (and flips) make up the global batch of each step: a pure function of (seed, step).

    Epoch e uses a permutation and flip bits drawn from a generator seeded by (seed, "data", e); an epoch
    has ``num_images // batch_size`` steps (the last partial batch is dropped, as ``drop_last=True``).
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, flip: bool = True) -> None:
        if num_images < batch_size:
            raise UsageError(
                f"the data folder has {num_images} images, fewer than the batch size {batch_size}; "
                "lower --batch-size or add images"
            )
        self.num_images, self.batch_size, self.seed, self.flip = num_images, batch_size, seed, flip
        self.steps_per_epoch = num_images // batch_size
        self._cached: tuple[int, list[int], list[bool]] | None = None

    def epoch_plan(self, epoch: int) -> tuple[list[int], list[bool]]:
        """(permutation, flip bits) of an epoch."""
        if self._cached is None or self._cached[0] != epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
            order = torch.randperm(self.num_images, generator=generator).tolist()
            bits = torch.randint(0, 2, (self.num_images,), generator=generator).bool().tolist()
            flips = bits if self.flip else [False] * self.num_images
            self._cached = (epoch, order, flips)
        return self._cached[1], self._cached[2]

    def global_batch(self, step: int) -> list[tuple[int, bool]]:
        """The (index, flip) pairs of step ``step`` (0-based), all ranks together."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order, flips = self.epoch_plan(epoch)
        picked = order[k * self.batch_size : (k + 1) * self.batch_size]
        return [(i, flips[i]) for i in picked]

    def rank_batch(self, step: int, rank: int, world_size: int) -> list[tuple[int, bool]]:
        """This rank's contiguous slice of the global batch of ``step``."""
        local = self.batch_size // world_size
        return self.global_batch(step)[rank * local : (rank + 1) * local]


class StepBatchSampler(torch.utils.data.Sampler[list[tuple[int, bool]]]):
    """Yields this rank's batch for steps ``start, start + 1, ..., end - 1`` (a DataLoader batch sampler)."""

    def __init__(self, order: DataOrder, start: int, end: int, rank: int = 0, world_size: int = 1) -> None:
        self.order, self.start, self.end, self.rank, self.world_size = order, start, end, rank, world_size

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for step in range(self.start, self.end):
            yield self.order.rank_batch(step, self.rank, self.world_size)
