"""Planning: defaults and where they come from, names and keys, and every usage error before a model loads."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import torch

from ilvr_cli.diffusion import Schedule
from ilvr_cli.errors import ModelNotFoundError, UsageError
from ilvr_cli.ilvr import conditioned_steps
from ilvr_cli.io.scan import scan_inputs
from ilvr_cli.tasks import runner
from ilvr_cli.tasks.config import TaskConfig, parse_range
from ilvr_cli.tasks.distributed import dist_info, shard
from ilvr_cli.tasks.plan import (
    UPSCALE_DEFAULT_NOTE,
    Origin,
    build_units,
    default_output,
    plan_task,
    resolve_settings,
)
from ilvr_cli.tasks.presets import PRESETS
from test_tasks_support import SIZE, smooth_image, write_png

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    for name in ("face/001.png", "face/002.jpg", "b.png"):
        write_png(tmp_path / "in" / name, smooth_image(0, 8))
    return tmp_path / "in"


def config(**kw) -> TaskConfig:
    kw.setdefault("task", "upscale")
    return TaskConfig(**kw)


# --------------------------------------------------------------------------------------------- settings
def test_presets_follow_the_paper() -> None:
    assert PRESETS["translate"].factor == 32 and PRESETS["paint2img"].factor == 32
    assert PRESETS["edit"].factor == 8 and PRESETS["upscale"].factor == 8
    assert PRESETS["upscale"].t_range(1000) == (1000, 0)  # every step: down_N(result) follows the input
    assert PRESETS["paint2img"].t_range(1000) == (
        1000,
        500,
    )  # Fig. 5: the narrowest range that keeps semantics
    assert PRESETS["translate"].t_range(4000) == (4000, 800)  # scales with T
    assert PRESETS["sample"].t_range(1000) is None


def test_catalog_range_t_means_the_reference_codes_steps(tmp_path: Path, inputs: Path) -> None:
    """ffhq's catalog suggests range_t = 20 at 100 steps (ilvr_adm): the same steps are refined."""
    plan = plan_task(
        config(
            task="translate", model="ffhq", input=str(inputs), cache_dir=tmp_path, device="cpu", fit="resize"
        )
    )
    assert plan.settings.factor == 32 and plan.settings.sources["factor"] is Origin.MODEL
    assert plan.settings.steps == "100" and plan.settings.sources["range"] is Origin.MODEL
    assert plan.settings.to_dict()["sources"] == {
        "steps": "catalog",
        "factor": "catalog",
        "range": "catalog",
        "precision": "auto (ILVR_PRECISION=fp32)",  # tests/conftest.py pins what auto means
    }
    schedule = Schedule.named("linear", 1000).respace("100")
    ours = conditioned_steps(schedule, plan.settings.t_range, "paper")
    assert ours == conditioned_steps(schedule, 20, "ilvr_adm")
    assert sum(ours) == 79


def test_options_win_over_catalog_and_preset(tmp_path: Path, inputs: Path) -> None:
    plan = plan_task(
        config(
            task="translate",
            model="ffhq",
            input=str(inputs),
            cache_dir=tmp_path,
            factor=64,
            t_range=(1000, 300),
            steps="50",
            device="cpu",
            fit="resize",  # the 8x8 inputs are refused for a 256 model without it
        )
    )
    assert (plan.settings.factor, plan.settings.t_range, plan.settings.steps) == (64, (1000, 300), "50")
    assert {k: v for k, v in plan.settings.sources.items() if k != "precision"} == dict.fromkeys(
        ("steps", "factor", "range"), "option"
    )


def test_a_path_model_uses_the_preset(model_path: Path, inputs: Path) -> None:
    plan = plan_task(
        config(task="paint2img", model=str(model_path), input=str(inputs), device="cpu", fit="resize")
    )
    assert plan.model.image_size == SIZE
    assert (plan.settings.factor, plan.settings.t_range, plan.settings.steps) == (32, (1000, 500), "100")
    assert plan.settings.sources["factor"] is Origin.PRESET


def test_range_all_is_clamped_to_the_models_T(model_path: Path, inputs: Path) -> None:
    plan = plan_task(
        config(model=str(model_path), input=str(inputs), t_range=parse_range("all"), device="cpu")
    )
    assert plan.settings.t_range == (1000, 0)


# --------------------------------------------------------------------------------------------- naming
def test_outputs_mirror_inputs_and_k_suffix(inputs: Path) -> None:
    found = scan_inputs(inputs)
    units = build_units(config(model="m", input=str(inputs), samples=1), found)
    assert [(u.output.as_posix(), u.key) for u in units] == [
        ("b.png", "b.png#0"),
        ("face/001.png", "face/001.png#0"),
        ("face/002.png", "face/002.jpg#0"),
    ]
    units = build_units(config(model="m", input=str(inputs), samples=2), found)
    assert [u.output.as_posix() for u in units][:2] == ["b_0.png", "b_1.png"]
    assert units[3].key == "face/001.png#1" and units[3].index == 3


