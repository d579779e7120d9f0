"""16 concurrent Ingests of one small PNG with a 63.8-megapixel canvas against a fresh `shortlist serve`;
prints what each call got and the agent's peak RSS (docs/reliability.md, Load).

    python scripts/load/big_image_ingest.py --data-dir /tmp/big --models REGISTRY
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from agent import client
from bench.load import free_port, rss_bytes
from shortlist.v1 import agent_pb2, agent_pb2_grpc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, required=True, help="a folder for the agent (emptied first)")
    ap.add_argument("--models", type=Path, required=True, help="a model registry (e.g. bench load's)")
    ap.add_argument("--calls", type=int, default=16)
    args = ap.parse_args()
    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    img = np.zeros((7089, 9000, 3), np.uint8)
    img[::97, ::89] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    payload = buf.getvalue()
    del img
    print(f"PNG 9000x7089 = {9000 * 7089 / 1e6:.1f} MP, {len(payload) / 1e3:.0f} KB", flush=True)
    port = free_port()
    with open(args.data_dir / "agent.log", "wb") as log:
        cmd = [sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(args.data_dir / "agent"),
               "--models", str(args.models), "--host", "127.0.0.1", "--port", str(port), "--cpu"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        stub = agent_pb2_grpc.AgentStub(client.channel(f"127.0.0.1:{port}", timeout=60, starting=True))
        print("agent RSS at start", rss_bytes(proc.pid), flush=True)
        got: list[tuple[str, float]] = []

        def one(i: int) -> None:
            t0 = time.monotonic()
            req = agent_pb2.IngestRequest(samples=[client.image_sample(f"big{i}", payload)])
            try:
                stub.Ingest(iter([req]), timeout=120)
                got.append(("OK", round(time.monotonic() - t0, 2)))
            except grpc.RpcError as e:
                got.append((e.code().name, round(time.monotonic() - t0, 2)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{args.calls} Ingests:", sorted(got), flush=True)
        print("agent RSS after (VmHWM = peak)", rss_bytes(proc.pid), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
