"""The built-in catalog is well-formed and says what the publishers say; names and catalog files checked."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from extras import require_extra
from ilvr_cli.config import UNetConfig
from ilvr_cli.errors import ModelNotFoundError, UsageError
from ilvr_cli.registry.catalog import (
    BUILTIN_CATALOG,
    CatalogError,
    load_catalog,
    parse_entry,
    parse_families,
    read_catalog_file,
    validate_name,
)


@pytest.fixture(scope="module")
def catalog():
    return read_catalog_file(BUILTIN_CATALOG, "builtin")


def all_files(spec):
    return [alt for f in spec.files for alt in f.alternatives()]


def test_every_entry_is_well_formed(catalog) -> None:
    assert len(catalog) >= 17
    for name, spec in catalog.items():
        assert validate_name(name) == name and name == name.lower()
        assert spec.title and spec.license and spec.source_page.startswith("https://")
        for f in all_files(spec):
            assert f.sources, name
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert f.size is not None or f.approx_size is not None or f.name.endswith(".json")
            for source in f.sources:
                assert source.path is None
                assert source.package or source.gdrive or source.url.startswith("https://"), (name, source)
        if spec.kind == "diffusion":
            assert (
                spec.unet is not None
                and spec.diffusion is not None
                and spec.image_size == spec.unet.image_size
            )
            assert spec.diffusion.prediction == "eps" and spec.diffusion.num_timesteps == 1000


def test_configs_build_networks_of_the_stated_size(catalog) -> None:
    """Each architecture config builds (on the meta device) a UNet of exactly the stated parameter count."""
    from ilvr_cli.models.unet import count_parameters

    counted: dict[UNetConfig, int] = {}
    for spec in catalog.values():
        if spec.kind == "diffusion":
            if spec.unet not in counted:
                counted[spec.unet] = count_parameters(spec.unet)
            assert counted[spec.unet] == spec.params, spec.name
    # the sizes the publishers quote: 93.6M (ILVR/P2 lightweight ADM), 552.8M (guided-diffusion 256 uncond)
    assert round(catalog["ffhq"].params / 1e6, 1) == 93.6
    assert round(catalog["imagenet-256"].params / 1e6, 1) == 552.8
    assert catalog["ffhq"].unet.learn_sigma and catalog["imagenet-256"].unet.learn_sigma


# config.json of google/ddpm-ema-church-256 (the bedroom, cat and celebahq repositories share it) and of
# google/ddpm-cifar10-32, as published on the Hugging Face hub.
HO_256 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": False,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3,
    "resnet_time_scale_shift": "default", "sample_size": 256, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}  # fmt: skip
HO_CIFAR = {
    **HO_256,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "sample_size": 32,
}


@pytest.mark.parametrize(
    ("names", "hub_config"),
    [(("church", "bedroom", "cat", "celebahq-ddpm"), HO_256), (("cifar10",), HO_CIFAR)],
)
def test_ddpm_entries_match_the_published_diffusers_configs(catalog, names, hub_config) -> None:
    """The catalog's UNetConfig is what the diffusers adapter reads from config.json, and the reference
    diffusers UNet2DModel has the catalog's parameter count."""
    import torch

    diffusers = require_extra("diffusers")
    from ilvr_cli.models.diffusers_format import unet_config_from_diffusers

    from_hub = unet_config_from_diffusers(hub_config)
    kwargs = {k: v for k, v in hub_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        reference = diffusers.UNet2DModel(**kwargs)
    n_reference = sum(p.numel() for p in reference.parameters())
    for name in names:
        assert catalog[name].unet == from_hub, name
        assert catalog[name].params == n_reference, name


def test_issue_facts_are_transcribed(catalog) -> None:
    """Every URL, size, hash and Drive id of the registry issue is in the catalog, on the right entry."""
    ffhq = catalog["ffhq"].files[0]
    assert ffhq.name == "diffusion_ffhq_10m.pt" and ffhq.size == 374_417_833
    assert ffhq.sha256 == "81d535743156ec6be34d8668e6920da94f0614074d7793a16c8fa9e306237faa"
    assert ffhq.sources[0].url == "https://huggingface.co/deepinv/diffunet/resolve/main/diffusion_ffhq_10m.pt"
    flags = catalog["ffhq"].flags
    assert (flags["attention_resolutions"], flags["num_channels"], flags["num_head_channels"]) == (
        "16",
        128,
        64,
    )
    assert flags["num_res_blocks"] == 1 and flags["resblock_updown"] and flags["use_scale_shift_norm"]
    assert flags["learn_sigma"] and flags["noise_schedule"] == "linear" and flags["diffusion_steps"] == 1000
    drive = {
        "afhq-dog": ("afhqdog_p2.pt", "15U67hTlrgMCmRdYUPM2CausHSsZDORkO"),
        "afhq-dog-4m": ("afhq_dog_4m.pt", "14OG_o3aa8Hxmfu36IIRyOgRwEP6ngLdo"),
        "celebahq": ("celebahq_p2.pt", "1iCkgwoYvJTq0sTKo1xpRtuyRYGX7mrLP"),
        "metfaces": ("metface_p2.pt", "1swjgSB1WFF9JnBR6W6Newnfzdyo1nPYf"),
        "cub": ("cub_p2.pt", "1hQ2sJCVHEXPumDmz4VAkZcJHUe-07Tef"),
        "flowers": ("flower_p2.pt", "1d6DDKAEu_iwNzxlBaVrETHBcc6oF5jYf"),
    }
    for name, (file_name, file_id) in drive.items():
        (f,) = catalog[name].files
        assert (f.name, f.sources[0].gdrive) == (file_name, file_id), name
        # the same architecture, written once: the family adm-light (see test_families_are_written_once)
        assert catalog[name].family == "adm-light"
        assert (
            catalog[name].unet == catalog["ffhq"].unet
            and catalog[name].diffusion == catalog["ffhq"].diffusion
        )
    base = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
    gd_files = {"lsun-bedroom": "lsun_bedroom.pt", "lsun-cat": "lsun_cat.pt", "lsun-horse": "lsun_horse.pt",
                "imagenet-256": "256x256_diffusion_uncond.pt"}  # fmt: skip
    for name, file_name in gd_files.items():
        (f,) = catalog[name].files
        assert f.sources[0].url == base + file_name
        flags = catalog[name].flags
        assert flags["attention_resolutions"] == "32,16,8" and flags["num_channels"] == 256
        assert flags["num_head_channels"] == 64 and flags["num_res_blocks"] == 2
        assert flags["resblock_updown"] and flags["use_scale_shift_norm"] and flags["learn_sigma"]
    assert (
        catalog["imagenet-256"].files[0].sha256
        == "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1"
    )
    assert catalog["lsun-horse"].flags["dropout"] == 0.1
    repos = {"church": "ddpm-ema-church-256", "bedroom": "ddpm-ema-bedroom-256", "cat": "ddpm-ema-cat-256",
             "celebahq-ddpm": "ddpm-ema-celebahq-256", "cifar10": "ddpm-cifar10-32"}  # fmt: skip
    for name, repo in repos.items():
        files = [(f.name, f.sources[0].url) for f in all_files(catalog[name])]
        base = f"https://huggingface.co/google/{repo}/resolve/main/"
        names = ["config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors",
                 "diffusion_pytorch_model.bin"]  # fmt: skip
        assert files == [(n, base + n) for n in names]
        variance = "fixed_large" if name == "cifar10" else "fixed_small"
        assert catalog[name].diffusion.variance_type == variance
    fid = catalog["fid-inception"]
    assert fid.kind == "weights" and fid.files[0].size == 95_628_359
    # The file name carries the start of the sha256 (pytorch-fid's convention): the full hash must agree.
    assert fid.files[0].sha256 is not None and fid.files[0].name.endswith(f"-{fid.files[0].sha256[:8]}.pth")
    assert fid.files[0].sources[0].url == (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
    )


def test_families_are_written_once() -> None:
    """catalog.json names each shared architecture once, under "families"; the entries that use it hold only
    what differs, and every family is used."""
    data = json.loads(BUILTIN_CATALOG.read_text(encoding="utf-8"))
    families = parse_families(data["families"], "catalog.json")
    members: dict[str, list[str]] = {name: [] for name in families}
    blocks: list[str] = []
    for name, entry in data["models"].items():
        if entry.get("family") in families:
            members[entry["family"]].append(name)
            family = families[entry["family"]]
            for key, value in entry.items():  # nothing repeated from the family
                if isinstance(value, dict) and isinstance(family.get(key), dict):
                    assert all(family[key].get(k) != v for k, v in value.items()), (name, key)
                else:
                    assert family.get(key) != value, (name, key)
        else:  # a complete architecture of its own
            blocks += [json.dumps(entry[k], sort_keys=True) for k in ("flags", "unet") if k in entry]
    assert len(blocks) == len(set(blocks)), "an architecture block is repeated: make it a family"
    assert members == {
        "adm-light": ["ffhq", "afhq-dog", "afhq-dog-4m", "celebahq", "metfaces", "cub", "flowers"],
        "adm": ["lsun-bedroom", "lsun-cat", "lsun-horse", "imagenet-256"],
        "ddpm": ["church", "bedroom", "cat", "celebahq-ddpm", "cifar10"],
    }


FAMILIES = {
    "tiny": {
        "image_size": 64,
        "params": 1,
        "flags": {"image_size": 64, "num_channels": 32, "num_res_blocks": 1, "learn_sigma": True},
    }
}
TINY = {"family": "tiny", "title": "t", "files": [{"name": "w.pt", "sources": [{"url": "https://e.com/w"}]}]}


def test_a_family_is_expanded() -> None:
    """An entry naming a family is built as if the family's fields were written in the entry."""
    spec = parse_entry("m", TINY, families=FAMILIES)
    written_out = parse_entry("m", {**TINY, "family": "label-only", **FAMILIES["tiny"]})
    assert spec == dataclasses.replace(written_out, family="tiny") and spec.params == 1
    assert spec.unet == UNetConfig.from_guided_diffusion_flags(FAMILIES["tiny"]["flags"])
    assert spec.unet.out_channels == 6 and spec.raw["flags"] == FAMILIES["tiny"]["flags"]


def test_an_entry_overrides_a_family_field() -> None:
    """A field the entry gives replaces the family's; flags/unet/diffusion are overridden key by key."""
    spec = parse_entry("m", {**TINY, "params": 2, "flags": {"dropout": 0.1}}, families=FAMILIES)
    assert spec.params == 2 and spec.unet.dropout == 0.1
    assert spec.flags == {**FAMILIES["tiny"]["flags"], "dropout": 0.1}
    assert spec.unet.model_channels == 32 and spec.unet.image_size == 64  # the rest is the family's
    assert FAMILIES["tiny"]["flags"].get("dropout") is None  # the family itself is unchanged
    resized = {**TINY, "image_size": 32, "flags": {"image_size": 32}}
    assert parse_entry("m", resized, families=FAMILIES).image_size == 32
    with pytest.raises(CatalogError, match="image_size 32 differs from the UNet's 64"):
        parse_entry("m", {**TINY, "image_size": 32}, families=FAMILIES)


def test_an_unknown_family_is_an_error_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"version": 1, "models": {"my-faces": {**TINY, "family": "adm-lite"}}}))
    with pytest.raises(CatalogError) as error:
        load_catalog(tmp_path)
    message = str(error.value)
    assert str(path) in message and "entry 'my-faces'" in message
    assert "family 'adm-lite' is not defined (did you mean adm-light" in message
    # an entry with its own architecture keeps working with any family label (catalogs older than families)
    assert parse_entry("m", {**TINY, "family": "label", **FAMILIES["tiny"]}).family == "label"


