"""phi_N: MATLAB-imresize matrices against ilvr_adm's Resizer (parity fixture) and independent resamplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import matlab_reference
from ilvr_cli.errors import UsageError
from ilvr_cli.ilvr.lowpass import KERNELS, LowPass, axis_operators, resize_matrix

#: kernel name -> (half support at scale 1, torch interpolate mode or None, PIL filter or None)
REFERENCES = {
    "cubic": (2, "bicubic", Image.BICUBIC),
    "linear": (1, "bilinear", Image.BILINEAR),
    "lanczos3": (3, None, Image.LANCZOS),
    "lanczos2": (2, None, None),
}


@pytest.fixture(scope="module")
def fixture(parity_dir):
    from safetensors.torch import load_file

    return load_file(str(parity_dir / "lowpass_bicubic" / "expected.safetensors"))


def _rand(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- parity with ilvr_adm's Resizer (MATLAB imresize), borders included ---


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_matches_ilvr_adm_resizer(fixture, factor):
    y = fixture["y"]
    lp = LowPass(64, 64, factor)
    assert lp.down(y).shape == fixture[f"down_{factor}"].shape
    torch.testing.assert_close(lp.down(y), fixture[f"down_{factor}"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lp(y), fixture[f"lowpass_{factor}"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lp.up(lp.down(y)), fixture[f"lowpass_{factor}"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_matches_fixture_in_float64(fixture, factor):
    """The float32 fixture is reproduced by the float64 matrices too (the error is the fixture's rounding)."""
    lp = LowPass(64, 64, factor, dtype=torch.float64)
    out = lp(fixture["y"].double())
    assert (out - fixture[f"lowpass_{factor}"].double()).abs().max().item() < 1e-6


# --- the matrices ---


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(("n_in", "n_out"), [(64, 16), (64, 8), (16, 64), (48, 3), (7, 7), (10, 1)])
def test_rows_sum_to_one(kernel, n_in, n_out):
    m = resize_matrix(n_in, n_out, kernel)
    assert m.shape == (n_out, n_in) and m.dtype == torch.float64
    torch.testing.assert_close(m.sum(dim=1), torch.ones(n_out, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_scale_one_is_identity(kernel):
    torch.testing.assert_close(resize_matrix(20, 20, kernel), torch.eye(20, dtype=torch.float64))


def _interior(length: int, out: int, half_support: float) -> np.ndarray:
    """Output samples whose kernel window lies inside the input (no border folding or clipping)."""
    centre = (np.arange(out) + 0.5) * length / out - 0.5
    reach = half_support * max(length / out, 1.0)
    return (centre - reach >= 0) & (centre + reach <= length - 1)


def _resize_torch(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    t = torch.from_numpy(img)[None, None].double()
    return F.interpolate(t, size=size, mode=mode, antialias=True, align_corners=False)[0, 0].numpy()


def _resize_pil(img: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    out = Image.fromarray(img.astype(np.float32), mode="F").resize((size[1], size[0]), resample=resample)
    return np.asarray(out, dtype=np.float64)


def _resize_ours(img: np.ndarray, size: tuple[int, int], kernel: str) -> np.ndarray:
    rows, cols = resize_matrix(img.shape[0], size[0], kernel), resize_matrix(img.shape[1], size[1], kernel)
    return (rows @ torch.from_numpy(img).double() @ cols.T).numpy()


@pytest.mark.parametrize(
    ("kernel", "size"),
    [
        (k, s)
        for k in ("cubic", "linear", "lanczos3")
        for s in ((32, 24), (16, 12), (8, 6), (128, 96), (192, 144))
        if (k, s) != ("lanczos3", (8, 6))  # lanczos3 at 1/8 has no pixel clear of both borders
    ],
)
def test_interior_matches_independent_resamplers(kernel, size):
    """Away from the borders MATLAB imresize, torch's antialiased interpolate (Keys a=-0.5 / triangle,
    float64, exact) and PIL's resize (float32 'F' images) are the same convolution."""
    half, mode, pil = REFERENCES[kernel]
    img = _rand(64, 48, seed=1).numpy()
    ours = _resize_ours(img, size, kernel)
    inner = _interior(64, size[0], half)[:, None] & _interior(48, size[1], half)[None, :]
    assert inner.any()
    if mode is not None:
        np.testing.assert_allclose(ours[inner], _resize_torch(img, size, mode)[inner], atol=1e-12, rtol=0)
    np.testing.assert_allclose(ours[inner], _resize_pil(img, size, pil)[inner], atol=2e-6, rtol=0)
    if not (kernel == "linear" and size[0] > 64):  # a triangle up-sampler never reaches past the edge pixel
        # they differ at the borders (clipped vs mirrored windows), so the interior mask matters
        assert np.abs(ours - _resize_pil(img, size, pil)).max() > 1e-3


@pytest.mark.parametrize("kernel", ["cubic", "linear", "lanczos3"])
@pytest.mark.parametrize(("factor", "shrink"), [(4, True), (8, True), (4, False), (2, False)])
def test_borders_are_symmetric_padding(kernel, factor, shrink):
    """Borders: resampling the explicitly mirror-padded image (np.pad 'symmetric', MATLAB's [1:n, n:-1:1])
    with an independent resampler and cropping gives our result everywhere."""
    half, mode, pil = REFERENCES[kernel]
    img = _rand(*((32, 24) if shrink else (8, 6)), seed=2).numpy()
    scale = 1 / factor if shrink else factor
    pad = 8 * factor if shrink else 8  # a multiple of the input step so the sample grids align
    padded = np.pad(img, pad, mode="symmetric")
    out_size = (round(img.shape[0] * scale), round(img.shape[1] * scale))
    big = (round(padded.shape[0] * scale), round(padded.shape[1] * scale))
    crop = round(pad * scale)
    if mode is not None:
        ref = _resize_torch(padded, big, mode)[crop : crop + out_size[0], crop : crop + out_size[1]]
        tol = 1e-12
    else:
        ref = _resize_pil(padded, big, pil)[crop : crop + out_size[0], crop : crop + out_size[1]]
        tol = 2e-6
    np.testing.assert_allclose(_resize_ours(img, out_size, kernel), ref, atol=tol, rtol=0)


@pytest.mark.parametrize("kernel", ["cubic", "lanczos2"])
@pytest.mark.parametrize(("n_in", "n_out"), [(32, 8), (8, 32), (24, 12), (75, 38), (10, 5)])
def test_matrices_match_per_pixel_matlab_loop(kernel, n_in, n_out):
    """Borders included, at sizes the fixture does not cover: against a per-pixel loop written from
    imresize.m (tests/matlab_reference.py; no library ships lanczos2)."""
    expected = matlab_reference.imresize_matrix(n_in, n_out, kernel)
    np.testing.assert_allclose(resize_matrix(n_in, n_out, kernel).numpy(), expected, atol=1e-12, rtol=0)


def test_not_antialiased_keeps_kernel_width():
    m = resize_matrix(64, 16, "cubic", antialias=False)
    assert (m[5] != 0).sum() <= 4  # 4 taps of the unstretched kernel
    assert (resize_matrix(64, 16, "cubic")[5] != 0).sum() == 16  # stretched by N=4


# --- LowPass as a linear operator ---


def test_linear_operator_on_batch_and_kronecker():
    lp = LowPass(12, 8, 4, dtype=torch.float64)
    x = _rand(3, 2, 12, 8, seed=4)
    batch = lp(x)
    for b in range(3):
        for c in range(2):
            torch.testing.assert_close(batch[b, c], lp(x[b, c]), atol=1e-14, rtol=0)
    dense = torch.kron(lp.rows.phi, lp.cols.phi)  # row-major vec(x): (P_h kron P_w) vec(x) = vec(P_h x P_w^T)
    torch.testing.assert_close(batch.reshape(3, 2, -1), x.reshape(3, 2, -1) @ dense.T, atol=1e-13, rtol=0)
    torch.testing.assert_close(lp(2.0 * x + x.flip(0)), 2.0 * batch + batch.flip(0), atol=1e-13, rtol=0)


def test_down_up_shapes_and_composition():
    lp = LowPass(48, 64, 8)
    x = _rand(2, 3, 48, 64, seed=5, dtype=torch.float32)
    low = lp.down(x)
    assert low.shape == (2, 3, 6, 8) and lp.low_size == (6, 8)
    assert lp.up(low).shape == x.shape
    torch.testing.assert_close(lp(x), lp.up(low), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("factor", [4, 8, 16])
def test_non_square_constant_preserved(kernel, factor):
    """48x64 with N=4,8,16: a constant image stays constant through down, up and phi."""
    lp = LowPass(48, 64, factor, kernel=kernel, dtype=torch.float64)
    const = torch.full((1, 3, 48, 64), 0.37, dtype=torch.float64)
    torch.testing.assert_close(
        lp.down(const), torch.full((1, 3, 48 // factor, 64 // factor), 0.37, dtype=torch.float64)
    )
    torch.testing.assert_close(lp.up(lp.down(const)), const)
    torch.testing.assert_close(lp(const), const)


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_non_square_is_separable_per_axis(factor):
    """A non-square operator equals the square ones applied along each axis."""
    x = _rand(1, 1, 48, 64, seed=6)
    lp = LowPass(48, 64, factor, dtype=torch.float64)
    rows_only = LowPass(48, 48, factor, dtype=torch.float64).rows.phi
    cols_only = LowPass(64, 64, factor, dtype=torch.float64).cols.phi
    torch.testing.assert_close(lp(x), rows_only @ x @ cols_only.T, atol=1e-13, rtol=0)


def test_bicubic_up_is_scaled_transpose_of_down():
    """For integer N the cubic up-sampler is N D^T, so bicubic phi is symmetric (but not a projection)."""
    ops = axis_operators(64, 4, "cubic")
    torch.testing.assert_close(ops.up, 4 * ops.down.T, atol=1e-14, rtol=0)


def test_bicubic_phi_is_not_idempotent(fixture):
    y = fixture["y"].double()
    for factor in (2, 4, 8):
        lp = LowPass(64, 64, factor, dtype=torch.float64)
        p = lp(y)
        rel = ((lp(p) - p).norm() / p.norm()).item()
        assert 0.1 < rel < 0.5, rel  # measured 0.28, 0.25, 0.24 for N = 2, 4, 8 (docs/ilvr.md)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(("height", "width", "factor"), [(64, 64, 4), (48, 64, 8), (32, 32, 32)])
def test_exact_mode_is_orthogonal_projection(kernel, height, width, factor):
    lp = LowPass(height, width, factor, kernel=kernel, exact=True, dtype=torch.float64)
    y = _rand(2, 3, height, width, seed=7)
    p = lp(y)
    torch.testing.assert_close(lp(p), p, atol=1e-12, rtol=0)  # idempotent
    for axis in (lp.rows, lp.cols):
        torch.testing.assert_close(axis.phi, axis.phi.T, atol=1e-12, rtol=0)  # symmetric
    torch.testing.assert_close(lp.down(p), lp.down(y), atol=1e-12, rtol=0)  # keeps the low-res image
    # <phi y, y - phi y> = 0: the residual is orthogonal to the projection
    assert abs((p * (y - p)).sum().item()) < 1e-9 * y.norm().item() ** 2
    # the same down-sampler as the bicubic filter
    torch.testing.assert_close(lp.rows.down, axis_operators(height, factor, kernel).down)


def test_low_res_input_goes_through_up():
    lp = LowPass(32, 32, 4)
    low = _rand(1, 3, 8, 8, seed=8, dtype=torch.float32)
    torch.testing.assert_close(lp.up(low), lp.rows.up.float() @ low @ lp.cols.up.float().T)
    torch.testing.assert_close(lp.up(torch.full_like(low, -0.5)), torch.full((1, 3, 32, 32), -0.5))


def test_dtype_and_device_follow_the_input():
    lp = LowPass(16, 16, 2)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = _rand(1, 1, 16, 16, seed=9).to(dtype)
        assert lp(x).dtype == dtype and lp.down(x).dtype == dtype
    assert axis_operators(16, 2, "cubic", False) is axis_operators(16, 2, "cubic", False)  # built once


def test_factor_one_is_identity():
    x = _rand(1, 3, 10, 6, seed=10)
    torch.testing.assert_close(LowPass(10, 6, 1, dtype=torch.float64)(x), x)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((64, 64, 3), "must divide"),
        ((48, 64, 32), "must divide"),
        ((64, 64, 0), ">= 1"),
        ((64, 64, -2), ">= 1"),
        ((64, 64, 2.0), "integer"),
        ((0, 64, 2), "positive"),
    ],
)
def test_bad_factor_is_a_usage_error(args, match):
    with pytest.raises(UsageError, match=match):
        LowPass(*args)


def test_bad_kernel_and_shape_are_usage_errors():
    with pytest.raises(UsageError, match="kernel"):
        LowPass(64, 64, 2, kernel="box")
    lp = LowPass(64, 64, 2)
    with pytest.raises(UsageError, match="64x64"):
        lp(torch.zeros(1, 3, 32, 32))
    with pytest.raises(UsageError, match="32x32"):
        lp.up(torch.zeros(1, 3, 64, 64))
    with pytest.raises(UsageError, match="floating"):
        lp(torch.zeros(1, 3, 64, 64, dtype=torch.int64))
