"""Running the tasks: each task's contract, determinism, resume, failure isolation, metadata and extras.

A tiny random UNet (32x32) saved with ``save_native`` and passed as a path, 10 respaced steps (5 where
only files matter); a per-pixel stand-in network where bitwise batch invariance is the point.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilvr_cli import __version__
from ilvr_cli.diffusion import Denoiser, NoiseSource, sample
from ilvr_cli.errors import UsageError
from ilvr_cli.ilvr import ILVRHook, LowPass
from ilvr_cli.io.manifest import read_records
from ilvr_cli.io.write import read_png_params, to_uint8
from ilvr_cli.tasks import TaskConfig, TaskProgress, run_task
from ilvr_cli.tasks.distributed import DistInfo
from ilvr_cli.tasks.runner import GRID_DIR, to_pixels
from test_tasks_support import (
    SIZE,
    TINY_DIFFUSION,
    oracle_model,
    psnr,
    read_pixels,
    smooth_image,
    stand_in_model,
    tiny_unet,
    to_unit,
    write_png,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "private_cache")


def run(model: Path | str, task: str, inputs: Path | None, output: Path, **kw) -> object:
    kw.setdefault("steps", "10")
    kw.setdefault("device", "cpu")
    return run_task(
        TaskConfig(
            task=task, model=str(model), input=None if inputs is None else str(inputs), output=output, **kw
        )
    )


def thumbnails(folder: Path, n: int = 3, size: int = 8) -> Path:
    for i in range(n):
        write_png(folder / "faces" / f"{i:03d}.png", smooth_image(i, size))
    return folder


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.relative_to(folder).as_posix(): read_pixels(p)
        for p in sorted(folder.rglob("*.png"))
        if GRID_DIR not in p.parts
    }


# --------------------------------------------------------------------------------------------- contracts
def test_upscale_is_the_engine_with_the_thumbnail(model_path: Path, tmp_path: Path) -> None:
    """The saved result is the engine's: ILVR on l = the input, N = 32 / 8, key "<rel>#0", then 8 bits."""
    inputs = thumbnails(tmp_path / "lr", n=1)
    run(model_path, "upscale", inputs, tmp_path / "out", exact=True)
    denoiser = Denoiser.from_loaded(tiny_unet(), TINY_DIFFUSION, steps="10")
    lowpass = LowPass(SIZE, SIZE, 4, exact=True)
    thumb = to_unit(read_pixels(inputs / "faces" / "000.png")).float()
    hook = ILVRHook(lowpass, denoiser.schedule, low_res=thumb)
    with torch.no_grad():
        x0 = sample(denoiser, NoiseSource(0, ["faces/000.png#0"]), shape=(3, SIZE, SIZE), hooks=[hook])
    assert (lowpass.down(x0) - thumb).abs().max() < 1e-5  # the contract, before saving
    saved = read_pixels(tmp_path / "out" / "faces" / "000.png")
    np.testing.assert_array_equal(saved, to_uint8(to_pixels(x0[0])))


def test_upscale_exact_matches_the_thumbnail(tmp_path: Path) -> None:
    """Full range + exact low-pass: down_N(saved result) = the input, up to 8-bit rounding (a smooth model,
    so nothing is clipped)."""
    inputs = thumbnails(tmp_path / "lr")
    result = run_task(
        TaskConfig(task="upscale", model="oracle", input=str(inputs), output=tmp_path / "out", exact=True,
                   steps="10", device="cpu"),
        model=oracle_model(),
    )  # fmt: skip
    assert sorted(result.done) == ["faces/000.png", "faces/001.png", "faces/002.png"]
    down = LowPass(SIZE, SIZE, 4).down
    for name in result.done:
        out = read_pixels(tmp_path / "out" / name)
        assert out.shape == (SIZE, SIZE, 3)
        thumb = to_unit(read_pixels(inputs / name))
        error = (down(to_unit(out)) - thumb).abs().max().item()
        assert error < 0.008, (name, error)  # 8-bit rounding: one level of 255 is 0.0078 in [-1, 1]
        assert read_png_params(tmp_path / "out" / name)["factor"] == 4  # N = 32 / 8, from the input size


