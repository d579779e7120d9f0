"""Memory an agent spends on large calls without a token (docs/agent.md, "Limits": "What a call costs before
it is refused"). Starts ``dos_agent.py`` (tokens on) on PORT, sends CALLS concurrent ``GetImages`` calls
whose request message is MB megabytes (one id of that length), with no token, and prints the agent's VmRSS
and VmHWM (peak) from /proc before and after, the wall time and the set of answers (all UNAUTHENTICATED).
Linux only. From the repository root, at the commit to measure:

    .venv/bin/python scripts/experiments/dos/big_messages.py --port 53644 30 60

Prints, e.g.: ``before {'VmHWM': '170000 kB', 'VmRSS': ...}``, ``2.1s {'UNAUTHENTICATED:...'}``,
``after {...}``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from shortlist.v1 import agent_pb2


def memory(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {line.split(":")[0]: line.split()[1] + " kB" for line in f if line.startswith(("VmRSS", "VmHWM"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("calls", type=int)
    ap.add_argument("mb", type=int)
    args = ap.parse_args()
    agent = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dos_agent.py")), "--port",
                              str(args.port), "--seconds", "120"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert agent.stdout is not None
        agent.stdout.readline()
        time.sleep(1)
        print("before", memory(agent.pid))
        payload = agent_pb2.GetImagesRequest(ids=["x" * (args.mb << 20)]).SerializeToString()
        answers: list[str] = []

        def call() -> None:
            ch = grpc.insecure_channel(f"127.0.0.1:{args.port}", options=[("grpc.max_send_message_length", -1)])
            get = ch.unary_unary("/shortlist.v1.Agent/GetImages", request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
            try:
                get(payload, timeout=60)
                answers.append("OK")
            except grpc.RpcError as e:
                answers.append(f"{e.code().name}:{(e.details() or '')[:60]}")

        threads = [threading.Thread(target=call) for _ in range(args.calls)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{time.time() - t0:.1f}s", set(answers))
        print("after", memory(agent.pid))
    finally:
        agent.kill()
        agent.wait()


if __name__ == "__main__":
    main()
