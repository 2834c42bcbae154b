"""FID: the network, the preprocessing and the distance against pytorch-fid (and clean-fid's resize).

pytorch-fid and clean-fid are test-only extras; both share the same random Inception weights here (no
download): pytorch-fid's weight download is replaced by our random state_dict.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from extras import require_extra
from ilvr_cli.errors import CheckpointError, InputError, UsageError
from ilvr_cli.metrics import fid as fidlib
from ilvr_cli.metrics.inception import (
    FID_DIMS,
    build_fid_inception_v3,
    fid_inception_from_state_dict,
    load_fid_inception,
    random_state_dict,
)


@pytest.fixture(scope="module")
def pfi() -> ModuleType:
    return require_extra("pytorch_fid.inception")


@pytest.fixture(scope="module")
def pfs() -> ModuleType:
    return require_extra("pytorch_fid.fid_score")


SIZES = [(64, 64), (80, 100), (299, 299), (240, 320)]  # (height, width): smaller, odd aspect, exact, larger


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(seed=1)


@pytest.fixture(scope="module")
def reference_factory(state, pfi):
    """pytorch-fid's InceptionV3 for some output blocks, with our random weights instead of the download."""

    def build(blocks: list[int]) -> torch.nn.Module:
        mp = pytest.MonkeyPatch()
        mp.setattr(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state)
        try:
            return pfi.InceptionV3(blocks).eval()
        finally:
            mp.undo()

    return build


def _write_images(
    folder: Path, count: int, seed: int, smooth: bool = False, sizes: list[tuple[int, int]] = SIZES
) -> list[Path]:
    """Random RGB PNGs cycling through ``sizes``; ``smooth`` gives another distribution (blurry blobs)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        if smooth:
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        else:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        path = folder / f"{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


def test_state_dict_layout_is_pytorch_fids(state, reference_factory, pfi) -> None:
    ours = build_fid_inception_v3().state_dict()
    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state)
    try:
        theirs = pfi.fid_inception_v3().state_dict()
    finally:
        mp.undo()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_features_match_pytorch_fid_at_every_dims(tmp_path, state, reference_factory, pfs) -> None:
    """64, 192 and 768 dims, images of mixed sizes, against pytorch-fid's blocks + spatial average."""
    files = _write_images(tmp_path, len(SIZES), seed=0)
    reference = reference_factory([0, 1, 2])
    to_tensor = pfs.TF.ToTensor()
    expected: dict[int, list[np.ndarray]] = {d: [] for d in FID_DIMS}
    with torch.no_grad():
        for file in files:  # pytorch-fid cannot batch mixed sizes: one image per call
            outputs = reference(to_tensor(Image.open(file).convert("RGB"))[None])
            for dims, out in zip(FID_DIMS[:-1], outputs, strict=True):
                pooled = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1))
                expected[dims].append(pooled[:, :, 0, 0].numpy())
    for dims in FID_DIMS[:-1]:  # 2048: test_features_match_get_activations_end_to_end
        model = fid_inception_from_state_dict(state, dims)
        ours = fidlib.extract_features(files, model, batch_size=3)
        theirs = np.concatenate(expected[dims])
        assert ours.shape == theirs.shape == (len(files), dims)
        assert np.abs(theirs).mean() > 0.05  # features are not vanishing, so the comparison means something
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_features_match_get_activations_end_to_end(tmp_path, state, reference_factory, pfs) -> None:
    """pytorch-fid's own file reading and ``get_activations`` (2048-d, batch of one for mixed sizes)."""
    files = _write_images(tmp_path, len(SIZES), seed=3)
    theirs = pfs.get_activations(files, reference_factory([3]), batch_size=1, dims=2048, num_workers=0)
    ours = fidlib.extract_features(files, fid_inception_from_state_dict(state, 2048), batch_size=2)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_unfused_network_matches_bit_for_bit(tmp_path, state, reference_factory, pfs) -> None:
    """Without BatchNorm folding the arithmetic is pytorch-fid's exactly (same ops in the same order)."""
    files = _write_images(tmp_path, 2, seed=4)
    theirs = pfs.get_activations(files, reference_factory([1]), batch_size=1, dims=192, num_workers=0)
    ours = fidlib.extract_features(files, fid_inception_from_state_dict(state, 192, fuse=False), batch_size=1)
    np.testing.assert_array_equal(ours, theirs)


