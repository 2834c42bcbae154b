"""``ilvr train`` on hostile inputs: which files the data folder holds, broken files in it (each one a
skipped item named in a warning), a missing DATA_DIR and a device that is not here (usage errors)."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ilvr_cli.cli.app import app
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.training.data import ImageFolder, UnreadableImageWarning, load_image, scan_images
from training_helpers import image_folder, tiny_config_json

runner = CliRunner()
FAST = ["--batch-size", "4", "--workers", "0", "--sample-every", "0", "--log-every", "1", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png_bytes(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (the data stays 1x1: a bomb-like header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_config_json(tmp_path_factory.mktemp("cfg") / "tiny.json"))


def _broken_files(folder: Path) -> list[str]:
    """A bomb header, a truncated PNG, an empty file and a GIF among good images; their names."""
    (folder / "huge.png").write_bytes(png_bytes(30_000, 30_000))
    whole = _png(folder / "whole.png", 99).read_bytes()
    (folder / "whole.png").unlink()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "anim.gif").write_bytes(b"GIF89a")
    names = ["huge.png", "zero.png", "anim.gif"]  # cut.png has a good header: it fails when decoded
    if sys.platform == "linux":
        os.mkfifo(folder / "pipe.png")  # opening it to read the header would block forever
        names.append("pipe.png")
    return names


# --------------------------------------------------------------------------------------- the data scan
def test_scan_skips_contact_sheets_and_earlier_outputs(tmp_path: Path) -> None:
    for name in ["a.png", "sub/b.png", "_grids/a.png", "sub/_grids/b.png", "old-run/x.png", ".hidden/y.png"]:
        _png(tmp_path / name)
    (tmp_path / "manifest.jsonl").write_text("")  # the folder itself is an output folder: still read
    (tmp_path / "old-run" / "manifest.jsonl").write_text("")  # an earlier output inside it: skipped
    found = [p.relative_to(tmp_path.absolute()).as_posix() for p in scan_images(tmp_path)]
    assert found == ["a.png", "sub/b.png"]


def test_bad_files_in_the_data_are_skipped_each_by_name(tmp_path: Path) -> None:
    for k in range(2):
        _png(tmp_path / f"{k}.png", k)
    names = _broken_files(tmp_path)
    with pytest.warns(UnreadableImageWarning) as caught:
        found = scan_images(tmp_path)
    assert [p.name for p in found] == ["0.png", "1.png", "cut.png"]
    messages = " ".join(str(w.message) for w in caught)
    for name in names:
        assert name in messages
    assert "decompression bomb" in messages and "empty file" in messages


def test_an_image_that_fails_to_decode_as_a_bomb_is_replaced_by_the_next(tmp_path: Path) -> None:
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_bytes(30_000, 30_000))
    good = _png(tmp_path / "good.png")
    dataset = ImageFolder([bomb, good], image_size=8)
    with pytest.warns(UnreadableImageWarning, match="huge.png"):
        item = dataset[(0, False)]
    torch.testing.assert_close(item, load_image(good, 8, 3))


def test_training_runs_past_broken_files_and_names_them(tmp_path: Path, preset: str) -> None:
    data = image_folder(tmp_path / "data", count=3)  # + cut.png: every batch of 4 holds all four
    names = _broken_files(data)
    result = runner.invoke(
        app, ["train", str(data), "-o", str(tmp_path / "run"), "-p", preset, "--steps", "2", *FAST]
    )
    assert result.exit_code == 0, result.output
    for name in [*names, "cut.png"]:
        assert name in result.output


# ------------------------------------------------------------------------------------- usage errors
def test_a_missing_or_non_folder_data_dir_is_a_usage_error(tmp_path: Path, preset: str) -> None:
    missing = runner.invoke(app, ["train", str(tmp_path / "nope"), "-o", str(tmp_path / "r"), "-p", preset])
    assert missing.exit_code == ExitCode.USAGE, missing.output
    assert "does not exist" in missing.output
    file = _png(tmp_path / "a.png")
    not_folder = runner.invoke(app, ["train", str(file), "-o", str(tmp_path / "r"), "-p", preset])
    assert not_folder.exit_code == ExitCode.USAGE, not_folder.output
    assert "is not a folder" in not_folder.output


def test_a_device_that_is_not_here_is_a_usage_error(
    tmp_path: Path, preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    data = image_folder(tmp_path / "data", count=4)
    args = ["train", str(data), "-o", str(tmp_path / "r"), "-p", preset, *FAST[:-2]]
    result = runner.invoke(app, [*args, "--device", "mps"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "MPS is not available" in result.output
    result = runner.invoke(app, [*args, "--device", "xpu"])
    assert result.exit_code == ExitCode.USAGE, result.output
