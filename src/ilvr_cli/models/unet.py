"""One UNet for both model families: guided-diffusion's ADM and Ho et al.'s DDPM (diffusers layout).

The module tree, and so every ``state_dict()`` key, is exactly guided-diffusion's ``UNetModel``
(``time_embed.0``, ``input_blocks.K.0.in_layers.0``, ``middle_block``, ``output_blocks``, ``out.2``...), so
published guided-diffusion / ilvr_adm / P2-weighting checkpoints load strictly without renaming. Ho et al.'s
DDPM is the same network without scale-shift norm and with four small differences that
:class:`~ilvr_cli.config.UNetConfig` names: sin-first timestep embedding with frequency shift 1, GroupNorm
eps 1e-6, "TF same" down-sampling padding, and (optionally) the other QKV channel order.

Differences from guided-diffusion that do not change the numbers: attention goes through
``torch.nn.functional.scaled_dot_product_attention`` (its 1/sqrt(ch) scaling equals guided-diffusion's
1/sqrt(sqrt(ch)) on both q and k), and there is no gradient checkpointing or fp16 "torso" conversion
(use ``torch.autocast``; GroupNorm always runs in float32 like guided-diffusion's ``GroupNorm32``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilvr_cli.config import UNetConfig
from ilvr_cli.errors import CheckpointError, InputError

__all__ = ["UNet", "attention_heads", "count_parameters", "timestep_embedding"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (guided-diffusion ``nn.GroupNorm32``)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return self._normalize(x, weight, bias)

    def _normalize(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """GroupNorm of ``x`` in float32 with a float32 per-channel affine, cast back to ``x.dtype``.

        A bf16 ``x`` on the CPU goes to the mixed-dtype kernel (bf16 data, float32 affine, float32
        statistics): the same bits as the cast round trip for channels_last activations (as ``ilvr`` runs
        them; a contiguous one may differ by one bf16 step in a few values), without its two copies of the
        activation (3.3x faster on a 128x256x256 activation; tests/test_precision.py)."""
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)

    def modulated(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``norm(x) * (1 + scale) + shift`` for (B, C, 1, 1) scale and shift (ADM's scale-shift norm).

        For one image the modulation is folded into the norm's per-channel affine:
        ``gamma * (1 + scale)`` and ``beta * (1 + scale) + shift``. That saves a full pass over the
        activation. A batch needs per-image affines, which ``group_norm`` cannot take, so it uses one
        fused multiply-add after the norm.
        """
        if x.shape[0] != 1 or self.weight is None or self.bias is None:
            return torch.addcmul(shift, self(x), 1 + scale)
        gain = 1 + scale.float().flatten()
        weight = self.weight.float() * gain
        bias = torch.addcmul(shift.float().flatten(), self.bias.float(), gain)
        return self._normalize(x, weight, bias)


