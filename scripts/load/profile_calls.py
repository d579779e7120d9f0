"""Profile single agent calls in one process on a copy of a `bench load` pool (docs/reliability.md, Load):
wall and CPU seconds of each call, and its cProfile (CPU time) top functions.

    python scripts/load/profile_calls.py --pool-dir /tmp/load-50k --work-dir /tmp/prof random coreset prior as3l
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.core import Agent, SelectQuery


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pool-dir", type=Path, required=True, help="a `bench load --data-dir` folder (copied once)")
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("calls", nargs="+", help="strategy names (Select, budget 10), or `prior` (PriorLabels knn, 16 ids)")
    args = ap.parse_args()
    if not args.work_dir.exists():
        shutil.copytree(args.pool_dir, args.work_dir)
    agent = Agent(AgentConfig(data_dir=args.work_dir / "agent", models=args.work_dir / "models", use_cuda=False,
                              background=False))
    try:
        ids = [r.id for r, lab in agent.state.iter_records() if lab < 0][:16]
        for seed, name in enumerate(args.calls):
            prof = cProfile.Profile(time.process_time)
            t0, c0 = time.monotonic(), time.process_time()
            prof.enable()
            if name == "prior":
                list(agent.prior_labels("knn", ids, {}))
            else:
                agent.select(SelectQuery(10, name, {}, seed, {}))  # a new seed each call: never answered from the cache
            prof.disable()
            print(f"== {name}: wall {time.monotonic() - t0:.3f} s, CPU {time.process_time() - c0:.3f} s", flush=True)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
            print(out.getvalue())
    finally:
        agent.close()


if __name__ == "__main__":
    main()
