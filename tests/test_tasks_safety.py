"""Nothing silently wrong, nothing lost: what a hostile folder, a changed rerun and a killed run did to the
task commands (issue 11's findings, one test or more each; every one failed before the fix)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from typer.testing import CliRunner

from ilvr_cli.cli.app import app
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.errors import UsageError
from ilvr_cli.io import scan
from ilvr_cli.io.manifest import MANIFEST_NAME, read_records
from ilvr_cli.io.write import read_png_params
from ilvr_cli.registry.handle import ModelHandle
from ilvr_cli.tasks import TaskConfig, run_task
from ilvr_cli.tasks import runner as task_runner
from ilvr_cli.tasks import writer as task_writer
from ilvr_cli.tasks.outputs import LOCK_NAME
from test_tasks_support import (
    SIZE,
    TINY_DIFFUSION,
    read_pixels,
    smooth_image,
    stand_in_model,
    write_png,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "private_cache")
cli = CliRunner()


@pytest.fixture(scope="module")
def model(model_path: Path) -> str:
    """The tiny random checkpoint of tests/conftest.py, as ``--model`` takes it."""
    return str(model_path)


@pytest.fixture()
def lr(tmp_path: Path) -> Path:
    for i in range(3):
        write_png(tmp_path / "lr" / f"{i:03d}.png", smooth_image(i, 8))
    return tmp_path / "lr"


def invoke(*args: object):
    return cli.invoke(app, [str(a) for a in args])


def upscale(model: str, lr: Path, out: Path, *extra: object):
    return invoke("upscale", lr, out, "--model", model, "--steps", "3", "--device", "cpu", *extra)


# ----------------------------------------------------------------------- 1. a rerun with other settings
@pytest.mark.parametrize(
    ("changed", "field"),
    [
        (("--seed", "1"), "seed 0 -> 1"),
        (("--steps", "4"), "steps 3 -> 4"),
        (("--filter", "lanczos3"), "kernel cubic -> lanczos3"),
        (("--exact",), "exact False -> True"),
        (("--range", "1000:500"), "range [1000, 0] -> [1000, 500]"),
        (("--sampler", "ddim"), "sampler ddpm -> ddim"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_before_loading(
    model: str, lr: Path, tmp_path: Path, monkeypatch, changed: tuple[str, ...], field: str
) -> None:
    out = tmp_path / "out"
    assert upscale(model, lr, out).exit_code == ExitCode.OK
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    monkeypatch.setattr(ModelHandle, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    result = upscale(model, lr, out, *changed)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert field in result.stderr and "--overwrite" in result.stderr and "3 result(s)" in result.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before


def test_the_same_rerun_skips_and_overwrite_replaces(model: str, lr: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert upscale(model, lr, out).exit_code == ExitCode.OK
    again = upscale(model, lr, out, "--json")
    assert again.exit_code == ExitCode.OK and json.loads(again.stdout)["skipped"] == 3
    redone = upscale(model, lr, out, "--seed", "1", "--overwrite", "--json")
    assert redone.exit_code == ExitCode.OK and json.loads(redone.stdout)["done"] == 3
    assert read_png_params(out / "000.png")["seed"] == 1
    assert upscale(model, lr, out, "--seed", "1").exit_code == ExitCode.OK  # now they match the new seed


def test_a_file_ilvr_did_not_make_is_not_taken_for_a_result(model: str, lr: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_png(out / "001.png", smooth_image(9, SIZE))
    result = upscale(model, lr, out)
    assert result.exit_code == ExitCode.USAGE
    assert "did not make" in result.stderr and "001.png" in result.stderr


# ----------------------------------------------------------------------- 5. non-finite numbers
@pytest.mark.parametrize("eta", ["nan", "inf", "-1"])
def test_non_finite_or_negative_eta_is_a_usage_error(model: str, lr: Path, tmp_path: Path, eta: str) -> None:
    result = upscale(model, lr, tmp_path / "out", "--sampler", "ddim", f"--eta={eta}")
    assert result.exit_code == ExitCode.USAGE and "--eta must be a finite number" in result.stderr
    assert not (tmp_path / "out").exists()


class _NaNNetwork(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 6, *x.shape[2:]), float("nan"))


def test_a_non_finite_sample_fails_and_is_not_recorded_as_done(lr: Path, tmp_path: Path) -> None:
    broken = ModelHandle.from_network(_NaNNetwork(), TINY_DIFFUSION, SIZE, name="nan-net")
    config = TaskConfig(task="upscale", model="nan-net", input=str(lr), output=tmp_path / "out", steps="3")
    result = run_task(config, model=broken)
    assert result.done == [] and len(result.failed) == 3
    assert "non-finite" in result.failed[0].error
    assert not list((tmp_path / "out").glob("*.png"))
    assert all(r["status"] == "failed" for r in read_records(tmp_path / "out" / MANIFEST_NAME))


# ----------------------------------------------------------------------- 6. the summary says the N used
@pytest.mark.parametrize(("size", "factor"), [(8, 4), (4, 8)])  # N = 8 is also the preset's default
def test_summary_reports_the_factor_the_thumbnails_get(
    model: str, tmp_path: Path, size: int, factor: int
) -> None:
    for i in range(2):
        write_png(tmp_path / "lr" / f"{i}.png", smooth_image(i, size))  # on a 32 model: N = 32 / size
    result = upscale(model, tmp_path / "lr", tmp_path / "out", "--json")
    settings = json.loads(result.stdout)["settings"]
    assert settings["factor"] == factor and settings["sources"]["factor"] == "input (model size / input size)"
    assert read_png_params(tmp_path / "out" / "0.png")["factor"] == factor


def test_summary_names_both_sources_of_a_mixed_folder(model: str, tmp_path: Path) -> None:
    write_png(tmp_path / "lr" / "thumb.png", smooth_image(0, 8))  # N = 32 / 8 = 4
    write_png(tmp_path / "lr" / "full.png", smooth_image(1, 32))  # a reference at model size: the default N
    settings = json.loads(upscale(model, tmp_path / "lr", tmp_path / "out", "--json").stdout)["settings"]
    assert settings["factor"] == [4, 8]
    assert settings["sources"]["factor"].startswith("input (model size / input size) for 1 input(s); preset")


# ----------------------------------------------------------------------- 7. batch size, stated exactly
def test_batch_size_changes_at_most_one_grey_level_in_few_values(model: str, tmp_path: Path) -> None:
    """CPU convolutions round differently by batch size: the bound docs/tasks.md states ("Reproducibility")."""
    runs = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        result = invoke("sample", out, "--model", model, "--count", "3", "--steps", "5", "-b", batch)
        assert result.exit_code == ExitCode.OK, result.output
        runs[batch] = np.stack([read_pixels(p).astype(int) for p in sorted(out.glob("*.png"))])
    diff = np.abs(runs[1] - runs[3])
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 0.01  # at most 1% of the values (measured: 0-0.4%)


# ----------------------------------------------------------------------- 8. bad entries in a folder
def test_broken_and_looping_symlinks_fail_alone(model: str, lr: Path, tmp_path: Path) -> None:
    os.symlink(lr / "missing.png", lr / "dangling.png")
    os.symlink(lr / "self.png", lr / "self.png")
    result = upscale(model, lr, tmp_path / "out", "--json")
    assert result.exit_code == ExitCode.PARTIAL_FAILURE, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 3
    errors = {f["input"]: f["error"] for f in summary["failures"]}
    assert set(errors) == {"dangling.png", "self.png"}
    assert all("broken symlink" in e for e in errors.values())


def test_an_unreadable_subfolder_is_reported_and_the_rest_runs(
    model: str, lr: Path, tmp_path: Path, monkeypatch
) -> None:
    (lr / "private").mkdir()
    real_walk = os.walk

    def walk(top, onerror=None, **kwargs):  # as root, chmod 000 cannot make a folder unreadable
        for directory, subdirs, files in real_walk(top, onerror=onerror, **kwargs):
            if "private" in subdirs:
                subdirs.remove("private")
                onerror(
                    PermissionError(errno.EACCES, "Permission denied", os.path.join(directory, "private"))
                )
            yield directory, subdirs, files

    monkeypatch.setattr(scan.os, "walk", walk)
    result = upscale(model, lr, tmp_path / "out", "--json")
    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    summary = json.loads(result.stdout)
    assert summary["done"] == 3 and "cannot list this folder" in summary["failures"][0]["error"]


# ----------------------------------------------------------------------- 9. the output side
def test_an_output_that_cannot_be_created_is_refused_before_loading(
    model: str, lr: Path, tmp_path: Path, no_loading
) -> None:
    (tmp_path / "file").write_text("x")
    result = upscale(model, lr, tmp_path / "file" / "out")
    assert result.exit_code == ExitCode.USAGE and "cannot write to OUTPUT" in result.stderr


def test_disk_full_stops_with_its_code_and_counts_each_result_once(
    model: str, lr: Path, tmp_path: Path, monkeypatch
) -> None:
    real_save = task_writer.save_png
    calls = []

    def save_png(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(task_writer, "save_png", save_png)
    out = tmp_path / "out"
    result = upscale(model, lr, out, "-b", "3")
    assert result.exit_code == ExitCode.OUTPUT, result.output
    assert "No space left" in result.stderr and "1 result(s)" in result.stderr
    records = list(read_records(out / MANIFEST_NAME))
    assert [r["output"] for r in records if r["status"] == "done"] == ["000.png"]
    assert not [r for r in records if r["status"] == "failed"]
    monkeypatch.setattr(task_writer, "save_png", real_save)
    resumed = upscale(model, lr, out, "--json")
    assert json.loads(resumed.stdout)["skipped"] == 1 and json.loads(resumed.stdout)["done"] == 2


# ----------------------------------------------------------------------- 11. globs and symlink loops
def test_a_recursive_glob_does_not_follow_a_folder_symlink_loop(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for name in ("a.png", "sub/b.png"):
        write_png(root / name, smooth_image(0, 8))
    os.symlink(root, root / "sub" / "loop")
    found = scan.scan_inputs(str(root / "**" / "*.png"))
    assert [item.rel.as_posix() for item in found.items] == ["a.png", "sub/b.png"]


# ----------------------------------------------------------------------- 12. nothing usable: say so first
def test_when_no_input_fits_nothing_is_loaded_or_created(model: str, tmp_path: Path, no_loading) -> None:
    for i in range(2):
        write_png(tmp_path / "lr" / f"{i}.png", smooth_image(i, 12))  # 12 does not divide 32
    result = upscale(model, tmp_path / "lr", tmp_path / "out", "--factor", "4")
    assert result.exit_code == ExitCode.USAGE
    assert "no input can be used" in result.stderr and "12x12" in result.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- 13. what a killed run leaves
def test_stale_temporaries_are_removed_and_the_manifest_repaired(
    model: str, lr: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert upscale(model, lr, out).exit_code == ExitCode.OK
    (out / ".001.png.abcd1234.tmp").write_bytes(b"half a png")
    manifest = out / MANIFEST_NAME
    kept = [line for line in manifest.read_text().splitlines() if '"output":"002.png"' not in line]
    manifest.write_text("\n".join(kept) + "\n")  # killed between the PNG's rename and its manifest line
    (out / "000.png").unlink()
    result = upscale(model, lr, out, "--json")
    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout)["done"] == 1  # only the missing 000.png is made again
    assert not list(out.glob(".*.tmp"))
    done = [r for r in read_records(manifest) if r["status"] == "done"]
    assert sorted({r["output"] for r in done}) == ["000.png", "001.png", "002.png"]
    assert [r.get("repaired") for r in done if r["output"] == "002.png"] == [True]


def test_a_second_run_on_the_same_output_is_refused(model: str, lr: Path, tmp_path: Path, no_loading) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / LOCK_NAME)):  # another run holds OUTPUT
        result = upscale(model, lr, out)
    assert result.exit_code == ExitCode.USAGE and "another ilvr run is writing to" in result.stderr
    assert not list(out.glob("*.png")) and not (out / MANIFEST_NAME).exists()


def test_ctrl_c_says_how_to_continue(model: str, lr: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(task_runner, "run_task", interrupted)
    result = upscale(model, lr, tmp_path / "out")
    assert result.exit_code == ExitCode.INTERRUPTED
    assert "rerun the same command to continue" in result.stderr


# ----------------------------------------------------------------------- 14. messages that mislead
def test_a_fifo_is_not_an_empty_file(model: str, lr: Path, tmp_path: Path) -> None:
    os.mkfifo(lr / "pipe.png")
    result = upscale(model, lr, tmp_path / "out", "--json")
    failures = json.loads(result.stdout)["failures"]
    assert [f["input"] for f in failures] == ["pipe.png"] and "not a regular file" in failures[0]["error"]


def test_sizes_are_width_by_height(model: str, tmp_path: Path) -> None:
    write_png(tmp_path / "in" / "wide.png", np.zeros((40, 64, 3), dtype=np.uint8))  # 64 wide, 40 high
    result = invoke("translate", tmp_path / "in", tmp_path / "out", "--model", model, "--device", "cpu")
    assert result.exit_code == ExitCode.USAGE and "64x40 but the model is 32x32" in result.stderr


@pytest.mark.parametrize("steps", ["0", "ddim0"])
def test_zero_steps_is_a_plain_usage_error(
    model: str, lr: Path, tmp_path: Path, steps: str, no_loading
) -> None:
    result = invoke("upscale", lr, tmp_path / "out", "--model", model, "--steps", steps)
    assert result.exit_code == ExitCode.USAGE and "keeps no" in result.stderr


def test_stand_in_is_still_resumable_after_all_this(lr: Path, tmp_path: Path) -> None:
    """The library path with a caller's model: the recipe check compares the caller's model name too."""
    config = TaskConfig(task="upscale", model="stand-in", input=str(lr), output=tmp_path / "out", steps="3")
    assert len(run_task(config, model=stand_in_model()).done) == 3
    assert len(run_task(config, model=stand_in_model()).skipped) == 3
    with pytest.raises(UsageError, match="seed 0 -> 5"):
        run_task(config.replace(seed=5), model=stand_in_model())
