"""Time whole-pool PriorLabels calls (calibration included) the way the agent makes them, on saved embeddings.

    PYTHONPATH=. .venv/bin/python scripts/load/prior_call_timing.py EMB.npy LABELS.npy \
        --methods as3l,llgc --labelled 10,500

The pool: the rows of EMB.npy (NxD, L2-normalised here) in the agent's own index (agent/index.py
``VersionIndex``: hnswlib built and queried with one thread, its PoolMemo), BLAS at one thread as
``shortlist serve`` runs it (agent/threads.py; ``--library-threads``: as the library leaves it), and
``--labelled`` random rows labelled with their class from LABELS.npy. Each call asks for every unlabelled
row, as ``bench cifar10`` does (bench/cifar10/evaluation.py), with the generator the agent gives it
(state_rng of the labelled ids), first on a fresh memo (a new model version), then again under the same
labels (the fitted temperature kept). Prints wall and CPU seconds (this process) and the prior's accuracy,
so that a speed-up can be checked not to move the answer. The gRPC streaming of the answer, which
``bench cifar10``'s prior_seconds include, is not part of it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agent.index import VersionIndex
from agent.pool import Pool, PoolMemo, state_rng
from agent.priors import PRIOR_METHODS
from agent.threads import one_blas_thread_per_call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--methods", default="as3l,llgc")
    ap.add_argument("--labelled", default="10,500", help="comma-separated labelled-set sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library-threads", action="store_true",
                    help="leave BLAS at the library's thread count (as bench strategies and scripts run)")
    args = ap.parse_args()
    if not args.library_threads:
        one_blas_thread_per_call()
    x = np.load(args.embeddings).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.load(args.labels).astype(np.int64)
    t0 = time.perf_counter()
    index = VersionIndex("timing", x.shape[1], 0, False, capacity=len(x))
    index.add(np.arange(len(x)), x)
    print(f"index of {len(x):,} x {x.shape[1]} built in {time.perf_counter() - t0:.1f} s (one thread)")
    classes = [str(c) for c in range(int(y.max()) + 1)]
    for n in (int(v) for v in args.labelled.split(",")):
        labeled = np.sort(np.random.default_rng(args.seed + n).choice(len(x), n, replace=False))
        pool = Pool(embeddings=x, labeled=labeled, labels=y[labeled], classes=classes,
                    candidates=np.setdiff1d(np.arange(len(x)), labeled), knn=index.knn)
        for method in args.methods.split(","):
            pool = replace(pool, memo=PoolMemo())  # a fresh model version: nothing kept
            for what in ("fresh memo", "same labels"):
                rng = state_rng(0, (str(r) for r in labeled))
                w0, c0 = time.perf_counter(), time.process_time()
                pr = PRIOR_METHODS[method](pool, pool.candidates, rng, {})
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                acc = float(np.mean(pr.probs.argmax(axis=1) == y[pool.candidates]))
                print(f"{n:6d} labels  {method:5s} {what:12s} wall {wall:6.1f} s  CPU {cpu:6.1f} s  "
                      f"accuracy {acc:.4f}  {pr.calibration.describe() if pr.calibration else ''}", flush=True)


if __name__ == "__main__":
    main()
