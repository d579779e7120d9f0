"""The agent accepts client keepalive pings (docs/agent.md, "Keepalive"): gRPC's server default took one ping per
5 minutes and none without calls, so a client with keepalive_time_ms=10000 and permit_without_calls was sent
GOAWAY "too_many_pings" every ~20 s (its channel fell back to IDLE). Here on a scale of seconds: the agent's
minimum ping interval lowered to 300 ms, a client pinging an idle channel every 600 ms for 4 s."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from agent import service
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import start


def test_idle_client_keepalive_pings_at_the_accepted_interval_get_no_goaway(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "KEEPALIVE_MIN_PING_MS", 300, raising=False)
    r = start(tmp_path / "data", registry)
    states: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()

    def seen(state: grpc.ChannelConnectivity) -> None:
        with lock:
            states.append(state)

    options = [("grpc.keepalive_time_ms", 600), ("grpc.keepalive_timeout_ms", 2000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    ch = grpc.insecure_channel(r.address, options=options)
    try:
        agent_pb2_grpc.AgentStub(ch).GetStatus(agent_pb2.GetStatusRequest(), timeout=10)
        ch.subscribe(seen, try_to_connect=False)
        time.sleep(4.0)  # idle: only pings travel (about 6 of them; the old policy sent GOAWAY after 3)
        with lock:
            assert states and set(states) == {grpc.ChannelConnectivity.READY}, states
    finally:
        ch.unsubscribe(seen)
        ch.close()
        r.stop()


def test_the_server_options_accept_pings_every_5_s_without_calls() -> None:
    opts = dict(service.keepalive_options())
    assert opts["grpc.keepalive_permit_without_calls"] == 1
    assert opts["grpc.http2.min_ping_interval_without_data_ms"] == service.KEEPALIVE_MIN_PING_MS == 5000
