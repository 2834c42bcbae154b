"""Atomic writes: all or nothing, and the permissions of a normally created file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ilvr_cli.atomic import atomic_write, atomic_write_path, atomic_write_text


def test_written_file_gets_umask_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"previous")

    def crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_path(target, crash)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_handle_style_writer_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "y.bin"
    target.write_bytes(b"old")
    atomic_write(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new"
