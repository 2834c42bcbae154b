"""NIQE against the MATLAB release's scores (tests/data/niqe) and its building blocks against references."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import numpy as safetensors_numpy

import matlab_reference
from ilvr_cli.errors import InputError
from ilvr_cli.metrics import niqe as niqe_lib


@pytest.fixture(scope="module")
def expected(niqe_dir: Path) -> dict:
    return json.loads((niqe_dir / "expected.json").read_text())


@pytest.mark.parametrize("name", ["image1.png", "image2.png", "image4.png"])
def test_scores_match_matlab_release(niqe_dir: Path, expected: dict, name: str) -> None:
    score = niqe_lib.niqe_file(niqe_dir / name)
    assert abs(score - expected["matlab_scores"][name]) <= expected["tolerance"]


def test_shipped_parameters_equal_the_release(niqe_dir: Path) -> None:
    from scipy import io as scipy_io  # the test extra reads the release's .mat

    mat = scipy_io.loadmat(niqe_dir / "modelparameters.mat")
    mu, cov = niqe_lib.load_niqe_params()
    np.testing.assert_array_equal(mu, mat["mu_prisparam"].reshape(-1))
    np.testing.assert_array_equal(cov, mat["cov_prisparam"])


def test_licence_notice_ships_with_the_parameters(niqe_dir: Path) -> None:
    notice = resources.files("ilvr_cli").joinpath("data", "NIQE_LICENSE.txt").read_text(encoding="utf-8")
    readme = (niqe_dir / "NOTICE.txt").read_text(encoding="latin-1").replace("\r\n", "\n")
    start = readme.index("-----------COPYRIGHT NOTICE STARTS")
    end = readme.index("-----------COPYRIGHT NOTICE ENDS")
    for line in readme[start:end].splitlines():
        assert line.rstrip() in notice


def test_imresize_half_matches_ilvr_adm_resizer(parity_dir: Path) -> None:
    """MATLAB imresize(0.5) (bicubic, antialiased): tests/data/parity/lowpass_bicubic's down_2."""
    data = safetensors_numpy.load_file(parity_dir / "lowpass_bicubic" / "expected.safetensors")
    for b in range(data["y"].shape[0]):
        for c in range(data["y"].shape[1]):
            ours = niqe_lib.imresize_half(data["y"][b, c].astype(np.float64))
            np.testing.assert_allclose(ours, data["down_2"][b, c], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("in_len", "out_len"), [(96, 48), (192, 96), (75, 38), (10, 5)])
def test_contributions_match_per_pixel_matlab_loop(in_len: int, out_len: int) -> None:
    """Odd sizes and borders: against a loop written from imresize.m (tests/matlab_reference.py)."""
    weights, indices = niqe_lib.imresize_contributions(in_len, out_len)
    dense = np.zeros((out_len, in_len))
    np.add.at(dense, (np.arange(out_len)[:, None].repeat(weights.shape[1], 1), indices), weights)
    np.testing.assert_allclose(dense, matlab_reference.imresize_matrix(in_len, out_len), atol=1e-12, rtol=0)


def test_gaussian_filter_is_imfilter_replicate() -> None:
    """The separable filter equals a 2-D correlation with fspecial's window and replicated borders."""
    from scipy import ndimage  # the test extra

    x = np.arange(-3, 4)
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
    window /= window.sum()
    image = np.random.default_rng(0).random((40, 31)) * 255
    expected = ndimage.correlate(image, window, mode="nearest")
    np.testing.assert_allclose(niqe_lib.gaussian_filter(image), expected, atol=1e-10, rtol=0)


def test_rgb2gray_rounds_like_matlab() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = niqe_lib.rgb2gray(rgb)
    exact = rgb.astype(np.float64) @ np.array(niqe_lib.RGB2GRAY_WEIGHTS)
    assert gray.dtype == np.uint8
    assert np.abs(gray - exact).max() <= 0.5 + 1e-9
    half_up = np.floor(exact + 0.5)  # MATLAB rounds halves away from zero (numpy's round goes to even)
    np.testing.assert_array_equal(gray, half_up.astype(np.uint8))
    np.testing.assert_allclose(niqe_lib.rgb2gray(rgb.astype(np.float64)), exact)  # double input: no rounding


def test_matlab_colon_is_symmetric_and_complete() -> None:
    grid = niqe_lib.matlab_colon(0.2, 0.001, 10)
    assert len(grid) == 9801
    assert grid[0] == 0.2 and grid[-1] == 10.0
    np.testing.assert_allclose(np.diff(grid), 0.001, atol=1e-12)


def test_estimate_aggd_recovers_a_generalised_gaussian() -> None:
    """Symmetric generalised Gaussian samples of shape 2 (a normal) give alpha close to 2, beta_l = beta_r."""
    samples = np.random.default_rng(2).standard_normal((1, 200_000))
    alpha, beta_l, beta_r = niqe_lib.estimate_aggd(samples)
    assert abs(alpha[0] - 2.0) < 0.05
    assert abs(beta_l[0] - beta_r[0]) < 0.02 and abs(beta_l[0] - math.sqrt(2)) < 0.05


def test_grey_image_scores_like_its_rgb_copy() -> None:
    gray = np.asarray(Image.effect_mandelbrot((256, 200), (-2, -1.2, 1, 1.2), 60))
    assert niqe_lib.niqe(gray) == pytest.approx(
        niqe_lib.niqe(np.repeat(gray[..., None], 3, axis=2)), abs=1e-12
    )


def test_flat_blocks_are_ignored_like_nanmean_nancov() -> None:
    """A flat region gives NaN features for its blocks (empty left/right sets); the score stays finite."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (288, 288), dtype=np.uint8)
    image[:192, :192] = 128  # block (0, 0) and its filter margin are flat at both scales
    features = niqe_lib.niqe_features(image)
    assert np.isnan(features).any()
    assert math.isfinite(niqe_lib.quality_from_features(features))


def test_constant_image_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="usable blocks"):
        niqe_lib.niqe(np.full((192, 192), 77, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(191, 400), (400, 150, 3)])
def test_small_images_are_refused(shape: tuple[int, ...]) -> None:
    image = np.zeros(shape, dtype=np.uint8)
    with pytest.raises(InputError, match="at least 192x192"):
        niqe_lib.niqe(image)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 300)).save(small)
    with pytest.raises(InputError, match="small.png"):
        niqe_lib.niqe_file(small)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        niqe_lib.niqe_file(broken)


def test_niqe_needs_neither_torch_nor_scipy() -> None:
    code = (
        "import sys\n"
        "from ilvr_cli.metrics.niqe import niqe, load_niqe_params\n"
        "import numpy as np\n"
        "load_niqe_params()\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'scipy') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in proc.stdout, proc.stdout
