"""Presets against the catalog's published architectures; the run config and its resume rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ilvr_cli.errors import UsageError
from ilvr_cli.registry.catalog import BUILTIN_CATALOG, read_catalog_file
from ilvr_cli.training.presets import TrainConfig, model_configs
from training_helpers import TINY_DIFFUSION, TINY_UNET, tiny_config


@pytest.fixture(scope="module")
def catalog():
    return read_catalog_file(BUILTIN_CATALOG, "builtin")


def test_ddpm_preset_is_ho_et_al_as_published(catalog) -> None:
    """At 256 it is google/ddpm-ema-celebahq-256's UNet; at 32 google/ddpm-cifar10-32's with dropout 0.1."""
    unet, diffusion = model_configs("ddpm", image_size=256)
    assert unet == catalog["celebahq-ddpm"].unet
    assert (diffusion.schedule, diffusion.num_timesteps, diffusion.variance_type) == (
        "linear",
        1000,
        "fixed_large",
    )
    unet32, _ = model_configs("ddpm", image_size=32)
    assert unet32 == dataclasses.replace(catalog["cifar10"].unet, dropout=0.1)


def test_adm_small_preset_is_the_ffhq_models_architecture(catalog) -> None:
    unet, diffusion = model_configs("adm-small")
    assert unet == catalog["ffhq"].unet and diffusion == catalog["ffhq"].diffusion
    eps_only, fixed = model_configs("adm-small", image_size=64, learn_sigma=False)
    assert (eps_only.image_size, eps_only.out_channels, fixed.variance_type) == (64, 3, "fixed_large")
    assert eps_only.channel_mult == (1, 2, 3, 4)


def test_config_files_in_both_forms(tmp_path: Path, catalog) -> None:
    native = tmp_path / "native.json"
    native.write_text(json.dumps({"unet": TINY_UNET.to_dict(), "diffusion": TINY_DIFFUSION.to_dict()}))
    assert model_configs(str(native)) == (TINY_UNET, TINY_DIFFUSION)
    unet, diffusion = model_configs(str(native), image_size=16, learn_sigma=False, dropout=0.0)
    assert (unet.image_size, unet.out_channels, unet.dropout, diffusion.variance_type) == (
        16,
        3,
        0.0,
        "fixed_large",
    )
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(dict(catalog["ffhq"].flags)))
    assert model_configs(str(flags)) == (catalog["ffhq"].unet, catalog["ffhq"].diffusion)


@pytest.mark.parametrize(
    ("preset", "message"),
    [("ddpm-large", "unknown preset"), ("missing.json", "cannot read"), ("adm-small:48", "unknown preset")],
)
def test_bad_presets_are_usage_errors(preset: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        model_configs(preset)
    with pytest.raises(UsageError, match="no preset channel_mult for image size 48"):
        model_configs("ddpm", image_size=48)


def test_train_config_round_trips_and_validates(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, tmp_path / "out", grad_clip=None, p2_gamma=1.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UsageError, match="--batch-size"):
        dataclasses.replace(config, batch_size=0)
    with pytest.raises(UsageError, match="--ema"):
        dataclasses.replace(config, ema_decay=1.0)
    with pytest.raises(UsageError, match="learned_range needs"):
        dataclasses.replace(config, unet=dataclasses.replace(TINY_UNET, out_channels=3))


def test_resume_may_change_only_the_schedule_of_the_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, tmp_path / "out")
    longer = config.resumed_with({"steps": 100, "workers": 2, "save_every": 7})
    assert (longer.steps, longer.workers, longer.save_every, longer.lr) == (100, 2, 7, config.lr)
    assert config.resumed_with({"lr": config.lr}) == config
    with pytest.raises(UsageError, match="batch_size was 4, not 8"):
        config.resumed_with({"batch_size": 8})
