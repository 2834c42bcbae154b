"""Golden outputs: a fixed set of CLI runs must keep producing byte-identical results.

Why: a safety net for refactoring the layers above the engine (CLI, task runner, input/output, metrics and
training front-ends). Users must see no change from such a refactor: the same output files and pixels, the
same manifest lines, JSON summaries and exit codes. The runs below were recorded once into
tests/data/golden/expected.json (hashes and small JSON, no images); every test run repeats them in-process
(Typer's CliRunner, so the one-thread setting applies) and compares, one test per recorded run.

Regenerating: ``python tests/test_golden_outputs.py --regenerate`` rewrites expected.json. Do it only for
an intended behaviour change, and record that change in CHANGELOG.md in the same commit: a refactor that
needs new golden data is not a pure refactor.

What is compared, per run:

- ``exit_code``;
- ``files``: the sha256 of every file under the run's output folder (PNGs, GIFs, grids, weights, the OUTPUT
  lock), by relative path. Output PNGs carry the package version in their text chunks (``"version"`` in the
  ``ilvr-cli`` chunk, and ``Software``); it is replaced by ``<version>`` before hashing (CRCs recomputed,
  every other byte counts), so a release does not need new golden data;
- ``manifest``: manifest.jsonl's records in order, without ``params.version``; ``manifest_sha256``: its
  text with the version written ``<version>`` (so its format counts too);
- ``summary``: the ``--json`` output (task runs, ``niqe``, ``fid``) without its timings (``seconds``);
- for ``train``: the weights files (``.safetensors`` with their metadata keys sorted: safetensors writes them
  in a random order), state.safetensors's tensors and its info without the elapsed time, loss.jsonl
  without its timings, config.json.

The temporary folder the runs use is written ``<root>`` wherever it appears (manifest, summaries,
config.json). Inputs are generated here from fixed seeds with integer arithmetic (nothing binary is
committed); their pixel hashes are recorded too, so a mismatch there says the environment changed, not
the code.

Determinism: everything runs on one torch intra-op thread (the ``one_torch_thread`` fixture), in fp32 on
the CPU, with ``--steps 5``. Bitwise equality holds only on the same software and the same kind of CPU
(oneDNN picks other kernels on another CPU model: float results differ in the last bits). So:

- each ``expected*.json`` is one complete recording, with the environment (versions, CPU model) it was made
  on. A run passes when it equals a recording bit for bit. A run that differs from the recording of this
  very environment is a behaviour change;
- on a CPU kind with no recording, the run is compared portably with expected.json: everything that is not
  a float computation exactly (exit codes, manifests, file names, configs), summary and loss numbers to
  1e-5 relative, and the pixels of every PNG and GIF frame with ``pixels.npz`` to within
  :data:`PIXEL_MAX_DIFF` levels (:data:`PIXEL_MEAN_DIFF` on average). Running the runs with oneDNN
  switched off (another set of float kernels) moves pixels by at most 1 level, 0.002 on average; any change
  of behaviour moves them far more. Weights and training state are not compared there (only their names).

``--add-cpu`` records this machine's CPU kind as another ``expected-<cpu>.json`` (not a behaviour change:
it must pass the portable comparison first).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "expected.json"
PIXELS = GOLDEN.parent / "pixels.npz"
#: Portable comparison (another CPU kind): the largest and the mean difference allowed per image, in levels.
PIXEL_MAX_DIFF = 2
PIXEL_MEAN_DIFF = 0.05
#: Portable comparison: relative tolerance of the numbers in summaries and loss lines.
NUMBER_RTOL = 1e-5
NIQE_DATA = Path(__file__).resolve().parent / "data" / "niqe"
PLACEHOLDER_ROOT = "<root>"
PLACEHOLDER_VERSION = "<version>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Every task run: the built-in 32x32 digits model, offline, CPU, fp32, 5 steps, JSON summary on stdout.
TASK = ["--model", "demo", "--device", "cpu", "--precision", "fp32", "--steps", "5", "--json"]
#: The tiny training architecture (8x8, 0.05M parameters); what is left out takes the config defaults.
TINY_CONFIG = {
    "unet": {
        "image_size": 8, "model_channels": 8, "num_res_blocks": 1, "attention_resolutions": [4],
        "channel_mult": [1, 2], "out_channels": 6, "norm_groups": 4, "dropout": 0.1,
        "use_scale_shift_norm": True,
    },
    "diffusion": {"schedule": "linear", "num_timesteps": 40, "variance_type": "learned_range"},
}  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


# ------------------------------------------------------------------------------------------------- inputs


def smooth_image(seed: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a 4x4 grid of random colours, bilinearly interpolated in integers (exact on
    every machine), plus a little per-pixel noise; values stay inside [24, 231] (nothing clips)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, (4, 4, 3), dtype=np.int64)
    d = size - 1
    pos = np.arange(size) * 3
    lo = np.minimum(pos // d, 2)
    frac = pos - lo * d  # the weight of the upper neighbour, in units of 1/d
    weights = np.zeros((size, 4), np.int64)
    weights[np.arange(size), lo] = d - frac
    weights[np.arange(size), lo + 1] = frac
    up = np.einsum("ia,abc,jb->ijc", weights, coarse, weights)  # integers: exact in any order
    image = (up + d * d // 2) // (d * d)
    image = image + rng.integers(-16, 17, image.shape)
    return image.astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> str:
    """Write ``pixels`` as PNG; the sha256 of the pixels (what the runs read, whatever the encoder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def make_inputs(root: Path) -> dict[str, str]:
    """Every input of every run under ``root``; returns their pixel hashes by relative path."""
    made: dict[str, str] = {}

    def add(rel: str, pixels: np.ndarray) -> None:
        made[rel] = write_png(root / rel, pixels)

    for i, rel in enumerate(["000.png", "001.png", "sub/002.png"]):
        add(f"thumbs/{rel}", smooth_image(100 + i, 8))  # 8x8: N inferred as 32 / 8 = 4
        add(f"refs/{rel}", smooth_image(200 + i, 32))  # model-size references
    for i in range(4):
        add(f"four/{i:03d}.png", smooth_image(300 + i, 8))
    for i in range(2):
        add(f"mixed/{i:03d}.png", smooth_image(400 + i, 8))
    (root / "mixed" / "broken.png").write_bytes(PNG_SIGNATURE + b" not really")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 10:26] = 255  # white = may change
    add("mask.png", mask)
    for name, seed in (("a", 500), ("b", 600)):
        for i in range(4):
            add(f"fid/{name}/{i}.png", smooth_image(seed + i, 32))
    rng = np.random.default_rng(700)
    for k in range(6):  # 12x10 (w x h): resized and centre-cropped to 8x8 by the data pipeline
        add(f"digits/part{k % 2}/{k:02d}.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    (root / "tiny.json").write_text(json.dumps(TINY_CONFIG, indent=1) + "\n")
    (root / "niqe").mkdir()
    for name in ("image1.png", "image2.png", "image4.png"):  # copies: other files there are not inputs
        shutil.copyfile(NIQE_DATA / name, root / "niqe" / name)
    return made


#: Where a run's record carries its decoded images (not JSON: kept out of expected.json, in pixels.npz).
PIXELS_KEY = "_pixels"


def decoded_frames(path: Path) -> np.ndarray:
    """Every frame of a PNG or GIF as RGB uint8, stacked (frames, height, width, 3)."""
    from PIL import ImageSequence

    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def inception_weights(path: Path) -> Path:
    """A random Inception state dict in pytorch-fid's layout, as the FID CLI tests use."""
    import torch

    from ilvr_cli.metrics.inception import random_state_dict

    torch.save(random_state_dict(seed=1), path)
    return path


# --------------------------------------------------------------------------------------------- recording


def png_sha256(data: bytes, version: str) -> str:
    """sha256 of a PNG whose text chunks have the package version replaced by a placeholder."""
    if not data.startswith(PNG_SIGNATURE):
        raise AssertionError("not a PNG")
    out, pos = bytearray(PNG_SIGNATURE), len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            body = body.replace(
                f'"version":"{version}"'.encode(), f'"version":"{PLACEHOLDER_VERSION}"'.encode()
            )
            body = body.replace(f"ilvr-cli {version}".encode(), f"ilvr-cli {PLACEHOLDER_VERSION}".encode())
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return hashlib.sha256(bytes(out)).hexdigest()


def safetensors_sha256(data: bytes) -> str:
    """sha256 of a .safetensors file with its ``__metadata__`` keys in sorted order.

    safetensors (0.8) writes the metadata in the order of a Rust HashMap, which is random per process: two
    identical saves differ in the order of the header's metadata keys, and only there. Everything else
    counts: the tensor bytes, every header entry and every metadata value.
    """
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    canonical = json.dumps(header, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + data[8 + length :]).hexdigest()


def state_sha256(path: Path, root: str) -> str:
    """sha256 of a training state: its tensors, and its info without the elapsed time (and ``root``)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for name, array in sorted(load_file(path).items()):
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    with safe_open(path, "np") as handle:
        metadata = handle.metadata() or {}
    for key, value in sorted(metadata.items()):
        info = json.loads(value)
        if isinstance(info, dict):
            info.pop("elapsed_s", None)
        digest.update(f"{key}|{json.dumps(info, sort_keys=True)}".replace(root, PLACEHOLDER_ROOT).encode())
    return digest.hexdigest()


class Recorder:
    """Runs CLI commands inside ``root`` (the working folder) and records what each one produced."""

    def __init__(self, root: Path) -> None:
        from ilvr_cli import __version__

        self.root = root
        self.version = __version__
        self.pixels: dict[str, np.ndarray] = {}  # rel -> decoded frames, for the portable comparison
        self.runner = CliRunner()
        self.env = {
            "ILVR_CACHE_DIR": str(root / "cache"),  # never the user's model cache
            "ILVR_OFFLINE": "1",  # the demo model ships in the package: no network, ever
            "RANK": None,
            "WORLD_SIZE": None,
            "LOCAL_RANK": None,
        }

    def text(self, value: str) -> str:
        return value.replace(str(self.root), PLACEHOLDER_ROOT)

    def invoke(self, *args: str) -> tuple[int, str]:
        """Exit code and stdout (the root written ``<root>``); an unexpected exception is a failure."""
        from ilvr_cli.cli.app import app

        result = self.runner.invoke(app, list(args), env=self.env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"ilvr {' '.join(args)} raised {result.exception!r}\n{result.output}")
        return result.exit_code, self.text(result.stdout)

    def summary(self, stdout: str) -> Any:
        """The ``--json`` output without its timings (or, if it is not JSON, the text itself)."""
        try:
            data = json.loads(stdout)
        except ValueError:
            return {"stdout_not_json": stdout}
        if isinstance(data, dict):
            data.pop("seconds", None)
        return data

    def files(self, folder: Path, skip: tuple[str, ...] = ("manifest.jsonl",)) -> dict[str, str]:
        hashes = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel in skip:
                continue
            data = path.read_bytes()
            if path.suffix in (".png", ".gif"):
                self.pixels[rel] = decoded_frames(path)
            if path.suffix == ".png":
                hashes[rel] = png_sha256(data, self.version)
            elif path.suffix == ".safetensors":
                hashes[rel] = safetensors_sha256(data)
            else:
                hashes[rel] = hashlib.sha256(data).hexdigest()
        return hashes

    def manifest(self, folder: Path) -> dict[str, Any]:
        """The manifest's records without ``params.version``, and the sha256 of its text with the version
        written ``<version>`` (its format: key order, separators, line ends)."""
        path = folder / "manifest.jsonl"
        if not path.is_file():
            return {"manifest": None, "manifest_sha256": None}
        text = self.text(path.read_text(encoding="utf-8"))
        records = []
        for line in text.splitlines():
            record = json.loads(line)
            if isinstance(record.get("params"), dict):
                record["params"].pop("version", None)
            records.append(record)
        text = text.replace(f'"version":"{self.version}"', f'"version":"{PLACEHOLDER_VERSION}"')
        return {"manifest": records, "manifest_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def task(self, out: str, *args: str) -> dict[str, Any]:
        """A task command writing to ``out``; a resumed run calls it twice on the same ``out``."""
        code, stdout = self.invoke(*args, *TASK)
        folder = self.root / out
        return {
            "exit_code": code,
            "summary": self.summary(stdout),
            "files": self.files(folder),
            **self.manifest(folder),
            PIXELS_KEY: self.pixels,
        }


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run inside ``path``: relative arguments, and a train run that records only relative names."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_resumed(r: Recorder) -> dict[str, Any]:
    """Two of four inputs first (a glob), then the whole folder into the same OUTPUT: the rest is added."""
    first_code, first_stdout = r.invoke("upscale", "four/00[02].png", "resumed", *TASK)
    first = {"first_exit_code": first_code, "first_summary": r.summary(first_stdout)}
    return {**first, **r.task("resumed", "upscale", "four", "resumed")}


def run_niqe(r: Recorder) -> dict[str, Any]:
    code, stdout = r.invoke("niqe", "niqe", "--json")
    return {"exit_code": code, "summary": r.summary(stdout)}


def run_fid(r: Recorder) -> dict[str, Any]:
    weights = inception_weights(r.root / "pt_inception.pth")
    code, stdout = r.invoke(
        "fid", "fid/a", "fid/b", "--dims", "64", "--inception-weights", str(weights), "--json",
        "--device", "cpu", "--workers", "0",
    )  # fmt: skip
    return {"exit_code": code, "summary": r.summary(stdout)}


def run_train(r: Recorder) -> dict[str, Any]:
    code, _ = r.invoke(
        "train", "digits", "-o", "run", "-p", "tiny.json", "--steps", "4", "--batch-size", "2",
        "--seed", "1", "--ema", "0.5", "--save-every", "2", "--sample-every", "0", "--log-every", "1", "--workers", "0",
        "--device", "cpu", "--precision", "fp32",
    )  # fmt: skip
    run = r.root / "run"
    losses = []
    for line in (run / "loss.jsonl").read_text().splitlines():
        entry = json.loads(line)
        entry.pop("elapsed_s", None)
        entry.pop("images_per_s", None)
        losses.append(entry)
    return {
        "exit_code": code,
        "files": r.files(run, skip=("state.safetensors", "loss.jsonl", "config.json")),
        "state": state_sha256(run / "state.safetensors", str(r.root)),
        "config": hashlib.sha256(r.text((run / "config.json").read_text()).encode()).hexdigest(),
        "loss": losses,
    }


#: The recorded runs, by name: each returns what it produced (and runs inside the inputs' root).
RUNS: dict[str, Callable[[Recorder], dict[str, Any]]] = {
    "upscale": lambda r: r.task("up", "upscale", "thumbs", "up"),  # 8x8 thumbnails: N = 4 inferred
    "upscale_factor4": lambda r: r.task("up_n4", "upscale", "refs", "up_n4", "--factor", "4"),
    "translate": lambda r: r.task("translate", "translate", "refs", "translate"),
    "paint2img": lambda r: r.task("paint", "paint2img", "refs", "paint"),
    "edit": lambda r: r.task("edit", "edit", "refs", "edit"),
    "edit_mask": lambda r: r.task("edit_mask", "edit", "refs", "edit_mask", "--mask", "mask.png"),
    "sample": lambda r: r.task("sample", "sample", "sample", "--count", "3"),
    "upscale_exact": lambda r: r.task("up_exact", "upscale", "thumbs", "up_exact", "--exact"),
    "upscale_lanczos3": lambda r: r.task("up_l3", "upscale", "thumbs", "up_l3", "--filter", "lanczos3"),
    "upscale_ddim_eta05": lambda r: r.task(
        "up_ddim", "upscale", "thumbs", "up_ddim", "--sampler", "ddim", "--eta", "0.5"
    ),
    "upscale_batch1": lambda r: r.task("up_b1", "upscale", "thumbs", "up_b1", "-b", "1"),
    "upscale_batch3": lambda r: r.task("up_b3", "upscale", "thumbs", "up_b3", "-b", "3"),
    "upscale_resumed": run_resumed,
    "upscale_samples_grid_animate": lambda r: r.task(
        "up_k2", "upscale", "thumbs", "up_k2", "--samples", "2", "--grid", "--animate"
    ),
    "upscale_partial_failure": lambda r: r.task("up_mixed", "upscale", "mixed", "up_mixed"),  # exit 1
    "niqe": run_niqe,
    "fid": run_fid,
    "train": run_train,
}


def environment() -> dict[str, str]:
    """What bitwise results depend on besides the code: recorded with the golden data, shown on failure."""
    import PIL
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The CPU's vendor and model name (/proc/cpuinfo), else what the platform says."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return f"{fields.get('vendor_id', '?')} {fields.get('model name', '?')}"


def record_all(root: Path) -> dict[str, Any]:
    """Make the inputs under ``root``, run every recorded run there; the whole record."""
    inputs = make_inputs(root)
    runs = {}
    with working_dir(root):
        for name, run in RUNS.items():
            try:
                runs[name] = run(Recorder(root))
            except Exception as error:  # noqa: BLE001 - one broken run must not hide the others' results
                runs[name] = {"error": f"{type(error).__name__}: {error}"}
    return {"environment": environment(), "inputs": inputs, "runs": runs}


# ------------------------------------------------------------------------------------------------- tests


def load_recordings() -> list[dict[str, Any]]:
    """expected.json first, then the recordings of other CPU kinds (``expected-<cpu>.json``)."""
    if not GOLDEN.is_file():
        raise AssertionError(f"{GOLDEN} is part of the repository; a checkout without it is broken")
    others = sorted(GOLDEN.parent.glob("expected-*.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in [GOLDEN, *others]]


def load_expected() -> dict[str, Any]:
    return load_recordings()[0]


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Readable differences between two JSON values: one line per changed, missing or extra entry."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(expected.keys() | actual.keys(), key=str):
            path = f"{where}/{key}"
            if key not in actual:
                found.append(f"{path}: missing (expected {json.dumps(expected[key])})")
            elif key not in expected:
                found.append(f"{path}: unexpected (got {json.dumps(actual[key])})")
            else:
                found += differences(expected[key], actual[key], path)
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            line
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for line in differences(e, a, f"{where}[{i}]")
        ]
    if expected != actual:
        return [f"{where or '/'}: expected {json.dumps(expected)}, got {json.dumps(actual)}"]
    return []


def readable_json(value: Any, level: int = 0, width: int = 100) -> str:
    """JSON with sorted keys: what fits in ``width`` columns on one line; a longer list one item a line
    (a manifest record, a loss line); a longer object one key a line."""
    flat = json.dumps(value, sort_keys=True)
    if not isinstance(value, (dict, list)) or not value or level + len(flat) <= width:
        return flat
    pad = " " * (level + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {readable_json(value[k], level + 1, width)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    items = [pad + json.dumps(v, sort_keys=True) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * level + "]"


@pytest.fixture(scope="module")
def recorded(one_torch_thread, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return record_all(tmp_path_factory.mktemp("golden"))


def _environment_note(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    if expected.get("environment") == actual["environment"]:
        return "same software and CPU kind as the recording: a behaviour change"
    return (
        f"recorded with {expected.get('environment')}, this run: {actual['environment']}; bitwise equality "
        "is only promised on the same software and CPU kind"
    )


def test_inputs_are_the_recorded_ones(recorded: dict[str, Any]) -> None:
    """The generated inputs themselves: a mismatch here is the environment (numpy), not the code."""
    expected = load_expected()
    found = differences(expected["inputs"], recorded["inputs"])
    assert not found, (
        "generated inputs differ:\n" + "\n".join(found) + "\n" + _environment_note(expected, recorded)
    )


def test_the_recorded_runs_are_the_ones_defined_here() -> None:
    assert sorted(load_expected()["runs"]) == sorted(RUNS), "regenerate after adding or removing a run"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_run_matches_golden(recorded: dict[str, Any], name: str) -> None:
    recordings = load_recordings()
    assert all(name in r["runs"] for r in recordings), (
        f"{name} is not recorded in every {GOLDEN.parent}/*.json"
    )
    actual = {k: v for k, v in recorded["runs"][name].items() if k != PIXELS_KEY}
    if any(r["runs"][name] == actual for r in recordings):
        return  # bit for bit as recorded on this or another CPU kind
    same_environment = [r for r in recordings if r.get("environment") == recorded["environment"]]
    if same_environment:
        found = differences(same_environment[0]["runs"][name], actual)
        raise AssertionError(
            f"run {name!r} differs from its recording on this very environment (a behaviour change):\n  "
            + "\n  ".join(found)
        )
    found = portable_differences(name, recordings[0]["runs"][name], recorded["runs"][name])
    assert not found, (
        f"run {name!r} differs from {GOLDEN.name} beyond what another CPU kind explains:\n  "
        + "\n  ".join(found)
        + "\n"
        + _environment_note(recordings[0], recorded)
    )


def portable_differences(name: str, expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """The comparison for a CPU kind without a recording (module docstring)."""
    found: list[str] = []
    for key, value in expected.items():
        if key in ("summary", "first_summary", "loss"):
            found += [line for line in approx_differences(value, actual.get(key), f"/{key}")]
        elif key == "files":
            names = sorted(actual.get("files", {}))
            if sorted(value) != names:
                found.append(f"/files: expected {sorted(value)}, got {names}")
        elif key != "state":
            found += differences(value, actual.get(key), f"/{key}")
    if not PIXELS.is_file():
        return [*found, f"{PIXELS} is missing: the pixels cannot be compared"]
    stored = np.load(PIXELS)
    for rel, frames in actual.get(PIXELS_KEY, {}).items():
        key = f"{name}/{rel}"
        if key not in stored.files:
            found.append(f"{rel}: no recorded pixels in {PIXELS.name}")
            continue
        reference = stored[key]
        if reference.shape != frames.shape:
            found.append(f"{rel}: shape {frames.shape}, recorded {reference.shape}")
            continue
        diff = np.abs(reference.astype(np.int16) - frames.astype(np.int16))
        if diff.max() > PIXEL_MAX_DIFF or diff.mean() > PIXEL_MEAN_DIFF:
            found.append(f"{rel}: pixels differ by up to {diff.max()} levels, {diff.mean():.4f} on average")
    return found


def approx_differences(expected: Any, actual: Any, where: str) -> list[str]:
    """:func:`differences`, with numbers equal to :data:`NUMBER_RTOL` relative."""
    if isinstance(expected, dict) and isinstance(actual, dict) and expected.keys() == actual.keys():
        return [line for k in expected for line in approx_differences(expected[k], actual[k], f"{where}/{k}")]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            line
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for line in approx_differences(e, a, f"{where}[{i}]")
        ]
    numbers = (int, float)
    both_numbers = (
        isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool)
    )
    if both_numbers and abs(expected - actual) <= NUMBER_RTOL * max(abs(expected), abs(actual), 1e-12):
        return []
    return differences(expected, actual, where)


def test_the_portable_comparison_catches_changes(recorded: dict[str, Any]) -> None:
    """What another CPU kind is allowed must still catch a real change: pixels, numbers, manifests."""
    expected = load_expected()["runs"]
    run = recorded["runs"]["upscale"]
    assert portable_differences("upscale", expected["upscale"], run) == []
    moved = {
        rel: np.clip(f.astype(np.int16) + 3, 0, 255).astype(np.uint8) for rel, f in run[PIXELS_KEY].items()
    }
    assert any(
        "pixels differ" in line
        for line in portable_differences("upscale", expected["upscale"], {**run, PIXELS_KEY: moved})
    )
    fid = recorded["runs"]["fid"]
    changed = {**fid, "summary": {**fid["summary"], "fid": fid["summary"]["fid"] * 1.001}}
    assert portable_differences("fid", expected["fid"], changed) != []
    manifest = [dict(r, params={**r["params"], "seed": 1}) for r in run["manifest"]]
    assert portable_differences("upscale", expected["upscale"], {**run, "manifest": manifest}) != []


# ------------------------------------------------------------------------------------------ regenerating


def record_here() -> dict[str, Any]:
    """Every run, recorded in a temporary folder (one torch thread, as under pytest)."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ilvr-golden-") as tmp:
        return record_all(Path(tmp))


