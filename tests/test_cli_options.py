"""cli/options.py: the options declared once, and each command taking the ones it should."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command

from ilvr_cli.cli import options
from ilvr_cli.cli.app import app
from ilvr_cli.tasks import config


def test_choice_enums_are_the_literals_of_the_task_config() -> None:
    from ilvr_cli.metrics.fid import MODES

    for enum, values in [
        (options.Kernel, config.KERNELS),
        (options.Fit, config.FIT_POLICIES),
        (options.Precision, config.PRECISIONS),
        (options.Sampler, config.METHODS),
        (options.FidMode, MODES),
    ]:
        assert tuple(member.value for member in enum) == tuple(values)


CONDITIONED = [
    "--model", "--factor", "--filter", "--exact", "--steps", "--range", "--samples", "--seed", "--batch-size",
    "--device", "--precision", "--sampler", "--eta", "--fit", "--overwrite", "--grid", "--animate", "--quiet",
    "--json", "--cache-dir", "--max-megapixels",
]  # fmt: skip
SAMPLE = [
    "--model", "--count", "--steps", "--seed", "--batch-size", "--device", "--precision", "--sampler", "--eta",
    "--overwrite", "--grid", "--animate", "--quiet", "--json", "--cache-dir",
]  # fmt: skip


def _options(name: str) -> list[str]:
    group = get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    command = group.get_command(typer.Context(group), name)
    assert command is not None
    return [p.opts[0] for p in command.params if p.param_type_name == "option"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("upscale", CONDITIONED),
        ("translate", CONDITIONED),
        ("paint2img", CONDITIONED),
        ("edit", [CONDITIONED[0], "--mask", *CONDITIONED[1:]]),
        ("sample", SAMPLE),
    ],
)
def test_task_commands_take_their_options_in_order(name: str, expected: list[str]) -> None:
    assert _options(name) == expected


def test_one_cache_dir_option_everywhere() -> None:
    group = get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    helps = set()
    for name in ("upscale", "sample", "train"):
        command = group.get_command(typer.Context(group), name)
        assert command is not None
        (param,) = [p for p in command.params if p.name == "cache_dir"]
        helps.add(param.help)  # type: ignore[attr-defined]
    assert len(helps) == 1
