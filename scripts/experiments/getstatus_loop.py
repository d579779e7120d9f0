"""Mean wall time of a GetStatus call to a small in-process agent (the tests' tiny linear model, no samples),
over CALLS calls after 200 warm-up calls: the cost of what wraps every unary call (interceptors, the request
guard). Run it in two checkouts to compare them, alternating. From the repository root:

    PYTHONPATH=. .venv/bin/python scripts/experiments/getstatus_loop.py 3000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from agent.testing import publish_linear
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, start


def main(calls: int) -> None:
    folder = Path(tempfile.mkdtemp())
    publish_linear(folder / "models", size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
    r = start(folder / "data", folder / "models")
    try:
        for _ in range(200):
            r.stub.GetStatus(agent_pb2.GetStatusRequest())
        t0 = time.perf_counter()
        for _ in range(calls):
            r.stub.GetStatus(agent_pb2.GetStatusRequest())
        print(f"{(time.perf_counter() - t0) / calls * 1e6:.0f} us a GetStatus call (mean of {calls})")
    finally:
        r.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