def write_recording(record: dict[str, Any], path: Path) -> None:
    """The JSON part of ``record`` to ``path``; its decoded images to pixels.npz."""
    pixels = {
        f"{name}/{rel}": frames
        for name, run in record["runs"].items()
        for rel, frames in run.pop(PIXELS_KEY, {}).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(readable_json(record) + "\n", encoding="utf-8")
    np.savez_compressed(PIXELS, **pixels)


def regenerate() -> None:
    """Rewrite expected.json and pixels.npz from this checkout; the other CPU kinds' recordings are stale."""
    record = record_here()
    for stale in GOLDEN.parent.glob("expected-*.json"):
        stale.unlink()
    write_recording(record, GOLDEN)
    print(f"wrote {GOLDEN} ({len(record['runs'])} runs); record the behaviour change in CHANGELOG.md")


def add_cpu() -> None:
    """Record this CPU kind beside the others, after checking it agrees with expected.json portably."""
    record = record_here()
    expected = load_expected()
    problems = [
        line
        for name in RUNS
        for line in portable_differences(name, expected["runs"][name], record["runs"][name])
        if PIXELS.is_file() or "is missing" not in line  # the first recording beside expected.json writes it
    ]
    if problems:
        sys.exit("not recorded: this CPU's runs differ beyond the tolerance:\n  " + "\n  ".join(problems))
    slug = "".join(c if c.isalnum() else "-" for c in record["environment"]["cpu"].lower()).strip("-")
    target = GOLDEN.parent / f"expected-{slug[:60]}.json"
    write_recording(record, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    elif sys.argv[1:] == ["--add-cpu"]:
        add_cpu()
    else:
        sys.exit(
            f"usage: python {Path(__file__).name} --regenerate  (only for an intended behaviour change)\n"
            f"       python {Path(__file__).name} --add-cpu     (record this CPU kind beside the others)"
        )
