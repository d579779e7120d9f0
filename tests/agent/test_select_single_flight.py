"""Identical Selects in flight at once (concurrent clients, or a client's retry after its own deadline) make one
computation and one recorded selection (docs/agent.md, "Cache"); different Selects do not wait for each other."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import client
from agent.admission import Admission, Busy
from agent.cancel import CancelToken, ShuttingDown
from agent.config import WorkConfig
from agent.limits import Limits
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start

SLOW_SEED = 1234


def slowed(r: Running, seconds: float) -> tuple[list[int], threading.Event]:
    """Make the strategy of a Select with seed SLOW_SEED take ``seconds`` longer; the count of strategy runs of that
    seed, and an event set when the first such run has ended."""
    runs: list[int] = []
    ended = threading.Event()
    real = r.agent._strategy_round

    def round_(run: Any, *args: Any) -> Any:
        if run.seed == SLOW_SEED:
            runs.append(1)
            time.sleep(seconds)
            try:
                return real(run, *args)
            finally:
                ended.set()
        return real(run, *args)

    r.agent._strategy_round = round_  # type: ignore[method-assign,assignment]
    return runs, ended


def recorded(r: Running) -> int:
    with sqlite3.connect(r.data / "state.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM selections").fetchone()[0])


def select(r: Running, seed: int = SLOW_SEED, timeout: float | None = None) -> agent_pb2.SelectReply:
    return r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="typiclust", seed=seed), timeout=timeout)


def test_identical_concurrent_selects_share_one_run_and_one_record(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(40, labels=4))
        runs, _ = slowed(r, 0.8)
        before = recorded(r)
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: select(r), range(6)))
        assert len({x.selection_id for x in replies}) == 1 and replies[0].selection_id
        assert len({tuple(s.id for s in x.selected) for x in replies}) == 1 and len(replies[0].selected) == 3
        assert len(runs) == 1 and recorded(r) == before + 1
        assert select(r).selection_id == replies[0].selection_id  # and a later repeat: the cache, as before
        assert len(runs) == 1 and recorded(r) == before + 1
    finally:
        r.stop()


def test_a_retry_after_its_own_deadline_waits_for_the_first_and_others_do_not_wait(tmp_path: Path,
                                                                                     registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(40, labels=4))
        runs, ended = slowed(r, 1.5)
        before = recorded(r)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(select, r)
            time.sleep(0.3)  # the first is computing
            with pytest.raises(grpc.RpcError) as e:
                select(r, timeout=0.3)  # waits for the first, past its own deadline: nothing of its own runs
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            other = select(r, seed=5)  # a different Select is answered while the first still runs
            assert other.selection_id and not ended.is_set()
            retry = select(r)  # the client's retry, the first still running: its answer
            assert retry.selection_id == first.result().selection_id
        assert len(runs) == 1 and recorded(r) == before + 2  # the first and the other one
    finally:
        r.stop()


def slowed_in_slot(r: Running, seconds: float) -> tuple[list[int], threading.Event]:
    """Make every typiclust run take ``seconds`` longer inside its admission slot (the lane's ``run``, as a long
    k-means does); the count of such runs, and an event set once the first is in its slot."""
    runs: list[int] = []
    entered = threading.Event()
    real = r.agent.work.run

    def run(token: Any, fn: Any, what: str = "this request", **kw: Any) -> Any:
        if "typiclust" not in what:
            return real(token, fn, what, **kw)

        def slow() -> Any:
            runs.append(1)
            entered.set()
            time.sleep(seconds)
            return fn()

        return real(token, slow, what, **kw)

    r.agent.work.run = run  # type: ignore[method-assign,assignment]
    return runs, entered


def test_waiters_take_queue_places_and_the_rest_are_busy_so_getstatus_keeps_a_thread(tmp_path: Path,
                                                                                      registry: Path) -> None:
    # A small agent: 1 heavy slot, 2 queue places, and a gRPC pool of 21 threads (agent/service.py sizes it for
    # the lanes' running and queued calls). Waiters outside any queue had taken every thread: GetStatus timed out.
    work = WorkConfig(max_concurrent=1, max_queued=2, light_max_concurrent=1, light_max_queued=1,
                      decode_max_concurrent=1, decode_max_queued=0)
    r = start(tmp_path / "data", registry, workers=2, work=work,
              limits=Limits(max_server_streams=1, max_ingest_streams=1))
    try:
        client.ingest(r.stub, make_samples(40, labels=4))
        runs, entered = slowed_in_slot(r, 3.0)
        before = recorded(r)
        request = agent_pb2.SelectRequest(budget=3, strategy="typiclust", seed=SLOW_SEED)
        first = r.stub.Select.future(request, timeout=20)
        assert entered.wait(10)  # the first is computing, in the lane's one slot
        n = 40
        others = [r.stub.Select.future(request, timeout=20) for _ in range(n)]
        time.sleep(0.3)
        t0 = time.monotonic()
        r.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=2.0)  # DEADLINE_EXCEEDED without the fix
        assert time.monotonic() - t0 < 1.5
        ok, busy = [first.result().selection_id], []
        for f in others:
            try:
                ok.append(f.result().selection_id)
            except grpc.RpcError as e:
                busy.append(e)
        assert len(ok) == 1 + 2 and len(set(ok)) == 1 and ok[0]  # the first and the two queue places: one answer
        assert len(busy) == n - 2
        for refused in busy:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = refused.details() or ""
            assert details.startswith("the agent is busy: 1 heavy requests") and "2 queued" in details
            assert "retry in about" in details
            assert any(k == "retry-after-ms" for k, _ in refused.trailing_metadata() or ())
        assert len(runs) == 1 and recorded(r) == before + 1
    finally:
        r.stop()


def test_a_leader_that_raises_leaves_no_waiter_hanging(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(40, labels=4))
        runs: list[int] = []
        real = r.agent._strategy_round

        def round_(run: Any, *args: Any) -> Any:
            runs.append(1)
            if len(runs) == 1:
                time.sleep(0.8)
                raise RuntimeError("a strategy bug")
            return real(run, *args)

        r.agent._strategy_round = round_  # type: ignore[method-assign,assignment]
        before = recorded(r)
        request = agent_pb2.SelectRequest(budget=3, strategy="typiclust", seed=SLOW_SEED)
        first = r.stub.Select.future(request, timeout=20)
        time.sleep(0.3)  # the first is computing
        waiters = [r.stub.Select.future(request, timeout=20) for _ in range(4)]
        with pytest.raises(grpc.RpcError) as e:
            first.result()
        assert e.value.code() == grpc.StatusCode.INTERNAL
        ids = {f.result(timeout=10).selection_id for f in waiters}  # one of them ran it, the others waited for it
        assert len(ids) == 1 and ids.pop()
        assert len(runs) == 2 and recorded(r) == before + 1
    finally:
        r.stop()


def test_a_leader_cancelled_by_its_client_leaves_the_work_to_a_waiter(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(40, labels=4))
        runs, _ = slowed(r, 1.0)
        before = recorded(r)
        request = agent_pb2.SelectRequest(budget=3, strategy="typiclust", seed=SLOW_SEED)
        first = r.stub.Select.future(request, timeout=20)
        time.sleep(0.3)  # the first is computing
        waiter = r.stub.Select.future(request, timeout=20)
        time.sleep(0.2)
        first.cancel()
        assert waiter.result(timeout=10).selection_id  # it ran the Select itself
        assert len(runs) == 2 and recorded(r) == before + 1
    finally:
        r.stop()


def test_parked_calls_count_against_the_queue_and_are_cancelled_at_shutdown() -> None:
    lane = Admission(max_concurrent=1, max_queued=2)
    a, b, c, running = CancelToken(), CancelToken(), CancelToken(), CancelToken()
    with lane.park(a) as pa, lane.park(b) as pb, lane.park(c) as pc:
        assert (pa, pb, pc) == (True, True, False)  # two places, then none
        # a free slot is still taken, but no call can queue
        with lane.slot(running, "a Select"), pytest.raises(Busy, match=r"running and 2 queued"), \
                lane.slot(CancelToken(), "another Select"):
            pass
        lane.shutdown()
        assert a.cancelled and b.cancelled and not c.cancelled  # c held no place
    with pytest.raises(ShuttingDown), lane.park(CancelToken()):
        pass
