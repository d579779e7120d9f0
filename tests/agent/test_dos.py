"""Denial of service through the gRPC port (the security review of 776bda7, items 1 and 2): server streams
whose clients never read cannot take the threads of other callers' unary calls (agent/streams.py), and
connections that never speak HTTP/2 are closed, bounded in number (agent.service.connection_options)."""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent import client
from agent.config import Limits, WorkConfig
from agent.errors import RETRY_AFTER_KEY
from agent.fds import raise_open_files_limit, throttle_accept_failures
from agent.streams import OPEN_REQUEST_TIMEOUT_S, OPEN_SERVICE_SLOTS, StreamGuard, client_share
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import Running, start

CODE = grpc.StatusCode
# Few threads, so that a handful of stalled streams would take them all without the guard: 2 workers and
# lanes of one slot each (WorkConfig.threads == 4).
SMALL_WORK = WorkConfig(max_concurrent=1, max_queued=0, light_max_concurrent=1, light_max_queued=0,
                        decode_max_concurrent=1, decode_max_queued=0)


def never_reading_channel(address: str) -> grpc.Channel:
    """A client channel that keeps HTTP/2's first flow-control window (no BDP probing): a stream it does not
    read blocks the server's send at its first large message."""
    return grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])


@pytest.fixture
def guarded(tmp_path: Path, registry: Path) -> Iterator[Running]:
    limits = Limits(max_server_streams=2, stream_stall_timeout_s=1.0)
    r = start(tmp_path / "data", registry, limits=limits, workers=2, work=SMALL_WORK)
    rng = np.random.default_rng(0)
    # 8 samples of 192 KiB: a ListSamples with payloads does not fit the client's 64 KiB window
    reply = client.ingest(r.stub, [client.tensor_sample(f"t{i}", rng.integers(0, 255, (256, 256, 3), np.uint8))
                                   for i in range(8)])
    assert reply.accepted == 8
    yield r
    r.stop()


def test_streams_that_never_read_leave_unary_calls_alone(guarded: Running) -> None:
    attacker = never_reading_channel(guarded.address)
    list_samples = agent_pb2_grpc.AgentStub(attacker).ListSamples
    calls = [list_samples(agent_pb2.ListSamplesRequest(include_payload=True)) for _ in range(12)]
    pool = futures.ThreadPoolExecutor(len(calls))
    try:
        # they reach the agent (a stream sends its initial metadata as it starts; a refused one ends)
        futures.wait([pool.submit(c.initial_metadata) for c in calls], timeout=3)
        # without the guard these took every thread (2 workers + 4 lanes' threads): GetStatus waited for them
        t0 = time.monotonic()
        assert guarded.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10).samples == 8
        assert time.monotonic() - t0 < 5
        # the streams over the limit are refused at once, with a retry hint
        end = time.monotonic() + 5
        while sum(c.done() for c in calls) < len(calls) - 2 and time.monotonic() < end:
            time.sleep(0.05)
        refused = [c for c in calls if c.done() and c.code() == CODE.RESOURCE_EXHAUSTED]
        assert len(refused) >= len(calls) - 2
        assert "--max-server-streams" in refused[0].details()
        assert dict(refused[0].trailing_metadata() or ())[RETRY_AFTER_KEY] == "2000"
        # unary writes too
        labels = [agent_pb2.LabelAssignment(id="t0", label="cat")]
        assert guarded.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=labels), timeout=10).accepted == 1
    finally:
        for c in calls:
            c.cancel()
        pool.shutdown(wait=False)
        attacker.close()