def test_upscale_bicubic_beats_unconditioned(model_path: Path, tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr")
    run(model_path, "upscale", inputs, tmp_path / "out")
    run(model_path, "sample", None, tmp_path / "free", count=3)
    down = LowPass(SIZE, SIZE, 4).down
    for i in range(3):
        thumb = to_unit(read_pixels(inputs / "faces" / f"{i:03d}.png"))
        guided = psnr(down(to_unit(read_pixels(tmp_path / "out" / "faces" / f"{i:03d}.png"))), thumb)
        free = psnr(down(to_unit(read_pixels(tmp_path / "free" / f"{i:06d}.png"))), thumb)
        assert guided > free + 10, (guided, free)


def test_upscale_shrinks_model_size_inputs_by_n(tmp_path: Path) -> None:
    """A model-size input is a high-resolution reference: l = down_N(y) (Table A protocol)."""
    y = smooth_image(7, SIZE)
    write_png(tmp_path / "hr" / "x.png", y)
    run_task(
        TaskConfig(task="upscale", model="oracle", input=str(tmp_path / "hr"), output=tmp_path / "out", factor=8,
                   exact=True, steps="10", device="cpu"),
        model=oracle_model(),
    )  # fmt: skip
    out = read_pixels(tmp_path / "out" / "x.png")
    down = LowPass(SIZE, SIZE, 8).down
    assert (down(to_unit(out)) - down(to_unit(y))).abs().max().item() < 0.008
    assert (to_unit(out) - to_unit(y)).abs().max().item() > 0.05  # only the low frequencies are kept
    assert read_png_params(tmp_path / "out" / "x.png")["factor"] == 8


def test_masked_edit_keeps_the_original_outside(model_path: Path, tmp_path: Path) -> None:
    y = smooth_image(3, SIZE)
    write_png(tmp_path / "in" / "a.png", y)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2 :] = 255  # right half may change
    write_png(tmp_path / "mask.png", mask)
    run(model_path, "edit", tmp_path / "in", tmp_path / "masked", mask=tmp_path / "mask.png")
    run(model_path, "edit", tmp_path / "in", tmp_path / "free")
    masked, free = read_pixels(tmp_path / "masked" / "a.png"), read_pixels(tmp_path / "free" / "a.png")
    np.testing.assert_array_equal(masked[:, : SIZE // 2], y[:, : SIZE // 2])  # bitwise: kept
    assert np.abs(masked[:, SIZE // 2 :].astype(int) - y[:, SIZE // 2 :]).mean() > 5  # regenerated
    assert np.abs(free[:, : SIZE // 2].astype(int) - y[:, : SIZE // 2]).mean() > 5  # no mask: all changes
    assert read_png_params(tmp_path / "masked" / "a.png")["mask"] == "mask.png"


def test_mask_folder_mirrors_inputs_and_a_missing_mask_fails_that_image(
    model_path: Path, tmp_path: Path
) -> None:
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "in" / name, smooth_image(1, SIZE))
    write_png(tmp_path / "masks" / "a.jpg", np.zeros((SIZE, SIZE), np.uint8))
    result = run(model_path, "edit", tmp_path / "in", tmp_path / "out", mask=tmp_path / "masks", steps="5")
    assert result.done == ["a.png"]
    assert [f.input for f in result.failed] == ["b.png"] and "no mask" in result.failed[0].error
    np.testing.assert_array_equal(read_pixels(tmp_path / "out" / "a.png"), smooth_image(1, SIZE))


@pytest.mark.parametrize("task", ["translate", "paint2img"])
def test_full_reference_tasks_follow_the_reference(model_path: Path, tmp_path: Path, task: str) -> None:
    for i in range(2):
        write_png(tmp_path / "in" / f"{i}.png", smooth_image(10 + i, SIZE))
    run(model_path, task, tmp_path / "in", tmp_path / "out", factor=4, t_range=(1000, 0))
    run(model_path, "sample", None, tmp_path / "free", count=2)
    down = LowPass(SIZE, SIZE, 4).down
    for i in range(2):
        y = to_unit(smooth_image(10 + i, SIZE))
        guided = psnr(down(to_unit(read_pixels(tmp_path / "out" / f"{i}.png"))), down(y))
        free = psnr(down(to_unit(read_pixels(tmp_path / "free" / f"{i:06d}.png"))), down(y))
        assert guided > free + 10


def test_fit_brings_other_sizes_to_the_model(model_path: Path, tmp_path: Path) -> None:
    write_png(tmp_path / "in" / "wide.png", np.asarray(Image.fromarray(smooth_image(2, 64)).resize((64, 40))))
    with pytest.raises(UsageError, match="no input can be used: wide.png: 64x40 .* use --fit"):
        run(model_path, "translate", tmp_path / "in", tmp_path / "a", steps="5")
    assert not (tmp_path / "a").exists()  # refused before the model loads: nothing created
    for policy in ("crop", "resize", "pad"):
        result = run(model_path, "translate", tmp_path / "in", tmp_path / policy, fit=policy, steps="5")
        assert result.done == ["wide.png"] and read_pixels(tmp_path / policy / "wide.png").shape == (
            SIZE,
            SIZE,
            3,
        )


# --------------------------------------------------------------------------------------------- determinism
def test_stand_in_results_are_bitwise_independent_of_batch_size(tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr", n=3)
    runs = []
    for batch in (1, 2, 6):
        out = tmp_path / f"b{batch}"
        run_task(
            TaskConfig(task="upscale", model="stand-in", input=str(inputs), output=out, samples=2, batch_size=batch,
                       steps="10", device="cpu"),
            model=stand_in_model(),
        )  # fmt: skip
        runs.append(outputs(out))
    assert len(runs[0]) == 6
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for name in other:
            np.testing.assert_array_equal(other[name], runs[0][name])


def test_unet_pngs_are_equal_across_batch_sizes(model_path: Path, tmp_path: Path) -> None:
    """CPU convolutions may round differently per batch size; the 8-bit files come out identical anyway."""
    inputs = thumbnails(tmp_path / "lr", n=3)
    run(model_path, "upscale", inputs, tmp_path / "b1", samples=2, batch_size=1)
    run(model_path, "upscale", inputs, tmp_path / "b4", samples=2, batch_size=4)
    names = sorted(outputs(tmp_path / "b1"))
    assert len(names) == 6 and names == sorted(outputs(tmp_path / "b4"))
    for name in names:
        assert (tmp_path / "b1" / name).read_bytes() == (tmp_path / "b4" / name).read_bytes(), name


def test_sample_k_is_the_same_whatever_k_count(model_path: Path, tmp_path: Path) -> None:
    """Keys are (relative path, k): sample 0 of --samples 2 is the --samples 1 result; seeds differ."""
    inputs = thumbnails(tmp_path / "lr", n=1)
    run(model_path, "upscale", inputs, tmp_path / "one", steps="5")
    run(model_path, "upscale", inputs, tmp_path / "two", samples=2, steps="5")
    run(model_path, "upscale", inputs, tmp_path / "seed1", seed=1, steps="5")
    one = read_pixels(tmp_path / "one" / "faces" / "000.png")
    np.testing.assert_array_equal(one, read_pixels(tmp_path / "two" / "faces" / "000_0.png"))
    assert not np.array_equal(one, read_pixels(tmp_path / "two" / "faces" / "000_1.png"))
    assert not np.array_equal(one, read_pixels(tmp_path / "seed1" / "faces" / "000.png"))


def test_rank_shares_union_is_the_single_process_run(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    """RANK / WORLD_SIZE without torchrun: each rank writes its share; together they are the whole run."""
    inputs = thumbnails(tmp_path / "lr", n=3)
    run(model_path, "upscale", inputs, tmp_path / "single", steps="5")
    done = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        done.append(run(model_path, "upscale", inputs, tmp_path / "ranks", steps="5").done)
    assert done == [["faces/000.png", "faces/002.png"], ["faces/001.png"]]
    single, union = outputs(tmp_path / "single"), outputs(tmp_path / "ranks")
    assert single.keys() == union.keys()
    for name in single:
        np.testing.assert_array_equal(single[name], union[name])


# --------------------------------------------------------------------------------------------- resume
def test_rerun_skips_existing_outputs_and_overwrite_redoes_them(model_path: Path, tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr", n=3)
    out = tmp_path / "out"
    first = run(model_path, "upscale", inputs, out, steps="5")
    before = outputs(out)
    (out / "faces" / "001.png").unlink()
    (out / "faces" / ".002.png.abc.tmp").write_bytes(b"left by a crash")

    class Loads(TaskProgress):
        loaded = 0

        def model_loading(self, name: str) -> None:
            Loads.loaded += 1

    second = run_task(
        TaskConfig(
            task="upscale", model=str(model_path), input=str(inputs), output=out, steps="5", device="cpu"
        ),
        Loads(),
    )
    assert (len(first.done), second.done, second.skipped) == (
        3,
        ["faces/001.png"],
        ["faces/000.png", "faces/002.png"],
    )
    np.testing.assert_array_equal(outputs(out)["faces/001.png"], before["faces/001.png"])
    third = run_task(
        TaskConfig(
            task="upscale", model=str(model_path), input=str(inputs), output=out, steps="5", device="cpu"
        ),
        Loads(),
    )
    assert (third.done, len(third.skipped), Loads.loaded) == ([], 3, 1)  # nothing left: no model loaded
    redo = run(model_path, "upscale", inputs, out, steps="5", overwrite=True)
    assert len(redo.done) == 3 and not redo.skipped
    assert outputs(out).keys() == before.keys()


# --------------------------------------------------------------------------------------------- bad inputs
def test_bad_files_fail_alone(model_path: Path, tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr", n=1)
    bad = inputs / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    whole = (inputs / "faces" / "000.png").read_bytes()
    (bad / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.new("P", (8, 8)).save(bad / "anim.gif")
    Image.new("P", (8, 8)).save(bad / "gif-inside.png", format="GIF")
    write_png(bad / "odd.png", smooth_image(0, 5))  # 5 does not divide 32
    write_png(bad / "small.png", smooth_image(0, 2))  # N would be 16, but --factor 4 was asked for
    (bad / "notes.txt").write_text("ignored, not failed")
    result = run(model_path, "upscale", inputs, tmp_path / "out", steps="5", factor=4)
    assert result.done == ["faces/000.png"]
    errors = {f.input: f.error for f in result.failed}
    assert sorted(errors) == [f"bad/{n}" for n in sorted(
        ["zero.png", "text.jpg", "cut.png", "anim.gif", "gif-inside.png", "odd.png", "small.png"])]  # fmt: skip
    assert "empty file" in errors["bad/zero.png"]
    assert "not an image" in errors["bad/text.jpg"]
    assert "truncated or corrupt" in errors["bad/cut.png"]
    assert "unsupported image format GIF" in errors["bad/anim.gif"]
    assert "unsupported image format GIF" in errors["bad/gif-inside.png"]
    assert "use --fit" in errors["bad/odd.png"]
    assert "drop --factor" in errors["bad/small.png"]
    assert all(name.split("/")[1] in error for name, error in errors.items())  # each names its file
    failed_lines = [r for r in read_records(tmp_path / "out" / "manifest.jsonl") if r["status"] == "failed"]
    assert sorted(r["input"] for r in failed_lines) == sorted(errors)


def test_an_image_too_small_for_n_is_refused_with_fit(model_path: Path, tmp_path: Path) -> None:
    write_png(tmp_path / "in" / "tiny.png", smooth_image(0, 3))
    with pytest.raises(UsageError, match="too small for N=4"):
        run(model_path, "translate", tmp_path / "in", tmp_path / "out", fit="crop", factor=4)
    write_png(tmp_path / "in" / "fine.png", smooth_image(0, 16))  # one usable input: the run goes on
    result = run(model_path, "translate", tmp_path / "in", tmp_path / "out", fit="crop", factor=4, steps="3")
    assert result.done == ["fine.png"] and "too small for N=4" in result.failed[0].error


# --------------------------------------------------------------------------------------------- outputs
def test_metadata_and_manifest(model_path: Path, tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr", n=2)
    result = run(model_path, "upscale", inputs, tmp_path / "out", seed=7, steps="5", kernel="lanczos3")
    params = read_png_params(tmp_path / "out" / "faces" / "001.png")
    expected = {
        "tool": "ilvr-cli",
        "version": __version__,
        "task": "upscale",
        "model": str(model_path),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "input": "faces/001.png",
        "sample": 0,
        "key": "faces/001.png#0",
        "seed": 7,
        "factor": 4,
        "kernel": "lanczos3",
        "range": [1000, 0],
        "steps": "5",
        "num_steps": 5,
    }
    assert {k: params[k] for k in expected} == expected
    records = list(read_records(result.manifest))
    assert [r["output"] for r in records] == ["faces/000.png", "faces/001.png"]
    assert records[1]["params"] == params and records[1]["status"] == "done"


def test_grid_and_animation(tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr", n=2)
    run_task(
        TaskConfig(task="upscale", model="oracle", input=str(inputs), output=tmp_path / "out", samples=2,
                   batch_size=4, grid=True, animate=True, steps="10", device="cpu"),
        model=oracle_model(),
    )  # fmt: skip
    sheet = read_pixels(tmp_path / "out" / GRID_DIR / "faces" / "000_0.png")
    pad = 2
    assert sheet.shape == (
        2 * (SIZE + pad) + pad,
        4 * (SIZE + pad) + pad,
        3,
    )  # 2 inputs x (ref, phi, 2 samples)
    cell = sheet[pad : pad + SIZE, 3 * (SIZE + pad) + pad : 4 * (SIZE + pad)]
    np.testing.assert_array_equal(cell, read_pixels(tmp_path / "out" / "faces" / "000_1.png"))
    thumb = read_pixels(inputs / "faces" / "000.png")  # the reference column: the 8x8 input, 4x enlarged
    np.testing.assert_array_equal(
        sheet[pad : pad + 4, pad : pad + 4], np.broadcast_to(thumb[0, 0], (4, 4, 3))
    )
    phi = LowPass(SIZE, SIZE, 4).up(to_unit(thumb))  # the low-pass column: up_N(l)
    phi_cell = to_unit(sheet[pad : pad + SIZE, SIZE + 2 * pad : 2 * SIZE + 2 * pad])
    assert (phi_cell - phi.clamp(-1, 1)).abs().max() < 0.005
    with Image.open(tmp_path / "out" / "faces" / "001_1.gif") as gif:
        assert gif.n_frames == 10 and gif.size == (SIZE, SIZE)
        gif.seek(9)
        last = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(last - read_pixels(tmp_path / "out" / "faces" / "001_1.png")).mean() < 2  # GIF palette


def test_sample_writes_numbered_images(model_path: Path, tmp_path: Path) -> None:
    result = run(model_path, "sample", None, tmp_path / "s", count=3, steps="5", grid=True, batch_size=3)
    assert result.done == ["000000.png", "000001.png", "000002.png"]
    params = read_png_params(tmp_path / "s" / "000001.png")
    assert (params["task"], params["key"], params["factor"], params["range"]) == (
        "sample",
        "sample/000001",
        None,
        None,
    )
    assert read_pixels(tmp_path / "s" / GRID_DIR / "000000.png").shape == (SIZE + 4, 3 * (SIZE + 2) + 2, 3)


def test_progress_events_in_order(model_path: Path, tmp_path: Path) -> None:
    inputs = thumbnails(tmp_path / "lr", n=2)
    events: list[str] = []

    class Recorder(TaskProgress):
        def start(self, info):
            events.append(f"start {info.images}/{info.total_images}")

        def batch_start(self, labels, steps):
            events.append(f"batch {len(labels)} x {steps}")

        def step(self, done, steps):
            if done == steps:
                events.append("last step")

        def image_done(self, label, outputs, seconds):
            events.append(f"done {label}")

    run_task(
        TaskConfig(task="upscale", model=str(model_path), input=str(inputs), output=tmp_path / "o", steps="5",
                   batch_size=2, device="cpu"),
        Recorder(),
    )  # fmt: skip
    assert events == ["start 2/2", "batch 2 x 5", "last step", "done faces/000.png", "done faces/001.png"]


def test_dist_info_is_main() -> None:
    assert DistInfo().is_main and not DistInfo(rank=1, world_size=2).is_main
