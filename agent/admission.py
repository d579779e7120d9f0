"""Admission control for heavy work (strategies, prior methods): bounded concurrency, a bounded queue.

At most ``max_concurrent`` heavy calls run at once and at most ``max_queued`` wait for a turn; a call
beyond both is refused at once with ``Busy`` (gRPC RESOURCE_EXHAUSTED) and a retry hint, instead of
piling up threads, memory and latency. A waiting call leaves the queue as soon as its token is
cancelled or its deadline passes. ``shutdown`` cancels every running and waiting call's token (they
stop at their next ``agent.cancel.checkpoint()``) and refuses new ones, so the agent stops in seconds.
Light calls (GetStatus, SubmitLabels, ListSamples, Ingest) never pass through here, so they never wait
behind heavy ones.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from agent.cancel import CancelToken, ShuttingDown
from agent.errors import ResourceExhausted


class Busy(ResourceExhausted):
    """Too much heavy work already running and queued (RESOURCE_EXHAUSTED); ``retry_after_s`` is a hint
    for when to retry (sent as trailing metadata ``retry-after-ms``)."""


@dataclass(frozen=True)
class AdmissionStats:
    running: int
    queued: int
    refused: int
    mean_work_s: float


class Admission:
    """Slots for heavy work: ``with admission.slot(token): ...`` runs the block once a slot is free."""

    # Weight of the newest duration in the running mean behind the retry hint.
    EWMA = 0.2

    def __init__(self, max_concurrent: int, max_queued: int, lane: str = "heavy") -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.lane = lane
        self._cond = threading.Condition()
        self._running = 0
        self._queued = 0
        self._refused = 0
        self._tokens: set[CancelToken] = set()
        self._closed = False
        self._mean_s = 1.0

    def stats(self) -> AdmissionStats:
        with self._cond:
            return AdmissionStats(self._running, self._queued, self._refused, self._mean_s)

    def _retry_after_ms(self) -> int:
        # The queue ahead drains at max_concurrent calls per mean duration; never hint below 100 ms.
        waves = (self._running + self._queued + 1) / self.max_concurrent
        return int(min(60_000, max(100, math.ceil(1000 * self._mean_s * waves))))

    @contextmanager
    def slot(self, token: CancelToken, what: str = "this request") -> Iterator[None]:
        """Run the block in a slot; Busy at once when running and queue are full; the token's exception
        (Cancelled, DeadlineExceeded, ShuttingDown) when it ends while waiting."""
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            if self._running >= self.max_concurrent and self._queued >= self.max_queued:
                self._refused += 1
                hint = self._retry_after_ms()
                flags = "--max-concurrent-work / --max-queued-work" if self.lane == "heavy" else \
                    "--max-concurrent-light / --max-queued-light"
                raise Busy(f"the agent is busy: {self._running} {self.lane} requests (Select, PriorLabels) running "
                           f"and {self._queued} queued, the limits (max_concurrent={self.max_concurrent}, "
                           f"max_queued={self.max_queued}; `shortlist serve {flags}`); {what} was not started; "
                           f"retry in about {hint} ms", hint / 1000)
            self._tokens.add(token)
            self._queued += 1
            try:
                while self._running >= self.max_concurrent:
                    token.check()
                    rem = token.remaining()
                    self._cond.wait(0.1 if rem is None else max(0.001, min(0.1, rem)))
                token.check()
            except BaseException:
                self._tokens.discard(token)
                raise
            finally:
                self._queued -= 1
            self._running += 1
        start = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - start
            with self._cond:
                self._running -= 1
                self._tokens.discard(token)
                self._mean_s = (1 - self.EWMA) * self._mean_s + self.EWMA * took
                self._cond.notify()

    def shutdown(self) -> None:
        """Cancel every running and waiting call and refuse new ones."""
        with self._cond:
            self._closed = True
            for t in self._tokens:
                t.cancel("the agent is shutting down; the work was stopped; retry when it is back", ShuttingDown)
            self._cond.notify_all()
