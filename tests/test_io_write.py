"""Writing: rounding to 8 bits, atomic PNG with parameters, GIF, contact sheets, the JSON Lines manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilvr_cli.io.grid import make_grid
from ilvr_cli.io.manifest import append_record, read_records
from ilvr_cli.io.write import (
    PARAMS_KEY,
    atomic_write,
    read_png_params,
    read_png_text,
    save_gif,
    save_png,
    to_uint8,
)


def test_uint8_round_trip_through_minus_one_one_is_exact() -> None:
    u = np.arange(256, dtype=np.uint8)
    x = u.astype(np.float32) / 127.5 - 1.0  # what the sampler sees
    back = to_uint8((x + 1.0) / 2.0)
    np.testing.assert_array_equal(back, u)
    truncated = (((x + 1.0) / 2.0) * 255).astype(np.uint8)  # guided-diffusion's truncation loses some
    assert (truncated != u).any()


def test_uint8_clips() -> None:
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.0, 1.0, 1.7])), [0, 0, 255, 255])


def test_png_carries_its_parameters_and_no_temporary_file_remains(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    params = {"task": "upscale", "factor": 8, "range": [1000, 0], "key": "a/b.png#0"}
    path = save_png(tmp_path / "sub" / "x.png", pixels, params, text={"Software": "ilvr-cli test"})
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
    assert read_png_params(path) == params
    assert read_png_text(path)["Software"] == "ilvr-cli test"
    assert json.loads(read_png_text(path)[PARAMS_KEY]) == params
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"previous")

    def write_half_then_crash(handle) -> None:
        handle.write(b"half an image")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_half_then_crash)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_gif_has_every_frame_and_loops(tmp_path: Path) -> None:
    frames = [np.full((6, 6, 3), v, np.uint8) for v in (0, 100, 200)]
    path = save_gif(tmp_path / "a.gif", frames)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info.get("loop") == 0
        gif.seek(2)
        assert np.asarray(gif.convert("RGB"))[0, 0].tolist() == [200, 200, 200]


def test_grid_layout_and_pixel_repetition() -> None:
    big = np.full((4, 4, 3), 10, np.uint8)
    small = np.array([[[200, 0, 0], [0, 200, 0]], [[0, 0, 200], [50, 50, 50]]], np.uint8)
    sheet = make_grid([[big, small, big], [big]], pad=1)
    assert sheet.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    cell = sheet[1:5, 6:10]  # row 0, column 1: the 2x2 enlarged by 2
    np.testing.assert_array_equal(cell[:2, :2], np.broadcast_to(small[0, 0], (2, 2, 3)))
    np.testing.assert_array_equal(cell[2:, 2:], np.broadcast_to(small[1, 1], (2, 2, 3)))
    assert (sheet[6:10, 6:] == 255).all()  # the short second row leaves white
    assert (sheet[0] == 255).all()


def test_manifest_appends_lines_and_skips_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_record(path, {"output": "a.png", "status": "done"})
    append_record(path, {"output": "b.png", "status": "done"})
    with path.open("a") as f:
        f.write('{"output": "c.p')  # a crash in the middle of a line
    assert [r["output"] for r in read_records(path)] == ["a.png", "b.png"]
    assert list(read_records(tmp_path / "none.jsonl")) == []
