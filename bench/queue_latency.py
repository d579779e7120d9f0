"""How long do the web app's queue writes and its undo take? Times UpdateQueue (replace a queue of N ids;
mark one item: each rewrites the queue's JSON row in one durable commit), GetQueue, and a RetractLabels
of one id (the undo of a first label), and prints median and max per call.

Without ``--agent`` it starts an agent of its own in a temporary folder under ``--dir`` (a tiny linear
model, ``--pool`` raw-tensor samples); with ``--agent HOST:PORT`` it uses that agent's first samples,
on the queue ``bench`` (never the app's ``web``), and labels then retracts unlabelled samples (a write
token with ``--token`` where tokens are required; their history keeps both).

    python -m bench.queue_latency --dir . --pool 5000 --sizes 500,5000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from agent import client
from agent.config import AgentConfig
from agent.service import create_server, stop_server
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2, agent_pb2_grpc

QUEUE = "bench"
CLASSES = ["cat", "dog", "frog"]


def timed(fn: Callable[[], object], reps: int) -> str:
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return f"median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms (n={reps})"


def run(stub: agent_pb2_grpc.AgentStub, sizes: list[int], reps: int) -> None:
    ids = [s.id for s in client.list_samples(stub)]
    for size in sizes:
        if size > len(ids):
            print(f"skipping a queue of {size:,}: the agent holds {len(ids):,} samples")
            continue
        replace = agent_pb2.UpdateQueueRequest(name=QUEUE, queue=agent_pb2.Queue(ids=ids[:size], source="select"))
        mark = agent_pb2.UpdateQueueRequest(name=QUEUE, marks=[agent_pb2.QueueMark(id=ids[0], mark="skip")])
        get = agent_pb2.GetQueueRequest(name=QUEUE)
        print(f"UpdateQueue replace, {size:,} ids: " + timed(partial(stub.UpdateQueue, replace), reps))
        print(f"UpdateQueue mark one, {size:,} ids: " + timed(partial(stub.UpdateQueue, mark), reps))
        print(f"GetQueue, {size:,} ids: " + timed(partial(stub.GetQueue, get), reps))
    free = iter([s.id for s in client.list_samples(stub) if not s.label])
    ms = []
    for _ in range(reps):
        sid = next(free, None)
        if sid is None:
            break
        client.submit_labels(stub, [(sid, CLASSES[0])], annotator="bench")
        t = time.perf_counter()
        stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[sid], annotator="bench"))
        ms.append((time.perf_counter() - t) * 1e3)
    if ms:
        print(f"RetractLabels, 1 id: median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms (n={len(ms)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", default="", help="HOST:PORT of a running agent (default: start one)")
    ap.add_argument("--token", default="", help="a write token, for an agent that requires tokens")
    ap.add_argument("--dir", type=Path, default=None, help="where the agent of its own keeps its temporary folder")
    ap.add_argument("--pool", type=int, default=5000)
    ap.add_argument("--sizes", default="500,5000")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.agent:
        run(client.connect(args.agent, config=client.ClientConfig(token=args.token)), sizes, args.reps)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        publish_linear(root / "models", size=(8, 8), dim=16, classes=CLASSES, seed=0)
        server, port, agent = create_server(AgentConfig(root / "data", root / "models", port=0, use_cuda=False))
        try:
            stub = client.connect(f"127.0.0.1:{port}")
            rng = np.random.default_rng(0)
            client.ingest(stub, (client.tensor_sample(f"s{i:06d}", rng.integers(0, 256, (8, 8, 3), np.uint8))
                                 for i in range(args.pool)))
            run(stub, sizes, args.reps)
        finally:
            stop_server(server, agent, grace=1.0)


if __name__ == "__main__":
    main()
