"""How long the app's other requests wait while a caller with a right token sends large JSON bodies. Not a test:
``PYTHONPATH=. .venv/bin/python scripts/load/measure_body_stall.py [PATH] [N]`` from the repository root
(figures: docs/app.md).

Posts, three times, a body of ``N`` tiny labels (``{"id":"a","label":"b"}``; ``/api/queue``: ids ``"a"``) to
``PATH`` of the app on a real agent (no tokens: every caller's is right) through one TestClient event loop, and
prints the longest ``/healthz`` answer meanwhile (asked every 10 ms). ``--thread``: instead, parses such a body
(``json.loads``) in a second thread and prints the longest pause of a thread that wakes every 1 ms meanwhile
(whether parsing off the event loop would free it). ``--invalid``: instead, posts once each the security review's
bodies that FastAPI refuses item by item (700,000 int ids to /api/queue; 600,000 int params or where values, one
params key of 15 MB, to /api/queue/select) and prints each 422's size, time and the longest /healthz meanwhile."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent.web.conftest import start_web_agent


def longest_healthz_while(c: Any, work: Callable[[], None]) -> float:
    """Run ``work`` in a thread while asking ``/healthz`` of client ``c`` every 10 ms: the longest answer (s)."""
    poster = threading.Thread(target=work)
    poster.start()
    worst = 0.0
    while poster.is_alive():
        t = time.perf_counter()
        c.get("/healthz")
        worst = max(worst, time.perf_counter() - t)
        time.sleep(0.01)
    poster.join()
    return worst


def main(path: str = "/api/labels", n: int = 700_000) -> None:
    item, key = (b'"a"', b"ids") if path == "/api/queue" else (b'{"id":"a","label":"b"}', b"labels")
    raw = b'{"method":"knn","' + key + b'":[' + b",".join([item] * n) + b"]}"
    with tempfile.TemporaryDirectory() as tmp:
        wa = start_web_agent(Path(tmp))
        try:
            with wa.client() as c:  # one event loop for every request
                c.get("/healthz")
                codes: list[int] = []

                def post() -> None:
                    for _ in range(3):
                        codes.append(c.post(path, content=raw, headers={"Content-Type": "application/json"})
                                     .status_code)

                worst = longest_healthz_while(c, post)
                print(f"{path}: body {len(raw) / 2**20:.1f} MiB, answers {codes}, "
                      f"longest /healthz {worst * 1000:.0f} ms")
        finally:
            wa.stop()


def invalid_bodies() -> None:
    many = 600_000
    cases = [("/api/queue", "ids: 700k ints", {"ids": [1] * 700_000}),
             ("/api/queue/select", "params: 600k int values",
              {"strategy": "random", "budget": 1, "params": {f"k{i}": i for i in range(many)}}),
             ("/api/queue/select", "where: 600k int values",
              {"strategy": "random", "budget": 1, "where": {f"k{i}": 1 for i in range(many)}}),
             ("/api/queue/select", "params: 1 key of 15 MB",
              {"strategy": "random", "budget": 1, "params": {"k" * 15_000_000: 1}})]
    with tempfile.TemporaryDirectory() as tmp:
        wa = start_web_agent(Path(tmp))
        try:
            with wa.client() as c:
                c.get("/healthz")
                for path, name, body in cases:
                    raw = json.dumps(body).encode()
                    answer: list[tuple[int, int, float]] = []

                    def post(path: str = path, raw: bytes = raw, answer: list[tuple[int, int, float]] = answer) -> None:
                        t = time.perf_counter()
                        r = c.post(path, content=raw, headers={"Content-Type": "application/json"})
                        answer.append((r.status_code, len(r.content), time.perf_counter() - t))

                    worst = longest_healthz_while(c, post)
                    status, size, took = answer[0]
                    print(f"{path} {name} (body {len(raw) / 2**20:.1f} MiB): {status}, {size:,} bytes in {took:.2f} s, "
                          f"longest /healthz {worst * 1000:.0f} ms")
        finally:
            wa.stop()


def parse_in_a_thread(n: int = 700_000) -> None:
    raw = b'{"labels":[' + b",".join([b'{"id":"a","label":"b"}'] * n) + b"]}"
    stop = threading.Event()
    gaps: list[float] = []

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    parser = threading.Thread(target=lambda: json.loads(raw))
    t = time.perf_counter()
    parser.start()
    parser.join()
    took = time.perf_counter() - t
    time.sleep(0.05)
    stop.set()
    ticker.join()
    print(f"json.loads of {len(raw) / 2**20:.1f} MiB in a thread: {took * 1000:.0f} ms; the other thread's longest "
          f"pause {max(gaps) * 1000:.0f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--thread"]:
        parse_in_a_thread()
        sys.exit()
    if sys.argv[1:2] == ["--invalid"]:
        invalid_bodies()
        sys.exit()
    main(sys.argv[1] if len(sys.argv) > 1 else "/api/labels", int(sys.argv[2]) if len(sys.argv) > 2 else 700_000)
