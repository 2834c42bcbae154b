"""The FID Inception network: TensorFlow's 2015-12-05 Inception-v3 graph as pytorch-fid ports it.

The TF graph that FID was defined on (Heusel et al. 2017, TTUR) differs from torchvision's Inception-v3
in three places, all in the ``branch_pool`` of the mixed blocks:

- Mixed_5b..5d (InceptionA), Mixed_6b..6e (InceptionC) and Mixed_7b (InceptionE): the 3x3 average pool
  does not count the zero padding (``count_include_pad=False``, TF's ``avg_pool`` with SAME padding);
- Mixed_7c (the last InceptionE): a 3x3 *max* pool instead of the average pool;
- the classifier has 1008 outputs and there is no auxiliary head (irrelevant to the features).

The parameters keep torchvision's names, so the published ``pt_inception-2015-12-05-6726825d.pth``
loads strictly. :class:`FIDInception` returns the features pytorch-fid's ``InceptionV3`` returns for
``output_blocks=[BLOCK_INDEX_BY_DIM[dims]]``, averaged over space (``get_activations``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv_inception

from ilvr_cli.errors import CheckpointError, InputError, UsageError

#: Feature sizes pytorch-fid offers: the output of the first max pool (64), the second max pool (192),
#: the input of the auxiliary classifier (768) and the final average pool (2048).
FID_DIMS: tuple[int, ...] = (64, 192, 768, 2048)
#: Registry name of the published weights (see docs/metrics.md).
REGISTRY_NAME = "fid-inception"
#: Input side the network was trained at; pytorch-fid resizes every image to it.
INPUT_SIZE = 299

Pool = Callable[[Tensor], Tensor]


def _avg_pool_no_padding(x: Tensor) -> Tensor:
    """TF's 3x3/1 SAME average pool: the mean over the pixels inside the image only."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    """The 3x3/1 max pool of Mixed_7c's pool branch (a quirk of the 2015 TF graph)."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _chain(x: Tensor, *layers: nn.Module) -> Tensor:
    for layer in layers:
        x = layer(x)
    return x


class FIDInceptionA(tv_inception.InceptionA):
    """torchvision's InceptionA with TF's average pool (padding not counted)."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        return [
            self.branch1x1(x),
            _chain(x, self.branch5x5_1, self.branch5x5_2),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_avg_pool_no_padding(x)),
        ]


class FIDInceptionC(tv_inception.InceptionC):
    """torchvision's InceptionC with TF's average pool (padding not counted)."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        seven = (self.branch7x7_1, self.branch7x7_2, self.branch7x7_3)
        seven_dbl = (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        )
        return [
            self.branch1x1(x),
            _chain(x, *seven),
            _chain(x, *seven_dbl),
            self.branch_pool(_avg_pool_no_padding(x)),
        ]


class FIDInceptionE(tv_inception.InceptionE):
    """torchvision's InceptionE with a pluggable pool: TF's average pool (Mixed_7b) or max pool (Mixed_7c)."""

    def __init__(self, in_channels: int, pool: Pool) -> None:
        super().__init__(in_channels)
        self.pool = pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        mid = self.branch3x3_1(x)
        mid_dbl = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        return [
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(mid), self.branch3x3_2b(mid)], 1),
            torch.cat([self.branch3x3dbl_3a(mid_dbl), self.branch3x3dbl_3b(mid_dbl)], 1),
            self.branch_pool(self.pool(x)),
        ]


def build_fid_inception_v3() -> tv_inception.Inception3:
    """The whole FID Inception-v3 (1008 classes, no aux head), uninitialised, with the TF pool quirks.

    Its ``state_dict`` keys are exactly those of ``pt_inception-2015-12-05-6726825d.pth``.
    """
    net = tv_inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        setattr(net, name, FIDInceptionC(768, channels_7x7=channels))
    net.Mixed_7b = FIDInceptionE(1280, pool=_avg_pool_no_padding)
    net.Mixed_7c = FIDInceptionE(2048, pool=_max_pool)
    return net


def _stages(net: tv_inception.Inception3) -> list[nn.Sequential]:
    """pytorch-fid's four blocks: up to maxpool1, up to maxpool2, up to the aux head, up to the avg pool."""
    return [
        nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, stride=2)),
        nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(3, stride=2)),
        nn.Sequential(
            net.Mixed_5b,
            net.Mixed_5c,
            net.Mixed_5d,
            net.Mixed_6a,
            net.Mixed_6b,
            net.Mixed_6c,
            net.Mixed_6d,
            net.Mixed_6e,
        ),
        nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c),
    ]


