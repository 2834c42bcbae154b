"""INPUT -> the images to process: a file, a folder (recursive) or a glob, each with its relative path.

Outputs mirror the relative paths (``face/001.png`` -> ``OUT/face/001.png``), so the relative path is
what names an image everywhere: in output names, the manifest, and the noise key of its samples.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from ilvr_cli.errors import UsageError
from ilvr_cli.io.manifest import MANIFEST_NAME

#: Read from folders, matched case-insensitively.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

#: Image formats found in folders that we do not read: listed as failures (named in a warning), not ignored.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {
        ".gif", ".svg", ".heic", ".heif", ".avif", ".psd", ".ico", ".jp2", ".j2k", ".jxl", ".tga",
        ".ppm", ".pgm", ".pbm", ".pnm", ".exr", ".hdr", ".dng", ".cr2", ".nef", ".arw", ".raw", ".xcf",
    }
)  # fmt: skip

_GLOB_CHARS = frozenset("*?[")

#: The contact-sheet folder the task commands write inside OUTPUT (``--grid``): never read as inputs.
GRID_DIR = "_grids"

InputKind = Literal["file", "folder", "glob"]


@dataclass(frozen=True)
class InputItem:
    """One input file: its path and its path relative to the input root (POSIX, used for naming)."""

    path: Path
    rel: PurePosixPath

    @property
    def supported(self) -> bool:
        return self.path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class InputSet:
    """The images of INPUT, sorted by relative path; ``ignored`` holds files that are not images."""

    spec: str
    root: Path
    kind: InputKind
    items: tuple[InputItem, ...]
    ignored: tuple[Path, ...] = field(default=())
    #: Folders that could not be listed (permission denied, ...): named in a warning, the rest still runs.
    unreadable: tuple[Path, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.items)


def is_glob(spec: str) -> bool:
    """True when ``spec`` holds a glob wildcard (``*``, ``?``, ``[``) and is not an existing path."""
    return any(c in spec for c in _GLOB_CHARS) and not Path(spec).exists()


def glob_root(spec: str) -> Path:
    """The longest leading part of a glob without wildcards: ``a/b/*/c.png`` -> ``a/b``."""
    parts: list[str] = []
    for part in Path(spec).parts:
        if any(c in part for c in _GLOB_CHARS):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _hidden(rel: PurePosixPath) -> bool:
    """Hidden files and folders (``.DS_Store``, our own ``.name.tmp`` files while they are written)."""
    return any(part.startswith(".") for part in rel.parts)


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def _classify(
    paths: list[Path], root: Path, exclude: Path | None
) -> tuple[tuple[InputItem, ...], tuple[Path, ...]]:
    """Split candidate files into images (supported or known-unsupported formats) and ignored others."""
    items: list[InputItem] = []
    ignored: list[Path] = []
    for path in paths:
        absolute = path.absolute()
        rel = PurePosixPath(absolute.relative_to(root).as_posix())
        if _hidden(rel) or _inside(absolute, exclude):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS or suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
            items.append(InputItem(absolute, rel))
        else:
            ignored.append(absolute)
    items.sort(key=lambda item: item.rel.as_posix())
    return tuple(items), tuple(sorted(ignored))


def _holds_manifest(folder: Path) -> bool:
    try:
        return (folder / MANIFEST_NAME).is_file()
    except OSError:  # unreadable: os.walk reports it when it tries to list it
        return False


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every file under ``folder``, following no symlinked folders (no cycles), skipping hidden folders and
    subfolders that hold an ilvr manifest (the outputs of earlier runs, e.g. ``photos/a-upscale/``) or are
    contact sheets (``_grids``); and the folders that could not be listed."""
    found: list[Path] = []
    unreadable: list[Path] = []

    def report(error: OSError) -> None:
        unreadable.append(Path(error.filename) if error.filename else folder)

    for directory, subdirs, files in os.walk(folder, onerror=report):
        here = Path(directory)
        subdirs[:] = [
            d for d in subdirs if not d.startswith(".") and d != GRID_DIR and not _holds_manifest(here / d)
        ]
        found.extend(here / name for name in files)
    return found, unreadable


def _under_symlinked_folder(path: Path, root: Path) -> bool:
    """True when a folder between ``root`` and ``path`` is a symlink: ``**`` would follow it, possibly
    round a loop (the folder walk follows none either)."""
    try:
        parents = path.absolute().relative_to(root).parents
    except ValueError:
        return False
    return any((root / parent).is_symlink() for parent in parents if parent != Path("."))


def scan_inputs(spec: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None) -> InputSet:
    """The images INPUT names: a file, a folder (recursive) or a glob (``**`` allowed).

    Folders yield files whose extension is an image extension (:data:`IMAGE_EXTENSIONS`, or a known image
    format we do not read, which then fails with a message instead of being silently skipped); other
    files are listed in ``ignored``. Hidden files, anything under ``exclude`` (the output folder, when it
    lies inside the input) and subfolders holding a ``manifest.jsonl`` (earlier outputs) are skipped. A missing INPUT or one with no images is a :class:`UsageError`.
    """
    text = os.fspath(spec)
    excluded = Path(exclude).absolute() if exclude is not None else None
    path = Path(text).expanduser()
    if path.is_file():
        root = path.absolute().parent
        item = InputItem(path.absolute(), PurePosixPath(path.name))
        return InputSet(text, root, "file", (item,))
    unreadable: list[Path] = []
    if path.is_dir():
        root = path.absolute()
        files, unreadable = _walk(root)
        items, ignored = _classify(files, root, excluded)
        kind: InputKind = "folder"
    elif is_glob(text):
        root = glob_root(os.path.expanduser(text)).absolute()
        matches = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
        if "**" in text:
            matches = [p for p in matches if not _under_symlinked_folder(p, root)]
        items, ignored = _classify([p for p in matches if p.is_file() or p.is_symlink()], root, excluded)
        kind = "glob"
    else:
        raise UsageError(f"input {text} does not exist")
    if not items:
        what = "matches" if kind == "glob" else "is under"
        raise UsageError(
            f"no image {what} {text} (extensions: {', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})"
        )
    return InputSet(text, root, kind, items, ignored, tuple(sorted(set(unreadable))))
