"""A clock of admission's own for tests (agent/admission.py): its wall clock (``time.monotonic``) and its calls'
CPU clocks stand still until the test advances them, so what a test asserts of the lane's CPU share and its
estimates does not depend on the machine's speed or load (a test asserting on real timings failed at a load
average of 16). Deadlines (``CancelToken``, agent/cancel.py) keep the real clock unless ``deadlines``: then
they follow this clock too, and a call waiting in the queue leaves (or not) when the test advances it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent import admission, cancel


class FakeClock:
    """Replaces admission's clocks for the test (``monkeypatch`` undoes it): ``advance(wall, cpu)`` moves the
    wall clock by ``wall`` seconds and gives the running call ``cpu`` CPU seconds. One CPU clock for all
    calls: a test advances it while at most one call of the lane runs. Admission's waits (the queue,
    ``MIN_LIVE_S``) are timed on this clock, so a test must not make a call wait (it would wait for ever):
    advance the clock past MIN_LIVE_S after a call is admitted and keep a slot free; or let the waiting call
    wait in a thread of its own while the test advances the clock (its queue is polled every 0.1 s or sooner
    of real time: it sees each advance within that). ``deadlines``: CancelToken's deadlines (``within``,
    ``remaining``, ``check``) are on this clock too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: float = 1000.0, deadlines: bool = False) -> None:
        self.now = start
        self.cpu = 0.0
        clock = self

        class Time:
            """The real ``time`` module, but for ``monotonic``."""

            def __getattr__(self, name: str) -> Any:
                return getattr(time, name)

            def monotonic(self) -> float:
                return clock.now

        monkeypatch.setattr(admission, "time", Time())
        if deadlines:
            monkeypatch.setattr(cancel, "time", Time())
        monkeypatch.setattr(admission, "_thread_clock", lambda: (0, clock.cpu))
        monkeypatch.setattr(admission._Run, "cpu", lambda run: clock.cpu - run.cpu0)

    def advance(self, wall: float, cpu: float = 0.0) -> None:
        """``wall`` seconds pass, in which the running call uses ``cpu`` CPU seconds."""
        self.now += wall
        self.cpu += cpu
