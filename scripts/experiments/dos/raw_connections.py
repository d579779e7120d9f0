"""Raw TCP connections to a running agent's gRPC port that never send HTTP/2's preface (docs/agent.md,
"Limits", ``--max-connections``; the security review's ``grpcfd.py``). Opens CONNECTIONS connections to
127.0.0.1:PORT and holds them, waits 3 s, runs ``shortlist status --connect-timeout 5`` against the agent
(the token from SHORTLIST_TOKEN, as the CLI reads it), then every 10 s for up to 150 s prints how many of
the connections are still open. The review ran it against an agent started with a 1,024 open-files limit:

    (ulimit -n 1024; shortlist serve --data-dir D --port 53522 --tokens TOKENS --web-port 53523) &
    SHORTLIST_TOKEN=READ_TOKEN .venv/bin/python scripts/experiments/dos/raw_connections.py --port 53522 1100

Prints ``held 1100 raw TCP connections``, ``status rc 1 ...`` (with the CLI's last words: ``UNAVAILABLE: no
agent answers ...`` when the agent could accept nothing more), then ``10s: 1100 still open``, ...
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time


def still_open(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            n += s.recv(1) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="the agent's gRPC port")
    ap.add_argument("--watch", type=float, default=150.0, help="seconds to watch the connections")
    ap.add_argument("connections", type=int)
    args = ap.parse_args()
    socks: list[socket.socket] = []
    for _ in range(args.connections):
        try:
            socks.append(socket.create_connection(("127.0.0.1", args.port), timeout=2))
        except OSError as e:
            print("connect:", e)
            break
    time.sleep(3)
    print("held", len(socks), "raw TCP connections")
    r = subprocess.run([sys.executable, "-m", "shortlist.cli", "status", "--agent", f"127.0.0.1:{args.port}",
                        "--connect-timeout", "5"], capture_output=True, text=True, timeout=60)
    print("status rc", r.returncode, (r.stdout + r.stderr)[-200:].strip())
    t0 = time.time()
    while time.time() - t0 < args.watch:
        time.sleep(10)
        n = still_open(socks)
        print(f"{time.time() - t0:.0f}s: {n} still open", flush=True)
        if n == 0:
            break
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
