"""BLAS threads in the agent process: one per call.

The agent's parallelism is across requests (admission lanes, gRPC threads; hnswlib queries run with one
thread each, agent/index.py), so a matrix product that also spreads over every core only oversubscribes
them, and OpenBLAS's threads busy-wait for work: with one BLAS thread each call measured on the load
pool took less CPU time (figures and command: docs/reliability.md, "Measured", "BLAS
threads"). k-means already ran its BLAS on one
thread (agent/strategies/_common.py ``one_blas_thread``); scikit-learn's Lloyd iterations (OpenMP) run
with one thread in the heavy lane's own threads (agent/admission.py ``LaneThreads``: libgomp's thread
count is per calling thread, so it is set there, per call, not here).

``one_blas_thread_per_call`` sets this at the start of ``shortlist serve`` (not on import: the library
and tests keep the process's settings), for the BLAS already loaded (threadpoolctl) and for any loaded
later (OPENBLAS_NUM_THREADS, read when a library starts); a BLAS or OpenMP thread count set in the
environment is left as it is.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController, threadpool_limits

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS")

# ``limited``'s controllers of the loaded thread-pool libraries are rebuilt after this many seconds even when
# no module was imported since (a library dlopen'ed by native code, not by an import, is then covered too).
REFRESH_S = 60.0
_kept_lock = threading.Lock()
_kept: dict[str, tuple[int, float, ThreadpoolController]] = {}  # user_api -> (len(sys.modules), when, controller)


def one_blas_thread_per_call() -> bool:
    """One BLAS thread for the rest of this process; False (nothing changed) when the environment sets
    a thread count."""
    if any(name in os.environ for name in THREAD_ENV):
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # libraries loaded from now on
    threadpool_limits(limits=1, user_api="blas")  # the ones loaded already
    return True


def limited(limits: int, user_api: str) -> AbstractContextManager[object]:
    """``threadpool_limits(limits=limits, user_api=user_api)`` (a context: ``limits`` threads for the
    ``user_api`` ("blas", "openmp") libraries loaded in the process, restored on leaving; OpenMP's is per
    calling thread), without scanning the process's libraries at each call: threadpool_limits builds a
    ThreadpoolController every time, which walks every loaded shared library (dl_iterate_phdr, ctypes calls
    that release and retake the GIL), paid by every call of an admission lane with threads of its own and
    every k-means or head fit. The controller of the ``user_api`` libraries is kept and rebuilt when a module
    was imported since it was built (a library loaded by the import, e.g. scikit-learn's libgomp on its first
    use, is limited from the next call on, as before) or after REFRESH_S. The kept controller costs a small
    fraction of a fresh one, alone and beside busy Python threads (figures and command: docs/reliability.md,
    "PriorLabels knn under load"). Thread-safe: the controller is shared, each call
    gets a limiter of its own (OpenMP's limit is per calling thread; BLAS's is process-wide, as with
    threadpool_limits)."""
    now = time.monotonic()
    modules = len(sys.modules)
    with _kept_lock:
        kept = _kept.get(user_api)
        if kept is None or kept[0] != modules or now - kept[1] > REFRESH_S:
            kept = (modules, now, ThreadpoolController().select(user_api=user_api))
            _kept[user_api] = kept
    return kept[2].limit(limits=limits)
