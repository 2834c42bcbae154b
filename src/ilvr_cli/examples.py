"""The example inputs shipped inside the package, and copying them out where a user can run a task on them.

Each folder of ``ilvr_cli/data/examples/`` is one example set (``digits``: ten 32x32 digits for the built-in
``demo`` model with their 8x8 ``lr8/`` and 4x4 ``lr4/`` thumbnails, and a README.md with their source and
licence). They are package data, so a plain install of the wheel has them: ``ilvr examples DEST`` copies
each set to ``DEST/<set>/`` (:func:`copy_examples`).

Copying never loses a user's file: a file that is already there with the same bytes is left alone, and
one with other bytes is an error unless ``overwrite`` is given; every conflict is found before anything is
written. Each file is written atomically (:mod:`ilvr_cli.atomic`). The package data is read through
:mod:`importlib.resources`, so it works from a zip too. No torch, numpy or PIL here.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ilvr_cli.atomic import atomic_write
from ilvr_cli.errors import OutputError, UsageError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["CopiedSet", "ExampleSet", "copy_examples", "example_sets", "examples_root"]

#: Where the sets live inside the package.
EXAMPLES_DIR = "data/examples"


def _join(folder: Traversable, relative: str) -> Traversable:
    """``folder / relative`` one part at a time (Python 3.10's ``joinpath`` takes one name)."""
    for part in relative.split("/"):
        folder = folder.joinpath(part)
    return folder


def examples_root() -> Traversable:
    """The folder of the example sets inside the installed package."""
    return _join(resources.files("ilvr_cli"), EXAMPLES_DIR)


def _is_shipped(entry: Traversable) -> bool:
    return not entry.name.startswith(".") and entry.name != "__pycache__"


def _walk(folder: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    """Every file under ``folder`` as (relative POSIX path, resource), hidden files skipped."""
    found: list[tuple[str, Traversable]] = []
    for entry in folder.iterdir():
        if not _is_shipped(entry):
            continue
        if entry.is_dir():
            found += _walk(entry, f"{prefix}{entry.name}/")
        elif entry.is_file():
            found.append((f"{prefix}{entry.name}", entry))
    return found


def _title(readme: Traversable) -> str:
    """The first Markdown heading of a set's README.md, else ''."""
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


@dataclass(frozen=True)
class ExampleSet:
    """One example set: its name (the folder it is copied to), its README title and its files."""

    name: str
    title: str
    #: Relative POSIX paths inside the set, sorted.
    files: tuple[str, ...]
    resource: Traversable = field(repr=False, compare=False)

    def read(self, relative: str) -> bytes:
        """The shipped bytes of one file of the set."""
        return _join(self.resource, relative).read_bytes()


def example_sets() -> list[ExampleSet]:
    """The example sets shipped with ilvr-cli, by name."""
    root = examples_root()
    sets = []
    for folder in sorted(root.iterdir(), key=lambda entry: entry.name):
        if not (_is_shipped(folder) and folder.is_dir()):
            continue
        files = tuple(sorted(relative for relative, _ in _walk(folder)))
        readme = folder.joinpath("README.md")
        title = _title(readme) if readme.is_file() else ""
        sets.append(ExampleSet(name=folder.name, title=title, files=files, resource=folder))
    return sets


@dataclass(frozen=True)
class CopiedSet:
    """What :func:`copy_examples` did with one set: each file written new, left alone (already there with
    the same bytes) or replaced (other bytes, with ``overwrite``)."""

    name: str
    title: str
    folder: Path
    written: tuple[str, ...]
    unchanged: tuple[str, ...]
    replaced: tuple[str, ...]

    @property
    def files(self) -> int:
        return len(self.written) + len(self.unchanged) + len(self.replaced)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "folder": str(self.folder),
            "files": self.files,
            "written": list(self.written),
            "unchanged": list(self.unchanged),
            "replaced": list(self.replaced),
        }


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _state(target: Path, content: bytes) -> str:
    """``missing``, ``same`` or ``different``: how ``target`` compares with ``content``.

    A UsageError when something that is not a file (a folder, a FIFO, a device) stands at ``target`` or
    at one of its parents (nothing can be written there, with or without ``--overwrite``); an OutputError
    when it cannot be read.
    """
    for parent in reversed(target.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            raise UsageError(f"cannot copy the examples to {target}: {parent} exists and is not a folder")
    if not os.path.lexists(target):
        return "missing"
    if target.is_dir() or (target.exists() and not target.is_file()):
        raise UsageError(f"cannot copy the examples: {target} exists and is not a regular file")
    if not target.exists():  # a broken symlink: replacing it loses nothing of the user's
        return "different"
    try:
        if target.stat().st_size != len(content):
            return "different"
        return "same" if target.read_bytes() == content else "different"
    except OSError as error:
        raise OutputError(f"cannot read {target} to compare it with the example: {_reason(error)}") from None


def copy_examples(destination: str | os.PathLike[str], *, overwrite: bool = False) -> list[CopiedSet]:
    """Copy every example set to ``destination/<set name>/`` and say what was done with each file.

    Files already there with the same bytes are left alone, so a second call writes nothing. A file there
    with other bytes raises :class:`~ilvr_cli.errors.UsageError` naming it, before anything is written,
    unless ``overwrite`` (then it is replaced). Each file is written atomically (temporary name, then
    rename); a write that fails (no space, read-only, no permission) raises
    :class:`~ilvr_cli.errors.OutputError`, and the files written before it stay.
    """
    dest = Path(destination)
    sets = example_sets()
    if not sets:
        raise OutputError(f"no example sets in the installed package ({EXAMPLES_DIR}): reinstall ilvr-cli")
    plan: list[tuple[ExampleSet, list[tuple[str, bytes, str]]]] = []
    conflicts: list[Path] = []
    for example in sets:
        files = []
        for relative in example.files:
            content = example.read(relative)
            target = dest / example.name / relative
            state = _state(target, content)
            if state == "different":
                conflicts.append(target)
            files.append((relative, content, state))
        plan.append((example, files))
    if conflicts and not overwrite:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise UsageError(
            f"{conflicts[0]} exists and differs from the example{more}: nothing was copied; use "
            f"--overwrite to replace {'them' if more else 'it'}, or choose another folder"
        )
    done = []
    for example, files in plan:
        folder = dest / example.name
        outcome: dict[str, list[str]] = {"missing": [], "same": [], "different": []}
        for relative, content, state in files:
            if state != "same":
                _write(folder / relative, content)
            outcome[state].append(relative)
        done.append(
            CopiedSet(
                name=example.name,
                title=example.title,
                folder=folder,
                written=tuple(outcome["missing"]),
                unchanged=tuple(outcome["same"]),
                replaced=tuple(outcome["different"]),
            )
        )
    return done


def _write(target: Path, content: bytes) -> None:
    def write(handle: BinaryIO) -> None:
        handle.write(content)

    try:
        atomic_write(target, write)
    except OSError as error:
        hint = " (disk full)" if error.errno == errno.ENOSPC else ""
        raise OutputError(f"cannot write {target}: {_reason(error)}{hint}") from None