def test_fid_matches_pytorch_fid(tmp_path, state, reference_factory, pfi, pfs) -> None:
    """End to end at 64 dims (more images than dims, so the covariances are regular).

    Each folder has one size (64x64 and 80x100) so pytorch-fid can batch it; mixed sizes within a folder
    are covered by the feature tests above.
    """
    dims, count = 64, 66  # the fewest images that keep a 64-d covariance regular, with a margin
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    files_a = _write_images(folder_a, count, seed=10, sizes=[(64, 64)])
    files_b = _write_images(folder_b, count, seed=11, smooth=True, sizes=[(80, 100)])
    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state)
    try:
        theirs = pfs.calculate_fid_given_paths([str(folder_a), str(folder_b)], 35, "cpu", dims, num_workers=0)
    finally:
        mp.undo()
    model = fid_inception_from_state_dict(state, dims)
    stats = [
        fidlib.FIDStatistics.from_features(fidlib.extract_features(f, model)) for f in (files_a, files_b)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", fidlib.SingularCovarianceWarning)  # n > dims: must not warn
        ours = fidlib.fid_from_statistics(*stats)
    assert theirs > 1.0
    assert abs(ours - theirs) <= 1e-4 * abs(theirs), (ours, theirs)


def _random_stats(
    rng: np.random.Generator, dims: int, count: int, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    mixing = rng.standard_normal((dims, dims)) / np.sqrt(dims) + np.eye(dims)
    features = rng.standard_normal((count, dims)) @ mixing + shift
    return features.mean(axis=0), np.cov(features, rowvar=False)


@pytest.mark.parametrize("dims", [32, 300, 600])  # 600: the blocked congruence (2 blocks)
def test_frechet_distance_matches_pytorch_fid(dims: int, pfs) -> None:
    rng = np.random.default_rng(dims)
    (mu1, s1), (mu2, s2) = _random_stats(rng, dims, 3 * dims, 0.0), _random_stats(rng, dims, 3 * dims, 0.3)
    theirs = pfs.calculate_frechet_distance(mu1, s1, mu2, s2)
    ours = fidlib.frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(ours, float)
    assert abs(ours - theirs) <= 1e-6 * abs(theirs)


@pytest.mark.slow
def test_frechet_distance_matches_pytorch_fid_2048(pfs) -> None:
    rng = np.random.default_rng(2048)
    (mu1, s1), (mu2, s2) = _random_stats(rng, 2048, 3000, 0.0), _random_stats(rng, 2048, 3000, 0.1)
    theirs = pfs.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert abs(fidlib.frechet_distance(mu1, s1, mu2, s2) - theirs) <= 1e-6 * abs(theirs)


@pytest.mark.parametrize("dims", [7, 700, 1100])
def test_blocked_congruence_is_the_lower_triangle_of_the_product(dims: int) -> None:
    rng = np.random.default_rng(dims)
    sigma = torch.from_numpy(_random_stats(rng, dims, 2 * dims, 0.0)[1])
    factor = torch.tril(torch.from_numpy(rng.standard_normal((dims, dims))))
    expected = torch.tril(factor.T @ sigma @ factor)
    result = fidlib._lower_congruence(sigma, factor)
    torch.testing.assert_close(
        torch.tril(result), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max())
    )


def test_distance_of_identical_statistics_is_zero() -> None:
    mu, sigma = _random_stats(np.random.default_rng(0), 50, 200, 1.0)
    assert abs(fidlib.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def _exact_trace_sqrt(s1: np.ndarray, s2: np.ndarray) -> float:
    """sum sqrt(eig(S1 S2)) through numpy's general eigen-solver (real parts; tiny negatives -> 0)."""
    eigenvalues = np.linalg.eigvals(s1 @ s2).real
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


@pytest.mark.parametrize("singular", ["first", "second", "first and second"])
def test_singular_covariance_warns_and_stays_real(singular: str) -> None:
    rng = np.random.default_rng(7)
    few = [fidlib.FIDStatistics.from_features(rng.standard_normal((12, 100)) + k) for k in range(2)]
    many = [fidlib.FIDStatistics.from_features(rng.standard_normal((400, 100)) * 2) for _ in range(2)]
    a = few[0] if "first" in singular else many[0]
    b = few[1] if "second" in singular else many[1]
    with pytest.warns(fidlib.SingularCovarianceWarning, match=f"the {singular} covariance is singular"):
        value = fidlib.fid_from_statistics(a, b)
    assert isinstance(value, float) and np.isfinite(value)
    expected_trace = _exact_trace_sqrt(a.sigma, b.sigma)
    assert abs(fidlib.trace_sqrt_product(a.sigma, b.sigma) - expected_trace) <= 1e-6 * expected_trace


def test_singular_2048_dims_few_images_gives_real_number() -> None:
    rng = np.random.default_rng(8)
    a = fidlib.FIDStatistics.from_features(rng.random((10, 2048)))
    b = fidlib.FIDStatistics.from_features(rng.random((10, 2048)) + 0.1)
    with pytest.warns(fidlib.SingularCovarianceWarning):
        value = fidlib.fid_from_statistics(a, b)
    assert isinstance(value, float) and np.isfinite(value) and value > 0


def test_mismatched_dimensions_are_a_usage_error() -> None:
    mu, sigma = _random_stats(np.random.default_rng(0), 8, 40, 0.0)
    with pytest.raises(UsageError, match="same --dims"):
        fidlib.frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])


