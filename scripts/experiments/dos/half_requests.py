"""Half-sent HTTP requests to a running agent's web port (docs/app.md, "Connections"; docs/agent.md,
"Limits"; the security review's ``fdx.py``). Opens CONNECTIONS connections to 127.0.0.1:WEB_PORT, sends each
the request line and one header of ``GET /healthz`` (never the blank line that ends the headers) and holds
them; after 3 s runs ``shortlist status --connect-timeout 5`` against the gRPC port PORT (the token from
SHORTLIST_TOKEN) and asks the web app's /healthz, then closes the connections and runs status again. The
review ran it against an agent started with a 1,024 open-files limit:

    (ulimit -n 1024; shortlist serve --data-dir D --port 53522 --tokens TOKENS --web-port 53523 2> LOG) &
    SHORTLIST_TOKEN=WRITE_TOKEN .venv/bin/python scripts/experiments/dos/half_requests.py \\
        --port 53522 --web-port 53523 1100
    grep -c 'socket.accept() out of system resource' LOG

Prints ``held 1100 half-sent requests``, ``status rc ...`` with the CLI's last words, ``web /healthz: ...``
(the HTTP status, or the error), and ``after release: status rc ...``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request


def status(port: int) -> str:
    r = subprocess.run([sys.executable, "-m", "shortlist.cli", "status", "--agent", f"127.0.0.1:{port}",
                        "--connect-timeout", "5"], capture_output=True, text=True, timeout=60)
    return f"rc {r.returncode} {(r.stdout + r.stderr)[-300:].strip()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="the agent's gRPC port")
    ap.add_argument("--web-port", type=int, required=True)
    ap.add_argument("connections", type=int)
    args = ap.parse_args()
    socks: list[socket.socket] = []
    for _ in range(args.connections):
        try:
            s = socket.create_connection(("127.0.0.1", args.web_port), timeout=2)
        except OSError as e:
            print("connect:", e)
            break
        s.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        socks.append(s)
    time.sleep(3)
    print("held", len(socks), "half-sent requests")
    print("status", status(args.port))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{args.web_port}/healthz", timeout=5) as resp:
            print("web /healthz:", resp.status)
    except OSError as e:
        print("web /healthz:", e)
    for s in socks:
        s.close()
    time.sleep(3)
    print("after release: status", status(args.port))


if __name__ == "__main__":
    main()
