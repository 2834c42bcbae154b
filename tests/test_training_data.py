"""Training data: folder scan, preprocessing, unreadable files, and the reproducible, sharded data order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.training.data import (
    DataOrder,
    ImageFolder,
    StepBatchSampler,
    UnreadableImageWarning,
    load_image,
    resize_center_crop,
    scan_images,
)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_scan_is_recursive_sorted_and_skips_other_files(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    _png(tmp_path / "b" / "2.png", rgb)
    _png(tmp_path / "a.jpg", rgb)
    _png(tmp_path / "b" / "1.PNG", rgb)
    _png(tmp_path / ".hidden" / "x.png", rgb)
    (tmp_path / "notes.txt").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)]
    assert found == ["a.jpg", "b/1.PNG", "b/2.png"]


def test_unreadable_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    _png(tmp_path / "good.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.warns(UnreadableImageWarning, match="broken.png"):
        found = scan_images(tmp_path)
    assert [p.name for p in found] == ["good.png"]


def test_empty_or_missing_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image files"):
        scan_images(tmp_path)
    with pytest.raises(InputError, match="not found"):
        scan_images(tmp_path / "missing")
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.warns(UnreadableImageWarning), pytest.raises(InputError, match="1 unreadable"):
        scan_images(tmp_path)


def test_resize_center_crop_keeps_the_centre_of_a_wide_image() -> None:
    """A 64x16 image with three vertical bands (red | green | blue) -> 8x8: only green survives."""
    array = np.zeros((16, 64, 3), np.uint8)
    array[:, :22, 0] = 255
    array[:, 22:42, 1] = 255
    array[:, 42:, 2] = 255
    out = np.asarray(resize_center_crop(Image.fromarray(array), 8)).astype(int)
    assert out.shape == (8, 8, 3)
    assert out[:, 2:6, 1].min() > 200 and out[:, 2:6, 0].max() < 40 and out[:, 2:6, 2].max() < 40


def test_load_image_scales_to_minus_one_one_and_grey_has_one_channel(tmp_path: Path) -> None:
    array = np.array([[0, 255], [255, 0]], np.uint8)
    path = _png(tmp_path / "g.png", array)
    grey = load_image(path, 2, channels=1)
    rgb = load_image(path, 2, channels=3)
    assert grey.shape == (1, 2, 2) and rgb.shape == (3, 2, 2)
    torch.testing.assert_close(grey[0], torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
    torch.testing.assert_close(rgb, grey.expand(3, 2, 2))


def test_a_file_that_fails_to_decode_is_replaced_by_the_next(tmp_path: Path) -> None:
    good = _png(tmp_path / "1.png", np.full((4, 4, 3), 255, np.uint8))
    truncated = tmp_path / "0.png"
    truncated.write_bytes(good.read_bytes()[:40])  # a valid header, a truncated body
    dataset = ImageFolder([truncated, good], 4)
    with pytest.warns(UnreadableImageWarning, match="0.png"):
        image = dataset[(0, False)]
    torch.testing.assert_close(image, torch.ones(3, 4, 4))
    flipped = ImageFolder([_png(tmp_path / "s.png", np.array([[0, 255]], np.uint8).repeat(2, 0))], 2)[
        (0, True)
    ]
    torch.testing.assert_close(flipped[0], torch.tensor([[1.0, -1.0], [1.0, -1.0]]))


def test_every_epoch_visits_each_image_once_and_depends_on_the_seed() -> None:
    order = DataOrder(num_images=23, batch_size=5, seed=7)
    assert order.steps_per_epoch == 4
    for epoch in range(3):
        seen = [i for k in range(4) for i, _ in order.global_batch(epoch * 4 + k)]
        assert len(seen) == 20 and len(set(seen)) == 20
    epoch0 = [order.global_batch(k) for k in range(4)]
    assert epoch0 != [order.global_batch(4 + k) for k in range(4)]
    again = DataOrder(23, 5, seed=7)
    assert [again.global_batch(k) for k in range(4)] == epoch0
    assert [DataOrder(23, 5, seed=8).global_batch(k) for k in range(4)] != epoch0
    flips = [f for k in range(8) for _, f in order.global_batch(k)]
    assert 0 < sum(flips) < len(flips)
    assert not any(f for k in range(8) for _, f in DataOrder(23, 5, seed=7, flip=False).global_batch(k))


def test_ranks_take_disjoint_slices_of_the_same_global_batch() -> None:
    order = DataOrder(num_images=40, batch_size=8, seed=0)
    for step in (0, 3, 11):
        parts = [order.rank_batch(step, rank, 4) for rank in range(4)]
        assert [len(p) for p in parts] == [2, 2, 2, 2]
        assert sum(parts, []) == order.global_batch(step)
    sampler = StepBatchSampler(order, start=3, end=6, rank=1, world_size=2)
    assert list(sampler) == [order.rank_batch(s, 1, 2) for s in (3, 4, 5)] and len(sampler) == 3


def test_a_batch_larger_than_the_data_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="fewer than the batch size"):
        DataOrder(num_images=3, batch_size=4, seed=0)
