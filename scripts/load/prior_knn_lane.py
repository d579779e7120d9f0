"""One PriorLabels knn call as the agent's light prior lane runs it, alone and beside busy Python threads.

    nice -n 10 .venv/bin/python scripts/load/prior_knn_lane.py                      # 20,000 x 256, 75 labels
    nice -n 10 .venv/bin/python scripts/load/prior_knn_lane.py --rows 50000 --labels 2000

Under ``shortlist bench load`` PriorLabels knn took seconds (p50 1.6 s, p99 7.5 s at 50,000 samples,
docs/reliability.md) while one call alone takes milliseconds: this separates the call's own cost from what
the agent's other threads do to it. The pool: scripts/load/prior_knn_timing.py's synthetic one (unit
embeddings in 10 Gaussian blobs, a PoolMemo, ``--labels`` labelled); one BLAS thread, as ``shortlist serve``
runs. Each call labels one more row first (bench load's case: labels arrive between calls, so the fitted
temperature is not reused) and asks the priors of 16 unlabelled rows through an Admission lane with threads
of its own at nice +5 (the agent's light prior lane, agent/config.py). Busy threads: ``--busy`` Python
threads counting in a loop, which hold the GIL as the agent's gRPC threads do while they parse and build
messages. Two ways of limiting OpenMP per call are timed, interleaved: ``threadpool_limits`` (it scans every
loaded library each call) and ``agent.threads.limited`` (the agent's: a controller kept between calls); and
the two limiters alone. Prints wall-clock medians and 90th percentiles.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
from prior_knn_timing import label_one, make_pool  # this script's folder is on sys.path when it runs
from threadpoolctl import threadpool_limits

import agent.admission as admission
from agent.admission import Admission, LaneThreads
from agent.cancel import CancelToken
from agent.lazy import deferred
from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.threads import limited, one_blas_thread_per_call


def scan_each_call(limits: int, user_api: str) -> AbstractContextManager[object]:
    """The lane's per-call limit before agent.threads.limited: a new controller (a scan) every call."""
    return threadpool_limits(limits=limits, user_api=user_api)


LIMITERS: dict[str, Callable[[int, str], AbstractContextManager[object]]] = {
    "threadpool_limits": scan_each_call, "limited": limited}


@contextmanager
def busy_threads(n: int) -> Iterator[None]:
    """``n`` Python threads that hold the GIL (a counting loop) for the body of the ``with``."""
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()


def summary(times: list[float]) -> str:
    return f"median {np.median(times):.4f} s, p90 {np.percentile(times, 90):.4f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--labels", type=int, default=75)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--calls", type=int, default=25, help="calls per limiter and busy-thread count")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 4], help="busy Python threads (one run each)")
    args = ap.parse_args()
    one_blas_thread_per_call()
    for module in ("sklearn.cluster", "scipy.optimize", "onnxruntime", "hnswlib"):  # loaded in the agent
        deferred(module)
    pool, y = make_pool(args.rows, args.labels, 10, args.dim, 0)
    pick = np.random.default_rng(1)
    lane = Admission(4, 16, lane="light", threads=LaneThreads(nice=5, sample_share=False))

    def call(how: str) -> float:
        admission.limited = LIMITERS[how]  # type: ignore[assignment]  # what Admission._work limits with
        label_one(pool, y, pick)
        rows = pick.choice(pool.candidates, 16, replace=False)
        rng = state_rng(0, (f"s{r}" for r in pool.labeled))
        t0 = time.perf_counter()
        lane.run(CancelToken(), lambda: PRIOR_METHODS["knn"](pool, rows, rng, {}), kind="PriorLabels 'knn'")
        return time.perf_counter() - t0

    def limiter_alone(how: str) -> float:
        t0 = time.perf_counter()
        with LIMITERS[how](1, "openmp"):
            pass
        return time.perf_counter() - t0

    print(f"pool {args.rows:,} x {args.dim}, {args.labels} labels (+1 before each call); wall seconds")
    try:
        for how in LIMITERS:  # warm: imports, the pool's memo
            call(how)
        for busy in args.busy:
            with busy_threads(busy):
                calls: dict[str, list[float]] = {how: [] for how in LIMITERS}
                alone: dict[str, list[float]] = {how: [] for how in LIMITERS}
                for i in range(args.calls):
                    for how in (list(LIMITERS) if i % 2 else list(LIMITERS)[::-1]):  # interleaved
                        calls[how].append(call(how))
                        alone[how].append(limiter_alone(how))
            for how in LIMITERS:
                print(f"  {busy} busy threads, per-call limit by {how:<17}: one call {summary(calls[how])}; "
                      f"the limit alone {summary(alone[how])}", flush=True)
    finally:
        admission.limited = limited
        lane.shutdown()


if __name__ == "__main__":
    main()
