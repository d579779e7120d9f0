"""Admission control for heavy work (strategies, prior methods): bounded concurrency, a bounded queue,
and no waiting that cannot end in time.

At most ``max_concurrent`` calls of a lane run at once and at most ``max_queued`` wait for a turn; a call
beyond both is refused at once with ``Busy`` (gRPC RESOURCE_EXHAUSTED) and a retry hint, instead of
piling up threads, memory and latency. A waiting call leaves the queue as soon as its token is
cancelled or its deadline passes. ``shutdown`` cancels every running and waiting call's token (they
stop at their next ``agent.cancel.checkpoint()``) and refuses new ones, so the agent stops in seconds.
Light calls (GetStatus, SubmitLabels, ListSamples, Ingest) never pass through here, so they never wait
behind heavy ones.

Threads of its own (``LaneThreads``; the heavy lane of ``shortlist serve``): ``run`` executes a call's work
in one of the lane's ``max_concurrent`` worker threads instead of the gRPC thread that asked for it. Each
worker runs at a lower CPU priority (Linux niceness is per thread: ``nice`` +10 gives it a tenth of the
CPU weight of a normal thread, so GetStatus, SubmitLabels and light Selects preempt k-means instead of
waiting seconds for a core) and with ``openmp_threads`` OpenMP threads (scikit-learn's k-means: libgomp's
thread count is per calling thread, so the limit covers only the lane's work; BLAS is one thread in the
whole agent, agent/threads.py). Niceness cannot be lowered again without privileges, which is why the
work moves to threads that stay low instead of renicing the gRPC thread for the call.

Deadline-aware admission: the lane keeps a running mean of how long each kind of call takes (``kind``:
Select "as3l", PriorLabels "knn", ...; an exponentially weighted mean of the last runs; a run cut
short by its deadline or its client took at least the time it had run, so it may raise its kind's
estimate, never lower it). A call that would have to queue is refused at once with ``Busy``
when its expected wait (the running calls' expected remaining time, then the queued calls ahead of it,
``max_concurrent`` at a time) plus its own expected duration, times ``SAFETY`` (2; 3 while the lane's
calls get less than ``CONTENDED`` of a core), exceeds its
remaining deadline: it would (probably) time out in the queue or be cut off mid-way, so a prompt
RESOURCE_EXHAUSTED with a retry hint (the expected wait) tells the client more, sooner, and frees the
queue for calls that can finish. A call that finds a slot free is refused the same way when its kind's
recent runs took longer than its remaining deadline (as3l on a saturated machine). One unusual run must not
keep a kind out of an idle lane for good: once that estimate is older than ``PROBE_AFTER_S``, one call
that finds a slot free on a lane that is not contended (its calls get ``CONTENDED`` of a core or more, or
nothing tells the share; a lane with threads of its own samples it, ``SAMPLE_S``) is let through to
measure it again, one such probe at a time per lane; under contention a late call is still refused at
once. An admitted call's own
deadline still stops its work (DEADLINE_EXCEEDED). Every refusal is logged at DEBUG (the lane, the kind, the
rule, its expected wait and run, the deadline left, the CPU share assumed; never the request's ids, params
or token), and at INFO a kind's refusals are summed up at most once per ``REFUSAL_LOG_S``.

Concurrency-aware estimates: times measured alone (or on a quieter machine) say little about a call
admitted while the cores are saturated, so each kind also keeps its mean CPU seconds (the CPU clock of
the thread doing the work: exact for single-threaded lane work), and the lane's current CPU share (CPU
seconds per wall second its calls get now: measured on the running calls, else the running mean of the
calls that ended within ``PROBE_AFTER_S``) turns CPU seconds into expected wall seconds: a kind that
took t s alone is expected to take 10 t s while the lane's calls get a tenth of a core each. Running
calls also bound their kind from below (a kind is expected to need at least the CPU a running call of
that kind has already used); when the running calls get less than ``CONTENDED`` of a core each, the CPU
left to the lane is saturated and one more call would split it, so a call that finds a slot free is
expected at the split share and refused when it, or a running call, would then miss its deadline (on a
lane that is not contended one more call takes nothing from the running ones, so a running call expected
past its deadline, a probe's, refuses no one); a
running call past its estimate is expected to need a quarter of it more, and a queued call whose
expected wait plus run no longer fits its deadline leaves the queue with ``Busy`` at once instead of
waiting to end DEADLINE_EXCEEDED. Work that is not CPU-bound in its own thread (it sleeps or waits on
other threads) keeps the wall-time estimates.

Size-aware estimates: a call may say how much work it is (``size``: a number its CPU cost grows in
proportion to, at most; Select gives the pool's rows times the k-means clusters and fits of the strategies
that declare them, from the request's params and labelled set as the strategy's function computes them,
and the size probcover and qbc declare from theirs (``@strategy(work=...)``):
agent/params.py ``StrategyEntry.work_size``). A kind's estimate is scaled up by the
call's size over the size of the kind's last measured run (never down): on a fresh agent the strategies
are first timed at a few dozen labels, a load's SubmitLabels then take k-means' k to its cap of 500
within seconds, and typiclust and as3l admitted at their first (quiet, small-k) cost ran several times
longer in CPU, one of them past its 30 s deadline (docs/reliability.md, Load: the run before the fix
that is this paragraph). A kind never measured has no run to
scale from: with nothing timed before a load (``bench load --solo none``) the first typiclust Select on a
50,000-sample pool was expected at the lane's mean (a few cheap calls, or the 1 s start value) and ran to
its 30 s deadline. So a call may also bring a prior (``prior_cpu_s``): the CPU seconds it is expected to
take at its size, declared with the strategy as CPU seconds per unit of work size (``@strategy(...,
cpu_per_unit=...)``, ``StrategyEntry.prior_cpu_s``), which stands for the kind's estimate until one of
its runs is measured (then the measured run, scaled as above, replaces it). A prior per kind, rather than
a lane-wide CPU seconds per unit of size learnt from whatever ran, because the work sizes of different
kinds are in different units (rows x clusters for typiclust, dot products for probcover, rows x members / 5
for qbc, rows for the rest): a lane-wide rate
taken on the safe side would refuse typiclust's first call on an idle machine for ever (a kind refused
is never measured), one taken on the low side would not refuse it under load. What the lane does learn
across kinds is how far the declared priors are off here: every run of a kind with a prior updates a
factor, its CPU seconds over its prior (never below 1; up at once, down by the running mean; a run cut
short by its deadline or its client would have used at least its CPU seconds, so it may raise the factor,
never lower it), that multiplies the priors of the kinds not measured yet. A prior is declared for the
pools it was measured on, and the data moves it (k-means iterations): a slower machine, wider embeddings
or harder clusters make the k-means strategies' priors too low alike (random 512-d blobs:
docs/reliability.md), so after the first of them has run the others are expected at that much more. A
kind with a prior is judged by it as soon as the lane's CPU share is known (a sample will do), even with
nothing of the lane measured: on an idle machine it is admitted when twice its prior fits the deadline
(a prior must allow that for the sizes it is meant for, or its kind would never run), under load it is
refused at once with the usual hint. A kind refused is never measured, and the factor comes down only
through runs with a prior, so one slow run could keep the kinds judged by their priors out of an idle
lane for good; they get the probe measured kinds get (the lane's one at a time, on a lane that is not
contended): once the factor is older than ``PROBE_AFTER_S`` (no run with a prior ended, and no call was
let through to probe it, since), one call that finds a slot free and is late only for the factor (it
fits at its declared prior) is let through to measure itself and the factor; under contention such a
call is still refused at once. A
kind with neither a measurement nor a prior (no size information, or a strategy that declares no cost:
PriorLabels, the light strategies) is expected at the lane's mean as before, and the first call of a
lane with no history at all runs and measures.

Both running means lean to the safe side: a kind's CPU seconds rise at once to a longer run (a kind's
cost grows with the labelled set) and the lane's share falls at once to a slower finished call (the
load can change within seconds), each going back by the running mean only (a run cut short never brings
its kind's estimate down, and a share older than ``PROBE_AFTER_S`` is replaced by the next one measured,
not averaged with it: it says nothing of the load now); and a call that finds a slot
free beside a call admitted less than ``MIN_LIVE_S`` ago waits (at most that long) until the running
call's share is measured, so two calls arriving together are not both admitted on a share measured
before either ran (docs/reliability.md, Load).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from agent import cancel
from agent.cancel import CancelToken, ShuttingDown
from agent.errors import ResourceExhausted
from agent.threads import limited

log = logging.getLogger(__name__)
T = TypeVar("T")


def _secs(x: float) -> str:
    """Seconds as a refusal says them: 1 decimal from 1 s on, 2 significant digits below (0.07, 0.21), so that
    a small estimate and its margin add up (0.07 s and 0.21 s with a 3x margin were "0.1 s" and "0.2 s")."""
    if x >= 1 or x <= 0:
        return f"{max(x, 0.0):.1f}"
    return f"{x:.2g}" if x >= 0.01 else f"{x:.3f}"


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


@dataclass(frozen=True)
class LaneThreads:
    """A lane whose work runs in threads of its own (``Admission.run``): ``nice`` steps of niceness below
    the thread that starts them (Linux, per thread; at most 19; 0 keeps it) and with at most
    ``openmp_threads`` OpenMP threads per call; ``sample_share``: when nothing tells the CPU share its
    calls get, admission samples it (``Admission.SAMPLE_S``) rather than letting a call run blind."""

    nice: int = 10
    openmp_threads: int = 1
    sample_share: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.nice <= 19 or self.openmp_threads < 1:
            raise ValueError("lane threads: nice in 0..19 and openmp_threads >= 1")


def _thread_clock() -> tuple[int | None, float]:
    """(the calling thread's CPU clock id, its reading now); (None, 0) where threads have no CPU clock."""
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        return clock, time.clock_gettime(clock)
    except (AttributeError, OSError):
        return None, 0.0


def _renice(steps: int, lane: str) -> None:
    """This thread's niceness ``steps`` above what it inherited (at most 19; Linux: per thread; best effort)."""
    if steps == 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except (OSError, AttributeError) as e:
        log.info("%s lane threads keep their priority: %s", lane, e)


@dataclass
class _Run:
    """A running call: its kind, when it got its slot (time.monotonic()) and the CPU clock of the thread
    doing its work, with that clock's reading at the start; its work size and prior CPU seconds."""

    kind: str
    start: float
    clock: int | None
    cpu0: float
    size: float | None = None  # the call's work size (Admission.slot)
    prior: float | None = None  # its declared prior CPU seconds (Admission.slot's prior_cpu_s)

    def cpu(self) -> float | None:
        """CPU seconds the work's thread has used since the start (None: not measurable)."""
        if self.clock is None:
            return None
        try:
            return time.clock_gettime(self.clock) - self.cpu0
        except OSError:  # the thread has ended
            return None


@dataclass(frozen=True)
class _Call:
    """A call asking for a slot (Admission.slot's arguments): its token, what it is (for messages), the kind
    its running means are kept by, its work size and its prior CPU seconds (None: not known)."""

    token: CancelToken
    what: str
    kind: str
    size: float | None
    prior: float | None


class Admission:
    """Slots for heavy work: ``with admission.slot(token, kind): ...`` runs the block once a slot is free;
    ``admission.run(token, fn)`` runs ``fn`` in a slot, in the lane's own threads when it has them."""

    # Weight of the newest duration in the running means behind the retry hint and the expected wait.
    EWMA = 0.2
    # A call that finds a slot free is refused for its own expected length at once while that kind's
    # estimate is this recent or the lane is contended; after, on a lane that is not, one call (one at a
    # time per lane) runs and measures it again (the machine may be quieter). A share older than this is
    # replaced by the next one measured, and a lane with nothing newer samples it (SAMPLE_S).
    PROBE_AFTER_S = 60.0
    # A work thread using less CPU than this per wall second is not CPU-bound (it sleeps, or waits on other
    # threads): its kind keeps wall-time estimates, and it says nothing about the lane's CPU share.
    MIN_SHARE = 0.01
    # A running call past its kind's estimate is expected to need this fraction of what it has used more.
    OVERRUN = 0.25
    # A call is admitted only when this multiple of its expected wait and run fits in its deadline (the
    # estimates are means, and a loaded machine varies), and a queued call leaves once the plain
    # expectation no longer fits: the margin between the two keeps refusals at admission, i.e. prompt.
    SAFETY = 2.0
    # ... and this multiple while the lane's calls get less than CONTENDED of a core: under 16 clients the
    # share a heavy call got fell by a factor of several within seconds of the previous call's end, so
    # calls admitted at twice their expected length ran past 30 s (docs/reliability.md, Load, "Heavy
    # admission on the safe side").
    SAFETY_CONTENDED = 3.0
    # A running call is measured for this long before its CPU share counts as the lane's current one.
    MIN_LIVE_S = 0.1
    # With no call of the lane running or ended within PROBE_AFTER_S, a lane with threads of its own
    # measures the share one of them would get now: a thread at the lane's niceness hashes for SAMPLE_S
    # (hashlib releases the GIL: this measures the CPU, not the interpreter lock); the sample stands for
    # SAMPLE_VALID_S. It replaces letting a call run blind to measure the machine (which, on a saturated
    # machine, ended DEADLINE_EXCEEDED).
    SAMPLE_S = 0.1
    SAMPLE_VALID_S = 2.0
    # A sample is noisy: on a loaded machine one 0.1-s sample of a thread at the lane's niceness read an order
    # of magnitude below the next, and below what the heavy calls then got (figures in docs/reliability.md,
    # "Estimates after a restart"); a declared prior divided by the low ones refused short calls as long ones
    # for a minute after a restart. So a sample runs until its thread has had SAMPLE_MIN_CPU_S of CPU (a few
    # scheduler slices: fewer tell nothing) or SAMPLE_MAX_S have passed; the lane's sampled share is the
    # running mean (SAMPLE_EWMA) of its samples, a sample older than PROBE_AFTER_S replaced by the next; and
    # it is taken as at least MIN_SAMPLED_SHARE of a core (a heavy call's share at the default niceness +10
    # against one normal-priority CPU-bound thread per core): an estimate from a prior and a sample is then
    # at most ten times the prior, not the hundred times a 0.01 sample made it.
    SAMPLE_MIN_CPU_S = 0.02
    SAMPLE_MAX_S = 0.5
    SAMPLE_EWMA = 0.5
    MIN_SAMPLED_SHARE = 0.1
    # Running calls getting less than this CPU share each are taken to have saturated the CPU left to the
    # lane: one more call would split it (n running at share s -> n + 1 at s * n / (n + 1)), so it is
    # admitted only when it, and every running call, is still expected to finish within its deadline.
    CONTENDED = 0.9
    # Each refusal is logged at DEBUG; at INFO, a kind's refusals are summed up at most once per this many
    # seconds (the first at once), so a saturated agent refusing a load's calls does not flood its log.
    REFUSAL_LOG_S = 60.0

    def __init__(self, max_concurrent: int, max_queued: int, lane: str = "heavy",
                 initial_estimate_s: float = 1.0, threads: LaneThreads | None = None,
                 max_wait_s: float | None = None) -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.lane = lane
        self.threads = threads
        self.max_wait_s = max_wait_s  # longest wait in the queue (None: until the deadline)
        self._cond = threading.Condition()
        self._running: dict[CancelToken, _Run] = {}
        # token -> (kind, size, prior CPU seconds), in arrival order
        self._waiting: dict[CancelToken, tuple[str, float | None, float | None]] = {}
        # Calls holding a queue place while they wait for another call's answer, not for a slot (``park``)
        self._parked: set[CancelToken] = set()
        self._refused = 0
        self._refused_deadline = 0
        self._closed = False
        self._mean_s = initial_estimate_s  # over every kind: the estimate of a kind not seen yet
        self._mean_cpu = initial_estimate_s
        self._kind_s: dict[str, float] = {}  # wall seconds per kind (running means)
        self._kind_cpu: dict[str, float] = {}  # CPU seconds of the work's thread per kind (running means)
        self._kind_at: dict[str, float] = {}  # when each kind's estimate was last updated (time.monotonic)
        self._kind_size: dict[str, float] = {}  # the work size of each kind's last measured run (slot's size)
        self._slower = 1.0  # measured CPU seconds over declared prior ones, at least 1 (running max-leaning mean) ...
        self._slower_at = -math.inf  # ... and when a run with a prior last ended, or a call was let through to probe it
        self._probe: CancelToken | None = None  # the call let through to measure an old estimate (_probes), running
        self._share = 1.0  # CPU share of the recent finished CPU-bound calls (running mean; the first sets it) ...
        self._share_at = -math.inf  # ... and when it was last updated
        self._sampled, self._sampled_at = 1.0, -math.inf  # the last sampled share (SAMPLE_S) and when
        self._sampling = False
        # kind -> (refusals not yet in an INFO summary, when its last summary was logged: time.monotonic())
        self._refusal_log: dict[str, tuple[int, float]] = {}
        self._pool = None if threads is None else ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix=f"{lane}-work", initializer=self._lower_priority)

    def stats(self) -> AdmissionStats:
        with self._cond:
            return AdmissionStats(len(self._running), len(self._waiting), self._refused, self._mean_s,
                                  self._refused_deadline)

    def estimate(self, kind: str, size: float | None = None, prior_cpu_s: float | None = None) -> float:
        """Expected wall seconds a call of ``kind`` (of work size ``size``, with prior CPU seconds
        ``prior_cpu_s``: see ``slot``) arriving now runs (given what runs now)."""
        with self._cond:
            return self._own(kind, self._share_now(time.monotonic()), size, prior_cpu_s)

    # ---- estimates (all with the lock held) --------------------------------------------------------
    def _share_now(self, now: float) -> float | None:
        """CPU seconds per wall second the lane's CPU-bound calls get now: the running ones' when they have
        run long enough to tell, else the recent finished ones' (within PROBE_AFTER_S); None when neither."""
        live = self._live(now)
        if live:
            return sum(used for _, _, used in live) / sum(now - r.start for _, r, _ in live)
        if now - self._share_at <= self.PROBE_AFTER_S:
            return self._share
        return self._sampled if now - self._sampled_at <= self.SAMPLE_VALID_S else None

    def _measure_share(self) -> float | None:
        """CPU seconds per wall second a thread at the lane's niceness gets now (SAMPLE_S of hashing)."""
        nice = 0 if self.threads is None else self.threads.nice
        out: list[float] = []

        def sample() -> None:
            _renice(nice, self.lane)
            buf = bytes(1 << 20)  # a call far shorter than SAMPLE_S, the GIL released (docs/agent.md, "Never blind")
            t0, c0 = time.monotonic(), time.thread_time()
            while True:
                hashlib.sha256(buf).digest()
                ran = time.monotonic() - t0
                if ran >= self.SAMPLE_MAX_S or (
                        ran >= self.SAMPLE_S and time.thread_time() - c0 >= self.SAMPLE_MIN_CPU_S):
                    break
            out.append((time.thread_time() - c0) / max(1e-6, time.monotonic() - t0))

        t = threading.Thread(target=sample, name=f"{self.lane}-share", daemon=True)
        t.start()
        t.join(4 * self.SAMPLE_MAX_S)
        return out[0] if out else None

    def _sample_if_blind(self, token: CancelToken) -> None:
        """Before admission: sample the CPU share when nothing else tells it (lanes with threads, calls with
        a deadline, a slot free); a call arriving while another samples waits for that sample."""
        if self.threads is None or not self.threads.sample_share or token.remaining() is None:
            return
        with self._cond:
            end = time.monotonic() + 4 * self.SAMPLE_MAX_S
            while self._sampling and time.monotonic() < end:
                self._cond.wait(self.SAMPLE_S)
            now = time.monotonic()
            if (self._closed or self._sampling or len(self._running) >= self.max_concurrent
                    or self._share_now(now) is not None):
                return
            self._sampling = True
        share = None
        try:
            share = self._measure_share()
        finally:
            with self._cond:
                self._sampling = False
                if share is not None:
                    self._add_sample(share)
                self._cond.notify_all()

    def _add_sample(self, share: float) -> None:
        """Fold a sampled CPU share into the lane's (lock held): at least MIN_SAMPLED_SHARE, the running mean
        of the samples (SAMPLE_EWMA) unless the last one is older than PROBE_AFTER_S (it says nothing now)."""
        share = max(share, self.MIN_SAMPLED_SHARE)
        now = time.monotonic()
        if now - self._sampled_at <= self.PROBE_AFTER_S:
            share = (1 - self.SAMPLE_EWMA) * self._sampled + self.SAMPLE_EWMA * share
        self._sampled, self._sampled_at = share, now

    def _await_measure(self, token: CancelToken) -> None:
        """With a slot free and calls of the lane running for less than MIN_LIVE_S, wait (lock held; at most
        MIN_LIVE_S) until they have run long enough to tell the CPU share they get: two calls arriving
        together were otherwise both admitted on the share measured before either ran (at an expected 0.94
        of a core each in a run where both then got 0.28, the load having started a second before)."""
        if token.remaining() is None:
            return
        end = time.monotonic() + self.MIN_LIVE_S
        while not self._closed and len(self._running) < self.max_concurrent:
            now = time.monotonic()
            young = max((r.start + self.MIN_LIVE_S - now for r in self._running.values()), default=0.0)
            if young <= 0 or now >= end:
                return
            self._cond.wait(min(young, end - now) + 0.001)

    def _live(self, now: float) -> list[tuple[CancelToken, _Run, float]]:
        """The running CPU-bound calls measured for MIN_LIVE_S: (token, run, CPU seconds used)."""
        out = []
        for token, r in self._running.items():
            used, ran = r.cpu(), now - r.start
            if used is not None and ran >= self.MIN_LIVE_S and used >= self.MIN_SHARE * ran:
                out.append((token, r, used))
        return out

    def _share_with_one_more(self, live: list[tuple[CancelToken, _Run, float]], now: float) -> float:
        """The CPU share each call would get with one more running (``live`` non-empty)."""
        share = sum(used for _, _, used in live) / sum(now - r.start for _, r, _ in live)
        if share >= self.CONTENDED:
            return share  # the running calls have cores to themselves: assume one more has too
        n = len(self._running)
        return share * n / (n + 1)

    def _scale(self, kind: str, size: float | None) -> float:
        """How much more a call of ``kind`` and work ``size`` is expected to cost than the kind's last measured
        run (never less: 1 when either size is unknown or the work has not grown)."""
        then = self._kind_size.get(kind)
        if size is None or then is None or then <= 0:
            return 1.0
        return max(1.0, size / then)

    def _base_cpu(self, kind: str, prior: float | None) -> float:
        """CPU seconds of a call of ``kind`` at the size it was measured at; for a kind never measured, its
        prior (times how much slower than declared this lane's calls have run) or else the lane's mean."""
        cpu = self._kind_cpu.get(kind)
        if cpu is not None:
            return cpu
        return self._mean_cpu if prior is None else prior * self._slower

    def _base_s(self, kind: str, prior: float | None) -> float:
        """Wall seconds of a call of ``kind`` as ``_base_cpu`` (a prior: at a full core)."""
        wall = self._kind_s.get(kind)
        if wall is not None:
            return wall
        return self._mean_s if prior is None else prior * self._slower

    def _cpu_bound(self, kind: str, prior: float | None = None) -> bool:
        return self._base_cpu(kind, prior) >= self.MIN_SHARE * self._base_s(kind, prior)

    def _kind_cpu_now(self, kind: str, size: float | None = None, prior: float | None = None) -> float:
        """A kind's CPU estimate for a call of work ``size`` (scaled up from the kind's last measured size),
        at least what a running call of that kind and no larger size has already used."""
        est = self._base_cpu(kind, prior) * self._scale(kind, size)
        for r in self._running.values():
            smaller = size is None or r.size is None or r.size <= size
            used = r.cpu() if r.kind == kind and smaller else None
            if used is not None:
                est = max(est, used)
        return est

    def _own(self, kind: str, share: float | None, size: float | None = None, prior: float | None = None) -> float:
        """Expected wall seconds of a call of ``kind``, work ``size`` and prior CPU seconds ``prior`` started
        now: its CPU seconds at the running calls' CPU share, or (nothing CPU-bound running, or a kind not
        CPU-bound) its recent wall time; either scaled up when its work has grown since the kind was
        measured (``_scale``); a kind never measured: its prior (``_base_cpu``)."""
        if share is not None and self._cpu_bound(kind, prior):
            return self._kind_cpu_now(kind, size, prior) / share
        return self._base_s(kind, prior) * self._scale(kind, size)

    def _probes(self, kind: str, share: float | None, size: float | None, prior: float | None,
                safety: float, remaining: float, now: float) -> bool:
        """Whether a call that found a slot free and is late for its deadline is let through to measure the
        estimate that makes it late, and if so record it (lock held). The lane's one probe at a time: none
        runs now, and the lane is not contended (its calls get CONTENDED of a core or more, or nothing tells
        the share: under contention a late call is refused at once); then either its kind was measured, that
        estimate is older than PROBE_AFTER_S and it is marked fresh (one unusual run had pushed it up for
        good, the lane's share being known once sampled), or its kind is judged by its prior (never
        measured), the factor its prior is scaled by (``_slower``) is older than PROBE_AFTER_S (no run with a
        prior ended, and no call was let through to probe it, since) and the call would fit at its declared
        prior (a call late even at that would be refused whatever the factor measured), and the factor is
        marked fresh. The probe's run then measures them again."""
        if self._probe is not None or (share is not None and share < self.CONTENDED):
            return False
        at = self._kind_at.get(kind)
        if at is not None:
            if now - at <= self.PROBE_AFTER_S:
                return False
            log.debug("%s: %s let through to measure its estimate again (%.0f s old)", self.lane, kind, now - at)
            self._kind_at[kind] = now  # the next calls see a fresh estimate
            return True
        if prior is None or prior <= 0 or self._slower <= 1.0 or now - self._slower_at <= self.PROBE_AFTER_S:
            return False
        # prior / factor: the call's own estimate at its declared prior, the factor taken out (_base_cpu).
        if safety * self._own(kind, share, size, prior / self._slower) > remaining:
            return False
        log.debug("%s: %s let through to measure the factor its prior is scaled by (x%.2f, %.0f s old)",
                  self.lane, kind, self._slower, now - self._slower_at)
        self._slower_at = now  # the next calls see the factor fresh
        return True

    def _remaining(self, r: _Run, now: float, share: float | None) -> float:
        """Expected wall seconds until running call ``r`` ends."""
        used = r.cpu()
        scale = self._scale(r.kind, r.size)
        if share is not None and used is not None and self._cpu_bound(r.kind, r.prior):
            est = self._base_cpu(r.kind, r.prior) * scale
            return max(est - used, self.OVERRUN * max(est, used)) / share
        est = self._base_s(r.kind, r.prior) * scale
        ran = now - r.start
        return max(est - ran, self.OVERRUN * max(est, ran))

    def _expected_wait(self, now: float, share: float | None, before: CancelToken | None = None) -> float:
        """Seconds until a slot is expected to free for a call arriving now (or for the queued call
        ``before``): the running calls' expected remaining time, then each queued call ahead in turn."""
        ends = [self._remaining(r, now, share) for r in self._running.values()]
        ends += [0.0] * (self.max_concurrent - len(ends))
        heapq.heapify(ends)
        for token, (kind, size, prior) in self._waiting.items():
            if token is before:
                break
            heapq.heappush(ends, heapq.heappop(ends) + self._own(kind, share, size, prior))
        return ends[0]

    def _retry_after_ms(self, wait_s: float | None = None) -> int:
        if wait_s is None:  # the queue ahead drains at max_concurrent calls per mean duration
            wait_s = self._mean_s * (len(self._running) + self._queued() + 1) / self.max_concurrent
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

    def _log_refusal(self, kind: str, why: str, wait: float | None, own: float | None, remaining: float | None,
                     share: float | None) -> None:
        """Log a Busy refusal of a call of ``kind`` (lock held): a DEBUG line each, and an INFO summary per kind
        at most once per REFUSAL_LOG_S (the refusals since the last one). ``why``: which rule refused it;
        ``wait``, ``own``: its expected wait for a turn and run (seconds; None: not estimated); ``remaining``:
        seconds left of its deadline (None: none); ``share``: the CPU share its estimate assumed. Only the kind
        (a strategy or method name, never the request's ids, params or token) and these figures are logged."""
        def num(x: float | None, fmt: str = ".1f") -> str:
            return "-" if x is None else format(x, fmt)

        left = "no deadline" if remaining is None else f"deadline {remaining:.1f} s left"
        figures = f"expected wait {num(wait)} s + run {num(own)} s, {left}, CPU share {num(share, '.2f')}"
        log.debug("%s: %s refused (%s): %s", self.lane, kind, why, figures)
        now = time.monotonic()
        count, last = self._refusal_log.get(kind, (0, -math.inf))
        count += 1
        if now - last < self.REFUSAL_LOG_S:
            self._refusal_log[kind] = (count, last)
            return
        self._refusal_log[kind] = (0, now)
        since = "" if last == -math.inf else f" in the last {now - last:.0f} s"
        log.info("%s: refused %d %s call(s) with RESOURCE_EXHAUSTED%s; the last: %s (%s); %d running, %d queued",
                 self.lane, count, kind, since, why, figures, len(self._running), len(self._waiting))

    def _waited_too_long(self, what: str, wait: float, queued: bool) -> Busy:
        """The refusal of a call that would wait (or has waited) longer than ``max_wait_s`` (lock held)."""
        self._refused += 1
        self._refused_deadline += 1
        hint = self._retry_after_ms(wait)
        done = "waited" if queued else "would wait about"
        return Busy(f"the agent is busy: {what} {done} {wait:.1f} s for a turn ({len(self._running)} {self.lane} "
                    f"requests running, {len(self._waiting)} queued), longer than the lane's queue wait limit of "
                    f"{self.max_wait_s:g} s; it was not started; retry in about {hint} ms", hint / 1000)

    def _check_others(self, what: str, live: list[tuple[CancelToken, _Run, float]], share: float,
                      now: float) -> None:
        """Busy when a running call with a deadline would no longer finish in time at ``share`` (the CPU
        share each gets once this call runs too; lock held)."""
        for token, r, used in live:
            left = token.remaining()
            if left is None or not self._cpu_bound(r.kind, r.prior):
                continue
            est = self._kind_cpu_now(r.kind, r.size, r.prior)
            if max(est - used, self.OVERRUN * max(est, used)) / share > left:
                self._refused += 1
                self._refused_deadline += 1
                ends = [self._remaining(x, now, share) for x in self._running.values()]
                hint = self._retry_after_ms(min(ends))
                raise Busy(f"the agent is busy: starting {what} now would slow the {len(self._running)} running "
                           f"{self.lane} requests past their deadlines (the CPU left to them is taken: each would "
                           f"get {share:.2f} of a core); it was not started; retry in about {hint} ms", hint / 1000)

    def _too_late(self, what: str, wait: float, own: float, remaining: float,
                  basis: str = "its recent runs", safety: float = 1.0) -> Busy:
        """The refusal of a call that could not finish within its deadline (counted; lock held); ``basis``:
        what its expected length comes from; ``safety``: the margin the estimate was multiplied by. It says the
        deadline the call needs now (the margin admission keeps, at least SAFETY, times its wait and run). A retry
        hint (``retry-after-ms``) only when waiting can help: its own run would fit in its deadline once the
        calls ahead of it have ended; a call too long for its deadline by itself gets none (a client retrying
        it after the expected wait, or 100 ms, would be refused again and again: only a longer deadline, or a
        smaller call, helps)."""
        self._refused += 1
        self._refused_deadline += 1
        running, queued, left = len(self._running), len(self._waiting), max(0.0, remaining)
        margin_x = max(safety, self.SAFETY)
        # Whole seconds, at least 1 (clients and the web app read the number as an integer).
        needed = max(1, math.ceil(margin_x * (wait + own)))
        # the estimate is uncertain on a busy machine: say the margin the needed deadline comes from (also when
        # the caller passed none: SAFETY applies), or "21 s, more than the 60 s left" reads wrong
        margin = f", {_secs(margin_x * (wait + own))} s with the {margin_x:g}x margin kept for estimates"
        # a slot free (no wait): too long by itself, or beside the calls running now (whose CPU it would share);
        # it is never "would wait about 0.0 s for a turn"
        beside = f" beside the {running} {self.lane} requests running" if running else ""
        opening = (f"{what} would take about {_secs(own)} s{beside}" if wait <= 0 else
                   f"the agent is busy: {what} would wait about {_secs(wait)} s for a turn ({running} {self.lane} "
                   f"requests running, {queued} queued) and then take about {_secs(own)} s")
        head = (f"{opening} ({basis}, at the CPU share such calls get now){margin}, more than the {_secs(left)} s "
                f"left of the call's deadline; it was not started; it needs a deadline of at least {needed} s")
        if wait > 0 and margin_x * own <= remaining:  # the wait for a turn makes it late: a later try may fit
            hint = self._retry_after_ms(wait)
            return Busy(f"{head}, or a retry in about {hint} ms (once the calls ahead of it have ended)", hint / 1000)
        if wait <= 0 and running:  # it shares the CPU with the running calls: once they end, it gets more
            now = time.monotonic()
            hint = self._retry_after_ms(min(self._remaining(r, now, None) for r in self._running.values()))
            return Busy(f"{head}, or a retry in about {hint} ms (once the calls ahead of it have ended)", hint / 1000)
        return Busy(f"{head} (retrying with this deadline will not help: give it a longer one, or make the call "
                    "smaller)", None)

    @contextmanager
    def slot(self, token: CancelToken, what: str = "this request", kind: str | None = None,
             size: float | None = None, prior_cpu_s: float | None = None) -> Iterator[None]:
        """Run the block in a slot; Busy at once when running and queue are full, or when the call would
        have to queue and could not finish within its deadline (also later, while it waits, once that
        becomes so); the token's exception (Cancelled, DeadlineExceeded, ShuttingDown) when it ends while
        waiting. ``kind`` names what the running means are kept by (default ``what``); ``size``: the call's
        work, in a unit its CPU cost grows in proportion to at most (rows x k-means clusters; None: not
        known): a call of a kind measured at a smaller size is expected to cost that much more;
        ``prior_cpu_s``: CPU seconds the call is expected to take while its kind has never been measured (a
        conservative prior for its size, declared by the strategy: StrategyEntry.prior_cpu_s; None: the
        lane's mean, as for any kind not seen yet)."""
        call = _Call(token, what, kind or what, size, prior_cpu_s)
        self._sample_if_blind(token)
        # Under the lock from the first check to taking the slot: only self._cond.wait (in _await_measure and
        # _wait_turn_locked) lets it go, and what follows a wait checks the state again.
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            self._await_measure(token)
            full = len(self._running) >= self.max_concurrent
            if full and self._queued() >= self.max_queued:
                raise self._queue_full_locked(call)
            probing = self._check_deadline_locked(call, full)
            if full:
                self._check_queue_wait_locked(call)
            self._wait_turn_locked(call)
            run = self._start_locked(call, probing)
        cut = False
        try:
            yield
        except BaseException:
            cut = token.cancelled  # stopped by its deadline or its client: it needed longer than it ran
            raise
        finally:
            took = time.monotonic() - run.start
            used = run.cpu()
            with self._cond:
                del self._running[token]
                if self._probe is token:
                    self._probe = None
                self._learn_locked(run, took, used, cut)
                log.debug("%s: %s ended after %.2f s, %s CPU s%s", self.lane, run.kind, took, used,
                          " (cut)" if cut else "")
                self._cond.notify()

    @contextmanager
    def park(self, token: CancelToken) -> Iterator[bool]:
        """Hold a place in the lane's queue for the block, which waits for another call's answer rather than for
        a slot (an identical Select in flight: ``Agent._single_flight``); yields False, holding nothing, when
        the queue has no room (the caller then goes through ``slot`` as any call: a free slot, or Busy).
        The gRPC thread pool is sized for the lanes' running and queued calls (agent/service.py), so a call
        waiting in no queue at all took a thread outside that budget: 150 identical Selects had taken every
        thread and a GetStatus timed out. A parked call is cancelled at shutdown, as a queued one is."""
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            room = self._queued() < self.max_queued
            if room:
                self._parked.add(token)
        try:
            yield room
        finally:
            if room:
                with self._cond:
                    self._parked.discard(token)
                    self._cond.notify_all()

    def _queued(self) -> int:
        """Queue places taken (lock held): the calls waiting for a slot and those parked (``park``)."""
        return len(self._waiting) + len(self._parked)

    # ---- slot's steps (each with the lock held: they read and change the lane's state) ---------------
    def _queue_full_locked(self, call: _Call) -> Busy:
        """The refusal of a call that finds the running calls and the queue at the lane's limits (counted;
        lock held)."""
        self._refused += 1
        hint = self._retry_after_ms()
        if log.isEnabledFor(logging.INFO):
            now = time.monotonic()
            share = self._share_now(now)
            self._log_refusal(call.kind, "running and queued calls at the lane's limits",
                              self._expected_wait(now, share), self._own(call.kind, share, call.size, call.prior),
                              call.token.remaining(), share)
        return Busy(f"the agent is busy: {len(self._running)} {self.lane} requests ({self._calls()}) "
                    f"running and {self._queued()} queued, the limits (max_concurrent="
                    f"{self.max_concurrent}, max_queued={self.max_queued}; `shortlist serve {self._flags()}`)"
                    f"; {call.what} was not started; retry in about {hint} ms", hint / 1000)

    def _check_deadline_locked(self, call: _Call, full: bool) -> bool:
        """Busy when the call would slow the running calls past their deadlines or would not finish within
        its own (lock held; ``full``: no slot is free, so it would queue); else whether it is let through as
        the lane's one probe (``_probes``: a late call with a slot free on an uncontended lane)."""
        kind, size, prior = call.kind, call.size, call.prior
        now = time.monotonic()
        live = [] if full else self._live(now)
        # A slot is free, and the calls running now measure how much CPU one more would get. Under
        # contention (they get less than CONTENDED of a core each) one more splits it: admitted only when
        # it would not slow them past their deadlines (whether or not it has one itself). Uncontended,
        # it takes nothing from them, so their own expected lateness (a probe's) refuses no one.
        more = self._share_with_one_more(live, now) if live else None
        if more is not None and more < self.CONTENDED:
            try:
                self._check_others(call.what, live, more, now)
            except Busy:
                self._log_refusal(kind, "it would slow the running calls past their deadlines", 0.0,
                                  self._own(kind, more, size, prior), call.token.remaining(), more)
                raise
        remaining = call.token.remaining()
        if remaining is None:
            return False
        share = self._share_now(now) if more is None else more
        wait = self._expected_wait(now, share) if full else 0.0
        own = self._own(kind, share, size, prior)
        # With a slot free, a late call is refused unless it is let through as the lane's one probe
        # (_probes: an estimate older than PROBE_AFTER_S, on an uncontended lane). A kind ever
        # measured is judged by its estimate; a kind never measured only when the lane's CPU share is
        # known now (running or recent calls, or a sample) and any kind of the lane was ever measured
        # (a kind not seen yet: at the lane's mean CPU) or it has a prior; otherwise (a lane with no
        # history at all and no prior, or nothing tells the share) it runs and measures.
        judged = kind in self._kind_at or (share is not None and (bool(self._kind_at) or prior is not None))
        safety = self.SAFETY if share is None or share >= self.CONTENDED else self.SAFETY_CONTENDED
        late = safety * (wait + own) > remaining
        if late and not full and self._probes(kind, share, size, prior, safety, remaining, now):
            return True
        if late and (full or judged):
            basis = "its declared cost at its size" if prior is not None and kind not in self._kind_at \
                else "its recent runs"
            self._log_refusal(kind, f"it would not finish within its deadline ({basis})", wait, own,
                              remaining, share)
            raise self._too_late(call.what, wait, own, remaining, basis, safety)
        return False

    def _check_queue_wait_locked(self, call: _Call) -> None:
        """Busy when a call that would queue is expected to wait longer than ``max_wait_s`` (lock held)."""
        if self.max_wait_s is None:
            return
        now = time.monotonic()
        share = self._share_now(now)
        wait = self._expected_wait(now, share)
        if wait > self.max_wait_s:
            self._log_refusal(call.kind, "its wait would pass the lane's queue wait limit", wait,
                              self._own(call.kind, share, call.size, call.prior), call.token.remaining(), share)
            raise self._waited_too_long(call.what, wait, queued=False)

    def _wait_turn_locked(self, call: _Call) -> None:
        """Queue the call until a slot is free (lock held; released only inside ``self._cond.wait``); Busy
        once it has waited ``max_wait_s`` or could no longer finish within its deadline, the token's
        exception once it ends. Returns at once when a slot is free. It leaves the queue either way."""
        token, kind, size, prior = call.token, call.kind, call.size, call.prior
        self._waiting[token] = (kind, size, prior)
        queued_at = time.monotonic()
        try:
            while len(self._running) >= self.max_concurrent:
                token.check()
                rem = token.remaining()
                timeout = 0.1
                if self.max_wait_s is not None:
                    waited = time.monotonic() - queued_at
                    if waited >= self.max_wait_s:  # estimates were wrong: leave now, still promptly
                        self._log_refusal(kind, "it waited in the queue for the lane's queue wait limit", waited,
                                          None, token.remaining(), self._share_now(time.monotonic()))
                        raise self._waited_too_long(call.what, waited, queued=True)
                    timeout = max(0.001, min(timeout, self.max_wait_s - waited))
                if rem is not None:
                    # The machine may have slowed since it queued: leave as soon as the call could no
                    # longer finish in time, rather than time out in the queue or mid-way.
                    now = time.monotonic()
                    share = self._share_now(now)
                    wait = self._expected_wait(now, share, before=token)
                    own = self._own(kind, share, size, prior)
                    if wait + own > rem:
                        self._log_refusal(kind, "it could no longer finish within its deadline once queued",
                                          wait, own, rem, share)
                        raise self._too_late(call.what, wait, own, rem)
                    timeout = max(0.001, min(timeout, rem - wait - own))
                self._cond.wait(timeout)
            token.check()
        finally:
            del self._waiting[token]

    def _start_locked(self, call: _Call, probing: bool) -> _Run:
        """Take a free slot for the call (lock held): its run, timed from now on this thread's CPU clock
        (``_work`` moves it to the worker's); ``probing``: it is the lane's one probe until it ends."""
        clock, cpu0 = _thread_clock()
        run = _Run(call.kind, time.monotonic(), clock, cpu0, call.size, call.prior)
        self._running[call.token] = run
        if probing:
            self._probe = call.token  # the lane's one probe, until it ends
        rem = call.token.remaining()
        log.debug("%s: %s admitted (share now %s, %s of its CPU s, x%.2f for its size, %s)", self.lane,
                  call.kind, self._share_now(run.start), self._kind_cpu.get(call.kind, call.prior),
                  self._scale(call.kind, call.size), "no deadline" if rem is None else f"{rem:.1f} s left")
        return run

    def _learn_locked(self, run: _Run, took: float, used: float | None, cut: bool) -> None:
        """Update the running means from a call that has ended (lock held): it ran ``took`` wall seconds and
        used ``used`` CPU seconds (None: not measurable); ``cut``: stopped by its deadline or its client."""
        kind, size, prior = run.kind, run.size, run.prior
        self._mean_s = (1 - self.EWMA) * self._mean_s + self.EWMA * took
        old = self._kind_s.get(kind)
        new = took if old is None else (1 - self.EWMA) * old + self.EWMA * took
        # A run cut short (its deadline, its client) would have taken at least the time it ran: its
        # kind's estimate rises at once to that lower bound (the mean alone would take many runs, each
        # timing out, to reach it) and never falls for it.
        self._kind_s[kind] = max(old if old is not None else took, took) if cut else new
        if used is not None and took >= self.MIN_LIVE_S and used >= self.MIN_SHARE * took:
            fresh_share = used / took
            # Down at once, up by the running mean: a mean of shares measured on a quieter machine
            # had admitted two as3l Selects at an expected share far above what two had just got, and
            # both then ran past their 30 s deadline (docs/reliability.md, Load, "Heavy admission on the
            # safe side"). A share older than PROBE_AFTER_S says nothing of the load now: the new one
            # replaces it.
            stale = time.monotonic() - self._share_at > self.PROBE_AFTER_S
            self._share = fresh_share if stale or fresh_share < self._share else (
                (1 - self.EWMA) * self._share + self.EWMA * fresh_share)
            self._share_at = time.monotonic()
        if used is not None and prior is not None and prior > 0:
            # How much more CPU than declared this lane's calls take (a slower machine, wider
            # embeddings): up at once, down by the running mean, never below the declared cost. A run
            # cut short (its deadline, its client) would have used at least this much: it may push the
            # factor up, never down.
            ratio = used / prior
            self._slower = max(self._slower, ratio) if cut else max(
                1.0, ratio, (1 - self.EWMA) * self._slower + self.EWMA * ratio)
            self._slower_at = time.monotonic()
        if used is not None:
            self._mean_cpu = (1 - self.EWMA) * self._mean_cpu + self.EWMA * used
            old = self._kind_cpu.get(kind)
            new = used if old is None else (1 - self.EWMA) * old + self.EWMA * used
            # Up at once to a longer run, down by the running mean: a kind's cost grows with the
            # labelled set (as3l: 5.3 -> 6.4 CPU s between two runs a few seconds apart under load),
            # and a mean lagging behind it admitted a call that then ran past its deadline. A run cut
            # short used at least this much: it may raise the estimate, never lower it.
            self._kind_cpu[kind] = max(old if cut and old is not None else new, used)
        else:  # not measurable: the CPU estimate follows the wall time
            self._kind_cpu[kind] = self._kind_s[kind]
        self._kind_at[kind] = time.monotonic()
        if size is not None:
            self._kind_size[kind] = size

    # ---- the lane's own threads --------------------------------------------------------------------
    def _lower_priority(self) -> None:
        """Initializer of each worker thread: its niceness, ``threads.nice`` above the thread that started it
        (inherited; Linux: per thread; best effort elsewhere)."""
        if self.threads is not None:
            _renice(self.threads.nice, self.lane)

    def _work(self, token: CancelToken, fn: Callable[[], T]) -> T:
        """In a worker thread: measure this thread's CPU for the call, limit OpenMP, run ``fn``."""
        assert self.threads is not None
        clock, cpu0 = _thread_clock()
        with self._cond:
            run = self._running.get(token)
            if run is not None:
                run.clock, run.cpu0 = clock, cpu0
        # libgomp's thread count is per calling thread: this limits this call only. A runtime loaded during
        # the call (the first import of scikit-learn; agent/lazy.py imports it at start) is limited from the
        # next call on (agent/threads.py ``limited``: the libraries' controller is kept between calls).
        with limited(self.threads.openmp_threads, "openmp"), cancel.scope(token):
            return fn()

    def run(self, token: CancelToken, fn: Callable[[], T], what: str = "this request", kind: str | None = None,
            size: float | None = None, prior_cpu_s: float | None = None) -> T:
        """``fn()`` in a slot (as ``slot``), with ``token`` current for its checkpoints; in one of the lane's
        worker threads when it has ``threads`` (this thread waits for it), else in this thread."""
        with self.slot(token, what, kind, size, prior_cpu_s):
            if self._pool is None:
                with cancel.scope(token):
                    return fn()
            try:
                future = self._pool.submit(self._work, token, fn)
            except RuntimeError:  # the pool was shut down between this call's admission and now
                raise ShuttingDown() from None
            return self._result(token, future)

    def _result(self, token: CancelToken, future: Future[T]) -> T:
        """The worker's result; ShuttingDown at once when the lane shuts down first. The computation is then
        abandoned, not waited for: a lane's work (strategies, prior methods, the prior audit) computes and
        writes nothing, and its worker, at the lane's lower priority, may need long on a saturated machine to
        reach its next checkpoint (the answer and ``stop_server``'s grace would wait for it). It stops there.
        A call cancelled by its client or deadline still waits for its worker, so a slot is never free while
        its work runs on."""
        with self._cond:
            future.add_done_callback(self._wake)
            while not future.done() and not self._closed:
                self._cond.wait()
            if not future.done():
                log.info("%s: %s abandoned at shutdown; its thread stops at its next checkpoint", self.lane,
                         self._running[token].kind if token in self._running else "a call")
                token.check()  # its ShuttingDown (shutdown cancelled it)
                raise ShuttingDown()
        return future.result()

    def _wake(self, _: Future[Any]) -> None:
        with self._cond:
            self._cond.notify_all()

    def shutdown(self) -> None:
        """Cancel every running and waiting call and refuse new ones."""
        with self._cond:
            self._closed = True
            for t in [*self._running, *self._waiting, *self._parked]:
                t.cancel("the agent is shutting down; the work was stopped; retry when it is back", ShuttingDown)
            self._cond.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # idle workers exit; a running call stops at its next checkpoint


def large_decode_slot(decodes: Admission | None, pixels: int, large_pixels: int, token: CancelToken | None,
                      what: str) -> AbstractContextManager[None]:
    """A slot of ``decodes`` while an image of ``pixels`` (read from its header) above ``large_pixels``
    decodes, nothing otherwise: its decoded pixels (3 bytes each, and Pillow's copies) are what 16
    concurrent Ingests of one small PNG, or six thumbnails of one at different sizes, turned into gigabytes.
    Ingest and GetImages share the lane (``--max-concurrent-decodes``)."""
    if decodes is None or pixels <= large_pixels:
        return nullcontext()
    return decodes.slot(token or CancelToken(), what, kind="large image decode")
