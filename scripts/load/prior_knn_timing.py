"""Time one PriorLabels knn call (calibration included) the way the agent makes it, on a synthetic pool.

    nice -n 10 .venv/bin/python scripts/load/prior_knn_timing.py                 # 50,000 rows, 4,000 labels
    nice -n 10 .venv/bin/python scripts/load/prior_knn_timing.py --profile 25     # + cProfile's top 25

The pool: ``--rows`` unit 128-d embeddings in ``--classes`` Gaussian blobs (float32, as the agent holds
them), ``--labels`` of them labelled at random, a PoolMemo as the agent keeps per model version, BLAS and
OpenMP at one thread (as the agent runs them, agent/threads.py). Each call asks the priors of 16 random
unlabelled rows (bench load's PriorLabels) with the generator the agent uses (state_rng of the labelled
ids). Prints the wall and CPU seconds (this thread's CPU clock: the cost, whatever else the machine
runs) of: the first call, ``--repeat`` more calls for other rows with the same labels,
and calls right after one more label each time (the load's case: labels arrive between calls).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
from threadpoolctl import threadpool_limits

from agent.pool import Pool, PoolMemo, state_rng
from agent.priors import PRIOR_METHODS


def make_pool(rows: int, labels: int, classes: int, dim: int, seed: int) -> tuple[Pool, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    y = rng.integers(classes, size=rows)
    x = centres[y] + rng.normal(scale=1.5, size=(rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labeled = np.sort(rng.choice(rows, labels, replace=False)).astype(np.int64)
    cand = np.ones(rows, bool)
    cand[labeled] = False

    def knn(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sim = q @ x.T
        top = np.argsort(-sim, axis=1)[:, :k]
        return top, 1.0 - np.take_along_axis(sim, top, axis=1)

    return Pool(embeddings=x, labeled=labeled, labels=y[labeled].astype(np.int64),
                classes=[f"c{i}" for i in range(classes)], candidates=np.flatnonzero(cand), knn=knn,
                memo=PoolMemo()), y


def label_one(pool: Pool, y: np.ndarray, pick: np.random.Generator) -> None:
    """Label one more candidate (its true class), as SubmitLabels between two calls does."""
    new = int(pick.choice(pool.candidates))
    at = int(np.searchsorted(pool.labeled, new))
    pool.labeled = np.insert(pool.labeled, at, new)
    pool.labels = np.insert(pool.labels, at, y[new])
    pool.candidates = pool.candidates[pool.candidates != new]


def call(pool: Pool, rng_rows: np.random.Generator) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call for 16 random candidates."""
    rows = rng_rows.choice(pool.candidates, 16, replace=False)
    rng = state_rng(0, (f"s{r}" for r in pool.labeled))
    t0, c0 = time.perf_counter(), time.thread_time()
    PRIOR_METHODS["knn"](pool, rows, rng, {})
    return time.perf_counter() - t0, time.thread_time() - c0


def show(what: str, runs: list[tuple[float, float]]) -> None:
    wall, cpu = np.array(runs).T
    print(f"  {what:<26} wall median {np.median(wall):.3f} (min {wall.min():.3f}, max {wall.max():.3f});  "
          f"CPU median {np.median(cpu):.3f} (min {cpu.min():.3f}, max {cpu.max():.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--labels", type=int, default=4_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0,
                    help="print cProfile's top N functions of one more call, after a new label")
    args = ap.parse_args()
    pool, y = make_pool(args.rows, args.labels, args.classes, args.dim, args.seed)
    pick = np.random.default_rng(args.seed + 1)
    with threadpool_limits(limits=1):
        first = call(pool, pick)
        same = [call(pool, pick) for _ in range(args.repeat)]
        after = []
        for _ in range(args.repeat):  # one more label before each call
            label_one(pool, y, pick)
            after.append(call(pool, pick))
        print(f"pool {args.rows:,} x {args.dim}, {len(pool.labeled):,} labels, {args.classes} classes; "
              "PriorLabels knn for 16 rows, seconds:")
        show("first call", [first])
        show(f"same labels, x{args.repeat}", same)
        show(f"after a new label, x{args.repeat}", after)
        if args.profile:  # a call after a new label (the fitted temperature is not cached)
            label_one(pool, y, pick)
            prof = cProfile.Profile()
            rows = pick.choice(pool.candidates, 16, replace=False)
            rng = state_rng(0, (f"s{r}" for r in pool.labeled))
            prof.runcall(PRIOR_METHODS["knn"], pool, rows, rng, {})
            pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
