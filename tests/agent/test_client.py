"""The client's retries of busy refusals (agent.client.BusyRetry): RESOURCE_EXHAUSTED with the agent's
``retry-after-ms`` hint is retried after the hinted wait for Select, PriorLabels and the reads, within the
call's deadline and the retry budget; nothing else is retried; and the CLI's final message carries the hint."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import client
from agent.admission import Admission, Busy, LaneThreads
from agent.config import WorkConfig
from agent.errors import ResourceExhausted
from agent.params import PriorEntry, StrategyEntry
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import Running, make_samples, start
from tests.agent.slow import slow_prior, slow_strategy

CODE = grpc.StatusCode


class _Refuse(grpc.ServerInterceptor):
    """Refuses the first ``times`` calls of each method in ``methods`` with ``error`` (inside the agent's
    error mapping, so a Busy goes out as RESOURCE_EXHAUSTED with its retry-after-ms trailer); counts
    every call by method name."""

    def __init__(self, methods: set[str], error: Exception, times: int = 10**9, delay_s: float = 0.0) -> None:
        self.methods, self.error, self.times, self.delay_s = methods, error, times, delay_s
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        name = details.method.rpartition("/")[2]  # type: ignore[attr-defined]
        with self._lock:
            self.calls[name] += 1
            refuse = name in self.methods and self.calls[name] <= self.times
        if not refuse:
            return handler
        error, delay_s = self.error, self.delay_s

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            time.sleep(delay_s)  # a refusal that takes this long to come back (a loaded agent)
            raise error

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            raise error
            yield  # a generator, as a server stream's handler is

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


def retrying(r: Running, policy: client.BusyRetry = client.BusyRetry()) -> agent_pb2_grpc.AgentStub:
    return client.connect(r.address, config=client.ClientConfig(busy_retry=policy))


@pytest.fixture
def slow_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, "slow", slow_strategy)
    monkeypatch.setitem(PRIOR_METHODS, "slow", slow_prior)


@pytest.fixture
def one_slot(tmp_path: Path, registry: Path, slow_registered: None,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    """An agent whose heavy lane runs one call and queues none: a second heavy call is refused at once.

    Its refusals must not depend on how fast this machine is now, only on capacity. The slow method sleeps;
    here no CPU share is known to admission (the lane does not sample it, ``sample_share=False``, and a
    call using less than half a core is not taken as CPU-bound, ``MIN_SHARE``), so every estimate is the
    wall time of the method's sleeps (at most ~1.5 s, far within the calls' 30 s). Without this, the share
    measured on a busy machine (a hundredth of a core or so: a sample, or a slow call's bookkeeping) turned
    the lane's mean CPU seconds (1.0 to start with) into ~48 s for a kind not seen yet (PriorLabels
    'slow'), more than its deadline: refused for its deadline, and the retries could never get it in."""
    monkeypatch.setattr(Admission, "MIN_SHARE", 0.5)
    r = start(tmp_path / "data", registry,
              work=WorkConfig(max_concurrent=1, max_queued=0, heavy_threads=LaneThreads(sample_share=False)))
    client.ingest(r.stub, make_samples(30, labels=6))
    yield r
    r.stop()


def _slow(seconds: float, seed: int = 0) -> agent_pb2.SelectRequest:
    return agent_pb2.SelectRequest(budget=2, strategy="slow", seed=seed, params={"seconds": str(seconds)})


def test_busy_retries_follow_the_rpcs_roles() -> None:
    """Retried: the read RPCs of RPC_ROLES that are not client streams, so a new RPC is decided by its role."""
    from agent.security import RPC_ROLES

    retried = client.BUSY_RETRY_METHODS  # the built-in RPCs as before it was derived (a new one may join)
    assert {"Select", "PriorLabels", "GetStatus", "ListSamples", "ListLabels", "GetMap", "GetImages",
            "GetQueue"} <= retried
    assert not {"Ingest", "SubmitLabels", "RetractLabels", "UpdateQueue", "ReloadModel"} & retried
    assert client.BusyRetry().methods == client.BUSY_RETRY_METHODS
    assert "UpdateQueue" in client.busy_retry_methods({**RPC_ROLES, "UpdateQueue": "read"})
    assert "Select" not in client.busy_retry_methods({**RPC_ROLES, "Select": "write"})
    assert "Ingest" not in client.busy_retry_methods({**RPC_ROLES, "Ingest": "read"})  # a client stream: never
    assert "GetQueue" not in client.busy_retry_methods({k: v for k, v in RPC_ROLES.items() if k != "GetQueue"})


def test_a_busy_refusal_is_retried_once_capacity_is_back(one_slot: Running) -> None:
    """The heavy lane's one slot is held for 1.5 s: a Select and a PriorLabels arriving meanwhile are
    refused (RESOURCE_EXHAUSTED, hint) by the real admission, and the client's retries get them through."""
    assert isinstance(STRATEGIES["slow"], StrategyEntry) and isinstance(PRIOR_METHODS["slow"], PriorEntry)
    plain = one_slot.stub  # no retries (conftest): the refusal shows as it is
    holder = plain.Select.future(_slow(1.5))
    deadline = time.monotonic() + 5
    while one_slot.agent.work.stats().running < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError) as refused:
        plain.Select(_slow(0, seed=1), timeout=30)
    assert refused.value.code() == CODE.RESOURCE_EXHAUSTED and client.retry_hint_s(refused.value)

    stub = retrying(one_slot, client.BusyRetry(attempts=50, max_wait_s=20))
    before = one_slot.agent.work.stats().refused
    t0 = time.monotonic()
    reply = stub.Select(_slow(0, seed=2), timeout=30)
    assert len(reply.selected) == 2 and reply.selection_id
    assert one_slot.agent.work.stats().refused > before  # it was refused at least once, then retried
    assert time.monotonic() - t0 < 10
    holder.result(timeout=10)

    holder = plain.Select.future(_slow(1.0, seed=3))
    while one_slot.agent.work.stats().running < 1 and time.monotonic() < deadline + 10:
        time.sleep(0.01)
    before = one_slot.agent.work.stats().refused
    priors = list(stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="slow", ids=["s20", "s21"],
                                                                params={"seconds": "0"}), timeout=30))
    assert [p.id for p in priors] == ["s20", "s21"]
    assert one_slot.agent.work.stats().refused > before
    holder.result(timeout=10)


