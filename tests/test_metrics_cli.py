"""``ilvr fid`` and ``ilvr niqe`` through Typer's CliRunner: outputs, files and exit codes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from extras import require_extra
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.metrics_cmd import fid_command, niqe_command
from ilvr_cli.metrics import fid as fidlib
from ilvr_cli.metrics.inception import fid_inception_from_state_dict, random_state_dict
from ilvr_cli.metrics.niqe import niqe_file

app = typer.Typer()
app.command("fid")(fid_command)
app.command("niqe")(niqe_command)
runner = CliRunner()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(seed=2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, state) -> Path:
    path = tmp_path_factory.mktemp("weights") / "pt_inception.pth"
    torch.save(state, path)
    return path


def _images(folder: Path, count: int, seed: int, sizes=((40, 40), (50, 30))) -> list[Path]:
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        name = f"sub/{i}.PNG" if i % 2 else f"{i}.jpg"  # recursive, upper-case extension
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        files.append(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fid")
    _images(root / "a", 6, seed=0)
    _images(root / "b", 6, seed=1, sizes=((64, 48),))
    return root / "a", root / "b"


def _fid(*args: str):
    return runner.invoke(app, ["fid", *args, "--workers", "0", "--device", "cpu"])


def _library_fid(state, a: Path, b: Path, dims: int) -> float:
    from ilvr_cli.metrics.images import list_images

    model = fid_inception_from_state_dict(state, dims)
    stats = [
        fidlib.FIDStatistics.from_features(fidlib.extract_features(list_images(p), model)) for p in (a, b)
    ]
    with pytest.warns(fidlib.SingularCovarianceWarning):  # 6 images for 64 dims
        return fidlib.fid_from_statistics(*stats)


def test_fid_prints_the_number(folders, weights, state) -> None:
    a, b = folders
    args = [str(a), str(b), "--dims", "64", "--inception-weights", str(weights), "--device", "cpu"]
    result = runner.invoke(app, ["fid", *args])  # default --workers: 0 on CPU
    assert result.exit_code == 0, result.output
    assert float(result.stdout.strip()) == pytest.approx(_library_fid(state, a, b, 64), abs=1e-6)
    assert "singular" in result.stderr  # 6 images for 64 features


def test_fid_json_and_save_stats_round_trip(tmp_path, folders, weights) -> None:
    a, b = folders
    stats_path = tmp_path / "a.npz"
    saved = _fid(str(a), "--save-stats", str(stats_path), "--dims", "64", "--inception-weights", str(weights))
    assert saved.exit_code == 0, saved.output
    with np.load(stats_path) as data:  # pytorch-fid's format
        assert set(data.files) == {"mu", "sigma"}
        assert data["mu"].shape == (64,) and data["sigma"].shape == (64, 64)

    direct = _fid(str(a), str(b), "--dims", "64", "--inception-weights", str(weights), "--json")
    via_npz = _fid(str(stats_path), str(b), "--inception-weights", str(weights), "--json")  # dims from .npz
    assert direct.exit_code == 0 and via_npz.exit_code == 0, via_npz.output
    first, second = json.loads(direct.stdout), json.loads(via_npz.stdout)
    assert first["fid"] == pytest.approx(second["fid"], rel=1e-12)
    assert first["dims"] == second["dims"] == 64 and first["mode"] == "legacy"
    assert first["a"]["num_images"] == 6 and second["a"]["num_images"] is None

    both_npz = _fid(str(stats_path), str(stats_path), "--json")  # no network needed at all
    assert both_npz.exit_code == 0, both_npz.output
    assert abs(json.loads(both_npz.stdout)["fid"]) < 1e-6


def test_fid_reads_pytorch_fid_statistics(tmp_path, folders, weights) -> None:
    pfs = require_extra("pytorch_fid.fid_score")
    rng = np.random.default_rng(0)
    features_a, features_b = rng.standard_normal((100, 8)), rng.standard_normal((100, 8)) + 0.5
    for name, features in (("x.npz", features_a), ("y.npz", features_b)):
        np.savez_compressed(tmp_path / name, mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    result = _fid(str(tmp_path / "x.npz"), str(tmp_path / "y.npz"))
    assert result.exit_code == 0, result.output
    expected = pfs.calculate_frechet_distance(
        features_a.mean(0),
        np.cov(features_a, rowvar=False),
        features_b.mean(0),
        np.cov(features_b, rowvar=False),
    )
    assert float(result.stdout) == pytest.approx(expected, abs=1e-6)


def test_fid_clean_mode_runs_and_differs(folders, weights) -> None:
    a, b = folders
    args = [str(a), str(b), "--dims", "64", "--inception-weights", str(weights), "--json"]
    legacy, clean = _fid(*args), _fid(*args, "--mode", "clean")
    assert legacy.exit_code == 0 and clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["mode"] == "clean"
    assert json.loads(clean.stdout)["fid"] != json.loads(legacy.stdout)["fid"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{a}"], ExitCode.USAGE, "expected two paths"),
        (["{a}", "{missing}"], ExitCode.USAGE, "does not exist"),
        (["{a}", "{b}", "--dims", "100", "--inception-weights", "{w}"], ExitCode.USAGE, "--dims"),
        (["{a}", "{b}", "--batch-size", "0"], ExitCode.USAGE, "batch-size"),
        (["{a}", "{b}", "--mode", "fancy"], ExitCode.USAGE, "mode"),
        (["{a}", "--save-stats", "{tmp}/s.txt", "--inception-weights", "{w}"], ExitCode.USAGE, ".npz"),
        (["{a}", "{b}", "--save-stats", "{tmp}/s.npz"], ExitCode.USAGE, "one folder"),
        (["{a}", "{b}", "--inception-weights", "{tmp}/bad.pth"], ExitCode.BAD_INPUT, "bad.pth"),
        (["{a}", "{empty}", "--inception-weights", "{w}"], ExitCode.BAD_INPUT, "FID needs at least 2"),
        (["{a}", "{tmp}/notes.txt"], ExitCode.USAGE, "neither a folder"),
    ],
)
def test_fid_errors(tmp_path, folders, weights, args, code, message) -> None:
    a, b = folders
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("x")
    values = {
        "a": a,
        "b": b,
        "w": weights,
        "tmp": tmp_path,
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
    }
    result = _fid(*(arg.format(**values) for arg in args))
    assert result.exit_code == code, result.output
    assert message in result.output


def test_fid_dims_mismatch_with_statistics(tmp_path, folders, weights) -> None:
    a, _ = folders
    fidlib.FIDStatistics.from_features(np.random.default_rng(0).random((300, 192))).save(tmp_path / "s.npz")
    result = _fid(str(a), str(tmp_path / "s.npz"), "--dims", "64", "--inception-weights", str(weights))
    assert result.exit_code == ExitCode.USAGE
    assert "192-d statistics" in result.output


def test_fid_without_weights_or_registry_names_the_option(monkeypatch, folders) -> None:
    monkeypatch.setitem(sys.modules, "ilvr_cli.registry", None)
    result = _fid(*map(str, folders))
    assert result.exit_code == ExitCode.USAGE
    assert "--inception-weights" in result.stderr


@pytest.fixture(scope="module")
def niqe_folder(tmp_path_factory, niqe_dir: Path) -> Path:
    """The release's images 1 and 4 as BMP (their original format; an upper-case extension too)."""
    folder = tmp_path_factory.mktemp("niqe")
    (folder / "deep").mkdir()
    Image.open(niqe_dir / "image1.png").save(folder / "one.BMP", format="BMP")
    Image.open(niqe_dir / "image4.png").save(folder / "deep" / "four.bmp")
    return folder


