"""``ilvr train --init-from``: the configs of the model to fine-tune, read without loading its weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ilvr_cli.errors import CheckpointError, InputError, ModelNotFoundError
from ilvr_cli.models.checkpoints import META_FORMAT_VERSION, save_native
from ilvr_cli.models.unet import UNet
from ilvr_cli.training.init import init_configs
from training_helpers import TINY_DIFFUSION, TINY_UNET

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_native(tmp_path / "tiny.safetensors", UNet(TINY_UNET), TINY_UNET, TINY_DIFFUSION)


@pytest.fixture()
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr("ilvr_cli.registry.load_model", refuse)


@pytest.mark.usefixtures("no_loading")
def test_native_checkpoint_configs_come_from_its_metadata(checkpoint: Path) -> None:
    assert init_configs(str(checkpoint)) == (TINY_UNET, TINY_DIFFUSION)


def test_catalog_entry_configs_come_from_the_catalog(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ilvr_cli.registry import add_model

    add_model("tiny-init", checkpoint)
    monkeypatch.setattr("ilvr_cli.registry.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    unet, diffusion = init_configs("tiny-init")
    assert (unet.to_dict(), diffusion) == (TINY_UNET.to_dict(), TINY_DIFFUSION)


def test_checkpoint_without_readable_metadata_is_loaded(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from ilvr_cli.models.checkpoints import read_native_metadata

    meta = read_native_metadata(checkpoint)
    meta[META_FORMAT_VERSION] = "99"
    other = tmp_path / "future.safetensors"
    save_file(load_file(str(checkpoint)), str(other), metadata=meta)
    with pytest.raises(CheckpointError, match="format version"):  # the loader's error, unchanged
        init_configs(str(other))


def test_unknown_names_and_missing_files_fail_as_loading_does(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        init_configs("no-such-model")
    with pytest.raises(InputError):
        init_configs(str(tmp_path / "missing.safetensors"))