def test_statistics_round_trip_with_pytorch_fid(tmp_path, pfs) -> None:
    rng = np.random.default_rng(1)
    stats = fidlib.FIDStatistics.from_features(rng.standard_normal((30, 16)))
    path = stats.save(tmp_path / "ours.npz")
    mu, sigma = pfs.compute_statistics_of_path(str(path), None, 1, 16, "cpu")
    np.testing.assert_array_equal(mu, stats.mu)
    np.testing.assert_array_equal(sigma, stats.sigma)
    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=stats.mu.astype(np.float32), sigma=stats.sigma)
    loaded = fidlib.FIDStatistics.load(theirs)
    np.testing.assert_array_equal(loaded.mu, stats.mu.astype(np.float32))
    assert loaded.mu.dtype == np.float64


def test_statistics_file_errors(tmp_path) -> None:
    stats = fidlib.FIDStatistics.from_features(np.random.default_rng(0).random((5, 3)))
    with pytest.raises(UsageError, match=".npz"):
        stats.save(tmp_path / "stats.txt")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=stats.mu)
    with pytest.raises(InputError, match="lacks mu, sigma"):
        fidlib.FIDStatistics.load(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        fidlib.FIDStatistics.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="at least 2"):
        fidlib.FIDStatistics.from_features(np.zeros((1, 3)))


def test_clean_resize_equals_clean_fid() -> None:
    cleanfid_resize = require_extra("cleanfid.resize")
    theirs = cleanfid_resize.make_resizer("PIL", False, "bicubic", (299, 299))
    rng = np.random.default_rng(5)
    for h, w in SIZES + [(512, 384)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(fidlib.clean_resize(image), theirs(image))


def test_clean_dataset_matches_clean_fid(tmp_path) -> None:
    utils = require_extra("cleanfid.utils")
    files = _write_images(tmp_path, 3, seed=6)
    theirs = utils.ResizeDataset([str(f) for f in files], mode="clean")
    ours = fidlib.ImageDataset(files, mode="clean")
    for i in range(len(files)):
        np.testing.assert_allclose(ours[i].numpy() * 255, theirs[i].numpy(), atol=1e-4, rtol=0)


def test_clean_and_legacy_differ_but_agree_at_299(tmp_path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        fidlib.preprocess(image, "clean"), fidlib.preprocess(image, "legacy"), atol=1e-6
    )
    small = image[:64, :80]
    assert not torch.allclose(
        fidlib.preprocess(small, "clean"), fidlib.preprocess(small, "legacy"), atol=1e-3
    )


def test_unreadable_image_names_the_file(tmp_path, state) -> None:
    files = _write_images(tmp_path, 2, seed=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png"):
        fidlib.extract_features([*files, broken], fid_inception_from_state_dict(state, 64), batch_size=2)


def test_load_weights_from_file(tmp_path, state) -> None:
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    model = load_fid_inception(path, "cpu", dims=64)
    assert model.dims == 64 and not model.training
    with pytest.raises(InputError, match="does not exist"):
        load_fid_inception(tmp_path / "missing.pth", "cpu")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match="not the FID Inception"):
        load_fid_inception(wrong, "cpu")
    with pytest.raises(UsageError, match="--dims"):
        load_fid_inception(path, "cpu", dims=100)


def test_without_weights_or_registry_asks_for_a_file(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ilvr_cli.registry", None)  # import fails
    with pytest.raises(UsageError, match="--inception-weights"):
        load_fid_inception(None, "cpu")


def test_importing_metrics_and_niqe_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import ilvr_cli.metrics, ilvr_cli.metrics.niqe, ilvr_cli.cli.metrics_cmd\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'scipy') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in proc.stdout, proc.stdout
