"""Catalog entries shipped inside the package (``{"package": ...}`` sources) and the built-in ``demo`` model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ilvr_cli.cli.app import app
from ilvr_cli.errors import UsageError
from ilvr_cli.registry import load_catalog, load_model, model_status, remove_model, resolve_model
from ilvr_cli.registry.cache import sha256_file
from ilvr_cli.registry.catalog import CatalogError, parse_entry, read_catalog_file
from ilvr_cli.registry.manage import add_model, verify_model

WEIGHTS = {
    "kind": "weights",
    "family": "test",
    "title": "t",
    "license": "MIT",
    "source_page": "https://e.com",
}


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    monkeypatch.setenv("ILVR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_package_sources_resolve_to_the_installed_file_without_the_cache(
    tmp_path: Path, offline_cache: Path
) -> None:
    entry = {
        **WEIGHTS,
        "files": [{"name": "catalog.json", "approx_size": 1, "sources": [{"package": "catalog.json"}]}],
    }
    spec = parse_entry("shipped", entry)
    assert spec.builtin_path is not None and spec.builtin_path.name == "catalog.json"
    assert json.loads(spec.builtin_path.read_text())["models"]
    status = model_status(spec)
    assert (status.state, status.path) == ("builtin", spec.builtin_path)
    assert not offline_cache.exists()


@pytest.mark.parametrize(
    ("source", "origin", "message"),
    [
        ({"package": "../escape.pt"}, "builtin", "relative path under ilvr_cli/data"),
        ({"package": "/abs/file.pt"}, "builtin", "relative path under ilvr_cli/data"),
        ({"package": "demo/ema.safetensors"}, "user", "only allowed in the built-in catalog"),
    ],
)
def test_bad_package_sources_are_rejected(source: dict, origin: str, message: str) -> None:
    entry = {**WEIGHTS, "files": [{"name": "w.pt", "approx_size": 1, "sources": [source]}]}
    with pytest.raises(CatalogError, match=message):
        parse_entry("x", entry, origin=origin)  # type: ignore[arg-type]


def test_demo_is_built_in_and_loads_offline(offline_cache: Path) -> None:
    spec = load_catalog().get("demo")
    path = spec.builtin_path
    assert path is not None and path.is_file() and path.stat().st_size <= 10_000_000
    assert sha256_file(path) == spec.files[0].sha256 and path.stat().st_size == spec.files[0].size
    loaded = load_model("demo")
    assert loaded.unet_config == spec.unet and loaded.diffusion_config == spec.diffusion
    assert sum(p.numel() for p in loaded.network.parameters()) == spec.params
    assert resolve_model("demo").path == path
    assert verify_model(spec) == {path.name: True}
    assert not offline_cache.exists()  # nothing was downloaded or converted


def test_demo_cannot_be_removed_or_replaced(offline_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="built into ilvr-cli"):
        remove_model("demo")
    with pytest.raises(UsageError, match="built into ilvr-cli"):
        add_model("demo", load_catalog().get("demo").builtin_path)


def test_models_list_shows_demo_as_built_in(offline_cache: Path) -> None:
    result = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if " demo " in f" {line} ")
    assert "built-in" in line and "32x32" in line


def test_the_builtin_catalog_lists_demo_as_a_package_file() -> None:
    from ilvr_cli.registry.catalog import BUILTIN_CATALOG

    demo = read_catalog_file(BUILTIN_CATALOG, "builtin")["demo"]
    assert [s.to_dict() for s in demo.files[0].sources] == [{"package": "demo/ema.safetensors"}]
