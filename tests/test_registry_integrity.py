"""What the cache trusts, and when: a corrupted cached file is never used (even with its size and mtime
kept), ``models info --verify`` tells the truth, a first-use sha256 is pinned only for a file that passed
every check (and ``models rm --forget`` unpins it), malformed diffusers configs and failed ``models add``
fail cleanly, names cannot end in a newline, and ``ILVR_OFFLINE=1`` blocks only the network.

No internet: network sources are a fake Google Drive endpoint on 127.0.0.1 started by the test."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from ilvr_cli.cli import models_cmd
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.config import UNetConfig
from ilvr_cli.errors import CheckpointError, DownloadError, OfflineError, UsageError
from ilvr_cli.models.checkpoints import load_checkpoint
from ilvr_cli.models.unet import UNet
from ilvr_cli.registry import catalog as catalog_module
from ilvr_cli.registry import fetch, load_model, resolve_model
from ilvr_cli.registry.cache import CONVERTED_NAME, KnownHashes, Manifest, sha256_file
from ilvr_cli.registry.catalog import CatalogError, ModelSpec, parse_entry, validate_name
from ilvr_cli.registry.download import DownloadOptions
from ilvr_cli.registry.manage import add_model, remove_model

TINY_FLAGS = {
    "attention_resolutions": "16", "channel_mult": "1,2", "diffusion_steps": 1000, "image_size": 32,
    "learn_sigma": True, "noise_schedule": "linear", "num_channels": 32, "num_head_channels": 16,
    "num_res_blocks": 1, "resblock_updown": True, "use_scale_shift_norm": True,
}  # fmt: skip
DRIVE_ID = "1AbCdEfGhIjKlMnOp"
#: Healthy responses never come near the timeout; nothing here is retried (a bad body is not transient).
OPTIONS = DownloadOptions(timeout=30, retries=0, backoff=0.01)
SAFETY = 60.0

cli = typer.Typer()
cli.add_typer(models_cmd.app, name="models")


@cli.callback()
def _root() -> None:
    """Test root."""


def invoke(*args: str):
    return CliRunner().invoke(cli, ["models", *args])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_checkpoint(path: Path, seed: int = 0, *, protocol: int = 2) -> Path:
    """A random guided-diffusion state dict, saved with torch.save as published ones are."""
    torch.manual_seed(seed)
    network = UNet(UNetConfig.from_guided_diffusion_flags(TINY_FLAGS))
    for p in network.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path, pickle_protocol=protocol)
    return path


def equal_to(network: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> bool:
    loaded = network.state_dict()
    return loaded.keys() == state_dict.keys() and all(
        torch.equal(loaded[k], v) for k, v in state_dict.items()
    )


def corrupt_keeping_stamp(path: Path) -> None:
    """Flip one byte near the end (tensor data) and restore size and mtime, as bit rot or a careful
    tamperer would: only the content tells."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x55
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def write_user_catalog(cache: Path, models: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "catalog.json").write_text(json.dumps({"version": 1, "models": models}))


