"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout: reference data written by no one here (parity, NIQE)."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (expected ../shared beside the checkout)")
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
