"""How the metric runs (:mod:`~ilvr_cli.metrics.fid_run`, :mod:`~ilvr_cli.metrics.niqe_run`) report progress.

A run calls ``begin(label, total)`` when a counted stage starts (after anything slow that is not counted,
such as loading the network), ``advance(n)`` as items are done, and ``skipped(name, reason)`` for each
input it leaves out (and records in its result). The command line draws these as bars and warnings;
library callers may pass nothing.
"""

from __future__ import annotations

from typing import Protocol


class MetricProgress(Protocol):
    """Receives a metric run's progress events (module docstring)."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def skipped(self, name: str, reason: str) -> None: ...


class NoProgress:
    """Ignores every event (the default)."""

    def begin(self, label: str, total: int) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def skipped(self, name: str, reason: str) -> None:
        pass