def test_one_client_may_hold_two_streams_at_once_under_a_small_limit(guarded: Running) -> None:
    """One command may itself hold two streams (`export-labels` reads PriorLabels while it lists the labels):
    with --max-server-streams 2 the client's share is both (was: half, one, and the export was refused on an
    idle agent); a third is over the limit."""
    assert [client_share(n) for n in (1, 2, 3, 4, 5, 16)] == [1, 2, 2, 2, 2, 8]
    # payloads of 192 KiB on a channel that keeps a 64 KiB window: each handler stays open after one message
    stub = agent_pb2_grpc.AgentStub(never_reading_channel(guarded.address))
    streams = [stub.ListSamples(agent_pb2.ListSamplesRequest(include_payload=True), timeout=30) for _ in range(2)]
    try:
        assert [next(s).id for s in streams] == ["t0", "t0"]  # both admitted, from one address
        with pytest.raises(grpc.RpcError) as e:
            list(guarded.stub.ListSamples(agent_pb2.ListSamplesRequest(), timeout=30))
        assert e.value.code() == CODE.RESOURCE_EXHAUSTED
    finally:
        for s in streams:
            s.cancel()


def test_a_stalled_stream_is_cancelled_and_frees_its_slot(guarded: Running,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    attacker = never_reading_channel(guarded.address)
    stalled = agent_pb2_grpc.AgentStub(attacker).ListSamples(agent_pb2.ListSamplesRequest(include_payload=True))
    try:
        # the stall timeout is 1 s: the agent cancels the stream (gRPC's pending send fails, its thread is free)
        end = time.monotonic() + 15
        while "cancelled a ListSamples stream" not in caplog.text and time.monotonic() < end:
            time.sleep(0.1)
        assert "its client took no message for 1 s (--stream-stall-timeout)" in caplog.text
        # its slot is free again: a stream of the same address (one of its share of two was the stalled
        # one), read to the end, then another
        assert [len(list(guarded.stub.ListSamples(agent_pb2.ListSamplesRequest(include_payload=True), timeout=30)))
                for _ in range(2)] == [8, 8]
        # the stalled client, reading at last, is told why its stream ended and what to do (not a bare CANCELLED,
        # which it could not tell from its own cancel)
        with pytest.raises(grpc.RpcError) as e:
            for _ in stalled:
                pass
        assert e.value.code() == CODE.DEADLINE_EXCEEDED
        assert "took no message for 1 s (the agent's --stream-stall-timeout)" in (e.value.details() or "")
        assert "read the stream without pausing that long" in (e.value.details() or "")
    finally:
        stalled.cancel()
        attacker.close()


@pytest.fixture
def plain_server() -> Iterator[tuple[grpc.Server, StreamGuard, grpc.Channel]]:
    """A bare gRPC server with StreamGuard (stall timeout 0.5 s) and two methods: Slow streams 3 small
    messages 1.5 s apart; Echo (bidirectional) answers each request."""
    def slow(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(3):
            time.sleep(1.5)
            yield b"row"

    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    handlers = grpc.method_handlers_generic_handler("t.T", {
        "Slow": grpc.unary_stream_rpc_method_handler(slow), "Echo": grpc.stream_stream_rpc_method_handler(echo)})
    guard = StreamGuard(limit=4, stall_s=0.5)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handlers], interceptors=[guard])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, guard, ch
    ch.close()
    server.stop(0).wait()
    guard.close()


def test_a_slow_computation_is_no_stall(plain_server: tuple[grpc.Server, StreamGuard, grpc.Channel]) -> None:
    """Only the wait on the client counts: a handler that computes 1.5 s (above the 0.5 s stall timeout)
    before each message is served whole."""
    _, guard, ch = plain_server
    assert list(ch.unary_stream("/t.T/Slow")(b"", timeout=30)) == [b"row"] * 3
    assert guard.open_streams == 0