def local_entry(source: Path, *, kind: str = "diffusion", sha256: str | None = None) -> dict:
    f: dict = {"name": source.name, "sources": [{"path": str(source)}]}
    if sha256:
        f["sha256"] = sha256
    if kind == "weights":
        return {"kind": "weights", "title": "w", "files": [f]}
    return {"kind": "diffusion", "title": "tiny", "format": "guided-diffusion", "flags": TINY_FLAGS,
            "files": [f]}  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ILVR_CACHE_DIR", str(root))
    monkeypatch.delenv("ILVR_OFFLINE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return root


@pytest.fixture
def tiny_pt(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "downloads" / "tiny.pt")


# ------------------------------------------------------------------- finding 2: corrupted cached files


def test_corrupt_converted_file_with_kept_stamp_is_never_used(cache: Path, tiny_pt: Path) -> None:
    add_model("mine", tiny_pt, config=_flags_file(tiny_pt.parent), cache_dir=cache)
    # the reference is read from the .pt: a network loaded from the safetensors maps the file's pages, so an
    # in-place edit of the file would change it too
    reference = torch.load(tiny_pt, weights_only=True)
    converted = cache / "models" / "mine" / CONVERTED_NAME
    corrupt_keeping_stamp(converted)
    again = load_model("mine")  # detected, deleted, re-imported from the entry's source
    assert equal_to(again.network, reference)
    assert sha256_file(converted) == Manifest(converted.parent).get(CONVERTED_NAME).sha256
    # what task commands do: resolve, then load the path
    corrupt_keeping_stamp(converted)
    resolved = resolve_model("mine", convert=True)
    assert sha256_file(resolved.path) == Manifest(converted.parent).get(CONVERTED_NAME).sha256
    assert equal_to(load_checkpoint(resolved.path).network, reference)


def test_corrupt_converted_file_offline_fails_instead_of_being_used(cache: Path, tmp_path: Path) -> None:
    """No source to rebuild it from (offline, network-only entry): an error, never the bad bytes."""
    pt = tiny_checkpoint(tmp_path / "tiny.pt")
    entry = local_entry(pt)
    entry["files"][0]["sources"] = [{"url": "http://127.0.0.1:9/tiny.pt"}]  # never contacted
    write_user_catalog(cache, {"net": entry})
    folder = cache / "models" / "net"
    folder.mkdir(parents=True)
    (folder / "tiny.pt").write_bytes(pt.read_bytes())  # placed by hand
    load_model("net", offline=True)
    corrupt_keeping_stamp(folder / CONVERTED_NAME)
    with pytest.raises(OfflineError, match="tiny.pt"):
        load_model("net", offline=True)
    assert not (folder / CONVERTED_NAME).exists()


def test_corrupt_cached_download_with_kept_stamp_is_never_used(cache: Path, tmp_path: Path) -> None:
    data = b"weights " * 5000
    src = tmp_path / "w.pth"
    src.write_bytes(data)
    write_user_catalog(cache, {"w": local_entry(src, kind="weights")})
    path = fetch("w")
    corrupt_keeping_stamp(path)
    assert fetch("w").read_bytes() == data  # rehashed, deleted, copied again


def _flags_file(folder: Path) -> Path:
    path = folder / "flags.json"
    path.write_text(json.dumps(TINY_FLAGS))
    return path


def test_verify_tells_the_truth(cache: Path, tiny_pt: Path) -> None:
    assert invoke("add", "mine", str(tiny_pt), "--config", str(_flags_file(tiny_pt.parent))).exit_code == 0
    result = invoke("info", "mine", "--verify")
    assert result.exit_code == 0, result.output
    assert "verify model.safetensors: ok" in result.output
    converted = cache / "models" / "mine" / CONVERTED_NAME
    corrupt_keeping_stamp(converted)
    result = invoke("info", "mine", "--verify")
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "verify model.safetensors: MISMATCH" in result.output and "deleted" in result.output
    assert "ilvr models download mine" in result.output
    assert not converted.exists()  # it said deleted: it is
    assert Manifest(converted.parent).get(CONVERTED_NAME) is None
    assert invoke("download", "mine").exit_code == 0  # and the advice works
    assert invoke("info", "mine", "--verify").exit_code == 0


def test_verify_and_load_of_a_damaged_builtin_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file shipped with ilvr-cli cannot be deleted: --verify says to reinstall, and it is not loaded."""
    spec = catalog_module.load_catalog().get("demo")
    damaged = tmp_path / "ema.safetensors"
    damaged.write_bytes(spec.builtin_path.read_bytes())
    corrupt_keeping_stamp(damaged)
    real = ModelSpec.builtin_path
    monkeypatch.setattr(
        ModelSpec, "builtin_path", property(lambda s: damaged if s.name == "demo" else real.fget(s))
    )
    result = invoke("info", "demo", "--verify")
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "MISMATCH" in result.output and "reinstall ilvr-cli" in result.output
    assert "deleted" not in result.output and damaged.exists()
    with pytest.raises(CheckpointError, match="reinstall ilvr-cli"):
        load_model("demo")


# ------------------------------------------------------------ finding 3: what a first-use hash pins


class FakeDrive:
    """Google Drive's download endpoint on 127.0.0.1, answering whatever the test sets in ``mode``:
    ``file`` (the body, with its length), ``html`` (a sign-in page labelled application/octet-stream),
    ``truncated`` (half the body, no Content-Length, then the connection closes)."""

    def __init__(self) -> None:
        self.body = b""
        self.mode = "file"
        self.requests = 0
        drive = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a body may end at the close

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                drive.requests += 1
                body = drive.body
                if drive.mode == "html":
                    body = (
                        b"\n  <!DOCTYPE html><html><head><title>Sign in</title></head><body>x</body></html>"
                    )
                elif drive.mode == "truncated":
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if drive.mode == "file":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.options = DownloadOptions(
            timeout=OPTIONS.timeout,
            retries=OPTIONS.retries,
            backoff=OPTIONS.backoff,
            gdrive_url=f"http://127.0.0.1:{self.httpd.server_address[1]}/download",
        )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(SAFETY)


@pytest.fixture
def drive(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDrive]:
    """A built-in catalog with one Drive-only diffusion entry ``p2`` without a published sha256."""
    entry = {"kind": "diffusion", "title": "drive only", "format": "guided-diffusion", "flags": TINY_FLAGS,
             "files": [{"name": "p2.pt", "sources": [{"gdrive": DRIVE_ID}]}]}  # fmt: skip
    builtin = tmp_path / "builtin.json"
    builtin.write_text(json.dumps({"version": 1, "models": {"p2": entry}}))
    monkeypatch.setattr(catalog_module, "BUILTIN_CATALOG", builtin)
    fake = FakeDrive()
    yield fake
    fake.close()


def test_first_use_pins_only_a_file_that_passed_every_check(
    drive: FakeDrive, cache: Path, tmp_path: Path
) -> None:
    real = tiny_checkpoint(tmp_path / "real.pt").read_bytes()
    drive.body = real
    drive.mode = "html"  # a web page labelled as a binary file
    with pytest.raises(DownloadError, match="web page"):
        load_model("p2", options=drive.options)
    assert KnownHashes(cache).get("p2", "p2.pt") is None
    drive.mode = "truncated"  # a cut body, and no Content-Length to notice it by
    with pytest.raises(DownloadError, match="does not load as a checkpoint"):
        load_model("p2", options=drive.options)
    assert KnownHashes(cache).get("p2", "p2.pt") is None
    assert not (cache / "models" / "p2" / "p2.pt").exists()
    drive.mode = "file"
    loaded = load_model("p2", options=drive.options)
    assert loaded.format == "guided-diffusion"
    assert KnownHashes(cache).get("p2", "p2.pt")["sha256"] == sha(real)


def test_rm_forget_clears_a_pinned_hash(drive: FakeDrive, cache: Path, tmp_path: Path) -> None:
    drive.body = tiny_checkpoint(tmp_path / "v1.pt", seed=1).read_bytes()
    load_model("p2", options=drive.options)
    drive.body = tiny_checkpoint(tmp_path / "v2.pt", seed=2).read_bytes()  # the publisher replaced it
    assert invoke("rm", "p2").exit_code == 0
    with pytest.raises(DownloadError, match=r"sha256 mismatch.*ilvr models rm p2 --forget"):
        load_model("p2", options=drive.options)
    result = invoke("rm", "p2", "--forget")
    assert result.exit_code == 0, result.output
    assert "forgotten" in result.output
    assert KnownHashes(cache).get("p2", "p2.pt") is None
    load_model("p2", options=drive.options)
    assert KnownHashes(cache).get("p2", "p2.pt")["sha256"] == sha(drive.body)


def test_file_placed_by_hand_is_checked_before_its_hash_is_pinned(
    drive: FakeDrive, cache: Path, tmp_path: Path
) -> None:
    folder = cache / "models" / "p2"
    folder.mkdir(parents=True)
    (folder / "p2.pt").write_bytes(b"<html><body>Quota exceeded</body></html>")
    with pytest.raises(OfflineError):
        load_model("p2", offline=True)
    assert KnownHashes(cache).get("p2", "p2.pt") is None and not (folder / "p2.pt").exists()


# ------------------------------------------------------------------- finding 10: diffusers config.json


GOOD_DIFFUSERS = {
    "_class_name": "UNet2DModel", "sample_size": 32, "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1, "attention_head_dim": None,
}  # fmt: skip


@pytest.mark.parametrize(
    ("config", "scheduler", "bad"),
    [
        ({"sample_size": 32}, None, "config.json"),  # KeyError
        ({**GOOD_DIFFUSERS, "block_out_channels": [0, 0]}, None, "config.json"),  # ZeroDivisionError
        ({**GOOD_DIFFUSERS, "layers_per_block": "two"}, None, "config.json"),  # ValueError
        ({**GOOD_DIFFUSERS, "block_out_channels": 32}, None, "config.json"),  # TypeError
        ({**GOOD_DIFFUSERS, "block_out_channels": []}, None, "config.json"),  # IndexError
        ([1, 2], None, "config.json"),  # not an object
        (GOOD_DIFFUSERS, {"num_train_timesteps": "many"}, "scheduler_config.json"),
        (GOOD_DIFFUSERS, {"num_train_timesteps": 0}, "scheduler_config.json"),
    ],
)
def test_malformed_diffusers_config_is_a_checkpoint_error_naming_the_file(
    cache: Path, tmp_path: Path, config: object, scheduler: dict | None, bad: str
) -> None:
    folder = tmp_path / "ddpm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if scheduler is not None:
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    save_file({"conv_in.weight": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    assert str(info.value).startswith(str(folder / bad)), info.value
    result = invoke("add", "ddpm", str(folder))
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert bad in result.output and "internal error" not in result.output


# ---------------------------------------------------------------------- finding 13: add, model names


def test_failed_add_leaves_no_folder(cache: Path, tmp_path: Path, tiny_pt: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = invoke("add", "broken", str(bad), "--config", str(_flags_file(tmp_path)))
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    with pytest.raises(CheckpointError):  # the ffhq architecture does not fit the tiny weights
        add_model("wrong", tiny_pt, like="ffhq")
    assert not (cache / "models" / "broken").exists() and not (cache / "models" / "wrong").exists()
    # a built-in name, a file that fails its check
    with pytest.raises(DownloadError, match="expected 374417833"):
        add_model("ffhq", tiny_pt)
    assert not (cache / "models" / "ffhq").exists()
    # a failed re-add keeps the model that was there
    add_model("mine", tiny_pt, config=_flags_file(tmp_path))
    converted = cache / "models" / "mine" / CONVERTED_NAME
    before = converted.read_bytes()
    with pytest.raises(CheckpointError):
        add_model("mine", bad, config=_flags_file(tmp_path))
    assert converted.read_bytes() == before


@pytest.mark.parametrize("name", ["name\n", "name\r\n", "\nname", "na\nme", "name\x00"])
def test_names_with_control_characters_are_refused(cache: Path, tiny_pt: Path, name: str) -> None:
    with pytest.raises(UsageError, match="invalid model name"):
        validate_name(name)
    with pytest.raises(UsageError, match="invalid model name"):
        add_model(name, tiny_pt, config=_flags_file(tiny_pt.parent))
    result = invoke("add", name, str(tiny_pt), "--config", str(tiny_pt.parent / "flags.json"))
    assert result.exit_code == ExitCode.USAGE
    assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []


def test_catalog_fields_with_a_trailing_newline_are_refused() -> None:
    def entry(**file: object) -> dict:
        f = {"name": "w.pt", "sources": [{"url": "https://e.com/w.pt"}], **file}
        return {"kind": "weights", "files": [f]}

    with pytest.raises(CatalogError, match="plain file name"):
        parse_entry("x", entry(name="w.pt\n"))
    with pytest.raises(CatalogError, match="sha256"):
        parse_entry("x", entry(sha256="a" * 64 + "\n"))
    with pytest.raises(CatalogError, match="Google Drive"):
        parse_entry("x", entry(sources=[{"gdrive": DRIVE_ID + "\n"}]))
    with pytest.raises(CatalogError, match="relative path"):
        parse_entry("x", entry(sources=[{"package": "demo/ema.safetensors\n"}]))


# ----------------------------------------------------- finding 14: pickle warnings, offline and local


def test_old_pickle_protocol_warning_is_silenced(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "old.pt", protocol=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.load(path, weights_only=True)  # torch does warn about it ...
        assert any("pickle protocol" in str(w.message) for w in caught)
        caught.clear()
        loaded = load_checkpoint(path, UNetConfig.from_guided_diffusion_flags(TINY_FLAGS))
    assert loaded.format == "guided-diffusion"
    assert [str(w.message) for w in caught] == []  # ... but ilvr does not pass it on


def test_offline_blocks_only_network_sources(
    cache: Path, tiny_pt: Path, drive: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_catalog(cache, {"local": local_entry(tiny_pt)})
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    assert load_model("local").format == "guided-diffusion"  # imported from the local file
    assert load_model("local").format == "ilvr-cli"
    assert remove_model("local") > 0
    result = invoke("download", "local")
    assert result.exit_code == 0, result.output
    result = invoke("add", "mine", str(tiny_pt), "--config", str(_flags_file(tiny_pt.parent)))
    assert result.exit_code == 0, result.output
    # a built-in name filled from a local file (sha256 recorded as it passes every check)
    assert add_model("p2", tiny_pt).converted
    assert remove_model("p2") > 0
    # the network stays closed
    with pytest.raises(OfflineError, match="ILVR_OFFLINE=1"):
        load_model("p2", options=drive.options)
    assert drive.requests == 0
    # a local source that is gone: still an offline error, saying what went wrong with it
    tiny_pt.unlink()
    remove_model("local")
    with pytest.raises(OfflineError, match="does not exist"):
        load_model("local")
