"""SIGTERM to exit of a busy `shortlist serve`, phase by phase (docs/reliability.md, Shutdown).

Starts the agent as tests/agent/scenarios/test_work.py's SIGTERM test does (`python -m tests.agent.slow serve`, a
test registry, 10 samples), makes it busy the same way (three Selects of the "slow" strategy, 600 s each:
two running, one queued; ``--stuck``: the first is one 600 s step with no checkpoint instead), optionally
starts ``--load`` busy loops at niceness 0 for ``--settle`` s, sends SIGTERM and prints the seconds from
the signal to the process's exit, the agent's shutdown log lines (seconds after the signal, as read here)
and what each call got. Run from the repository root; the busy loops end with the run.

    nice -n 10 .venv/bin/python scripts/load/sigterm_phases.py [--load 2] [--stuck]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent import client
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, make_samples, publish_linear
from tests.agent.test_cli import free_port

SHOWN = ("shutdown:", "close:", "stopped", "abandoned", "signal")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=int, default=0, help="busy loops (niceness 0) running around the SIGTERM")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds the loops run before the SIGTERM")
    ap.add_argument("--stuck", action="store_true", help="the first call is one step with no checkpoint")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sigterm-phases-"))
    reg = tmp / "models"
    publish_linear(reg, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.agent.slow", "serve", "--data-dir", str(tmp / "d"),
                             "--models", str(reg), "--port", str(port), "--cpu", "--max-queue-wait", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in out:
            lines.append((time.monotonic(), line.rstrip()))

    threading.Thread(target=read, daemon=True).start()
    loops: list[subprocess.Popen[bytes]] = []
    try:
        stub = client.connect(f"127.0.0.1:{port}", timeout=60, starting=True)
        client.ingest(stub, make_samples(10))
        strategies = ["stuck" if args.stuck else "slow", "slow", "slow"]
        calls = []
        for i, name in enumerate(strategies):
            calls.append(stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy=name, seed=i,
                                                                    params={"seconds": "600"})))
            time.sleep(0.3)
        time.sleep(1.0)
        assert not any(c.done() for c in calls), "a call ended before the SIGTERM"
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                  preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
                 for _ in range(args.load)]
        time.sleep(args.settle if loops else 0.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc: int | str = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = "still running after 60 s"
        took = time.monotonic() - t0
        for p in loops:
            p.kill()
            p.wait()
        loops = []
        time.sleep(0.2)
        print(f"load {args.load}, stuck {args.stuck}: exit {rc}, SIGTERM -> exit {took:.2f} s")
        for t, line in lines:
            if t >= t0 and any(s in line for s in SHOWN):
                print(f"  +{t - t0:5.2f} s  {line}")
        for c in calls:
            e = c.exception(timeout=5)
            print("  call:", "answered" if e is None else e.code())  # type: ignore[union-attr]
    finally:
        for p in loops:
            p.kill()
            p.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