@pytest.mark.parametrize(
    ("families", "message"),
    [
        ([], "'families' must be an object"),
        ({"x": []}, "family 'x': a family is an object"),
        ({"x": {"title": "t"}}, "family 'x': unknown keys \\['title'\\]"),
        ({"x": {"flags": "16"}}, "family 'x': 'flags' must be an object"),
        ({"../x": {}}, "family '../x'"),
    ],
)
def test_malformed_families_are_rejected(tmp_path: Path, families: object, message: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"version": 1, "families": families, "models": {}}))
    with pytest.raises(CatalogError, match=message):
        read_catalog_file(path, "user")


def test_user_catalog_names_builtin_and_own_families(tmp_path: Path, catalog) -> None:
    """A user's entries may name a built-in family or one of their own (theirs win on a name clash), and
    entries in the format written before families existed (full flags, any family label) load as before."""
    old_format = {**catalog["ffhq"].raw, "family": "user", "files": TINY["files"]}
    models = {
        "fine-tuned": {**TINY, "family": "adm-light"},
        "mine": {**TINY, "family": "tiny"},
        "old": old_format,
        "labelled": {**old_format, "family": "adm-light"},
    }
    (tmp_path / "catalog.json").write_text(json.dumps({"version": 1, "families": FAMILIES, "models": models}))
    user = load_catalog(tmp_path)
    for name in ("fine-tuned", "old", "labelled"):
        spec = user.get(name)
        assert (spec.unet, spec.diffusion, spec.params) == (
            catalog["ffhq"].unet,
            catalog["ffhq"].diffusion,
            catalog["ffhq"].params,
        ), name
        assert spec.origin == "user" and spec.flags == catalog["ffhq"].flags
    assert user.get("mine").unet.model_channels == 32 and user.get("ffhq") == catalog["ffhq"]
    assert user.get("old").family == "user" and user.get("fine-tuned").family == "adm-light"
    shadowing = {"adm-light": FAMILIES["tiny"]}
    (tmp_path / "catalog.json").write_text(
        json.dumps({"version": 1, "families": shadowing, "models": {"m": {**TINY, "family": "adm-light"}}})
    )
    shadowed = load_catalog(tmp_path)
    assert shadowed.get("m").unet.image_size == 64 and shadowed.get("ffhq") == catalog["ffhq"]


