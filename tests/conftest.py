"""Shared test fixtures, and the rule that CI runs every test that this machine can run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


#: Skip reasons that are facts about the machine (its hardware or C library), not about the installation.
#: Under ``CI=true`` every other skip (a missing reference package, missing fixture data) fails the test.
MACHINE_SKIP_REASONS = ("needs a CUDA device", "needs a machine without CUDA", "needs Linux with glibc")


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped report gives, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI a skip for any reason but the machine's is a failure: parity and reference-package tests
    must run there (a skipped parity test is a failed one)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI", "").lower() not in ("true", "1") or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if not reason.startswith(MACHINE_SKIP_REASONS):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every reference test must run: {reason}"


#: Reference data vendored into the project (tests/data/README.md says what produced each file).
DATA_DIR = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """tests/data/parity: outputs of guided-diffusion (as vendored by ilvr_adm) and ilvr_adm's Resizer."""
    path = DATA_DIR / "parity"
    assert path.is_dir(), f"{path} is part of the repository; a checkout without it is broken"
    return path


@pytest.fixture(scope="session")
def niqe_dir() -> Path:
    """tests/data/niqe: the NIQE release's images 1, 2 and 4 (lossless PNG) and their MATLAB scores."""
    path = DATA_DIR / "niqe"
    assert path.is_dir(), f"{path} is part of the repository; a checkout without it is broken"
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one intra-op thread: tiny tensors go faster, results do not depend on how
    other processes load the cores, and bitwise comparisons see the same reduction order in every run.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def fp32_by_default() -> Iterator[None]:
    """``--precision auto`` means fp32 in the tests, on every machine (``ILVR_PRECISION``): their results
    must not depend on whether the CPU has native bf16; the bf16 tests ask for it (tests/test_precision.py).
    Session-wide, so that module-scoped fixtures (reference runs) see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ILVR_PRECISION", "fp32")
        yield


@pytest.fixture(autouse=True)
def no_hugging_face_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or CI's Hugging Face settings (``HF_HUB_OFFLINE=1`` closes the whole network, a
    cache may hold the files a test downloads) must not change what the tests see; the tests of those
    conventions set them themselves."""
    for name in (
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the user's model cache or catalog: ``ILVR_CACHE_DIR`` points into the test's tmp_path.
    Use with ``pytestmark = pytest.mark.usefixtures("private_cache")``."""
    monkeypatch.setenv("ILVR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint in the project's safetensors format (tests/test_tasks_support.py)."""
    from test_tasks_support import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture()
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a task run tries to load a model (checks that must come before the load)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("ilvr_cli.registry.handle.ModelHandle.load", refuse)
