"""OUTPUT as a store that a rerun continues: what an existing result may be reused for, kept consistent.

A rerun skips the outputs that exist. That is only right if they were made the way this run would make
them, so before any model is loaded:

- **recipe check**: every existing output's recorded parameters (its manifest line, else its PNG's own
  ``ilvr-cli`` chunk) are compared with this run's on the fields that decide its pixels
  (:data:`RECIPE_FIELDS`); any difference is a :class:`~ilvr_cli.errors.UsageError` that lists the fields
  and says what to do (``--overwrite``, or another OUTPUT). ``--batch-size`` is not among them
  (docs/tasks.md, "Reproducibility").
- **lock**: one run writes to an OUTPUT at a time (``OUTPUT/.ilvr.lock``, an OS file lock that dies with
  its process); a second one is refused with a clear message instead of redoing the same work.
- **cleanup**: hidden ``.NAME.XXXX.tmp`` files left by a run that was killed mid-write are removed.
- **repair**: a PNG whose run was killed between its rename and its manifest line gets the line back from
  the parameters inside the PNG, so the manifest and the images agree again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock, Timeout

from ilvr_cli.errors import UsageError
from ilvr_cli.io.manifest import append_record, read_records
from ilvr_cli.io.write import read_png_params
from ilvr_cli.tasks.plan import TaskPlan, WorkUnit, recipe

#: The recorded parameters that decide an output's pixels (given its input and its sample key).
RECIPE_FIELDS = (
    "task",
    "model",
    "seed",
    "steps",
    "factor",
    "kernel",
    "exact",
    "range",
    "sampler",
    "eta",
    "precision",
    "device",
    "fit",
)
#: A planned value that is not known before the model loads (not compared).
UNKNOWN = object()
LOCK_NAME = ".ilvr.lock"


def recorded_params(manifest: Path) -> dict[str, dict[str, Any]]:
    """Output path -> the parameters of its latest ``done`` manifest line."""
    found: dict[str, dict[str, Any]] = {}
    for record in read_records(manifest):
        if record.get("status") == "done" and isinstance(record.get("output"), str):
            found[record["output"]] = dict(record.get("params") or {})
    return found


def _png_params(path: Path) -> dict[str, Any]:
    try:
        return read_png_params(path)
    except (OSError, ValueError, SyntaxError):
        return {}


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def check_existing_outputs(
    output_dir: Path, manifest: Path, planned: Mapping[PurePosixPath, Mapping[str, Any]]
) -> None:
    """Refuse to reuse existing outputs made with other settings (module docstring).

    ``planned``: for each output that exists, the recipe values this run would record for it.
    """
    if not planned:
        return
    recorded = recorded_params(manifest)
    differing: dict[str, tuple[Any, Any]] = {}
    mismatched: list[str] = []
    foreign: list[str] = []
    for output, wanted in sorted(planned.items()):
        name = output.as_posix()
        have = recorded.get(name) or _png_params(output_dir / output)
        if not have:
            foreign.append(name)
            continue
        fields = [
            f for f in RECIPE_FIELDS if f in wanted and wanted[f] is not UNKNOWN and have.get(f) != wanted[f]
        ]
        if fields:
            mismatched.append(name)
            for f in fields:
                differing.setdefault(f, (have.get(f), wanted[f]))
    if mismatched:
        changes = "; ".join(f"{f} {_show(old)} -> {_show(new)}" for f, (old, new) in differing.items())
        raise UsageError(
            f"OUTPUT {output_dir} holds {len(mismatched)} result(s) made with other settings ({changes}; "
            f"e.g. {mismatched[0]}): rerun with --overwrite to replace them, or choose another OUTPUT"
        )
    if foreign:
        raise UsageError(
            f"OUTPUT {output_dir} holds {len(foreign)} file(s) named like this run's results that ilvr-cli "
            f"did not make (e.g. {foreign[0]}): move them away, use --overwrite, or choose another OUTPUT"
        )


@dataclass
class OutputLock:
    """``OUTPUT/.ilvr.lock``, held for the whole run (:func:`lock_output`)."""

    lock: FileLock

    def release(self) -> None:
        self.lock.release()


def lock_output(output_dir: Path) -> OutputLock:
    """Create OUTPUT and take its lock (before the model loads), or raise a :class:`UsageError` if another
    run holds it or the folder cannot be written."""
    lock = FileLock(str(output_dir / LOCK_NAME), timeout=0)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise UsageError(
            f"another ilvr run is writing to {output_dir}; wait for it to finish (then rerun to continue), "
            "or choose another OUTPUT"
        ) from None
    except OSError as error:
        raise UsageError(
            f"cannot write to OUTPUT {output_dir}: {error.strerror or error}; choose a folder you can write to"
        ) from None
    return OutputLock(lock)


def remove_stale_temporaries(output_dir: Path) -> int:
    """Delete the hidden ``.NAME.XXXX.tmp`` files of writes that never finished (call with the lock held)."""
    removed = 0
    for directory, _subdirs, files in os.walk(output_dir):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    (Path(directory) / name).unlink()
                    removed += 1
                except OSError:
                    pass
    return removed


def repair_manifest(
    output_dir: Path, manifest: Path, outputs: Iterable[tuple[PurePosixPath, int, str]]
) -> int:
    """Give each existing output PNG without a ``done`` line one, from its own parameters (call with the
    lock held). ``outputs``: (output path, sample index, noise key) of this run's units."""
    recorded = recorded_params(manifest)
    repaired = 0
    for output, k, key in outputs:
        name = output.as_posix()
        path = output_dir / output
        if name in recorded or not path.is_file():
            continue
        params = _png_params(path)
        if not params:
            continue  # not ours: check_existing_outputs names it
        record = {
            "status": "done",
            "output": name,
            "input": params.get("input"),
            "sample": k,
            "key": key,
            "rank": 0,
            "params": params,
            "repaired": True,
        }
        append_record(manifest, record)
        repaired += 1
    return repaired


def planned_recipe(plan: TaskPlan, unit: WorkUnit) -> dict[str, Any]:
    """What ``plan`` will record for ``unit`` (the fields a rerun compares), known before the model loads."""
    factor: Any = None if unit.item is None else plan.input_factors.get(unit.label, UNKNOWN)
    return recipe(plan.config, plan.model.name, plan.settings, plan.device, factor)


def check_plan_outputs(plan: TaskPlan) -> None:
    """:func:`check_existing_outputs` for the outputs of ``plan`` that exist."""
    if not plan.output_dir.is_dir():
        return
    existing = [u for u in plan.units if (plan.output_dir / u.output).exists()]
    check_existing_outputs(
        plan.output_dir, plan.manifest_path, {u.output: planned_recipe(plan, u) for u in existing}
    )


def prepare_output_dir(plan: TaskPlan, note: Callable[[str], None]) -> OutputLock:
    """Lock OUTPUT, remove a killed run's temporary files and repair the manifest; ``note`` says what was
    done. The lock is held until the caller releases it."""
    lock = lock_output(plan.output_dir)
    removed = remove_stale_temporaries(plan.output_dir)
    if removed:
        note(f"removed {removed} temporary file(s) left by an interrupted run")
    units = ((u.output, u.k, u.key) for u in plan.units)
    repaired = repair_manifest(plan.output_dir, plan.manifest_path, units)
    if repaired:
        note(f"added {repaired} missing manifest line(s) from the images' own parameters")
    return lock
