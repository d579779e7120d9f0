"""Resident memory of the pool map's fit in one process, with the malloc settings `shortlist serve` makes
(docs/reliability.md, Load): VmRSS before and after a fit of 10,000 of 50,000 random 128-d rows (and the
placement of the rest), and the peak (VmHWM). In the agent the fit runs in a child process
(agent/map_fit.py); ``--child`` measures that way (the agent-side memory only).

    python scripts/load/map_fit_memory.py [--child]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from agent.memory import tune_malloc


def status_mb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", action="store_true", help="fit in a child process, as the agent does")
    ap.add_argument("--rows", type=int, default=50_000)
    args = ap.parse_args()
    tune_malloc()
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import numpy as np
    import sklearn.cluster  # what the agent has loaded anyway (agent/lazy.py)
    import sklearn.linear_model  # noqa: F401

    from agent.index import IndexView
    from agent.pool_map import MapConfig, PoolMap

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    def current() -> tuple[str, IndexView]:
        return "v1", IndexView(args.rows, np.arange(1, args.rows + 1, dtype=np.int64), x, None, None)

    print(f"before: RSS {status_mb('VmRSS')} MB", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pm = PoolMap(MapConfig(save_every_s=0.0, child_process=args.child), Path(tmp) / "map", current)
        t0 = time.monotonic()
        pm.step()
        print(f"fit + placement: {time.monotonic() - t0:.1f} s; after: RSS {status_mb('VmRSS')} MB, "
              f"peak {status_mb('VmHWM')} MB")


if __name__ == "__main__":
    main()
