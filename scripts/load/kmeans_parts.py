"""k-means at many centres, part by part, on a `bench load` pool's embeddings (docs/reliability.md, Load):
k-means++ seeding greedy vs plain, Lloyd in float32 vs float64, assignment of every row; CPU seconds.

    python scripts/load/kmeans_parts.py --state /tmp/load-50k/agent/state.sqlite --k 500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus

from agent.state import State
from agent.strategies._common import assign, one_blas_thread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state", type=Path, required=True, help="the pool's state.sqlite (opened read-only use)")
    ap.add_argument("--version", default="v0001")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--logits", type=int, default=10)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--rows", type=int, default=10_000)
    args = ap.parse_args()
    x = State(args.state).load_embeddings(args.version, args.dim, args.logits).vecs
    sample = x[np.sort(np.random.default_rng(0).choice(len(x), args.rows, replace=False))]
    d64 = np.asarray(sample, np.float64)
    centres = None
    for trials in (None, 1):
        c0 = time.process_time()
        with one_blas_thread():
            centres, _ = kmeans_plusplus(d64, args.k, random_state=1, n_local_trials=trials)
        print(f"k-means++ ({'greedy' if trials is None else 'plain'}): CPU {time.process_time() - c0:.2f} s")
    assert centres is not None
    for dtype, iters in ((np.float32, 5), (np.float32, 10), (np.float32, 25), (np.float64, 25)):
        c0 = time.process_time()
        with one_blas_thread():
            km = KMeans(n_clusters=args.k, init=centres.astype(dtype), n_init=1, max_iter=iters).fit(
                np.asarray(sample, dtype))
        print(f"Lloyd {np.dtype(dtype).name}, at most {iters} iterations: {km.n_iter_} run, "
              f"CPU {time.process_time() - c0:.2f} s, inertia {km.inertia_:.1f}")
    for _ in range(2):
        c0 = time.process_time()
        assign(x, km.cluster_centers_)
        print(f"assign {len(x)} rows: CPU {time.process_time() - c0:.2f} s")


if __name__ == "__main__":
    main()
