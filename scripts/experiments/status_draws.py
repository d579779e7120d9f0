"""GetStatus's cost against the number of recorded uniform draws (docs/agent.md, "Cache").

A real agent (in this process, on a loopback port) with POOL samples (a third labelled) and a calibrated
PriorLabels answered, so GetStatus counts the audit labels of every uniform draw (calibration warning,
accuracy audit). It records random draws of 10 picks through the agent's own recording path (what a write
token's Select random records, without running the strategy), and at each level prints the median and max of
30 GetStatus calls.

    PYTHONPATH=. python scripts/experiments/status_draws.py --levels 0,3000,6000
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from agent import client
from agent.config import AgentConfig
from agent.service import create_server, stop_server
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2, agent_pb2_grpc

CLASSES = ["cat", "dog", "fox"]


def png(rng: np.random.Generator) -> bytes:
    """A 16x16 RGB PNG of noise."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="0,3000,6000", help="recorded draws at which to measure (ascending)")
    ap.add_argument("--pool", type=int, default=2000, help="samples ingested")
    ap.add_argument("--port", type=int, default=0, help="the agent's loopback port (0: any free one)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        publish_linear(models, size=(16, 16), dim=32, classes=CLASSES, rotation=True, seed=0)
        server, port, agent = create_server(AgentConfig(Path(tmp) / "data", models, port=args.port, poll_s=0.2,
                                                        use_cuda=False))
        try:
            stub = agent_pb2_grpc.AgentStub(client.channel(f"127.0.0.1:{port}"))
            ids = [f"s{i}" for i in range(args.pool)]
            client.ingest(stub, [client.image_sample(i, png(rng), label=CLASSES[k % 3] if k % 3 == 0 else "")
                                 for k, i in enumerate(ids)])
            while stub.GetStatus(agent_pb2.GetStatusRequest()).embedded < args.pool:
                time.sleep(0.2)
            next(iter(stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))))
            version = stub.GetStatus(agent_pb2.GetStatusRequest()).model_version
            recorded = 0
            for level in (int(x) for x in args.levels.split(",")):
                for _ in range(level - recorded):
                    picks = rng.choice(args.pool, 10, replace=False)
                    agent._record_selection(uuid.uuid4().hex, {"strategy": "random", "budget": 10, "params": {}},
                                            [(ids[p], 0.0) for p in picks], version, {})
                recorded = level
                stub.GetStatus(agent_pb2.GetStatusRequest())
                took = []
                for _ in range(30):
                    t0 = time.perf_counter()
                    stub.GetStatus(agent_pb2.GetStatusRequest())
                    took.append(time.perf_counter() - t0)
                print(f"{level:6d} recorded draws: GetStatus p50 {1000 * np.median(took):6.1f} ms, "
                      f"max {1000 * max(took):6.1f} ms")
        finally:
            stop_server(server, agent)


if __name__ == "__main__":
    main()
