"""Settings shared by the whole suite: hypothesis profiles (CI is deterministic: derandomised, no example
database, no per-example deadline; ``HYPOTHESIS_PROFILE=dev`` explores at random with more examples); the
``fsync_events`` fixture of the crash-safe write tests."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=60,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                          # no shrinking: a failing example is reported as generated, without minutes of
                          # re-running calls against the agent
                          phases=[Phase.explicit, Phase.generate])
settings.register_profile("dev", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def fsync_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every os.fsync and os.replace from here on, in order: ("fsync", path of the fd) / ("replace",
    destination), for tests that a write is made durable before it is in place (shortlist/atomic.py)."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        seen.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen
