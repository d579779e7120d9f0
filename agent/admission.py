"""Admission control for heavy work (strategies, prior methods): bounded concurrency, a bounded queue,
and no waiting that cannot end in time.

At most ``max_concurrent`` calls of a lane run at once and at most ``max_queued`` wait for a turn; a call
beyond both is refused at once with ``Busy`` (gRPC RESOURCE_EXHAUSTED) and a retry hint, instead of
piling up threads, memory and latency. A waiting call leaves the queue as soon as its token is
cancelled or its deadline passes. ``shutdown`` cancels every running and waiting call's token (they
stop at their next ``agent.cancel.checkpoint()``) and refuses new ones, so the agent stops in seconds.
Light calls (GetStatus, SubmitLabels, ListSamples, Ingest) never pass through here, so they never wait
behind heavy ones.

Deadline-aware admission: the lane keeps a running mean of how long each kind of call takes (``kind``:
"Select 'as3l'", "PriorLabels 'knn'", ...; an exponentially weighted mean of the last runs, a cancelled
run counting with the time it had run). A call that would have to queue is refused at once with
``Busy`` when its expected wait (the running calls' expected remaining time, then the queued calls
ahead of it, ``max_concurrent`` at a time) plus its own expected duration exceeds its remaining
deadline: it would time out in the queue or be cut off mid-way, so a prompt RESOURCE_EXHAUSTED with a
retry hint (the expected wait) tells the client more, sooner, and frees the queue for calls that can
finish. A call that finds a slot free is refused the same way when its kind's recent runs took longer
than its remaining deadline (as3l on a saturated machine); once that estimate is older than
``PROBE_AFTER_S`` one call is let through to measure it again. An admitted call's own deadline still
stops its work (DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

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
    refused_for_deadline: int = 0


class Admission:
    """Slots for heavy work: ``with admission.slot(token, kind): ...`` runs the block once a slot is free."""

    # Weight of the newest duration in the running means behind the retry hint and the expected wait.
    EWMA = 0.2
    # A call that finds a slot free is refused for its own expected length only while that kind's
    # estimate is this recent; after, one call runs and measures it again (the machine may be quieter).
    PROBE_AFTER_S = 60.0

    def __init__(self, max_concurrent: int, max_queued: int, lane: str = "heavy",
                 initial_estimate_s: float = 1.0) -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.lane = lane
        self._cond = threading.Condition()
        self._running: dict[CancelToken, tuple[str, float]] = {}  # token -> (kind, start)
        self._waiting: dict[CancelToken, str] = {}  # token -> kind, in arrival order
        self._refused = 0
        self._refused_deadline = 0
        self._closed = False
        self._mean_s = initial_estimate_s  # over every kind: the estimate of a kind not seen yet
        self._kind_s: dict[str, float] = {}
        self._kind_at: dict[str, float] = {}  # when each kind's estimate was last updated (time.monotonic)

    def stats(self) -> AdmissionStats:
        with self._cond:
            return AdmissionStats(len(self._running), len(self._waiting), self._refused, self._mean_s,
                                  self._refused_deadline)

    def estimate(self, kind: str) -> float:
        """Expected seconds a call of ``kind`` runs (its running mean, else the lane's)."""
        with self._cond:
            return self._kind_s.get(kind, self._mean_s)

    def _expected_wait(self, now: float) -> float:
        """Seconds until a slot is expected to free for a call arriving now (call with the lock held): the
        running calls' expected remaining time, then each queued call's expected duration in turn."""
        ends = [max(0.0, self._kind_s.get(k, self._mean_s) - (now - start)) for k, start in self._running.values()]
        ends += [0.0] * (self.max_concurrent - len(ends))
        heapq.heapify(ends)
        for kind in self._waiting.values():
            heapq.heappush(ends, heapq.heappop(ends) + self._kind_s.get(kind, self._mean_s))
        return ends[0]

    def _retry_after_ms(self, wait_s: float | None = None) -> int:
        if wait_s is None:  # the queue ahead drains at max_concurrent calls per mean duration
            wait_s = self._mean_s * (len(self._running) + len(self._waiting) + 1) / self.max_concurrent
        return int(min(60_000, max(100, math.ceil(1000 * wait_s))))  # never hint below 100 ms

    # Per lane: what its calls are, and the `shortlist serve` flags that size it.
    LANES: ClassVar[dict[str, tuple[str, str]]] = {
        "heavy": ("Select, PriorLabels", "--max-concurrent-work / --max-queued-work"),
        "light": ("Select, PriorLabels", "--max-concurrent-light / --max-queued-light"),
        "decode": ("large-image decodes in Ingest", "--max-concurrent-decodes / --max-queued-decodes")}

    def _flags(self) -> str:
        return self.LANES.get(self.lane, self.LANES["heavy"])[1]

    def _calls(self) -> str:
        return self.LANES.get(self.lane, self.LANES["heavy"])[0]

    @contextmanager
    def slot(self, token: CancelToken, what: str = "this request", kind: str | None = None) -> Iterator[None]:
        """Run the block in a slot; Busy at once when running and queue are full, or when the call would
        have to queue and could not finish within its deadline; the token's exception (Cancelled,
        DeadlineExceeded, ShuttingDown) when it ends while waiting. ``kind`` names what the running means
        are kept by (default ``what``)."""
        kind = kind or what
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            full = len(self._running) >= self.max_concurrent
            if full and len(self._waiting) >= self.max_queued:
                self._refused += 1
                hint = self._retry_after_ms()
                raise Busy(f"the agent is busy: {len(self._running)} {self.lane} requests ({self._calls()}) "
                           f"running and {len(self._waiting)} queued, the limits (max_concurrent="
                           f"{self.max_concurrent}, max_queued={self.max_queued}; `shortlist serve {self._flags()}`)"
                           f"; {what} was not started; retry in about {hint} ms", hint / 1000)
            remaining = token.remaining()
            if remaining is not None:
                now = time.monotonic()
                wait = self._expected_wait(now) if full else 0.0
                own = self._kind_s.get(kind, self._mean_s)
                # With a slot free, only a kind measured within PROBE_AFTER_S is refused for its own length:
                # an older (or no) estimate is measured afresh by letting the call run.
                fresh = now - self._kind_at.get(kind, -math.inf) <= self.PROBE_AFTER_S
                if not full and not fresh and kind in self._kind_at and wait + own > remaining:
                    self._kind_at[kind] = now  # this call is the one probe: the next ones see a fresh estimate
                elif wait + own > remaining and (full or fresh):
                    self._refused += 1
                    self._refused_deadline += 1
                    hint = self._retry_after_ms(wait)
                    running, queued, left = len(self._running), len(self._waiting), max(0.0, remaining)
                    raise Busy(f"the agent is busy: {what} would wait about {wait:.1f} s for a turn ({running} "
                               f"{self.lane} requests running, {queued} queued) and then take about {own:.1f} s "
                               f"(its recent runs), more than the {left:.1f} s left of the call's deadline; it was "
                               f"not started; retry in about {hint} ms or with a longer deadline", hint / 1000)
            self._waiting[token] = kind
            try:
                while len(self._running) >= self.max_concurrent:
                    token.check()
                    rem = token.remaining()
                    self._cond.wait(0.1 if rem is None else max(0.001, min(0.1, rem)))
                token.check()
            finally:
                del self._waiting[token]
            start = time.monotonic()
            self._running[token] = (kind, start)
        cut = False
        try:
            yield
        except BaseException:
            cut = token.cancelled  # stopped by its deadline or its client: it needed longer than it ran
            raise
        finally:
            took = time.monotonic() - start
            with self._cond:
                del self._running[token]
                self._mean_s = (1 - self.EWMA) * self._mean_s + self.EWMA * took
                old = self._kind_s.get(kind)
                new = took if old is None else (1 - self.EWMA) * old + self.EWMA * took
                # A run cut short counts with the time it ran, and its kind's estimate is at least that: a
                # lower bound that the mean alone would take many runs (each timing out) to reach.
                self._kind_s[kind] = max(new, took) if cut else new
                self._kind_at[kind] = time.monotonic()
                self._cond.notify()

    def shutdown(self) -> None:
        """Cancel every running and waiting call and refuse new ones."""
        with self._cond:
            self._closed = True
            for t in [*self._running, *self._waiting]:
                t.cancel("the agent is shutting down; the work was stopped; retry when it is back", ShuttingDown)
            self._cond.notify_all()
