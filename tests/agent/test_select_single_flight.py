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