def test_a_bidirectional_stream_whose_client_sends_nothing_is_cancelled(
        plain_server: tuple[grpc.Server, StreamGuard, grpc.Channel]) -> None:
    """(the reflection service's stream is one, open without a token)"""
    _, guard, ch = plain_server
    stop = threading.Event()

    def silent() -> Iterator[bytes]:
        yield b"hello"
        stop.wait(30)

    call = ch.stream_stream("/t.T/Echo")(silent(), timeout=10)
    try:
        assert next(call) == b"hello"
        with pytest.raises(grpc.RpcError) as e:
            next(call)
        assert e.value.code() == CODE.DEADLINE_EXCEEDED  # after 0.5 s, not at the call's 10 s deadline
        assert "its client sent no next message for 0.5 s" in (e.value.details() or "")
        end = time.monotonic() + 5
        while guard.open_streams and time.monotonic() < end:
            time.sleep(0.05)
        assert guard.open_streams == 0
    finally:
        stop.set()
        call.cancel()


@pytest.fixture
def connections(tmp_path: Path, registry: Path) -> Iterator[Running]:
    r = start(tmp_path / "data", registry, limits=Limits(handshake_timeout_s=0.5))
    yield r
    r.stop()


@pytest.fixture
def capped(tmp_path: Path, registry: Path) -> Iterator[Running]:
    r = start(tmp_path / "data", registry, limits=Limits(max_connections=4))
    yield r
    r.stop()


def closed_within(sock: socket.socket, within_s: float) -> bool:
    """Whether the peer closed ``sock`` within ``within_s`` (reading what it sent meanwhile)."""
    sock.settimeout(0.2)
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_connection_that_never_speaks_http2_is_closed(connections: Running) -> None:
    raw = socket.create_connection(("127.0.0.1", connections.port))
    try:
        t0 = time.monotonic()
        assert closed_within(raw, 10), "a silent TCP connection stayed open"  # gRPC's default: 120 s
        assert time.monotonic() - t0 < 10
    finally:
        raw.close()
    assert connections.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10).samples == 0


def test_connections_beyond_the_limit_are_closed_at_once(capped: Running) -> None:
    socks = [socket.create_connection(("127.0.0.1", capped.port)) for _ in range(8)]
    try:
        closed = sum(closed_within(s, 0.5) for s in socks)  # the handshake timeout (20 s) closes none of them
        assert 4 <= closed <= 5  # 4 connections at most (the test's own channel may hold one of them)
    finally:
        for s in socks:
            s.close()
    assert capped.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10).samples == 0


def test_the_open_files_limit_is_raised_to_the_hard_limit(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256) if hard == resource.RLIM_INFINITY else min(soft, hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with caplog.at_level(logging.INFO, "agent.fds"):
            before, now = raise_open_files_limit()
        assert before == low and now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] > low
        assert f"open files: soft limit raised from {low} to {now}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_failed_accepts_are_logged_once_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's accept loop logs each failed accept, with a traceback (104,347 lines in 40 s in the review)."""
    logger = logging.getLogger("test_dos.asyncio")
    f = throttle_accept_failures(logger)
    try:
        with caplog.at_level(logging.ERROR, logger.name):
            for _ in range(1000):
                logger.error("socket.accept() out of system resource\nsocket: <socket>", exc_info=OSError(24, "x"))
            logger.error("another error")
            for _ in range(100):  # a retry each failure scheduled, run after the listening socket closed
                logger.error("Exception in callback BaseSelectorEventLoop._start_serving(<function>)",
                             exc_info=ValueError("Invalid file descriptor: -1"))
            f.throttle.interval_s = 0.0  # the interval has passed: the next one says how many were left out
            logger.error("socket.accept() out of system resource\nsocket: <socket>")
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 4 and lines[1] == "another error" and lines[2].startswith("Exception in callback")
        assert lines[3].endswith("(999 more from it in the last 0 s, not logged)")
    finally:
        logger.removeFilter(f)


def header_only(channel: grpc.Channel, method: str, stop: threading.Event) -> grpc.Future:
    """A call to the unary ``method`` whose client sends its headers and no request message until ``stop``."""
    def never() -> Iterator[bytes]:
        stop.wait(60)
        yield from ()

    call: grpc.Future = channel.stream_unary(method, request_serializer=lambda b: b,
                                             response_deserializer=lambda b: b).future(never())
    return call


