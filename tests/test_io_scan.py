"""INPUT scanning: file, folder (recursive, case-insensitive extensions), glob; what is skipped or refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ilvr_cli.errors import UsageError
from ilvr_cli.io.scan import IMAGE_EXTENSIONS, scan_inputs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for name in ("b.PNG", "a.jpg", "sub/c.JpEg", "sub/deep/d.webp", "e.bmp", "f.TIF", "g.tiff"):
        touch(root / name)
    touch(root / "notes.txt")
    touch(root / "anim.gif")
    touch(root / ".hidden.png")
    touch(root / ".cache/x.png")
    touch(root / "out/already.png")
    return root


def test_folder_is_recursive_sorted_and_case_insensitive(tree: Path) -> None:
    found = scan_inputs(tree, exclude=tree / "out")
    rels = [i.rel.as_posix() for i in found.items]
    assert rels == ["a.jpg", "anim.gif", "b.PNG", "e.bmp", "f.TIF", "g.tiff", "sub/c.JpEg", "sub/deep/d.webp"]
    assert found.kind == "folder" and found.root == tree.absolute()
    assert [p.name for p in found.ignored] == ["notes.txt"]
    assert not next(i for i in found.items if i.rel.name == "anim.gif").supported
    assert all(i.supported for i in found.items if i.rel.name != "anim.gif")


def test_output_inside_input_is_not_scanned(tree: Path) -> None:
    assert "out/already.png" in [i.rel.as_posix() for i in scan_inputs(tree).items]
    assert "out/already.png" not in [i.rel.as_posix() for i in scan_inputs(tree, exclude=tree / "out").items]


def test_earlier_outputs_inside_the_input_are_not_scanned(tree: Path) -> None:
    touch(tree / "a-upscale" / "a.png")
    (tree / "a-upscale" / "manifest.jsonl").write_text("")
    assert "a-upscale/a.png" not in [i.rel.as_posix() for i in scan_inputs(tree).items]
    assert [i.rel.as_posix() for i in scan_inputs(tree / "a-upscale").items] == ["a.png"]  # unless asked for


def test_single_file_is_relative_to_its_folder(tree: Path) -> None:
    found = scan_inputs(tree / "sub" / "c.JpEg")
    assert found.kind == "file" and [i.rel.as_posix() for i in found.items] == ["c.JpEg"]
    assert found.root == (tree / "sub").absolute()


def test_glob_keeps_paths_relative_to_its_fixed_prefix(tree: Path) -> None:
    found = scan_inputs(str(tree / "sub" / "**" / "*.*"))
    assert found.kind == "glob" and found.root == (tree / "sub").absolute()
    assert [i.rel.as_posix() for i in found.items] == ["c.JpEg", "deep/d.webp"]


@pytest.mark.parametrize("name", ["missing", "missing/*.png"])
def test_missing_input_is_a_usage_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="does not exist|no image"):
        scan_inputs(str(tmp_path / name))


def test_folder_without_images_is_a_usage_error(tmp_path: Path) -> None:
    touch(tmp_path / "only.txt")
    with pytest.raises(UsageError, match="no image is under"):
        scan_inputs(tmp_path)


def test_extension_list_is_the_documented_one() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} == IMAGE_EXTENSIONS
