"""--model resolution, one-time conversion to safetensors, ``models add``, ``fetch`` (no network: the
entries' sources are local files in a user catalog)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from extras import require_extra
from ilvr_cli.errors import (
    CheckpointError,
    DownloadError,
    InputError,
    ModelNotFoundError,
    OfflineError,
    UsageError,
)
from ilvr_cli.registry import catalog as catalog_module
from ilvr_cli.registry import fetch, load_model, resolve_model
from ilvr_cli.registry.cache import CONVERTED_NAME, KnownHashes, Manifest
from ilvr_cli.registry.download import NullProgress
from ilvr_cli.registry.manage import add_model, model_status, remove_model

TINY_FLAGS = {
    "attention_resolutions": "16", "channel_mult": "1,2", "diffusion_steps": 1000, "image_size": 32,
    "learn_sigma": True, "noise_schedule": "linear", "num_channels": 32, "num_head_channels": 16,
    "num_res_blocks": 1, "resblock_updown": True, "use_scale_shift_norm": True,
}  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_pt(tmp_path: Path) -> Path:
    """A random guided-diffusion checkpoint (state dict saved with torch.save, as published ones are)."""
    from ilvr_cli.config import UNetConfig
    from ilvr_cli.models.unet import UNet

    torch.manual_seed(0)
    network = UNet(UNetConfig.from_guided_diffusion_flags(TINY_FLAGS))
    for p in network.parameters():  # nothing zero-initialised, so every tensor matters
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "downloads" / "tiny.pt"
    path.parent.mkdir()
    torch.save(network.state_dict(), path)
    return path


def write_user_catalog(cache: Path, models: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "catalog.json").write_text(json.dumps({"version": 1, "models": models}))


def tiny_entry(source: Path, *, sha256: str | None = None) -> dict:
    f = {"name": "tiny.pt", "sources": [{"path": str(source)}]}
    if sha256:
        f["sha256"] = sha256
    return {"kind": "diffusion", "family": "test", "title": "tiny", "format": "guided-diffusion",
            "flags": TINY_FLAGS, "files": [f]}  # fmt: skip


def edit_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` as a later edit would, with a later mtime: set explicitly, since a coarse
    filesystem clock need not have ticked since the file was written and its stamp recorded."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Identical state dicts (cheaper and stricter than comparing outputs)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_catalog_model_is_converted_once_then_loaded_without_unpickling(
    tmp_path: Path, tiny_pt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    write_user_catalog(cache, {"tiny": tiny_entry(tiny_pt, sha256=sha(tiny_pt))})
    first = load_model("tiny", cache_dir=cache)
    folder = cache / "models" / "tiny"
    assert (folder / CONVERTED_NAME).is_file() and not (folder / "tiny.pt").exists()  # original dropped
    assert Manifest(folder).get(CONVERTED_NAME).trust == "converted"
    reference = torch.load(tiny_pt, weights_only=True)
    assert all(torch.equal(first.network.state_dict()[k], v) for k, v in reference.items())

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling after conversion")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setenv("ILVR_OFFLINE", "1")  # and no network either
    second = load_model("tiny", cache_dir=cache)
    assert second.format == "ilvr-cli" and second.unet_config == first.unet_config
    assert second.diffusion_config.variance_type == "learned_range"
    assert same_weights(first.network, second.network)
    resolved = resolve_model("tiny", cache_dir=cache)
    assert resolved.converted and resolved.path == folder / CONVERTED_NAME


def test_published_checkpoint_through_the_registry_matches_parity(parity_dir: Path, tmp_path: Path) -> None:
    """The parity fixture's guided-diffusion .pt, fetched and converted by the registry, gives the reference
    network outputs."""
    fixture = parity_dir / "adm_learned_sigma"
    from safetensors.torch import load_file

    flags = json.loads((fixture / "flags.json").read_text())
    flags.pop("timestep_respacing")
    entry = {"kind": "diffusion", "title": "parity", "flags": flags,
             "files": [{"name": "model.pt", "sha256": sha(fixture / "model.pt"),
                        "sources": [{"path": str(fixture / "model.pt")}]}]}  # fmt: skip
    write_user_catalog(tmp_path, {"parity": entry})
    load_model("parity", cache_dir=tmp_path)  # converts
    loaded = load_model("parity", cache_dir=tmp_path)  # from the safetensors
    expected = load_file(str(fixture / "expected.safetensors"))
    with torch.no_grad():  # one sample of the fixture's batch is enough (and 4x cheaper)
        out = loaded.network(expected["x"][:1], expected["t_respaced"][:1])
    torch.testing.assert_close(out, expected["model_out_at_raw_t"][:1], atol=1e-5, rtol=0)


def test_paths_names_and_errors(tmp_path: Path, tiny_pt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    resolved = resolve_model(str(tiny_pt), cache_dir=cache)
    assert resolved.spec is None and resolved.path == tiny_pt and resolved.format == "guided-diffusion"
    loaded = load_model(tiny_pt, cache_dir=cache)  # a path loads in place, nothing is written to the cache
    assert loaded.format == "guided-diffusion" and not (cache / "models").exists()
    with pytest.raises(InputError, match="no such checkpoint"):
        resolve_model(str(tmp_path / "missing.pt"), cache_dir=cache)
    with pytest.raises(ModelNotFoundError, match="did you mean ffhq"):
        resolve_model("fhq", cache_dir=cache)
    with pytest.raises(UsageError, match="not a diffusion model"):
        resolve_model("fid-inception", cache_dir=cache)
    monkeypatch.chdir(tiny_pt.parent)
    os.symlink(tiny_pt, "ffhq")  # a file named like a catalog entry: the catalog wins, ./ffhq is the file
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    with pytest.raises(OfflineError, match="diffusion_ffhq_10m.pt"):
        resolve_model("ffhq", cache_dir=cache)
    assert resolve_model("./ffhq", cache_dir=cache).spec is None


def test_offline_then_online(tmp_path: Path, tiny_pt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode forbids the network, even a localhost URL, and names where the file goes; a local-path
    source is no network and still imports offline (test_registry_integrity.py covers both)."""
    url_entry = tiny_entry(tiny_pt)
    url_entry["files"][0]["sources"] = [{"url": "http://127.0.0.1:9/tiny.pt"}]
    write_user_catalog(tmp_path, {"tiny": url_entry})
    with pytest.raises(OfflineError) as info:
        load_model("tiny", cache_dir=tmp_path, offline=True)
    assert str(tmp_path / "models" / "tiny" / "tiny.pt") in str(info.value)
    write_user_catalog(tmp_path, {"tiny": tiny_entry(tiny_pt)})
    load_model("tiny", cache_dir=tmp_path)
    assert load_model("tiny", cache_dir=tmp_path, offline=True).format == "ilvr-cli"
    known = KnownHashes(tmp_path).get("tiny", "tiny.pt")
    assert known is not None and known["sha256"] == sha(tiny_pt)  # trust on first use