def test_niqe_folder_table_json_and_csv(tmp_path, niqe_folder, niqe_dir) -> None:
    expected = {
        "deep/four.bmp": niqe_file(niqe_dir / "image4.png"),
        "one.BMP": niqe_file(niqe_dir / "image1.png"),
    }
    table = runner.invoke(app, ["niqe", str(niqe_folder)])
    assert table.exit_code == 0, table.output
    assert "deep/four.bmp" in table.stdout and f"{expected['one.BMP']:.4f}" in table.stdout

    csv_path = tmp_path / "scores.csv"
    result = runner.invoke(app, ["niqe", str(niqe_folder), "--json", "--csv", str(csv_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["scores"] == pytest.approx(expected)
    assert data["count"] == 2 and data["failed"] == {}
    assert data["mean"] == pytest.approx(np.mean(list(expected.values())))
    assert data["std"] == pytest.approx(np.std(list(expected.values())))
    with open(csv_path, newline="") as handle:
        rows = {row["image"]: float(row["niqe"]) for row in csv.DictReader(handle)}
    assert rows == pytest.approx(expected)


def test_niqe_partial_failure_names_the_file(tmp_path, niqe_folder) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(niqe_folder, folder)
    Image.new("RGB", (120, 300)).save(folder / "tiny.png")
    csv_path = tmp_path / "scores.csv"
    result = runner.invoke(app, ["niqe", str(folder), "--csv", str(csv_path)])
    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    assert "tiny.png" in result.stderr and "192x192" in result.stderr
    with open(csv_path, newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    assert rows["tiny.png"]["niqe"] == "" and "192x192" in rows["tiny.png"]["error"]
    assert float(rows["one.BMP"]["niqe"]) > 0


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (
            lambda p: Image.new("RGB", (100, 100)).save(p / "x.png") or p / "x.png",
            ExitCode.BAD_INPUT,
            "192x192",
        ),
        (lambda p: p / "missing.png", ExitCode.USAGE, "does not exist"),
        (lambda p: p, ExitCode.BAD_INPUT, "no images"),
    ],
)
def test_niqe_errors(tmp_path, make, code, message) -> None:
    result = runner.invoke(app, ["niqe", str(make(tmp_path))])
    assert result.exit_code == code, result.output
    assert message in result.stderr


def test_importing_the_commands_stays_light() -> None:
    code = (
        "import sys\n"
        "import ilvr_cli.cli.metrics_cmd\n"
        "heavy = [m for m in ('torch', 'numpy', 'PIL', 'torchvision') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in proc.stdout, proc.stdout