def wait_done(calls: list[grpc.Future], within_s: float) -> list[grpc.Future]:
    end = time.monotonic() + within_s
    while not all(c.done() for c in calls) and time.monotonic() < end:
        time.sleep(0.05)
    return [c for c in calls if c.done()]


@pytest.mark.parametrize("method", ["/grpc.health.v1.Health/Check", "/shortlist.v1.Agent/GetStatus"])
def test_calls_that_never_send_their_request_leave_the_others_alone(guarded: Running, method: str) -> None:
    """Without the guard, about as many such calls as the pool has threads froze every unary call (gRPC reads a
    unary request in a pool thread before the handler runs): here 40, on a pool of 2 workers + 4 lanes' threads +
    the streams'. The health service is open to all; GetStatus stands for a token holder's calls."""
    stop = threading.Event()
    attacker = grpc.insecure_channel(guarded.address)
    calls = [header_only(attacker, method, stop) for _ in range(40)]
    try:
        time.sleep(1)
        t0 = time.monotonic()
        assert guarded.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10).samples == 8
        health = health_pb2_grpc.HealthStub(guarded.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - t0 < 5
        # the calls beyond the first ones (2 for the agent's service, its --max-server-streams; 4 for health)
        # are cancelled within about a second, the first ones after their longer wait
        first = 2 if method.startswith("/shortlist") else OPEN_SERVICE_SLOTS
        assert len(wait_done(calls, 4)) >= len(calls) - first
        assert len(wait_done(calls, OPEN_REQUEST_TIMEOUT_S + 3)) == len(calls)
        assert {c.code() for c in calls} == {CODE.DEADLINE_EXCEEDED}
        assert all("its request message had not come whole" in (c.details() or "") for c in calls)
    finally:
        stop.set()
        for c in calls:
            c.cancel()
        attacker.close()


def test_a_unary_call_whose_client_sends_no_message_is_told_so(running: Running) -> None:
    call = running.channel.stream_unary("/shortlist.v1.Agent/GetStatus", request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        call(iter(()), timeout=10)
    # INVALID_ARGUMENT, saying what to send: UNIMPLEMENTED (gRPC's own answer) reads as an agent without the method
    assert e.value.code() == CODE.INVALID_ARGUMENT
    said = e.value.details() or ""
    assert "/shortlist.v1.Agent/GetStatus takes exactly one request message" in said
    assert "send the request message" in said
    # a server stream and health's Watch still work through the guard's handlers
    assert len(list(running.stub.ListSamples(agent_pb2.ListSamplesRequest(), timeout=10))) == 0
    watch = health_pb2_grpc.HealthStub(running.channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_streams_have_slots_of_their_own(guarded: Running) -> None:
    """Reflection is open without a token: its streams must not take the agent's server-stream slots (2 here)."""
    stop = threading.Event()

    def silent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        stop.wait(30)

    attacker = grpc.insecure_channel(guarded.address)
    info = reflection_pb2_grpc.ServerReflectionStub(attacker).ServerReflectionInfo
    streams = [info(silent(), timeout=20) for _ in range(OPEN_SERVICE_SLOTS + 3)]
    try:
        firsts = futures.ThreadPoolExecutor(len(streams))
        answered = list(firsts.map(lambda s: _first_or_code(s), streams))
        firsts.shutdown(wait=False)
        assert answered.count("answer") == OPEN_SERVICE_SLOTS
        assert answered.count(CODE.RESOURCE_EXHAUSTED) == 3
        # (one after the other: one address holds at most half of the agent's stream slots at once)
        assert [len(list(guarded.stub.ListSamples(agent_pb2.ListSamplesRequest(), timeout=10)))
                for _ in range(2)] == [8, 8]
    finally:
        stop.set()
        for st in streams:
            st.cancel()
        attacker.close()


def _first_or_code(stream: Any) -> Any:
    try:
        next(stream)
        return "answer"
    except grpc.RpcError as e:
        return e.code()
