"""Leak check (docs/reliability.md, Load): rounds of the load's calls in one agent process, on a copy of a
bench load pool, printing tracemalloc's traced memory and the RSS after each round.

    python scripts/load/leak_check.py --pool-dir /tmp/load-50k --work-dir /tmp/leak --rounds 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import tracemalloc
from pathlib import Path

import numpy as np

from agent.config import AgentConfig
from agent.core import Agent, SelectQuery
from agent.memory import tune_malloc
from bench.load import rss_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pool-dir", type=Path, required=True, help="a `bench load --data-dir` folder (copied)")
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    tune_malloc()  # as `shortlist serve` does
    shutil.rmtree(args.work_dir, ignore_errors=True)
    shutil.copytree(args.pool_dir, args.work_dir)
    agent = Agent(AgentConfig(data_dir=args.work_dir / "agent", models=args.work_dir / "models", use_cuda=False,
                              background=False))
    ids = [r.id for r, _ in agent.state.iter_records()]
    classes = list(agent.state.classes)

    def one_round(rng: np.random.Generator) -> None:
        for name in ("random", "margin", "coreset", "typiclust"):
            agent.select(SelectQuery(10, name, {}, int(rng.integers(1 << 30)), {}))
        list(agent.prior_labels("knn", [ids[int(i)] for i in rng.choice(len(ids), 16)], {}))
        agent.submit_labels([(ids[int(i)], classes[int(i) % len(classes)]) for i in rng.choice(len(ids), 5)], "leak")
        agent.status()

    tracemalloc.start(1)
    try:
        for r in range(args.rounds):
            threads = [threading.Thread(target=one_round, args=(np.random.default_rng(r * 100 + k),))
                       for k in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cur, peak = tracemalloc.get_traced_memory()
            print(f"round {r}: traced {cur / 2**20:.1f} MB (peak {peak / 2**20:.1f}), "
                  f"RSS {rss_bytes(os.getpid())['VmRSS'] / 2**20:.0f} MB, select cache {len(agent.select_cache)}, "
                  f"prior cache {len(agent.prior_cache)}", flush=True)
    finally:
        agent.close()


if __name__ == "__main__":
    main()
