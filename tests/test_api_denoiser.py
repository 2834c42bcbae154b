"""``Denoiser.from_loaded`` takes what ``load_model`` returns, an ``open_model`` handle, or (network, config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ilvr_cli.config import DiffusionConfig
from ilvr_cli.diffusion import Denoiser
from ilvr_cli.errors import CheckpointError
from ilvr_cli.registry import load_model, open_model
from ilvr_cli.registry.handle import ModelHandle


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    monkeypatch.setenv("ILVR_CACHE_DIR", str(tmp_path / "cache"))


def same(a: Denoiser, b: Denoiser) -> bool:
    return (
        a.network is b.network
        and np.array_equal(a.schedule.timestep_map, b.schedule.timestep_map)
        and np.array_equal(a.schedule.betas, b.schedule.betas)
        and (a.variance_type, a.rescale_timesteps) == (b.variance_type, b.rescale_timesteps)
    )


def test_every_form_gives_the_same_denoiser() -> None:
    loaded = load_model("demo")
    reference = Denoiser.from_loaded(loaded.network, loaded.diffusion_config, steps="100")
    assert len(reference.schedule) == 100
    assert same(Denoiser.from_loaded(loaded, "100"), reference)
    assert same(Denoiser.from_loaded(loaded), reference)  # steps default to "100"
    assert same(Denoiser.from_loaded(loaded, steps="100"), reference)
    assert same(Denoiser.from_loaded(loaded.network, loaded.diffusion_config, "100"), reference)
    assert same(Denoiser.from_loaded(loaded, 100), reference)


def test_a_handle_is_loaded_once() -> None:
    handle = open_model("demo")
    first = Denoiser.from_loaded(handle, "ddim10")
    assert handle.is_loaded and len(first.schedule) == 10
    assert Denoiser.from_loaded(handle, steps="ddim10").network is first.network


def test_a_config_given_wins_and_a_missing_one_is_named() -> None:
    loaded = load_model("demo")
    linear = DiffusionConfig(schedule="linear", variance_type="learned_range")
    denoiser = Denoiser.from_loaded(loaded, diffusion_config=linear, steps="10")
    assert same(denoiser, Denoiser.from_loaded(loaded.network, linear, steps="10"))
    bare = ModelHandle.from_network(loaded.network, linear, 32)
    bare.diffusion_config = None
    with pytest.raises(CheckpointError, match="in-memory: the checkpoint does not say how it was trained"):
        Denoiser.from_loaded(bare, "10")


def test_bad_argument_lists_are_type_errors() -> None:
    loaded = load_model("demo")
    with pytest.raises(TypeError, match="too many positional"):
        Denoiser.from_loaded(loaded, "100", "50")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="too many positional"):
        Denoiser.from_loaded(loaded, "100", steps="50")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="diffusion_config twice"):
        Denoiser.from_loaded(  # type: ignore[call-overload]
            loaded.network, loaded.diffusion_config, diffusion_config=loaded.diffusion_config
        )
