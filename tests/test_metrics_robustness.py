"""``ilvr fid`` and ``ilvr niqe`` on hostile inputs: which files a folder holds, broken statistics, bomb
headers, pixel limits, FIFOs and /proc files. Each bad input is one failed item or one clear error."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from fake_images import png_bytes
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.metrics_cmd import fid_command, niqe_command
from ilvr_cli.errors import InputError
from ilvr_cli.metrics import fid as fidlib
from ilvr_cli.metrics import niqe as niqelib
from ilvr_cli.metrics.images import list_images, load_rgb, scan_folder
from ilvr_cli.metrics.inception import fid_inception_from_state_dict, random_state_dict

app = typer.Typer()
app.command("fid")(fid_command)
app.command("niqe")(niqe_command)
runner = CliRunner()

LINUX = pytest.mark.skipif(
    sys.platform != "linux", reason="needs Linux with glibc (FIFOs and /proc files as Linux has them)"
)


# --------------------------------------------------------------------------------------------- helpers


def _random_png(path: Path, size: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _output_folder(root: Path, size: int) -> Path:
    """A task output folder: 3 outputs (one in a subfolder), a manifest, contact sheets in ``_grids/``,
    a hidden file and an earlier run's output folder (with its own manifest) inside it."""
    for k, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        _random_png(root / name, size, k)
    (root / "manifest.jsonl").write_text('{"status": "done"}\n')
    for k, name in enumerate(["_grids/a.png", "_grids/b.png", "sub/_grids/c.png", ".hidden.png"]):
        _random_png(root / name, size, 10 + k)
    _random_png(root / "sub" / "old-upscale" / "x.png", size, 20)
    (root / "sub" / "old-upscale" / "manifest.jsonl").write_text("")
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the network, even if a check it expects fails to stop the command early."""
    monkeypatch.setenv("ILVR_OFFLINE", "1")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "pt_inception.pth"
    torch.save(random_state_dict(seed=2), path)
    return path


def _fid(*args: str):
    return runner.invoke(app, ["fid", *args, "--workers", "0", "--device", "cpu"])


def _stats_file(path: Path, mu: np.ndarray, sigma: np.ndarray) -> Path:
    np.savez(path, mu=mu, sigma=sigma)
    return path


def _singular_stats(tmp_path: Path) -> Path:
    """64-d statistics of 50 images (singular): FID(s, s) was -4e-6 from the square roots of zeros."""
    features = np.random.default_rng(0).standard_normal((50, 64)) * 3 + 1
    return fidlib.FIDStatistics.from_features(features).save(tmp_path / "s.npz")


# ------------------------------------------------------------------------------ finding 4: which files
def test_folder_scan_follows_the_task_rules_and_skips_contact_sheets(tmp_path: Path) -> None:
    root = _output_folder(tmp_path / "out", 8)
    (root / "clip.gif").write_bytes(b"GIF89a")  # a known format we do not read: listed, as the tasks do
    scan = scan_folder(root)
    assert [item.rel.as_posix() for item in scan.images] == ["a.png", "b.png", "sub/c.png"]
    assert [item.rel.as_posix() for item in scan.unsupported] == ["clip.gif"]
    assert [p.relative_to(root.absolute()).as_posix() for p in list_images(root)] == [
        "a.png",
        "b.png",
        "sub/c.png",
    ]
    # pointing at the contact sheets themselves still reads them
    assert len(list_images(root / "_grids")) == 2


def test_fid_counts_only_the_outputs_of_a_task_folder(tmp_path: Path, weights: Path) -> None:
    root = _output_folder(tmp_path / "out", 40)
    result = _fid(
        str(root), "--save-stats", str(tmp_path / "s.npz"), "--dims", "64", "--json",
        "--inception-weights", str(weights),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_images"] == 3


def test_niqe_scores_only_the_outputs_of_a_task_folder(tmp_path: Path) -> None:
    root = _output_folder(tmp_path / "out", 200)
    result = runner.invoke(app, ["niqe", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["scores"]) == ["a.png", "b.png", "sub/c.png"]


def test_unsupported_formats_in_a_folder_are_failed_items(tmp_path: Path) -> None:
    _random_png(tmp_path / "a.png", 200, 0)
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    result = runner.invoke(app, ["niqe", str(tmp_path), "--json"])
    assert result.exit_code == ExitCode.PARTIAL_FAILURE, result.output
    assert "unsupported image format .gif" in json.loads(result.stdout)["failed"]["clip.gif"]


# ------------------------------------------------------------------ finding 5: statistics that are wrong
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mu", np.nan, "mu holds NaN"),
        ("sigma", np.inf, "sigma holds NaN or infinite"),
        ("sigma", np.nan, "sigma"),
    ],
)
def test_non_finite_statistics_are_refused(tmp_path: Path, key: str, value: float, message: str) -> None:
    good = _stats_file(tmp_path / "good.npz", np.zeros(8), np.eye(8))
    arrays = {"mu": np.zeros(8), "sigma": np.eye(8)}
    arrays[key][0] = value
    bad = _stats_file(tmp_path / "bad.npz", arrays["mu"], arrays["sigma"])
    result = _fid(str(good), str(bad))
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "bad.npz" in result.stderr and message in result.stderr
    assert result.stdout == ""  # never printed as a number


def test_a_sigma_with_a_negative_eigenvalue_is_refused(tmp_path: Path) -> None:
    good = _stats_file(tmp_path / "good.npz", np.zeros(8), np.eye(8))
    sigma = np.eye(8)
    sigma[0, 0] = -5.0
    bad = _stats_file(tmp_path / "bad.npz", np.zeros(8), sigma)
    for first, second in ((good, bad), (bad, good), (bad, bad)):  # every branch of the distance
        result = _fid(str(first), str(second))
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        assert "bad.npz: sigma is not a covariance" in result.stderr and result.stdout == ""


def test_a_singular_sigma_with_a_negative_eigenvalue_is_refused() -> None:
    sigma = np.diag([1.0, 0.0, -0.5])  # Cholesky fails on both: decided from the eigenvalues
    with pytest.raises(InputError, match="not a covariance"):
        fidlib.frechet_distance(np.zeros(3), np.diag([1.0, 0.0, 0.0]), np.zeros(3), sigma)


def test_statistics_saved_in_float32_are_still_covariances(tmp_path: Path) -> None:
    """Rounding makes the zero eigenvalues of a singular covariance slightly negative: not refused."""
    features = np.abs(np.random.default_rng(0).standard_normal((100, 512))) ** 2
    stats = fidlib.FIDStatistics.from_features(features)
    path = _stats_file(tmp_path / "f32.npz", stats.mu.astype(np.float32), stats.sigma.astype(np.float32))
    result = _fid(str(path), str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "0.000000"


def test_an_overflowing_distance_is_refused(tmp_path: Path) -> None:
    a = _stats_file(tmp_path / "a.npz", np.full(4, 1e200), np.eye(4))
    b = _stats_file(tmp_path / "b.npz", np.full(4, -1e200), np.eye(4))
    result = _fid(str(a), str(b))
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "overflows" in result.stderr and result.stdout == ""


def test_non_finite_features_are_refused() -> None:
    features = np.ones((4, 3))
    features[1, 2] = np.nan
    with pytest.raises(InputError, match="--inception-weights"):
        fidlib.FIDStatistics.from_features(features)


def test_a_nan_niqe_is_an_error_not_a_score(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(niqelib, "_pinv", lambda matrix: -np.eye(len(matrix)))  # sqrt of a negative
    image = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    with pytest.raises(InputError, match="undefined"):
        niqelib.niqe(image)


# ------------------------------------------------------------------------------ finding 14: -0.000000
def test_identical_statistics_print_zero_not_a_negative_number(tmp_path: Path) -> None:
    path = _singular_stats(tmp_path)
    result = _fid(str(path), str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "0.000000"


@pytest.mark.parametrize(("seed", "count", "dims"), [(1, 300, 64), (3, 100, 8), (0, 50, 64), (4, 3000, 192)])
def test_distance_of_identical_statistics_is_exactly_zero(seed: int, count: int, dims: int) -> None:
    """Cases whose rounding made the distance negative (-4.5e-13, -2.8e-14, -3.7e-6, -9.1e-13)."""
    features = np.random.default_rng(seed).standard_normal((count, dims)) * 3 + 1
    stats = fidlib.FIDStatistics.from_features(features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fidlib.SingularCovarianceWarning)
        value = fidlib.fid_from_statistics(stats, stats)
    assert value == 0.0 and math.copysign(1.0, value) == 1.0


def test_a_distance_negative_beyond_rounding_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidlib, "trace_sqrt_product", lambda s1, s2, names: float(np.trace(s1)) * 2)
    with pytest.raises(InputError, match="negative"):
        fidlib.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


@LINUX
def test_fifos_and_proc_files_are_not_regular_files(tmp_path: Path) -> None:
    _random_png(tmp_path / "a.png", 200, 0)
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    (tmp_path / "status.png").symlink_to("/proc/self/status")  # size 0, content not
    (tmp_path / "zero.png").write_bytes(b"")
    result = runner.invoke(app, ["niqe", str(tmp_path), "--json"])
    assert result.exit_code == ExitCode.PARTIAL_FAILURE, result.output
    failed = json.loads(result.stdout)["failed"]
    assert "not a regular file (a named pipe (FIFO))" in failed["pipe.png"]
    assert "not a regular file (a pseudo-file" in failed["status.png"]
    assert "empty file (0 bytes)" in failed["zero.png"]
    for path in (tmp_path / "pipe.png", Path("/proc/self/status")):
        single = runner.invoke(app, ["niqe", str(path)])
        assert single.exit_code == ExitCode.BAD_INPUT, single.output
        assert "not a regular file" in single.stderr


@LINUX
def test_a_fifo_named_like_statistics_is_refused(tmp_path: Path) -> None:
    good = _stats_file(tmp_path / "good.npz", np.zeros(8), np.eye(8))
    os.mkfifo(tmp_path / "pipe.npz")
    result = _fid(str(good), str(tmp_path / "pipe.npz"))
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "not a regular file" in result.stderr


# ------------------------------------------------------------------ finding 10: bombs and pixel limits
def test_fid_bomb_header_is_one_failed_image(tmp_path: Path, weights: Path) -> None:
    for k in range(4):
        _random_png(tmp_path / "a" / f"{k}.png", 40, k)
        _random_png(tmp_path / "b" / f"{k}.png", 40, 10 + k)
    (tmp_path / "a" / "huge.png").write_bytes(png_bytes(30_000, 30_000))
    (tmp_path / "a" / "big.png").write_bytes(png_bytes(9_000, 6_000))  # 54 MP: over the 50 MP default
    args = [str(tmp_path / "a"), str(tmp_path / "b"), "--dims", "64", "--inception-weights", str(weights)]
    result = _fid(*args, "--json", "--batch-size", "2")
    assert result.exit_code == ExitCode.PARTIAL_FAILURE, result.output
    data = json.loads(result.stdout)
    assert data["a"]["num_images"] == 4 and data["b"]["num_images"] == 4 and math.isfinite(data["fid"])
    assert "decompression bomb" in data["a"]["failed"]["huge.png"]
    assert "over the 50 megapixel limit" in data["a"]["failed"]["big.png"]
    assert "huge.png" in result.stderr and "2 of 10 images failed" in result.stderr


def test_fid_pixel_limit_can_leave_too_few_images(tmp_path: Path, weights: Path) -> None:
    for k in range(3):
        _random_png(tmp_path / "a" / f"{k}.png", 40, k)  # 1600 pixels each
    args = [str(tmp_path / "a"), str(tmp_path / "a"), "--dims", "64", "--inception-weights", str(weights)]
    result = _fid(*args, "--max-megapixels", "0.001")
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "only 0 of the 3 images" in result.stderr and "megapixel limit" in result.stderr


def test_extract_features_reports_and_skips_unreadable_images(tmp_path: Path) -> None:
    files = [_random_png(tmp_path / f"{k}.png", 40, k) for k in range(3)]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(30_000, 30_000))
    model = fid_inception_from_state_dict(random_state_dict(seed=2), 64)
    seen: dict[Path, str] = {}
    features = fidlib.extract_features(
        [files[0], bomb, *files[1:]], model, batch_size=2, on_error=lambda p, m: seen.setdefault(p, m)
    )
    reference = fidlib.extract_features(files, model, batch_size=2)
    np.testing.assert_array_equal(features, reference)
    assert list(seen) == [bomb] and "decompression bomb" in seen[bomb]


def test_niqe_bomb_header_is_one_failed_image(tmp_path: Path) -> None:
    _random_png(tmp_path / "a.png", 200, 0)
    (tmp_path / "huge.png").write_bytes(png_bytes(30_000, 30_000))
    (tmp_path / "big.png").write_bytes(png_bytes(9_000, 6_000))
    result = runner.invoke(app, ["niqe", str(tmp_path), "--json"])
    assert result.exit_code == ExitCode.PARTIAL_FAILURE, result.output
    data = json.loads(result.stdout)
    assert list(data["scores"]) == ["a.png"]
    assert "decompression bomb" in data["failed"]["huge.png"]
    assert "over the 50 megapixel limit" in data["failed"]["big.png"]


def test_niqe_pixel_limit_and_its_option(tmp_path: Path) -> None:
    path = _random_png(tmp_path / "a.png", 300, 0)  # 0.09 megapixels
    refused = runner.invoke(app, ["niqe", str(path), "--max-megapixels", "0.05"])
    assert refused.exit_code == ExitCode.BAD_INPUT, refused.output
    assert "300x300 is 0.09 megapixels, over the 0.05 megapixel limit" in refused.stderr
    assert "--max-megapixels" in refused.stderr
    assert runner.invoke(app, ["niqe", str(path), "--max-megapixels", "0.1"]).exit_code == 0
    with pytest.raises(InputError, match="megapixel limit"):
        load_rgb(path, max_pixels=1000)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_max_megapixels_must_be_positive(tmp_path: Path, value: str) -> None:
    path = _random_png(tmp_path / "a.png", 200, 0)
    for command in (["niqe", str(path)], ["fid", str(tmp_path), str(tmp_path)]):
        result = runner.invoke(app, [*command, "--max-megapixels", value])
        assert result.exit_code == ExitCode.USAGE, result.output
        assert "--max-megapixels must be a positive number" in result.stderr


def test_fid_device_that_is_not_here_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: Path
) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for k in range(2):
        _random_png(tmp_path / f"{k}.png", 40, k)
    for device, message in (
        ("mps", "MPS is not available"),
        ("cuda", "CUDA is not available"),
        ("xpu", "cpu, cuda, cuda:N or mps"),  # the one runtime rule names the choices
    ):
        args = [str(tmp_path), str(tmp_path), "--dims", "64", "--inception-weights", str(weights)]
        result = runner.invoke(app, ["fid", *args, "--device", device])
        assert result.exit_code == ExitCode.USAGE, result.output
        assert message in result.stderr
