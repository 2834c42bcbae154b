"""The UNet against guided-diffusion's own outputs (tests/data/parity: random weights, all of them used)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ilvr_cli.config import UNetConfig
from ilvr_cli.errors import InputError
from ilvr_cli.models.checkpoints import load_checkpoint
from ilvr_cli.models.shape_inference import infer_unet_config
from ilvr_cli.models.unet import GroupNorm32, UNet, count_parameters, timestep_embedding

FIXTURES = ["adm_learned_sigma", "adm_fixed_sigma_cosine"]
ATOL = 1e-5
#: Fields a checkpoint's tensor shapes determine (heads and image size do not).
INFERABLE = (
    "model_channels",
    "num_res_blocks",
    "channel_mult",
    "in_channels",
    "out_channels",
    "attention_resolutions",
    "use_scale_shift_norm",
    "resblock_updown",
    "conv_resample",
)


@pytest.fixture(params=FIXTURES)
def case(request: pytest.FixtureRequest, parity_dir: Path) -> tuple[Path, dict, UNetConfig, dict]:
    folder = parity_dir / request.param
    flags = json.loads((folder / "flags.json").read_text())
    expected = load_file(str(folder / "expected.safetensors"))
    return folder, flags, UNetConfig.from_guided_diffusion_flags(flags), expected


def test_outputs_match_guided_diffusion(case) -> None:
    folder, _, config, expected = case
    network = load_checkpoint(folder / "model.pt", config).network
    x, t = expected["x"], expected["t_respaced"]
    with torch.no_grad():
        respaced = network(x, expected["timestep_map"][t])
        raw = network(x, t)
    torch.testing.assert_close(respaced, expected["model_out_respaced"], atol=ATOL, rtol=0)
    torch.testing.assert_close(raw, expected["model_out_at_raw_t"], atol=ATOL, rtol=0)


def test_each_image_alone_matches_guided_diffusion(case) -> None:
    """Batch 1 folds the scale-shift modulation into GroupNorm's affine: still guided-diffusion's numbers."""
    folder, _, config, expected = case
    network = load_checkpoint(folder / "model.pt", config).network
    x, t = expected["x"], expected["timestep_map"][expected["t_respaced"]]
    with torch.no_grad():
        for i in range(x.shape[0]):
            out = network(x[i : i + 1], t[i : i + 1])
            torch.testing.assert_close(out, expected["model_out_respaced"][i : i + 1], atol=ATOL, rtol=0)


def test_autograd_path_matches_and_inputs_stay_untouched(case) -> None:
    """With autograd on, nothing runs in place; without it, in-place activations never touch the input."""
    folder, _, config, expected = case
    network = load_checkpoint(folder / "model.pt", config).network
    x, t = expected["x"].clone(), expected["timestep_map"][expected["t_respaced"]]
    with torch.enable_grad():
        out = network(x.requires_grad_(), t)
    out.abs().sum().backward()  # an in-place op on a saved tensor would raise here
    torch.testing.assert_close(out.detach(), expected["model_out_respaced"], atol=ATOL, rtol=0)
    with torch.inference_mode():
        single = x.detach()[:1].clone()
        network(single, t[:1])
    torch.testing.assert_close(x.detach(), expected["x"], atol=0, rtol=0)
    torch.testing.assert_close(single, expected["x"][:1], atol=0, rtol=0)


def test_inferred_config_matches_flags(case) -> None:
    folder, flags, config, expected = case
    loaded = load_checkpoint(folder / "model.pt", image_size=flags["image_size"])
    inferred = loaded.unet_config
    assert {f: getattr(inferred, f) for f in INFERABLE} == {f: getattr(config, f) for f in INFERABLE}
    # with the two facts shapes cannot tell (heads), the inferred config is the flags' config
    assert (
        dataclasses.replace(inferred, num_heads=config.num_heads, num_head_channels=config.num_head_channels)
        == config
    )
    assert loaded.format == "guided-diffusion" and loaded.diffusion_config is None
    assert not loaded.network.training


def test_channels_last_and_float_timesteps(case) -> None:
    folder, _, config, expected = case
    network = load_checkpoint(folder / "model.pt", config).network
    x, t = expected["x"], expected["timestep_map"][expected["t_respaced"]]
    with torch.no_grad():
        out = network(x.contiguous(memory_format=torch.channels_last), t.float())
    torch.testing.assert_close(out, expected["model_out_respaced"], atol=ATOL, rtol=0)


def test_network_runs_in_float64(case) -> None:
    """A float64 copy agrees with the float32 reference: the code has no hidden precision casts."""
    folder, _, config, expected = case
    network = load_checkpoint(folder / "model.pt", config).network.double()
    with torch.no_grad():
        out = network(expected["x"].double(), expected["timestep_map"][expected["t_respaced"]])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), expected["model_out_respaced"], atol=ATOL, rtol=0)


def test_bfloat16_autocast_and_weights_stay_close(case) -> None:
    """bf16 autocast and bf16 weights: within 3% (relative L2) of guided-diffusion's float32 output."""
    folder, _, config, expected = case
    network = load_checkpoint(folder / "model.pt", config).network
    x, t = expected["x"], expected["timestep_map"][expected["t_respaced"]]
    reference = expected["model_out_respaced"]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        autocast_out = network(x, t)
    with torch.no_grad():
        bf16_out = network.to(torch.bfloat16)(x, t)
    for out in (autocast_out, bf16_out):
        assert out.dtype == torch.float32  # returned in the input's dtype
        assert ((out - reference).norm() / reference.norm()).item() < 3e-2


def test_groupnorm_runs_in_float32() -> None:
    norm = GroupNorm32(4, 8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 5, 5) * 100 + 50
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    reference = torch.nn.functional.group_norm(x.bfloat16().float(), 4, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out, reference.bfloat16(), atol=0, rtol=0)


def test_timestep_embedding_orders() -> None:
    t = torch.tensor([0, 7, 999])
    adm = timestep_embedding(t, 8)
    ddpm = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(adm[:, :4], torch.cos(t[:, None] * freqs))
    freqs_ho = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 3)
    torch.testing.assert_close(ddpm[:, :4], torch.sin(t[:, None] * freqs_ho))


def test_input_size_must_divide(case) -> None:
    folder, _, config, _ = case
    network = load_checkpoint(folder / "model.pt", config).network
    with pytest.raises(InputError, match="not a multiple of"):
        network(torch.zeros(1, 3, 31, 31), torch.zeros(1))


def _adm_256(**flags) -> UNetConfig:
    common = dict(
        image_size=256,
        num_head_channels=64,
        resblock_updown=True,
        use_scale_shift_norm=True,
        learn_sigma=True,
    )
    return UNetConfig.from_guided_diffusion_flags({**common, **flags})


def test_meta_device_parameter_counts() -> None:
    """ilvr_adm's FFHQ/AFHQ 256 model (93.6M) and ADM's LSUN 256 model (552.8M; ADM paper: 552M)."""
    ffhq = _adm_256(num_channels=128, num_res_blocks=1, attention_resolutions="16")
    lsun = _adm_256(num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8")
    assert round(count_parameters(ffhq) / 1e6, 1) == 93.6
    assert round(count_parameters(lsun) / 1e6, 1) == 552.8
    with torch.device("meta"):
        network = UNet(lsun)
    assert all(p.is_meta for p in network.parameters())
    # shape inference reads the same architecture back from the meta network's shapes
    assert infer_unet_config(network.state_dict()) == lsun