def timestep_embedding(
    timesteps: Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: int = 10000,
) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) float32 (Vaswani et al. 2017, sec. 3.5).

    Frequencies are ``exp(-ln(max_period) * i / (dim/2 - freq_shift))``. ``flip_sin_to_cos=True,
    freq_shift=0`` is guided-diffusion's ``nn.timestep_embedding`` ([cos, sin]); ``False, 1`` is Ho et al.'s
    ``get_timestep_embedding`` ([sin, cos], diffusers' ``flip_sin_to_cos`` / ``downscale_freq_shift``).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None]
    parts = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """``nn.Sequential`` that passes the embedding to :class:`TimestepBlock` children (guided-diffusion)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]  # takes the embedding too
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest 2x up-sampling, then an optional 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``) or 2x2 average pooling.

    ``padding="symmetric"`` pads 1 on every side (guided-diffusion); ``"tf_same"`` pads only right and bottom
    by 1 with no conv padding (Ho et al.'s TensorFlow code; diffusers' ``downsample_padding=0``).
    """

    def __init__(self, channels: int, use_conv: bool, padding: str = "symmetric") -> None:
        super().__init__()
        self.tf_same = use_conv and padding == "tf_same"
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.tf_same else 1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_same:
            x = F.pad(x, (0, 1, 0, 1))
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding (guided-diffusion ``ResBlock``).

    ``scale_shift``: FiLM, ``norm(h) * (1 + scale) + shift`` (ADM, Dhariwal & Nichol 2021 sec. 3);
    otherwise the projected embedding is added before the second norm (Ho et al. 2020). ``up``/``down``
    resample inside the block (ADM's ``resblock_updown``, after BigGAN).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        dropout: float = 0.0,
        scale_shift: bool = False,
        groups: int = 32,
        eps: float = 1e-5,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels, eps=eps), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        resample: nn.Module = (
            Upsample(channels, False) if up else Downsample(channels, False) if down else nn.Identity()
        )
        self.h_upd = self.x_upd = resample
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels, eps=eps),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # Without autograd, the activations and the residual add overwrite tensors that this block has
        # just created (never x), so they run in place: one pass over memory instead of two.
        inplace = not torch.is_grad_enabled()
        norm_in, _, conv_in = self.in_layers
        h = F.silu(norm_in(x), inplace=inplace)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = conv_in(h)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]
        norm_out, _, drop, conv_out = self.out_layers
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = cast(GroupNorm32, norm_out).modulated(h, scale, shift)
        else:
            h = norm_out(h.add_(e) if inplace else h + e)
        h = conv_out(drop(F.silu(h, inplace=inplace)))
        skip = self.skip_connection(x)
        return h.add_(skip) if inplace else skip + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions (guided-diffusion ``AttentionBlock``).

    ``qkv`` is a 1x1 conv to 3C channels. ``order="legacy"`` reads them head-major, [q_h, k_h, v_h] per head
    (``QKVAttentionLegacy``, all published checkpoints); ``"new"`` reads [q; k; v], each split into heads
    (``QKVAttention``).
    """

    def __init__(
        self, channels: int, heads: int, *, order: str = "legacy", groups: int = 32, eps: float = 1e-5
    ):
        super().__init__()
        self.heads = heads
        self.legacy = order == "legacy"
        self.norm = GroupNorm32(groups, channels, eps=eps)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        length = flat.shape[-1]
        qkv = self.qkv(self.norm(flat))
        ch = c // self.heads
        if self.legacy:
            q, k, v = qkv.reshape(b, self.heads, 3, ch, length).unbind(2)
        else:
            q, k, v = qkv.reshape(b, 3, self.heads, ch, length).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, length))
        h = flat + h if torch.is_grad_enabled() else h.add_(flat)  # h is this block's own output
        return h.reshape(b, c, *spatial)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (guided-diffusion ``zero_module``): each residual block starts as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class UNet(nn.Module):
    """The ADM / DDPM UNet built from a :class:`~ilvr_cli.config.UNetConfig` (guided-diffusion ``UNetModel``).

    ``forward(x, timesteps)``: ``x`` (B, in_channels, H, W) with H and W multiples of 2**(levels-1);
    ``timesteps`` (B,) int or float in the network's own (original, unrespaced) time. Returns
    (B, out_channels, H, W): eps, then the variance interpolation v when the config learns sigma.
    The forward pass never synchronises with the device, so it can be captured or compiled.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        _validate(config)
        self.config = config
        c = config
        emb_dim = 4 * c.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        widths = [int(m * c.model_channels) for m in c.channel_mult]
        self.input_blocks, skip_widths = self._encoder(widths)
        ch = skip_widths[-1]
        self.middle_block = TimestepEmbedSequential(self._res(ch), self._attn(ch), self._res(ch))
        self.output_blocks = self._decoder(widths, skip_widths)
        self.out = nn.Sequential(
            GroupNorm32(c.norm_groups, widths[0], eps=c.norm_eps),
            nn.SiLU(),
            _zero(nn.Conv2d(widths[0], c.out_channels, 3, padding=1)),
        )
        self._multiple = 2 ** (len(widths) - 1)

    def _res(
        self, ch_in: int, ch_out: int | None = None, *, up: bool = False, down: bool = False
    ) -> ResBlock:
        c = self.config
        return ResBlock(
            ch_in, 4 * c.model_channels, ch_out, dropout=c.dropout, scale_shift=c.use_scale_shift_norm,
            groups=c.norm_groups, eps=c.norm_eps, up=up, down=down,
        )  # fmt: skip

    def _attn(self, ch: int, upsample: bool = False) -> AttentionBlock:
        c = self.config
        heads = attention_heads(c, ch, upsample)
        return AttentionBlock(ch, heads, order=c.attention_order, groups=c.norm_groups, eps=c.norm_eps)

    def _has_attention(self, ds: int) -> bool:
        """Attention at down-sampling rate ``ds``: ``attention_resolutions`` are pixel sizes (script_util)."""
        return ds in {self.config.image_size // r for r in self.config.attention_resolutions}

    def _encoder(self, widths: list[int]) -> tuple[nn.ModuleList, list[int]]:
        """``input_blocks``: stem conv, then per level res blocks (+ attention) and a down-sampler."""
        c = self.config
        ch = widths[0]
        blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_widths = [ch]
        for level, width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, width)]
                ch = width
                if self._has_attention(2**level):
                    layers.append(self._attn(ch))
                blocks.append(TimestepEmbedSequential(*layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                down = (
                    self._res(ch, down=True)
                    if c.resblock_updown
                    else Downsample(ch, c.conv_resample, c.downsample_padding)
                )
                blocks.append(TimestepEmbedSequential(down))
                skip_widths.append(ch)
        return blocks, skip_widths

    def _decoder(self, widths: list[int], skip_widths: list[int]) -> nn.ModuleList:
        """``output_blocks``: deepest level first, res blocks on [h, skip] (+ attention), an up-sampler."""
        c = self.config
        skips = list(skip_widths)
        ch = skips[-1]
        blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skips.pop(), width)]
                ch = width
                if self._has_attention(2**level):
                    layers.append(self._attn(ch, upsample=True))
                if level and i == c.num_res_blocks:
                    layers.append(
                        self._res(ch, up=True) if c.resblock_updown else Upsample(ch, c.conv_resample)
                    )
                blocks.append(TimestepEmbedSequential(*layers))
        return blocks

    def forward(self, x: Tensor, timesteps: Tensor | float) -> Tensor:
        """Apply the network: (B, C, H, W) and (B,) timesteps -> (B, out_channels, H, W)."""
        self._check_input(x)
        stem = cast(TimestepEmbedSequential, self.input_blocks[0])
        dtype = cast(nn.Conv2d, stem[0]).weight.dtype
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = self.config
        t_emb = timestep_embedding(t, c.model_channels, c.time_embed_flip_sin_to_cos, c.time_embed_freq_shift)
        emb = self.time_embed(t_emb.to(dtype))
        h = x.to(dtype)
        skips: list[Tensor] = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        norm, _, conv = self.out
        return conv(F.silu(norm(h), inplace=not torch.is_grad_enabled())).to(x.dtype)

    def _check_input(self, x: Tensor) -> None:
        """Shape checks on Python ints only (no device synchronisation)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(
                f"the network expects (B, {self.config.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        if x.shape[2] % self._multiple or x.shape[3] % self._multiple:
            raise InputError(
                f"image size {x.shape[2]}x{x.shape[3]} is not a multiple of {self._multiple} "
                f"({len(self.config.channel_mult)} resolution levels); crop or resize it"
            )


def attention_heads(config: UNetConfig, channels: int, upsample: bool) -> int:
    """Attention heads at a width (guided-diffusion: ``num_head_channels`` wins over ``num_heads``)."""
    if config.num_head_channels != -1:
        return channels // config.num_head_channels
    if upsample and config.num_heads_upsample != -1:
        return config.num_heads_upsample
    return config.num_heads


def _validate(config: UNetConfig) -> None:
    """Raise CheckpointError for configs that guided-diffusion would reject with an assertion."""
    c = config
    widths = [int(m * c.model_channels) for m in c.channel_mult]
    if not widths or min(widths) <= 0 or c.num_res_blocks < 1:
        raise CheckpointError(
            f"invalid UNet config: channel_mult {c.channel_mult}, num_res_blocks {c.num_res_blocks}"
        )
    for ch in _unique(widths):
        if ch % c.norm_groups:
            raise CheckpointError(
                f"invalid UNet config: width {ch} is not divisible by norm_groups {c.norm_groups}"
            )
    attention_ds = {c.image_size // r for r in c.attention_resolutions}
    attention_widths = [w for level, w in enumerate(widths) if 2**level in attention_ds]
    for ch, upsample in [(w, up) for w in _unique([*attention_widths, widths[-1]]) for up in (False, True)]:
        heads = attention_heads(c, ch, upsample)
        if heads < 1 or ch % heads or (c.num_head_channels != -1 and ch % c.num_head_channels):
            raise CheckpointError(
                f"invalid UNet config: {ch} attention channels cannot be split into heads "
                f"(num_heads={c.num_heads}, num_head_channels={c.num_head_channels})"
            )


def _unique(values: Iterable[int]) -> list[int]:
    return sorted(set(values))


def count_parameters(config: UNetConfig) -> int:
    """Number of parameters of the network for ``config``, counted on the meta device (no memory used)."""
    with torch.device("meta"):
        network = UNet(config)
    return sum(p.numel() for p in network.parameters())