def test_guided_diffusion_flags_give_the_published_configs(catalog) -> None:
    unet = catalog["ffhq"].unet
    assert (unet.model_channels, unet.num_res_blocks, unet.attention_resolutions) == (128, 1, (16,))
    assert unet.channel_mult == (1, 1, 2, 2, 4, 4) and unet.out_channels == 6 and unet.num_head_channels == 64
    assert catalog["ffhq"].diffusion.variance_type == "learned_range"
    assert catalog["lsun-cat"].unet.attention_resolutions == (32, 16, 8)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a\\b", "..", "a..b", ".hidden", "x" * 65, "a b", "é"])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(UsageError):
        validate_name(bad)


def test_unknown_name_suggests_the_closest(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    with pytest.raises(ModelNotFoundError, match="did you mean ffhq"):
        catalog.get("ffqh")
    with pytest.raises(ModelNotFoundError, match="afhq-dog"):
        catalog.get("afhq_dog")
    with pytest.raises(UsageError, match="invalid model name"):
        catalog.get("../../etc")


GOOD = {
    "kind": "weights",
    "title": "t",
    "files": [{"name": "w.pt", "sources": [{"url": "https://example.com/w"}]}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"files": [{"name": "w.pt", "sources": [{"url": "http://example.com/w"}]}]}, "only https"),
        ({"files": [{"name": "w.pt", "sources": [{"url": "http://127.0.0.1/w"}]}]}, "only https"),
        (
            {"files": [{"name": "w.pt", "sources": [{"path": "/tmp/w.pt"}]}]},
            "only allowed in your own catalog",
        ),
        ({"files": [{"name": "../w.pt", "sources": [{"url": "https://e.com/w"}]}]}, "plain file name"),
        (
            {"files": [{"name": "w.pt", "sha256": "abc", "sources": [{"url": "https://e.com/w"}]}]},
            "64 lowercase",
        ),
        ({"files": [{"name": "w.pt", "sources": [{"gdrive": "no/slash"}]}]}, "Drive file id"),
        ({"files": []}, "non-empty"),
        ({"surprise": 1}, "unknown keys"),
        ({"kind": "diffusion"}, "needs 'unet' or 'flags'"),
        ({"kind": "diffusion", "flags": {"class_cond": True}}, "unconditional"),
        ({"kind": "diffusion", "unet": {"bogus": 1}, "diffusion": {}}, "bad model config"),
    ],
)
def test_malformed_entries_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_entry("m", {**GOOD, **change})


def test_user_catalog_may_use_local_sources_and_is_merged(tmp_path: Path) -> None:
    entry = {
        **GOOD,
        "files": [{"name": "w.pt", "sources": [{"url": "http://localhost:8000/w"}, {"path": "/x"}]}],
    }
    (tmp_path / "catalog.json").write_text(json.dumps({"version": 1, "models": {"mine": entry}}))
    catalog = load_catalog(tmp_path)
    assert catalog.get("mine").origin == "user" and catalog.get("ffhq").origin == "builtin"
    (tmp_path / "catalog.json").write_text("{not json")
    with pytest.raises(CatalogError, match="catalog.json"):
        load_catalog(tmp_path)


def test_task_defaults_merge(catalog) -> None:
    assert catalog["ffhq"].task_defaults("translate") == {"respacing": "100", "factor": 32, "range_t": 20}
    assert catalog["ffhq"].task_defaults("edit") == {"respacing": "100"}
