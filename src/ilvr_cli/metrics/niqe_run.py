"""NIQE of an image or of a folder of images: the pipeline behind ``ilvr niqe``.

:func:`niqe_inputs` lists what to score; :func:`score_niqe` scores each file. In a folder, an image that
cannot be scored (unreadable, unsupported format, too small, out of memory) is recorded as failed and the
others are scored; a single file that cannot be scored is an error. :class:`NIQERun` holds the scores,
the failures, their mean and standard deviation, and writes them as CSV.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ilvr_cli.errors import InputError, UsageError
from ilvr_cli.metrics import niqe as niqelib
from ilvr_cli.metrics.images import DEFAULT_MAX_PIXELS, scan_folder, unsupported_reason
from ilvr_cli.metrics.progress import MetricProgress, NoProgress


@dataclass(frozen=True)
class NIQEInput:
    """One file to score: its name (relative path in a folder), path, and why it cannot be scored (or None)."""

    name: str
    path: Path
    unsupported: str | None = None


@dataclass(frozen=True)
class NIQEInputs:
    """The files under ``paths`` (a file stands for itself, a folder for its images). With one path, a
    folder's images are named by their path inside it; with several, by the path as given joined with it."""

    paths: tuple[Path, ...]
    files: tuple[NIQEInput, ...]
    #: One file alone: its failure is the command's error (in a set of images, one failure is skipped).
    single_file: bool

    @property
    def path(self) -> Path:
        return self.paths[0]


@dataclass
class NIQERun:
    """Scores and failures by name, in the order scored."""

    paths: tuple[Path, ...]
    scores: dict[str, float]
    failed: dict[str, str]
    #: Files tried (scored or failed).
    total: int

    @property
    def mean(self) -> float | None:
        """Mean of the scores; None when no image could be scored."""
        values = list(self.scores.values())
        return sum(values) / len(values) if values else None

    @property
    def std(self) -> float | None:
        """Population standard deviation of the scores; None when no image could be scored."""
        mean = self.mean
        if mean is None:
            return None
        return math.sqrt(sum((v - mean) ** 2 for v in self.scores.values()) / len(self.scores))

    def to_dict(self) -> dict[str, object]:
        """``ilvr niqe --json``: ``path`` (one path) or ``paths`` (several), count, mean, std (null when
        nothing could be scored), scores, failed."""
        where: dict[str, object] = (
            {"path": str(self.paths[0])} if len(self.paths) == 1 else {"paths": [str(p) for p in self.paths]}
        )
        return {
            **where,
            "count": len(self.scores),
            "mean": self.mean,
            "std": self.std,
            "scores": self.scores,
            "failed": self.failed,
        }

    def write_csv(self, target: Path) -> None:
        """Columns image, niqe (``repr`` of the float), error: the scores, then the failures."""
        try:
            with open(target, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "niqe", "error"])
                for name, score in self.scores.items():
                    writer.writerow([name, repr(score), ""])
                for name, message in self.failed.items():
                    writer.writerow([name, "", message])
        except OSError as error:
            raise InputError(f"cannot write {target}: {error.strerror or error}") from None


def _path_inputs(path: Path, prefix: str | None) -> list[NIQEInput]:
    """One file (anything that is not a folder: reading it says what is wrong), or a folder's images named
    by their relative path, after ``prefix`` when given (an InputError if it holds none)."""
    if not path.is_dir():
        return [NIQEInput(path.name if prefix is None else prefix, path)]
    scan = scan_folder(path)
    if not scan.items:
        raise InputError(f"no images found in {path}")
    return [
        NIQEInput(
            item.rel.as_posix() if prefix is None else f"{prefix}/{item.rel.as_posix()}",
            item.path,
            None if item.supported else unsupported_reason(item),
        )
        for item in scan.items
    ]


def niqe_inputs(paths: Path | Sequence[Path]) -> NIQEInputs:
    """The images of one or several paths (files or folders); a UsageError if one does not exist. With
    several paths each image is named by the path as given (joined with its path inside a folder)."""
    given = (Path(paths),) if isinstance(paths, (str, Path)) else tuple(Path(p) for p in paths)
    if not given:
        raise UsageError("give at least one image or folder")
    for path in given:
        if not path.exists():
            raise UsageError(f"{path} does not exist")
    several = len(given) > 1
    files = [f for p in given for f in _path_inputs(p, p.as_posix().rstrip("/") if several else None)]
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"{twice[0]} is given twice; give each image once")
    return NIQEInputs(given, tuple(files), single_file=not several and not given[0].is_dir())


def _score(file: Path, max_pixels: int) -> float:
    """``niqe_file(file)``; running out of memory on a large image is that image's failure."""
    try:
        return float(niqelib.niqe_file(file, max_pixels))
    except MemoryError:
        raise InputError(
            f"{file}: out of memory (NIQE needs about 70 bytes per pixel); shrink the image or lower "
            "--max-megapixels"
        ) from None


def score_niqe(
    inputs: NIQEInputs, max_pixels: int = DEFAULT_MAX_PIXELS, progress: MetricProgress | None = None
) -> NIQERun:
    """NIQE of each file of ``inputs`` (module docstring); the run may hold no score if every file failed."""
    progress = progress or NoProgress()
    scores: dict[str, float] = {}
    failed: dict[str, str] = {}
    progress.begin("NIQE", len(inputs.files))
    for item in inputs.files:
        try:
            if item.unsupported is not None:
                raise InputError(item.unsupported)
            scores[item.name] = _score(item.path, max_pixels)
        except InputError as error:
            if inputs.single_file:
                raise
            failed[item.name] = str(error)
            progress.skipped(item.name, str(error))
        progress.advance(1)
    return NIQERun(inputs.paths, scores, failed, len(inputs.files))


__all__ = ["NIQEInput", "NIQEInputs", "NIQERun", "niqe_inputs", "score_niqe"]