def test_tampered_converted_file_is_rebuilt(tmp_path: Path, tiny_pt: Path) -> None:
    write_user_catalog(tmp_path, {"tiny": tiny_entry(tiny_pt)})
    reference = load_model("tiny", cache_dir=tmp_path).network
    converted = tmp_path / "models" / "tiny" / CONVERTED_NAME
    data = bytearray(converted.read_bytes())
    data[-100] ^= 0x55  # flip a weight byte
    edit_in_place(converted, bytes(data))
    again = load_model("tiny", cache_dir=tmp_path)
    assert same_weights(again.network, reference)


def test_source_with_a_different_file_is_refused(tmp_path: Path, tiny_pt: Path) -> None:
    write_user_catalog(tmp_path, {"tiny": tiny_entry(tiny_pt, sha256="0" * 64)})
    with pytest.raises(DownloadError, match=f"{tiny_pt}: sha256 mismatch"):
        load_model("tiny", cache_dir=tmp_path)


def test_concurrent_loads_convert_once(
    tmp_path: Path, tiny_pt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_catalog(tmp_path, {"tiny": tiny_entry(tiny_pt)})
    from ilvr_cli.registry import convert

    calls: list[int] = []
    real = convert.convert_to_native
    converting, queued = threading.Event(), threading.Event()

    def counting(*args, **kwargs):
        calls.append(1)
        converting.set()
        queued.wait(60)  # keep the entry's lock until the other load waits for it
        return real(*args, **kwargs)

    class Queued(NullProgress):
        def note(self, message: str) -> None:
            if "waiting for another process" in message:
                queued.set()

    monkeypatch.setattr(convert, "convert_to_native", counting)
    results = []

    def load(progress: NullProgress) -> None:
        results.append(load_model("tiny", cache_dir=tmp_path, progress=progress))

    threads = [threading.Thread(target=load, args=(p,)) for p in (NullProgress(), Queued())]
    threads[0].start()
    try:
        assert converting.wait(60)  # the first load holds the lock and is converting
        threads[1].start()
        assert queued.wait(60)  # the second one waits for the lock, not for a finished conversion
    finally:
        queued.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join(60)
    assert len(results) == 2 and len(calls) == 1
    assert same_weights(results[0].network, results[1].network)


def test_add_new_model_then_rm_and_reimport(tmp_path: Path, tiny_pt: Path) -> None:
    config = tmp_path / "flags.json"
    config.write_text(json.dumps(TINY_FLAGS))
    resolved = add_model("my-run", tiny_pt, config=config, cache_dir=tmp_path)
    assert resolved.converted
    entry = json.loads((tmp_path / "catalog.json").read_text())["models"]["my-run"]
    assert entry["files"][0]["sha256"] == sha(tiny_pt) and entry["params"] > 0
    reference = load_model("my-run", cache_dir=tmp_path).network
    assert remove_model("my-run", cache_dir=tmp_path) > 0
    assert model_status(resolved.spec, tmp_path).state == "missing"
    assert same_weights(load_model("my-run", cache_dir=tmp_path).network, reference)  # re-imported
    remove_model("my-run", cache_dir=tmp_path, forget=True)
    with pytest.raises(ModelNotFoundError):
        load_model("my-run", cache_dir=tmp_path)


def test_add_needs_a_schedule_for_a_bare_checkpoint(tmp_path: Path, tiny_pt: Path) -> None:
    with pytest.raises(CheckpointError, match="--like MODEL or --config FILE"):
        add_model("bare", tiny_pt, cache_dir=tmp_path)
    with pytest.raises(UsageError, match="invalid model name"):
        add_model("../escape", tiny_pt, cache_dir=tmp_path)
    with pytest.raises(CheckpointError):  # the ffhq architecture does not fit the tiny weights
        add_model("wrong", tiny_pt, like="ffhq", cache_dir=tmp_path)
    assert not (tmp_path / "catalog.json").exists()


def test_add_file_for_a_builtin_drive_only_entry(
    tmp_path: Path, tiny_pt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-downloaded file fills a built-in entry, checked against its published sha256."""
    builtin = tmp_path / "builtin.json"
    entry = tiny_entry(tiny_pt, sha256=sha(tiny_pt))
    entry["files"][0]["sources"] = [{"gdrive": "1AbCdEfGhIjKlMnOp"}]
    builtin.write_text(json.dumps({"version": 1, "models": {"drive-only": entry}}))
    monkeypatch.setattr(catalog_module, "BUILTIN_CATALOG", builtin)
    cache = tmp_path / "cache"
    other = tmp_path / "other.pt"
    other.write_bytes(tiny_pt.read_bytes() + b"\0")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        add_model("drive-only", other, cache_dir=cache)
    with pytest.raises(UsageError, match="built-in"):
        add_model("drive-only", tiny_pt, like="ffhq", cache_dir=cache)
    resolved = add_model("drive-only", tiny_pt, cache_dir=cache)
    assert resolved.converted
    assert load_model("drive-only", cache_dir=cache, offline=True).format == "ilvr-cli"


def test_fetch_weights_entry(tmp_path: Path) -> None:
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"weights")
    files = [{"name": "w.pth", "sources": [{"path": str(weights)}]}]
    write_user_catalog(tmp_path, {"fid-test": {"kind": "weights", "title": "w", "files": files}})
    path = fetch("fid-test", cache_dir=tmp_path)
    assert path == tmp_path / "models" / "fid-test" / "w.pth" and path.read_bytes() == b"weights"
    weights.unlink()
    assert fetch("fid-test", cache_dir=tmp_path) == path  # cached


def test_diffusers_entry_with_bin_fallback(tmp_path: Path) -> None:
    """A multi-file diffusers entry: .safetensors not found anywhere, so the .bin is fetched; the folder
    is converted once and loads like the folder itself."""
    diffusers = require_extra("diffusers")
    from ilvr_cli.models.checkpoints import load_checkpoint
    from ilvr_cli.models.diffusers_format import unet_config_from_diffusers

    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=None,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    )  # fmt: skip
    published = tmp_path / "hub"
    model.save_pretrained(published, safe_serialization=False)
    scheduler = {"beta_schedule": "linear", "num_train_timesteps": 1000, "variance_type": "fixed_small"}
    (published / "scheduler_config.json").write_text(json.dumps(scheduler))
    assert not (published / "diffusion_pytorch_model.safetensors").exists()
    unet = unet_config_from_diffusers(json.loads((published / "config.json").read_text()))

    def local(name: str) -> dict:
        return {"name": name, "sources": [{"path": str(published / name)}]}

    weights = {
        **local("diffusion_pytorch_model.safetensors"),
        "fallback": local("diffusion_pytorch_model.bin"),
    }
    entry = {"kind": "diffusion", "title": "tiny ddpm", "format": "diffusers", "unet": unet.to_dict(),
             "diffusion": {"variance_type": "fixed_small"},
             "files": [local("config.json"), local("scheduler_config.json"), weights]}  # fmt: skip
    write_user_catalog(tmp_path / "cache", {"tiny-ddpm": entry})
    loaded = load_model("tiny-ddpm", cache_dir=tmp_path / "cache")
    assert resolve_model("tiny-ddpm", cache_dir=tmp_path / "cache").converted
    assert loaded.diffusion_config.variance_type == "fixed_small" and loaded.unet_config == unet
    direct = load_checkpoint(published)  # the same folder given as --model PATH
    assert same_weights(loaded.network, direct.network)
