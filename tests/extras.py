"""The test-only reference packages (the ``test`` extra: diffusers, pytorch-fid, clean-fid, scipy).

A test that compares against one of them asks for it here: without the extra it skips, naming the package
and how to install it; under ``CI=true`` that skip is a failure (tests/conftest.py).
"""

from __future__ import annotations

from types import ModuleType

import pytest

#: Every skip reason given here starts with this, so reports and the CI check can tell such skips apart.
EXTRA_MISSING = "the test extra is missing"


def require_extra(module: str) -> ModuleType:
    """Import ``module`` from the test extra, or skip this test saying which package is missing."""
    return pytest.importorskip(module, reason=f"{EXTRA_MISSING} ({module}): pip install -e '.[test]'")
