"""Unary calls whose client sends the headers and never the request message (docs/agent.md, "Limits": "Not
bounded yet"). Starts ``dos_agent.py`` (tokens on) on PORT, opens CALLS such calls on one channel (to the
health service's ``Check`` with ``--method check``, open to all, or to ``GetStatus`` with ``--method
getstatus``) with no token (``--token TOKEN`` to send one), waits 3 s, then times a ``GetStatus`` with the
read token and an 8 s deadline from another channel. From the repository root:

    .venv/bin/python scripts/experiments/dos/header_only_calls.py --port 53645 --method check 120

Prints ``N=120 victim OK 0.01s`` or ``N=120 victim DEADLINE_EXCEEDED after 8.0s``, then how many of the
header-only calls the agent had already ended, and with which code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from shortlist.v1 import agent_pb2, agent_pb2_grpc

READ_TOKEN = "r" * 32  # dos_agent.py's
METHODS = {"check": "/grpc.health.v1.Health/Check", "getstatus": "/shortlist.v1.Agent/GetStatus"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--method", choices=sorted(METHODS), default="check")
    ap.add_argument("--token", default="", help="the token the header-only calls send (default: none)")
    ap.add_argument("calls", type=int)
    args = ap.parse_args()
    agent = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dos_agent.py")), "--port",
                              str(args.port), "--seconds", "60"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def never() -> Iterator[bytes]:  # a request stream that sends nothing until the end
        stop.wait()
        yield from ()

    try:
        assert agent.stdout is not None
        agent.stdout.readline()
        time.sleep(1)
        metadata = (("authorization", "Bearer " + args.token),) if args.token else ()
        ch = grpc.insecure_channel(f"127.0.0.1:{args.port}")
        method = ch.stream_unary(METHODS[args.method], request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
        calls = [method.future(never(), metadata=metadata) for _ in range(args.calls)]
        time.sleep(3)
        victim = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"127.0.0.1:{args.port}"))
        t0 = time.time()
        try:
            victim.GetStatus(agent_pb2.GetStatusRequest(), metadata=(("authorization", "Bearer " + READ_TOKEN),),
                             timeout=8)
            print(f"N={args.calls} victim OK {time.time() - t0:.2f}s")
        except grpc.RpcError as e:
            print(f"N={args.calls} victim {e.code().name} after {time.time() - t0:.1f}s")
        ended = [c for c in calls if c.done()]
        print("header-only calls ended by the agent:", len(ended), ended[0].code().name if ended else "")
        stop.set()
        for c in calls:
            c.cancel()
    finally:
        agent.kill()
        agent.wait()


if __name__ == "__main__":
    main()
