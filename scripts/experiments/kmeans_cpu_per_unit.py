"""CPU seconds per unit of work size of the k-means strategies (typiclust, kmedoids, as3l) on a synthetic pool:
what their declared prior (agent/strategies/_common.py KMEANS_CPU_PER_UNIT, admission's estimate of a kind
never measured) is to be compared with. Each call runs in this thread with one BLAS/OpenMP thread, as in the
agent's heavy lane, and is timed on this thread's CPU clock (so a busy machine changes it little). The pool:
``rows`` unit-norm 512-d blobs (20 clusters, spread 0.3; tests/agent/strategies/pools.py), 50 and 490
labelled rows, budget 10 (k-means k = 60 and 500). Prints one line per call.

    PYTHONPATH=. nice -n 10 python scripts/experiments/kmeans_cpu_per_unit.py 10000 512
"""

from __future__ import annotations

import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from agent.strategies import STRATEGIES
from tests.agent.strategies.pools import blobs, make_pool


def main(rows: int, dim: int) -> None:
    x, y = blobs(clusters=20, per_cluster=rows // 20, dim=dim, spread=0.3, seed=0)
    with threadpool_limits(limits=1):
        for labelled in (50, 490):
            lab = np.random.default_rng(0).choice(len(x), labelled, replace=False)
            pool = make_pool(x, y, labeled=lab)
            for name in ("typiclust", "kmedoids", "as3l"):
                fn = STRATEGIES[name]
                c0 = time.thread_time()
                fn(pool, 10, np.random.default_rng(1), {})
                used = time.thread_time() - c0
                size = fn.work_size(len(x), labelled, 10, {})
                print(f"{name} rows={len(x)} dim={dim} k={min(labelled + 10, 500)} cpu={used:.2f} s "
                      f"per_unit={used / size:.2e}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
