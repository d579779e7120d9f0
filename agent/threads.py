"""BLAS threads in the agent process: one per call.

The agent's parallelism is across requests (admission lanes, gRPC threads; hnswlib queries run with one
thread each, agent/index.py), so a matrix product that also spreads over every core only oversubscribes
them, and OpenBLAS's threads busy-wait for work: on the shared 2-core machine, in one process on the
54,000-row load pool (`python scripts/load/profile_calls.py ...` with OPENBLAS_NUM_THREADS=2, then 1),
PriorLabels knn took 0.23 -> 0.08 CPU s, a warm coreset Select 0.10 -> 0.03, probcover 4.6 -> 4.0 and as3l
10.5 -> 8.9, with wall times lower too (docs/reliability.md, Load). k-means already ran its BLAS on one
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

from threadpoolctl import threadpool_limits

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS")


def one_blas_thread_per_call() -> bool:
    """One BLAS thread for the rest of this process; False (nothing changed) when the environment sets
    a thread count."""
    if any(name in os.environ for name in THREAD_ENV):
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # libraries loaded from now on
    threadpool_limits(limits=1, user_api="blas")  # the ones loaded already
    return True
