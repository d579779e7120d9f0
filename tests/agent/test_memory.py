"""agent/memory.py and agent/threads.py: the process settings of `shortlist serve` (malloc, BLAS threads), and
the trimming of malloc's free pages after a burst of calls."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import blobs, service
from agent.memory import IdleTrim
from agent.threads import THREAD_ENV
from shortlist.v1 import agent_pb2
from tests.agent.conftest import make_samples, start

CHECK = """
from agent.memory import tune_malloc
print(tune_malloc())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_tune_malloc_is_accepted_in_a_fresh_process() -> None:
    # In a child process: the settings are process-wide, and the test process keeps its own.
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() in {"True", "False"}  # False only off glibc (e.g. musl)
    if platform.libc_ver()[0] == "glibc":
        assert out.stdout.strip() == "True"


BLAS_CHECK = """
from threadpoolctl import threadpool_info
from agent.threads import one_blas_thread_per_call
print(one_blas_thread_per_call(), sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}))
"""


def test_one_blas_thread_unless_the_environment_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run([sys.executable, "-c", BLAS_CHECK], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    assert out.stdout.strip() in {"True [1]", "True []"}  # [] only where numpy has no BLAS threadpool
    env["OMP_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", BLAS_CHECK], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    assert out.stdout.startswith("False")


TRIM_CHECK = """
import threading
from agent.memory import malloc_trim, tune_malloc

def rss_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

tune_malloc()  # as `shortlist serve` does: two arenas, blocks of 1 MiB and more mmapped
held = []

def burst():  # in a thread of its own, as a gRPC worker: its blocks come from the non-main arena
    blocks = [bytes(4000) + bytes([i % 256]) for i in range(50_000)]  # ~200 MB of 4 kB blocks
    held.extend(blocks[99::100])  # one block in 100 stays live, so the arena's top cannot shrink

t = threading.Thread(target=burst)
t.start()
t.join()
before = rss_kb()
released = malloc_trim()
print(released, before, rss_kb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_hands_back_the_free_pages_a_burst_left_in_an_arena() -> None:
    out = subprocess.run([sys.executable, "-c", TRIM_CHECK], capture_output=True, text=True, timeout=60, check=True)
    released, before_kb, after_kb = out.stdout.split()
    # ~198 MB of the 200 MB were freed but stayed resident (live blocks above them); trimming gives them back.
    assert released == "True"
    assert int(before_kb) - int(after_kb) > 150_000, out.stdout


def test_idle_trim_waits_for_a_pause_and_trims_once_per_burst() -> None:
    calls: list[float] = []

    def fake_trim() -> bool:
        calls.append(time.monotonic())
        return True

    trim = IdleTrim(idle_s=0.5, trim=fake_trim)  # (a thread starved 0.5 s would look like a pause)
    try:
        time.sleep(0.8)
        assert calls == []  # no call yet: nothing to trim
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # a burst of calls, 20 ms apart: never trimmed during it
            trim.touch()
            time.sleep(0.02)
        assert calls == []
        time.sleep(1.0)
        assert len(calls) == 1 and calls[0] - end >= 0.45  # once, after the pause
        time.sleep(0.8)
        assert len(calls) == 1 and trim.trims == 1  # no new call: no second trim
    finally:
        trim.close()


def test_a_call_that_outlasts_the_pause_is_trimmed_after_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks a long call frees after the pause's trim are handed back once it ends: CallStarts touches
    IdleTrim when a call ends as well as when it starts (a unary call, a response stream, one that raises,
    one the client stops reading), and not for calls outside the agent's service. No timing: the touches
    are recorded in order with what the handler did (that a touch after a trim brings one more trim is
    ``test_idle_trim_waits_for_a_pause_and_trims_once_per_burst``'s)."""
    import types

    import grpc

    events: list[str] = []
    trim = IdleTrim(idle_s=3600.0, trim=lambda: True)  # its thread never trims within the test
    monkeypatch.setattr(trim, "touch", lambda: events.append("touch"))

    def unary(request: object, context: object) -> str:
        events.append("run")
        return "done"

    def failing(request: object, context: object) -> str:
        events.append("run")
        raise RuntimeError("boom")

    def stream(request: object, context: object) -> Iterator[str]:
        events.append("run")
        yield "a"
        events.append("more")
        yield "b"

    try:
        starts = service.CallStarts(trim)
        details = types.SimpleNamespace(method=f"/{service.SERVICE_NAME}/GetStatus")

        def wrapped(handler: grpc.RpcMethodHandler,
                    call: types.SimpleNamespace = details) -> grpc.RpcMethodHandler:
            got = starts.intercept_service(lambda d: handler, call)
            assert got is not None
            return got

        h = wrapped(grpc.unary_unary_rpc_method_handler(unary))
        assert events == ["touch"]  # the start: when the call arrives
        assert h.unary_unary is not None and h.unary_unary(None, None) == "done"
        assert events == ["touch", "run", "touch"]  # and its end
        events.clear()
        h = wrapped(grpc.unary_unary_rpc_method_handler(failing))
        with pytest.raises(RuntimeError):
            assert h.unary_unary is not None
            h.unary_unary(None, None)
        assert events == ["touch", "run", "touch"]
        events.clear()
        h = wrapped(grpc.unary_stream_rpc_method_handler(stream))
        assert h.unary_stream is not None and list(h.unary_stream(None, None)) == ["a", "b"]
        assert events == ["touch", "run", "more", "touch"]  # once the stream has ended, not at its first message
        events.clear()
        h = wrapped(grpc.unary_stream_rpc_method_handler(stream))
        assert h.unary_stream is not None
        replies = h.unary_stream(None, None)
        assert next(iter(replies)) == "a"
        assert events == ["touch", "run"]
        replies.close()  # the client went away: the stream is closed
        assert events == ["touch", "run", "touch"]
        events.clear()
        health = types.SimpleNamespace(method="/grpc.health.v1.Health/Check")  # not the agent's: not counted
        h = wrapped(grpc.unary_unary_rpc_method_handler(unary), health)
        assert h.unary_unary is not None and h.unary_unary(None, None) == "done"
        assert events == ["run"]
    finally:
        trim.close()


def test_a_served_agent_trims_after_calls_and_its_threads_stay_bounded(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "IdleTrim", functools.partial(IdleTrim, idle_s=0.2))
    r = start(tmp_path / "data", registry)
    try:
        r.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10)
        trim = service._PARTS[r.server].trim
        deadline = time.monotonic() + 5
        while trim.trims == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trim.trims == 1

        def ingest(k: int) -> None:
            reply = r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(4, prefix=f"t{k}-", seed=k))]),
                                  timeout=30)
            assert reply.accepted == 4

        def streams(first: int) -> int:  # 10 Ingest streams, 4 at a time; the thread count once they ended
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(ingest, range(first, first + 10)))
            deadline = time.monotonic() + 5
            while any(t.name.startswith("ingest-") for t in threading.enumerate()) and time.monotonic() < deadline:
                time.sleep(0.05)
            return threading.active_count()

        before = threading.active_count()
        after = max(streams(k) for k in (0, 10, 20, 30))
        names = [t.name for t in threading.enumerate()]
        # Each stream's two pipeline threads end with it (40 streams would otherwise leave 80); what stays
        # is the pools grown to the concurrency, and ThreadPoolExecutor keeps its threads: 4 streams at once,
        # each one gRPC worker and the fsyncs of one batch (4 files and at most 4 folders).
        assert not [n for n in names if n.startswith("ingest-")]
        assert after <= before + 4 * (1 + 8), names
        assert sum(n.startswith("fsync") for n in names) <= blobs._FSYNC_POOL._max_workers
    finally:
        r.stop()
    assert not trim._thread.is_alive()
