"""CPU seconds per row and pick of the greedy strategies' loop (coreset): the measurement behind
``GREEDY_CPU_PER_UNIT`` (agent/strategies/_common.py), the prior admission expects of a first coreset or badge
call. Random unit vectors, 50,000 rows, 10 labelled, budget 400, at D = 128 and 512; thread CPU time, one BLAS
thread (docs/reliability.md, "Greedy strategies declare their work").

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python scripts/experiments/greedy_cost.py
"""

from __future__ import annotations

import time

import numpy as np

from agent.pool import Pool
from agent.strategies import STRATEGIES

ROWS, LABELLED, BUDGET = 50_000, 10, 400


def no_knn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """coreset never asks the index for neighbours."""
    raise AssertionError("coreset asked for neighbours")


def main() -> None:
    for d in (128, 512):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(ROWS, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        lab = np.arange(LABELLED)
        pool = Pool(embeddings=x, labeled=lab, labels=lab % 2, classes=["a", "b"],
                    candidates=np.arange(LABELLED, ROWS), knn=no_knn)
        t = time.thread_time()
        STRATEGIES["coreset"](pool, BUDGET, rng, {})
        used = time.thread_time() - t
        per = used / (ROWS * (LABELLED + BUDGET))
        print(f"D = {d}: coreset, {ROWS:,} rows, {LABELLED} labelled, budget {BUDGET}: {used:.2f} CPU s, "
              f"{per:.1e} CPU s per row and pick")


if __name__ == "__main__":
    main()