def test_inputs_differing_only_by_extension_keep_it_in_the_name(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", smooth_image(0, 8))
    write_png(tmp_path / "a.jpg", smooth_image(1, 8))
    units = build_units(config(model="m", input=str(tmp_path)), scan_inputs(tmp_path))
    assert [u.output for u in units] == [PurePosixPath("a_jpg.png"), PurePosixPath("a_png.png")]


def test_a_name_clash_is_a_usage_error(tmp_path: Path) -> None:
    for name in ("a.png", "a.jpg", "a_png.bmp"):  # a.png -> a_png.png, and so does a_png.bmp
        write_png(tmp_path / name, smooth_image(0, 8))
    with pytest.raises(UsageError, match="two outputs would be named a_png.png"):
        build_units(config(model="m", input=str(tmp_path)), scan_inputs(tmp_path))


def test_sample_units_are_numbered(tmp_path: Path) -> None:
    units = build_units(TaskConfig(task="sample", model="m", output=tmp_path, count=3), None)
    assert [(u.output.as_posix(), u.key) for u in units] == [
        ("000000.png", "sample/000000"),
        ("000001.png", "sample/000001"),
        ("000002.png", "sample/000002"),
    ]


def test_default_output_is_beside_the_input(inputs: Path) -> None:
    assert default_output(str(inputs), "upscale") == inputs.parent.absolute() / "in-upscale"
    assert (
        default_output(str(inputs / "face" / "001.png"), "edit") == (inputs / "face" / "001-edit").absolute()
    )
    assert (
        default_output(str(inputs / "face" / "*.png"), "translate") == (inputs / "face-translate").absolute()
    )


# --------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"model": "ffhx"}, ModelNotFoundError, "did you mean ffhq"),
        ({"model": "./missing.safetensors"}, UsageError, "no such checkpoint"),
        ({"factor": 3}, UsageError, "--factor 3 does not divide the model size 32"),
        ({"factor": 64}, UsageError, "does not divide the model size 32"),
        ({"input": "nowhere/"}, UsageError, "does not exist"),
        ({"output": "IN"}, UsageError, "overwrite the inputs"),
        ({"steps": "abc"}, UsageError, "--steps abc"),
        ({"precision": "fp16", "device": "cpu"}, UsageError, "needs a CUDA device"),
        ({"mask": Path("no-mask.png"), "task": "edit"}, UsageError, "--mask no-mask.png does not exist"),
    ],
)
def test_usage_errors_come_before_any_model_is_loaded(
    model_path: Path, inputs: Path, tmp_path: Path, no_loading, changes, error, match
) -> None:
    options = {"model": str(model_path), "input": str(inputs), "output": tmp_path / "out", "device": "cpu"}
    options.update(changes)
    if options["output"] == "IN":
        options["output"] = inputs
    with pytest.raises(error, match=match):
        runner.run_task(config(**options))
    assert not (tmp_path / "out").exists()


def test_output_equal_to_a_single_input_file_is_refused(model_path: Path, inputs: Path, no_loading) -> None:
    with pytest.raises(UsageError, match="overwrite the inputs"):
        runner.run_task(config(model=str(model_path), input=str(inputs / "b.png"), output=inputs))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="needs a machine without CUDA (the error a user without one sees)"
)
def test_cuda_without_cuda_is_a_usage_error(model_path: Path, inputs: Path, no_loading) -> None:
    with pytest.raises(UsageError, match="no CUDA device"):
        runner.run_task(config(model=str(model_path), input=str(inputs), device="cuda"))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"samples": 0}, "--samples must be at least 1"),
        ({"fit": "stretch"}, "--fit 'stretch'"),
        ({"device": "tpu"}, "--device 'tpu'"),
        ({"t_range": (100, 200)}, "0 <= T_STOP <= T_START"),
        ({"task": "sample", "input": "x"}, "takes no INPUT"),
        ({"input": None}, "needs an INPUT"),
        ({"mask": Path("m.png")}, "only for ilvr edit"),
    ],
)
def test_config_validates_itself(changes, match) -> None:
    options = {"model": "m", "input": "x"}
    options.update(changes)
    with pytest.raises(UsageError, match=match):
        config(**options)


def test_config_accepts_path_likes(tmp_path: Path) -> None:
    made = TaskConfig(task="edit", model="m", input=tmp_path, output=str(tmp_path / "o"), mask=str(tmp_path))
    assert made.input == str(tmp_path) and made.output == tmp_path / "o" and made.mask == tmp_path


@pytest.mark.parametrize(
    ("text", "expected"), [("1000:200", (1000, 200)), ("1000,0", (1000, 0)), ("500-125", (500, 125))]
)
def test_parse_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["200:1000", "1000", "a:b"])
def test_parse_range_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--range"):
        parse_range(text)


def test_settings_refuse_a_default_that_does_not_divide(model_path: Path) -> None:
    from ilvr_cli.registry import open_model

    odd = open_model(str(model_path))
    odd._image_size = 48  # a model of another size, as its header would say
    with pytest.raises(UsageError, match="the preset default N=32 does not divide the model size 48"):
        resolve_settings(config(task="translate", model="m", input="x"), odd)
    assert resolve_settings(config(task="translate", model="m", input="x", factor=16), odd).factor == 16


# --------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_are_disjoint_and_cover_everything(world: int) -> None:
    items = list(range(11))
    shares = [shard(items, r, world) for r in range(world)]
    assert sorted(x for s in shares for x in s) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_rank_comes_from_torchrun_environment(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (1, 3, 1, False)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(UsageError, match="RANK=3"):
        dist_info()


def test_upscale_default_factor_says_it_holds_for_model_size_inputs(model_path: Path, inputs: Path) -> None:
    """Each value's origin is an enum; a note says what the origin alone would not (rendered once)."""
    settings = plan_task(config(model=str(model_path), input=str(inputs), device="cpu")).settings
    assert settings.sources["factor"] is Origin.PRESET and settings.notes["factor"] == UPSCALE_DEFAULT_NOTE
    assert settings.to_dict()["sources"]["factor"] == f"preset ({UPSCALE_DEFAULT_NOTE})"
    given = plan_task(config(model=str(model_path), input=str(inputs), device="cpu", factor=4)).settings
    assert given.sources["factor"] is Origin.OPTION and "factor" not in given.notes
