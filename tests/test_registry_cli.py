"""``ilvr models ...`` through Typer's CliRunner on a throwaway app, with the cache in tmp_path and a user
catalog whose sources are local files (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ilvr_cli.cli import models_cmd
from ilvr_cli.cli.exit_codes import ExitCode

app = typer.Typer()
app.add_typer(models_cmd.app, name="models")


@app.callback()
def _root() -> None:
    """Test root."""


runner = CliRunner()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ILVR_CACHE_DIR", str(root))
    for variable in ("ILVR_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))  # never the user's Hugging Face cache
    monkeypatch.setenv("COLUMNS", "200")
    return root


@pytest.fixture
def weights_entry(tmp_path: Path, cache: Path) -> bytes:
    """A user entry "tiny-w" (kind weights) whose source is a local file."""
    data = b"some weights " * 1000
    src = tmp_path / "w.pth"
    src.write_bytes(data)
    cache.mkdir(parents=True, exist_ok=True)
    entry = {"kind": "weights", "family": "test", "title": "tiny weights",
             "files": [{"name": "w.pth", "size": len(data), "sources": [{"path": str(src)}]}]}  # fmt: skip
    (cache / "catalog.json").write_text(json.dumps({"version": 1, "models": {"tiny-w": entry}}))
    return data


def invoke(*args: str):
    return runner.invoke(app, ["models", *args])


def test_list_shows_catalog_and_cache_state(cache: Path, weights_entry: bytes) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in ("ffhq", "afhq-dog", "imagenet-256", "church", "cifar10", "fid-inception", "tiny-w"):
        assert name in result.output
    assert "93.6M" in result.output and "552.8M" in result.output and "374.4 MB" in result.output
    assert str(cache) in result.output
    line = next(line for line in result.output.splitlines() if "tiny-w" in line)
    assert "no" in line
    assert invoke("download", "tiny-w").exit_code == 0
    line = next(line for line in invoke("list").output.splitlines() if "tiny-w" in line)
    assert "yes" in line


def test_download_path_info_rm(cache: Path, weights_entry: bytes) -> None:
    assert invoke("path", "tiny-w").exit_code == ExitCode.USAGE
    result = invoke("download", "tiny-w")
    assert result.exit_code == 0, result.output
    target = cache / "models" / "tiny-w" / "w.pth"
    assert target.read_bytes() == weights_entry
    result = invoke("path", "tiny-w")
    assert result.exit_code == 0 and result.stdout.strip() == str(target)
    result = invoke("info", "tiny-w", "--verify")
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(weights_entry).hexdigest()
    assert digest in result.output and "recorded on first download" in result.output
    assert "verify w.pth: ok" in result.output
    result = invoke("rm", "tiny-w")
    assert result.exit_code == 0 and "removed" in result.output and not target.exists()
    assert "recorded on first download" in invoke("info", "tiny-w").output  # the first-use hash is kept


def test_info_of_a_builtin_entry_shows_published_facts(cache: Path) -> None:
    result = invoke("info", "ffhq")
    assert result.exit_code == 0, result.output
    assert "81d535743156ec6be34d8668e6920da94f0614074d7793a16c8fa9e306237faa (published)" in result.output
    assert "https://huggingface.co/deepinv/diffunet/resolve/main/diffusion_ffhq_10m.pt" in result.output
    assert "learned_range" in result.output and "93,563,910" in result.output


def test_errors_map_to_exit_codes(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("info", "ffhqq")
    assert result.exit_code == ExitCode.USAGE and "did you mean ffhq" in result.output
    assert invoke("download", "../etc").exit_code == ExitCode.USAGE
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    result = invoke("download", "ffhq")
    assert result.exit_code == ExitCode.DOWNLOAD
    assert "ILVR_OFFLINE=1" in result.output and "diffusion_ffhq_10m.pt" in result.output
    assert not (cache / "models" / "ffhq" / "diffusion_ffhq_10m.pt").exists()
    monkeypatch.delenv("ILVR_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hugging Face Hub's switch closes the network too
    result = invoke("download", "ffhq")
    assert result.exit_code == ExitCode.DOWNLOAD and "HF_HUB_OFFLINE=1" in result.output


def test_add_and_use_a_checkpoint(cache: Path, tmp_path: Path) -> None:
    import torch

    from ilvr_cli.config import UNetConfig
    from ilvr_cli.models.unet import UNet

    flags = {"attention_resolutions": "16", "channel_mult": "1,2", "image_size": 32, "learn_sigma": True,
             "num_channels": 32, "num_head_channels": 16, "num_res_blocks": 1}  # fmt: skip
    ckpt = tmp_path / "run.pt"
    torch.save(UNet(UNetConfig.from_guided_diffusion_flags(flags)).state_dict(), ckpt)
    config = tmp_path / "flags.json"
    config.write_text(json.dumps(flags))
    result = invoke("add", "my-run", str(ckpt), "--config", str(config))
    assert result.exit_code == 0, result.output
    converted = cache / "models" / "my-run" / "model.safetensors"
    assert converted.is_file() and invoke("path", "my-run").stdout.strip() == str(converted)
    assert "my-run" in invoke("list").output
    result = invoke("add", "other", str(ckpt))  # no schedule known for a bare .pt
    assert result.exit_code == ExitCode.BAD_INPUT and "--like" in result.output
    result = invoke("rm", "my-run", "--forget")
    assert result.exit_code == 0 and "forgotten" in result.output
    assert invoke("info", "my-run").exit_code == ExitCode.USAGE


def test_models_cmd_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, ilvr_cli.cli.models_cmd, ilvr_cli.registry; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )
