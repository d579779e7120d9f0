"""Leak check with Ingest (docs/reliability.md, Load): rounds of the load's light calls, Ingest of 8 fresh
synthetic PNGs included, from 4 client threads against an in-process agent on a copy of a `bench load`
pool, printing tracemalloc's traced memory and the RSS after each round and the biggest traced growths.

    python scripts/load/ingest_leak_check.py --pool-dir /tmp/final-load --work-dir /tmp/leak --rounds 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import tracemalloc
from pathlib import Path

import grpc
import numpy as np

from agent import client
from agent.config import AgentConfig
from agent.memory import tune_malloc
from agent.service import create_server, stop_server
from bench.load import rss_bytes, synthetic_image
from shortlist.images import encode_png
from shortlist.v1 import agent_pb2, agent_pb2_grpc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pool-dir", type=Path, required=True, help="a `bench load --data-dir` folder (copied)")
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=25, help="call groups per client thread per round")
    ap.add_argument("--no-ingest", action="store_true")
    args = ap.parse_args()
    tune_malloc()  # as `shortlist serve` does
    shutil.rmtree(args.work_dir, ignore_errors=True)
    shutil.copytree(args.pool_dir, args.work_dir)
    server, port, agent = create_server(AgentConfig(args.work_dir / "agent", args.work_dir / "models", port=0,
                                                    use_cuda=False))
    ids = [r.id for r, _ in agent.state.iter_records()][:20000]
    classes = list(agent.state.classes)

    def worker(k: int, r: int, n: int) -> None:
        stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        rng = np.random.default_rng([k, r])
        for i in range(n):
            if not args.no_ingest:
                samples = []
                for j in range(8):
                    img = synthetic_image(i, 7 + k, 10)
                    img[0, 0, :] = [i % 256, (i // 256) % 256, k]  # fresh payloads
                    samples.append(client.image_sample(f"leak/{r}/{k}/{i}/{j}", encode_png(img)))
                stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)]), timeout=30)
            for s in ("random", "margin", "coreset"):
                stub.Select(agent_pb2.SelectRequest(budget=10, strategy=s, seed=int(rng.integers(1 << 30))),
                            timeout=30)
            agent.submit_labels([(ids[int(j)], classes[int(j) % len(classes)]) for j in rng.choice(len(ids), 5)],
                                "leak")
            list(agent.prior_labels("knn", [ids[int(j)] for j in rng.choice(len(ids), 16)], {}))
            agent.status()

    def one_round(r: int, n: int) -> None:
        threads = [threading.Thread(target=worker, args=(k, r, n)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        one_round(-1, 10)  # warm-up: threads, arenas and caches at their working size
        tracemalloc.start(10)
        first = tracemalloc.take_snapshot()
        rss0 = rss_bytes(os.getpid())["VmRSS"]
        for r in range(args.rounds):
            one_round(r, args.calls)
            cur, _ = tracemalloc.get_traced_memory()
            rss = rss_bytes(os.getpid())["VmRSS"]
            print(f"round {r}: {agent.state.count()} samples, traced {cur / 2**20:.1f} MB, RSS "
                  f"{rss / 2**20:.0f} MB (after the warm-up {rss0 / 2**20:.0f})", flush=True)
        for stat in tracemalloc.take_snapshot().compare_to(first, "traceback")[:5]:
            print(stat)
            for line in stat.traceback.format()[-6:]:
                print("   ", line)
    finally:
        stop_server(server, agent)


if __name__ == "__main__":
    main()
