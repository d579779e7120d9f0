"""Do a running agent's light calls stay fast while its pool map is computed? For ``--seconds`` it
calls GetStatus and Select random (budget 10) back to back and prints their p50 / p99 and the map's
state; with ``--until-ready`` it then waits for the map and measures again.

    python -m bench.map_latency --agent 127.0.0.1:50991 --seconds 40 --until-ready
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agent import client
from shortlist.v1 import agent_pb2, agent_pb2_grpc


def measure(stub: agent_pb2_grpc.AgentStub, label: str, seconds: float) -> None:
    status: list[float] = []
    select: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        stub.GetStatus(agent_pb2.GetStatusRequest())
        status.append(time.perf_counter() - t)
        t = time.perf_counter()
        stub.Select(agent_pb2.SelectRequest(budget=10, strategy="random", seed=len(select)))
        select.append(time.perf_counter() - t)
    head = next(iter(stub.GetMap(agent_pb2.GetMapRequest(limit=1))))
    print(f"{label}: map {head.state} {head.progress:.2f}; GetStatus p50 {np.median(status) * 1e3:.0f} ms "
          f"p99 {np.percentile(status, 99) * 1e3:.0f} ms (n={len(status)}); Select random p50 "
          f"{np.median(select) * 1e3:.0f} ms p99 {np.percentile(select, 99) * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", default="127.0.0.1:50051")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--until-ready", action="store_true")
    args = ap.parse_args()
    stub = client.connect(args.agent)
    measure(stub, "now", args.seconds)
    if args.until_ready:
        while next(iter(stub.GetMap(agent_pb2.GetMapRequest(limit=1)))).state != "ready":
            time.sleep(5)
        measure(stub, "map ready", args.seconds)


if __name__ == "__main__":
    main()