def test_retries_stay_within_the_calls_deadline(tmp_path: Path, registry: Path) -> None:
    """Every Select refused with a 200 ms hint: the client retries while the next wait fits in the 1 s
    deadline, then raises the last refusal (not DEADLINE_EXCEEDED), within the deadline."""
    refuse = _Refuse({"Select"}, Busy("the agent is busy (test); retry in about 200 ms", 0.2))
    r = start(tmp_path / "data", registry, interceptors=[refuse])
    try:
        client.ingest(r.stub, make_samples(10))
        stub = retrying(r, client.BusyRetry(attempts=100, max_wait_s=60, jitter=0.5))
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Select(agent_pb2.SelectRequest(budget=2, strategy="random"), timeout=1.0)
        took = time.monotonic() - t0
        # the refusal, not DEADLINE_EXCEEDED; raised about when the deadline would be (a starved process
        # handles the last refusal late: the bound is loose, the code is the point)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED and took < 2.0
        attempts = getattr(err.value, "busy_attempts", 0)
        # waits of 0.2-0.3 s in 1 s (fewer when a loaded machine makes each refused attempt slow)
        assert attempts == refuse.calls["Select"] and 2 <= attempts <= 6
        assert "retry in 0.2 s" in client.describe(err.value) and f"after {attempts} attempts" in \
            client.describe(err.value)
        # Without a deadline, the retry budget bounds it: at most `attempts` calls, or max_wait_s of waiting.
        n = refuse.calls["Select"]
        with pytest.raises(grpc.RpcError):
            retrying(r, client.BusyRetry(attempts=3, max_wait_s=60)).Select(
                agent_pb2.SelectRequest(budget=2, strategy="random"))
        assert refuse.calls["Select"] - n == 3
        n = refuse.calls["Select"]
        with pytest.raises(grpc.RpcError):
            retrying(r, client.BusyRetry(attempts=100, max_wait_s=0.5, jitter=0)).Select(
                agent_pb2.SelectRequest(budget=2, strategy="random"))
        assert refuse.calls["Select"] - n == 3  # waits 0.2 + 0.2 fit in 0.5, a third would not
    finally:
        r.stop()


def test_no_retry_when_the_wait_and_another_attempt_would_pass_the_deadline(tmp_path: Path,
                                                                          registry: Path) -> None:
    """A refusal that took 0.4 s to come back, with a 0.2 s hint and 1 s deadline: waiting 0.2-0.3 s and
    trying again (another 0.4 s) would end after the deadline, so the client raises the refusal now, with
    its hint, instead of a DEADLINE_EXCEEDED that says nothing of why."""
    refuse = _Refuse({"Select"}, Busy("the agent is busy (test); retry in about 200 ms", 0.2), delay_s=0.4)
    r = start(tmp_path / "data", registry, interceptors=[refuse])
    try:
        stub = retrying(r, client.BusyRetry(attempts=100, max_wait_s=60, jitter=0.5))
        with pytest.raises(grpc.RpcError) as err:
            stub.Select(agent_pb2.SelectRequest(budget=2, strategy="random"), timeout=1.0)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED and refuse.calls["Select"] == 1
        assert getattr(err.value, "busy_attempts", 0) == 1
    finally:
        r.stop()


