"""The CI rule of tests/conftest.py: under CI=true a skip fails unless the machine itself is the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

INNER = """
import pytest
from extras import require_extra

def test_extra_missing():
    require_extra("a_package_that_does_not_exist")

@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_cuda_only():
    pass

def test_runs():
    pass
"""


def _run_inner(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    for name in ("conftest.py", "extras.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_outside_ci_a_missing_extra_skips_and_names_it(tmp_path: Path) -> None:
    proc = _run_inner(tmp_path, ci=None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 2 skipped" in proc.stdout
    assert "the test extra is missing (a_package_that_does_not_exist)" in proc.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_only_machine_reasons_may_skip(tmp_path: Path, ci: str) -> None:
    proc = _run_inner(tmp_path, ci=ci)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 1 skipped" in proc.stdout
    assert "FAILED test_inner.py::test_extra_missing - skipped under CI=true" in proc.stdout
    assert "SKIPPED [1] test_inner.py:8: needs a CUDA device" in proc.stdout