def check_dims(dims: int) -> int:
    """``dims`` as an int if pytorch-fid offers it, else a UsageError naming the choices."""
    if dims not in FID_DIMS:
        raise UsageError(f"--dims must be one of {', '.join(map(str, FID_DIMS))}, got {dims}")
    return int(dims)


class FIDInception(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> FID features (B, dims), as pytorch-fid's ``InceptionV3`` + pooling.

    Inputs not at 299x299 are resized bilinearly (``align_corners=False``, no antialiasing) as in
    pytorch-fid's ``resize_input``; the [0, 1] -> [-1, 1] scaling (``normalize_input``) is done here too.
    Only the stages needed for ``dims`` are kept.
    """

    def __init__(self, net: tv_inception.Inception3, dims: int = 2048) -> None:
        super().__init__()
        self.dims = check_dims(dims)
        self.blocks = nn.ModuleList(_stages(net)[: FID_DIMS.index(self.dims) + 1])

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BasicConv2d's eval-mode BatchNorm into its convolution (one pass over memory, not two).

    Exact in real arithmetic; float32 results move by about 1e-6 relative. For inference only.
    """
    for module in model.modules():
        if isinstance(module, tv_inception.BasicConv2d) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return model


def random_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """Random weights in the published file's layout, for tests and benchmarks without the download.

    Convolutions are He-scaled and the BatchNorm statistics are near identity, so activations stay of
    order one through all 94 layers and feature comparisons are meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, value in build_fid_inception_v3().state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif value.ndim == 4:
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:  # BatchNorm bias and running mean, classifier
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
    return state


def _registry_weights() -> Path:
    """The cached published weights through the model registry, when it is available."""
    try:
        from ilvr_cli.registry import fetch
    except ImportError:
        raise UsageError(
            "the FID Inception weights are not available through the model registry in this version; "
            "download pt_inception-2015-12-05-6726825d.pth (see docs/metrics.md) and pass "
            "--inception-weights FILE"
        ) from None
    return Path(fetch(REGISTRY_NAME))


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """A ``state_dict`` saved with ``torch.save``, read with ``weights_only=True`` (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Inception weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise CheckpointError(f"cannot read Inception weights {path}: {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    return state


def load_fid_inception(
    weights_path: Path | None,
    device: torch.device | str = "cpu",
    dims: int = 2048,
    fuse: bool = True,
) -> FIDInception:
    """The FID Inception with the published weights, in eval mode on ``device``, returning ``dims`` features.

    ``weights_path`` is a local copy of ``pt_inception-2015-12-05-6726825d.pth``; ``None`` asks the model
    registry (name ``fid-inception``). ``fuse`` folds BatchNorm into the convolutions (faster, same
    features to float32 rounding).
    """
    check_dims(dims)
    path = _registry_weights() if weights_path is None else Path(weights_path)
    return fid_inception_from_state_dict(
        load_state_dict_file(path), dims, device, fuse=fuse, source=str(path)
    )


def fid_inception_from_state_dict(
    state: dict[str, Tensor],
    dims: int = 2048,
    device: torch.device | str = "cpu",
    fuse: bool = True,
    source: str = "the state_dict",
) -> FIDInception:
    """:class:`FIDInception` from a state_dict in the published layout (strict), ready for inference."""
    dims = check_dims(dims)
    net = build_fid_inception_v3()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise CheckpointError(
            f"{source} is not the FID Inception (pt_inception-2015-12-05-6726825d.pth): {detail}"
        ) from None
    return prepare(FIDInception(net, dims), device, fuse=fuse)


def prepare(model: FIDInception, device: torch.device | str, fuse: bool = True) -> FIDInception:
    """Eval mode, no gradients, optional BatchNorm folding, moved to ``device``."""
    model.eval().requires_grad_(False)
    if fuse:
        fuse_batchnorm(model)
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"cannot use device {device!r}: {error}") from None


__all__ = [
    "FID_DIMS",
    "FIDInception",
    "FIDInceptionA",
    "FIDInceptionC",
    "FIDInceptionE",
    "build_fid_inception_v3",
    "check_dims",
    "fid_inception_from_state_dict",
    "fuse_batchnorm",
    "load_fid_inception",
    "load_state_dict_file",
    "prepare",
    "random_state_dict",
]