def test_a_retry_whose_wait_overran_the_deadline_is_not_made(tmp_path: Path, registry: Path) -> None:
    """The wait fitted the deadline when chosen, but a loaded machine overslept it (here: 1 s late): the
    client does not start an attempt that can no longer finish in time (its answer would be
    DEADLINE_EXCEEDED); it raises the refusal, which says what to do."""
    refuse = _Refuse({"Select"}, Busy("the agent is busy (test); retry in about 200 ms", 0.2))
    r = start(tmp_path / "data", registry, interceptors=[refuse])
    try:
        client.ingest(r.stub, make_samples(10))
        late = client._BusyRetrier(client.BusyRetry(attempts=100, max_wait_s=60, jitter=0),
                                   sleep=lambda s: time.sleep(s + 1.0))
        channel = grpc.intercept_channel(grpc.insecure_channel(r.address), late)
        with channel, pytest.raises(grpc.RpcError) as err:
            agent_pb2_grpc.AgentStub(channel).Select(agent_pb2.SelectRequest(budget=2, strategy="random"), timeout=1.0)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED and refuse.calls["Select"] == 1
        assert getattr(err.value, "busy_attempts", 0) == 1 and getattr(err.value, "busy_waited_s", 0) == 0.2
    finally:
        r.stop()


def test_what_is_not_retried(tmp_path: Path, registry: Path) -> None:
    """A busy refusal of a method not known safe to repeat (SubmitLabels), a RESOURCE_EXHAUSTED without a
    hint (a limit), any other code, a ``.future()`` call, and a client with BusyRetry.OFF: one call each."""
    busy = Busy("the agent is busy (test); retry in about 100 ms", 0.1)
    refuse = _Refuse({"SubmitLabels", "Select", "GetQueue"}, busy)
    r = start(tmp_path / "data", registry, interceptors=[refuse])
    try:
        client.ingest(r.stub, make_samples(10))
        stub = retrying(r)
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id="s1", label="cat")]))
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED and refuse.calls["SubmitLabels"] == 1
        with pytest.raises(grpc.RpcError):
            stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="random")).result()
        assert refuse.calls["Select"] == 1
        with pytest.raises(grpc.RpcError):
            retrying(r, client.BusyRetry.OFF).Select(agent_pb2.SelectRequest(budget=2, strategy="random"))
        assert refuse.calls["Select"] == 2
        with pytest.raises(grpc.RpcError):  # a safe method, retried: 5 attempts in all (the default)
            stub.GetQueue(agent_pb2.GetQueueRequest(name="q"))
        assert refuse.calls["GetQueue"] == client.BusyRetry().attempts
        # An invalid argument: answered by the agent itself, once.
        with pytest.raises(grpc.RpcError) as err:
            stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="no-such-method")).__next__()
        assert err.value.code() == CODE.INVALID_ARGUMENT and refuse.calls["PriorLabels"] == 1
    finally:
        r.stop()

    limit = _Refuse({"Select"}, ResourceExhausted("too many ids in one request (test limit)"))
    r = start(tmp_path / "data2", registry, interceptors=[limit])
    try:
        with pytest.raises(grpc.RpcError) as err:
            retrying(r).Select(agent_pb2.SelectRequest(budget=2, strategy="random"))
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED and limit.calls["Select"] == 1
        assert client.describe(err.value) == f"RESOURCE_EXHAUSTED: {err.value.details()}"
    finally:
        r.stop()


def test_the_cli_gives_up_with_the_hint_and_no_traceback(tmp_path: Path, registry: Path) -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    refuse = _Refuse({"Select"}, Busy("the agent is busy (test); retry in about 150 ms", 0.15))
    r = start(tmp_path / "data", registry, interceptors=[refuse])
    try:
        client.ingest(r.stub, make_samples(10))
        res = CliRunner().invoke(app, ["select", "--agent", r.address, "--budget", "2", "--strategy", "random",
                                       "--busy-retry-s", "1"])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        text = " ".join(res.output.split())
        assert "RESOURCE_EXHAUSTED" in text and "retry in 0.15 s" in text and "--busy-retry-s" in text
        assert refuse.calls["Select"] >= 2
        n = refuse.calls["Select"]
        res = CliRunner().invoke(app, ["select", "--agent", r.address, "--budget", "2", "--strategy", "random",
                                       "--busy-retry-s", "0"])
        assert res.exit_code == 1 and refuse.calls["Select"] == n + 1
        assert "did not retry" in " ".join(res.output.split())
    finally:
        r.stop()
