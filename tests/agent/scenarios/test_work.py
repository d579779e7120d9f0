"""Work that can't run away: admission control (bounded concurrency and queue, RESOURCE_EXHAUSTED with a
retry hint, light calls never waiting behind heavy ones), cancellation on the client's deadline, on its
cancel and on shutdown (in process and for a ``shortlist serve`` process under SIGTERM), and the cache
of repeated identical Selects and PriorLabels."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent import cancel, client
from agent.admission import Admission, Busy, LaneThreads
from agent.cancel import CancelToken, DeadlineExceeded, ShuttingDown
from agent.config import WorkConfig
from agent.errors import RETRY_AFTER_KEY
from agent.params import ALWAYS_LIGHT, PriorEntry, StrategyEntry, prior_method
from agent.params import strategy as declare_strategy
from agent.pool import Pool, Priors, Selection
from agent.priors import PRIOR_METHODS
from agent.priors.calibration import calibrated
from agent.service import stop_server
from agent.strategies import STRATEGIES
from shortlist.v1 import agent_pb2
from tests.agent.admission_clock import FakeClock
from tests.agent.conftest import Running, make_samples, png, start
from tests.agent.slow import slow_prior, slow_strategy
from tests.agent.strategies.pools import blobs, make_pool
from tests.agent.test_cli import free_port


def wait_until(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


# ---- the admission controller alone ------------------------------------------------------------------

def test_admission_bounds_running_and_queued_and_hints_a_retry() -> None:
    adm = Admission(max_concurrent=1, max_queued=1)
    release = threading.Event()
    entered = threading.Event()
    outcomes: list[str] = []

    def hold(token: CancelToken) -> None:
        try:
            with adm.slot(token):
                entered.set()
                while not release.is_set():
                    token.check()
                    time.sleep(0.01)
            outcomes.append("done")
        except Exception as e:
            outcomes.append(type(e).__name__)

    running = CancelToken()
    threading.Thread(target=hold, args=(running,)).start()
    assert entered.wait(5)
    queued = CancelToken()
    waiter = threading.Thread(target=hold, args=(queued,))
    waiter.start()
    assert wait_until(lambda: adm.stats().queued == 1)
    with pytest.raises(Busy) as busy, adm.slot(CancelToken()):
        pass
    assert busy.value.retry_after_s is not None and busy.value.retry_after_s >= 0.1
    assert "max_concurrent=1" in str(busy.value)
    assert adm.stats().refused == 1
    queued.cancel()  # the client left while waiting: it leaves the queue
    waiter.join(5)
    assert outcomes == ["Cancelled"] and adm.stats().queued == 0
    adm.shutdown()  # cancels the running one and refuses new ones
    assert wait_until(lambda: adm.stats().running == 0)
    assert outcomes == ["Cancelled", "ShuttingDown"]
    with pytest.raises(ShuttingDown), adm.slot(CancelToken()):
        pass


def queued_call(adm: Admission, token: CancelToken, what: str, kind: str | None = None) -> tuple[threading.Thread,
                                                                                                list[BaseException]]:
    """A call of ``adm`` from a thread of its own, which may wait in the queue while the test advances a
    FakeClock: (the started thread, the exception the call ended with, once it has: [] while it runs)."""
    ended: list[BaseException] = []

    def call() -> None:
        try:
            with adm.slot(token, what, kind):
                pass
        except BaseException as e:
            ended.append(e)

    t = threading.Thread(target=call)
    t.start()
    return t, ended


def test_a_queued_call_leaves_the_queue_once_it_could_not_finish_in_time(caplog: pytest.LogCaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The running call is expected to take 0.25 s, so a call with 1 s left is queued (twice 0.25 + 0.25 fits);
    # the running one runs long (a running call past its estimate is expected to need a quarter of what it
    # ran more: 0.25 t at t s), and once 0.25 t + 0.25 > 1 - t, past t = 0.6 s, the queued one leaves with
    # RESOURCE_EXHAUSTED, 0.4 s before its deadline, instead of timing out. Admission's clock and the
    # deadline's are the test's: when it leaves is the rule's, not a wake-up's on a loaded machine.
    caplog.set_level(logging.DEBUG, logger="agent.admission")
    clock = FakeClock(monkeypatch, deadlines=True)
    adm = Admission(max_concurrent=1, max_queued=4, initial_estimate_s=0.25)
    with adm.slot(CancelToken()):
        t, ended = queued_call(adm, CancelToken.within(1.0), "Select 'x'")
        assert wait_until(lambda: adm.stats().queued == 1)
        clock.advance(0.55)  # 0.39 s expected (0.14 s left of the running one, then its own 0.25), 0.45 s left
        time.sleep(0.3)  # (its queue sees this clock within 0.1 s; whenever it looks, it stays)
        assert t.is_alive() and adm.stats().queued == 1 and not ended
        clock.advance(0.1)  # 0.41 s expected, 0.35 s left: it leaves
        t.join(10)
    assert not t.is_alive() and len(ended) == 1 and isinstance(ended[0], Busy)
    assert "Select 'x' would wait" in str(ended[0])
    assert "refused (it could no longer finish within its deadline once queued)" in caplog.text  # it had queued
    assert adm.stats().queued == 0 and adm.stats().running == 0 and adm.stats().refused_for_deadline == 1


def test_a_call_that_cannot_get_a_turn_within_its_deadline_is_refused_at_once(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.admission")
    clock = FakeClock(monkeypatch, deadlines=True)  # admission's and the deadlines' clock: the test's
    adm = Admission(max_concurrent=1, max_queued=8, initial_estimate_s=0.05)
    with adm.slot(CancelToken(), kind="slow"):
        clock.advance(0.3)
    assert adm.estimate("slow") == pytest.approx(0.3)  # learnt from the run
    assert adm.estimate("new kind") < 0.3  # a kind not seen yet gets the lane's mean
    with adm.slot(CancelToken(), kind="slow"):  # a free slot: always admitted, whatever its deadline
        # Expected: 0.3 s until the running one ends, then 0.3 s of its own: more than 0.2 s left.
        with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(0.2), "Select 'slow'", kind="slow"):
            pass
        # At once, by admission's rule, not from the queue.
        assert "slow refused (it would not finish within its deadline (its recent runs))" in caplog.text
        assert "once queued" not in caplog.text
        assert "needs a deadline of at least 2 s" in str(busy.value) and "Select 'slow'" in str(busy.value)
        assert busy.value.retry_after_s is None  # 2 x its own 0.3 s is over 0.2 s: waiting would not help
        assert adm.stats().refused_for_deadline == 1 and adm.stats().queued == 0
        # Without a deadline, or with enough of one, the call queues as before.
        done: list[float] = []

        def queued(token: CancelToken) -> None:
            with adm.slot(token, kind="slow"):
                done.append(time.monotonic())

        waiters = [threading.Thread(target=queued, args=(t,)) for t in (CancelToken(), CancelToken.within(30))]
        for w in waiters:
            w.start()
        assert wait_until(lambda: adm.stats().queued == 2)
        # Two queued ahead, each 0.3 s: a third with 0.8 s left would not get a turn in time.
        with pytest.raises(Busy), adm.slot(CancelToken.within(0.8), kind="slow"):
            pass
    for w in waiters:
        w.join(5)
    assert len(done) == 2 and adm.stats().refused_for_deadline == 2


# ---- the algorithms stop at their checkpoints ---------------------------------------------------------

X, Y = blobs(clusters=4, per_cluster=40, dim=8, spread=0.2, seed=1)
LABELED = np.array([0, 1, 40, 41, 80, 120])
# A strategy declared ``light_budget=ALWAYS_LIGHT`` (agent/params.py) is one pass over the candidates that answers
# in milliseconds whatever the pool or budget (random, audit, entropy, margin, least_confidence, das): no loop
# worth a checkpoint. Every other one must stop at one.
LOOPING = sorted(name for name, e in STRATEGIES.items() if e.light_budget != ALWAYS_LIGHT)


def check_stops_at_a_checkpoint(entry: StrategyEntry) -> None:
    """``entry`` run past its deadline stops with DeadlineExceeded; else the test fails saying what to do."""
    pool = make_pool(X, Y, LABELED, pretext_loss=np.ones(len(X), np.float32))
    with cancel.scope(CancelToken.within(0.0)):
        try:
            entry(pool, 20, np.random.default_rng(0), {})
        except DeadlineExceeded:
            return
    pytest.fail(f"strategy {entry.name!r} ran to its end past its deadline without stopping: call "
                "agent.cancel.checkpoint() in its loops (at least once per pass over the pool), or, if it is one "
                "pass over the candidates that answers in milliseconds at any budget, declare it so: "
                f"@strategy({entry.name!r}, ..., light_budget=ALWAYS_LIGHT)", pytrace=False)


@pytest.mark.parametrize("name", LOOPING)
def test_every_looping_strategy_stops_at_a_checkpoint(name: str) -> None:
    check_stops_at_a_checkpoint(STRATEGIES[name])


def test_a_strategy_without_a_checkpoint_is_told_what_to_do() -> None:
    @declare_strategy("no_checkpoint", needs="model")
    def no_checkpoint(pool: Pool, budget: int, rng: np.random.Generator,
                      params: Mapping[str, str]) -> Selection:
        rows = pool.candidates[:budget]
        return Selection(rows=np.asarray(rows, np.int64), scores=np.ones(len(rows)))

    with pytest.raises(pytest.fail.Exception) as failed:
        check_stops_at_a_checkpoint(no_checkpoint)
    assert "call agent.cancel.checkpoint() in its loops" in str(failed.value)
    assert "@strategy('no_checkpoint', ..., light_budget=ALWAYS_LIGHT)" in str(failed.value)


def check_prior_stops_at_a_checkpoint(entry: PriorEntry, calibrate: str) -> None:
    """``entry`` (a registered, calibration-wrapped prior method) run with ``calibrate`` under a cancelled
    token stops with Cancelled; else the test fails saying what to do. With calibrate=false nothing but the
    method itself runs (the calibration's fold loop checkpoints before the method when on, so a method
    without checkpoints passes only then)."""
    pool = make_pool(X, Y, LABELED)
    token = CancelToken()
    token.cancel()
    with cancel.scope(token):
        try:
            entry(pool, pool.candidates, np.random.default_rng(0), {"calibrate": calibrate})
        except cancel.Cancelled:
            return
    pytest.fail(f"prior method {entry.name!r} ran to its end (calibrate={calibrate}) under a cancelled call "
                "without stopping: call agent.cancel.checkpoint() in its loops (at least once per pass over the "
                "pool)", pytrace=False)


@pytest.mark.parametrize("calibrate", ["true", "false"])
@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_every_prior_method_stops_at_a_checkpoint(name: str, calibrate: str) -> None:
    check_prior_stops_at_a_checkpoint(PRIOR_METHODS[name], calibrate)


def test_a_prior_method_without_checkpoints_fails_the_check() -> None:
    """The check above is not empty: a method that never checkpoints fails it with calibrate=false (the
    calibration wrapper's own checkpoint, run first, stops it when calibrated)."""

    @prior_method("no_checkpoint")
    def no_checkpoint(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
        probs = np.full((len(rows), pool.num_classes), 1.0 / pool.num_classes, np.float32)
        return Priors(probs=probs, confidence=np.full(len(rows), 0.5, np.float32))

    entry = calibrated(no_checkpoint)
    check_prior_stops_at_a_checkpoint(entry, "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        check_prior_stops_at_a_checkpoint(entry, "false")
    assert "call agent.cancel.checkpoint() in its loops" in str(failed.value)


def test_a_long_greedy_loop_stops_soon_after_its_deadline() -> None:
    """A real strategy on a pool big enough to take many seconds (coreset picking every one of 20,000
    candidates, one matrix-vector product per pick) stops within a fraction of a second of its deadline."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pool = make_pool(x, np.zeros(len(x), np.int64), np.array([0]))
    t0 = time.monotonic()
    with cancel.scope(CancelToken.within(0.3)), pytest.raises(DeadlineExceeded):
        STRATEGIES["coreset"](pool, len(x), np.random.default_rng(0), {})
    assert time.monotonic() - t0 < 3.0


# ---- over gRPC ----------------------------------------------------------------------------------------

@pytest.fixture
def slow_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, "slow", slow_strategy)
    monkeypatch.setitem(PRIOR_METHODS, "slow", slow_prior)


@pytest.fixture
def small(tmp_path: Path, registry: Path, slow_registered: None) -> Running:  # type: ignore[misc]
    # No queue wait limit: these tests hold a call in the queue for as long as they look at it.
    r = start(tmp_path / "data", registry, work=WorkConfig(max_concurrent=1, max_queued=1, max_queue_wait_s=None))
    client.ingest(r.stub, make_samples(30, labels=6))
    yield r
    r.stop()


def slow_select(r: Running, seconds: float, timeout: float | None = None, seed: int = 0) -> agent_pb2.SelectReply:
    return r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="slow", seed=seed,
                                                 params={"seconds": str(seconds)}), timeout=timeout)


def test_deadline_returns_promptly_and_frees_the_slot(small: Running) -> None:
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        slow_select(small, 600, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 3
    # The server-side work stopped: its slot is free again soon after, and a new call runs.
    assert wait_until(lambda: small.agent.work.stats().running == 0, timeout=3)
    assert len(slow_select(small, 0, seed=1).selected) == 2


def test_client_cancel_stops_the_work(small: Running) -> None:
    call = small.stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="slow", params={"seconds": "600"}))
    assert wait_until(lambda: small.agent.work.stats().running == 1)
    call.cancel()
    assert wait_until(lambda: small.agent.work.stats().running == 0, timeout=3)


def test_overload_is_resource_exhausted_at_once_and_light_calls_do_not_wait(small: Running) -> None:
    running = small.stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="slow", params={"seconds": "600"}))
    waiting = small.stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="slow", seed=3,
                                                               params={"seconds": "600"}))
    assert wait_until(lambda: small.agent.work.stats().running == 1 and small.agent.work.stats().queued == 1)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        small.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="slow", params={"seconds": "1"}),
                               timeout=30).__next__()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent=1" in err.value.details() and "retry in about" in err.value.details()
    assert int(dict(err.value.trailing_metadata())["retry-after-ms"]) >= 100
    assert time.monotonic() - t0 < 2
    # Light calls answer while the heavy slots are taken.
    st = small.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=5)
    assert st.samples == 30
    reply = small.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id="s20", label="cat")]), timeout=5)
    assert reply.accepted == 1
    # So do light Selects (one pass over the candidates, or a small greedy budget): a lane of their own.
    for strategy in ("random", "margin", "coreset"):
        light = small.stub.Select(agent_pb2.SelectRequest(budget=3, strategy=strategy), timeout=10)
        assert len(light.selected) == 3
    few = list(small.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=["s20", "s21"]), timeout=10))
    assert [p.id for p in few] == ["s20", "s21"]
    for call in (running, waiting):
        call.cancel()
    assert wait_until(lambda: small.agent.work.stats().running == 0 and small.agent.work.stats().queued == 0)


def test_stop_server_cancels_heavy_work(tmp_path: Path, registry: Path, slow_registered: None) -> None:
    r = start(tmp_path / "data", registry)
    client.ingest(r.stub, make_samples(10))
    call = r.stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="slow", params={"seconds": "600"}))
    assert wait_until(lambda: r.agent.work.stats().running == 1)
    t0 = time.monotonic()
    r.channel.close()
    stop_server(r.server, r.agent, grace=30.0)
    assert time.monotonic() - t0 < 5
    assert call.done()


def test_shutdown_answers_at_once_without_waiting_for_a_computation_between_checkpoints() -> None:
    """A lane's computation writes nothing: at shutdown its call answers UNAVAILABLE at once and the work is
    abandoned (it stops at its next checkpoint), however long its step. Before shutdown, a call its client
    cancelled waits for its worker, so its slot is not free while the work runs on."""
    adm = Admission(max_concurrent=2, max_queued=0, threads=LaneThreads(nice=0))
    inside = [threading.Event(), threading.Event()]
    release = threading.Event()
    outcomes: dict[int, str] = {}

    ended: list[int] = []

    def compute(i: int) -> str:  # one long step: no checkpoint until released
        inside[i].set()
        try:
            release.wait(30)
            cancel.checkpoint()
            return "done"
        finally:
            ended.append(i)

    def call(i: int, token: CancelToken) -> None:
        try:
            outcomes[i] = adm.run(token, lambda: compute(i))
        except Exception as e:
            outcomes[i] = type(e).__name__

    left = CancelToken()
    threads = [threading.Thread(target=call, args=(i, t)) for i, t in enumerate((left, CancelToken()))]
    for t in threads:
        t.start()
    assert inside[0].wait(5) and inside[1].wait(5)
    left.cancel()  # its client left: the call waits for its worker to reach a checkpoint
    threads[0].join(0.2)
    assert threads[0].is_alive() and adm.stats().running == 2 and not outcomes
    adm.shutdown()
    for t in threads:
        t.join(5)
    assert outcomes == {0: "Cancelled", 1: "ShuttingDown"} and not ended  # answered while their work ran on
    release.set()  # the workers end at their checkpoint
    assert wait_until(lambda: sorted(ended) == [0, 1])


def test_sigterm_stops_a_busy_agent_process_within_seconds(tmp_path: Path, registry: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.agent.slow", "serve", "--data-dir", str(tmp_path / "d"),
                             "--models", str(registry), "--port", str(port), "--cpu",
                             "--max-queue-wait", "0"],  # the third call stays queued until the SIGTERM
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[3])
    try:
        stub = client.connect(f"127.0.0.1:{port}", timeout=60, starting=True)
        client.ingest(stub, make_samples(10))
        # First one in 600 s step with no checkpoint: the agent must not wait for it, neither in
        # stop_server's grace nor at the process's exit (which joined its thread: for the 600 s).
        calls = [stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="stuck", params={"seconds": "600"}))]
        time.sleep(0.3)  # it takes a slot first
        calls += [stub.Select.future(agent_pb2.SelectRequest(budget=2, strategy="slow", seed=i,
                                                             params={"seconds": "600"})) for i in range(2)]
        time.sleep(1.0)  # the heavy calls are running or queued
        assert not any(c.done() for c in calls)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 8
        for c in calls:
            err = c.exception(timeout=5)
            assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the cache ----------------------------------------------------------------------------------------

def test_repeated_select_and_prior_labels_come_from_the_cache(running: Running,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"select": 0, "prior": 0}
    real_select, real_prior = STRATEGIES["typiclust"], PRIOR_METHODS["knn"]

    def counted_select(*a, **k):  # type: ignore[no-untyped-def]
        counts["select"] += 1
        return real_select.fn(*a, **k)

    def counted_prior(*a, **k):  # type: ignore[no-untyped-def]
        counts["prior"] += 1
        return real_prior.fn(*a, **k)

    monkeypatch.setitem(STRATEGIES, "typiclust", StrategyEntry("typiclust", real_select.params, "", counted_select,
                                                                 needs=real_select.needs))
    monkeypatch.setitem(PRIOR_METHODS, "knn", PriorEntry("knn", real_prior.params, "", counted_prior))
    client.ingest(running.stub, make_samples(40, labels=6))

    def sel() -> agent_pb2.SelectReply:
        return running.stub.Select(agent_pb2.SelectRequest(budget=4, strategy="typiclust", seed=3,
                                                           params={"knn": "5"}))

    def pri() -> list[tuple[str, str]]:
        return [(p.id, p.label) for p in running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))]

    first, second = sel(), sel()
    assert counts["select"] == 1
    assert [s.id for s in first.selected] == [s.id for s in second.selected]
    # the same selection: recorded once (a client repeating a call cannot grow the database)
    assert first.selection_id == second.selection_id and len(running.agent.state.selections()) == 1
    nowhere = [running.stub.Select(agent_pb2.SelectRequest(budget=4, strategy="random", where={"site": "x"}))
               for _ in range(3)]  # an answer with nothing in it, polled: recorded once too
    assert not nowhere[0].selected and "nothing_selected" in nowhere[2].details
    assert len({r.selection_id for r in nowhere}) == 1 and len(running.agent.state.selections()) == 2
    p1, p2 = pri(), pri()
    assert counts["prior"] == 1 and p1 == p2
    # Another seed or params is another key; a new label invalidates both.
    running.stub.Select(agent_pb2.SelectRequest(budget=4, strategy="typiclust", seed=4, params={"knn": "5"}))
    assert counts["select"] == 2
    running.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id="s30", label="dog")]))
    sel()
    pri()
    assert counts == {"select": 3, "prior": 2}
    # So does a new sample.
    client.ingest(running.stub, make_samples(3, prefix="late"))
    sel()
    assert counts["select"] == 4


def test_large_images_decode_in_a_bounded_lane(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry,
              work=WorkConfig(decode_max_concurrent=1, decode_max_queued=0, large_image_pixels=1000))
    try:
        rng = np.random.default_rng(0)
        big = client.image_sample("big", png(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))  # 1,600 px
        small = client.image_sample("small", png(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)))  # 400 px
        with r.agent.decode_work.slot(CancelToken(), kind="held by the test"):  # the lane is full
            with pytest.raises(grpc.RpcError) as err:
                r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=[big])]), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-concurrent-decodes" in (err.value.details() or "")
            assert any(k == RETRY_AFTER_KEY for k, _ in err.value.trailing_metadata() or ())
            # Images at or under the threshold never wait for the lane.
            assert r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=[small])]), timeout=10).accepted == 1
        assert r.agent.status().samples == 1  # the refused Ingest stored nothing
        assert r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=[big])]), timeout=10).accepted == 1
        assert r.agent.decode_work.stats().running == 0
        # Thumbnails of large images share the lane (six at once of one huge PNG took 3 GB): refused while it
        # is full, a small image's thumbnail never waits, and a cached thumbnail needs no decode.
        with r.agent.decode_work.slot(CancelToken(), kind="held by the test"):
            with pytest.raises(grpc.RpcError) as err:
                r.stub.GetImages(agent_pb2.GetImagesRequest(ids=["big"], max_side=32), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-concurrent-decodes" in (err.value.details() or "")
            assert r.stub.GetImages(agent_pb2.GetImagesRequest(ids=["small"], max_side=32), timeout=10).images[0].data
        thumb = r.stub.GetImages(agent_pb2.GetImagesRequest(ids=["big"], max_side=32), timeout=10).images[0]
        assert (thumb.width, thumb.height) == (32, 32) and not thumb.error
        with r.agent.decode_work.slot(CancelToken(), kind="held by the test"):
            again = r.stub.GetImages(agent_pb2.GetImagesRequest(ids=["big"], max_side=32), timeout=10).images[0]
            assert again.data == thumb.data  # from the cache
    finally:
        r.stop()


def test_a_kind_slower_than_the_deadline_is_refused_even_with_a_slot_free(monkeypatch: pytest.MonkeyPatch) -> None:
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="as3l"):
        time.sleep(0.3)  # its recent run: ~0.3 s
    with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(0.1), kind="as3l"):
        pass
    assert "its recent runs" in str(busy.value) and adm.stats().refused_for_deadline == 1
    with adm.slot(CancelToken.within(5), kind="as3l"):  # enough deadline: runs
        pass
    with adm.slot(CancelToken.within(0.1), kind="never seen"):  # no estimate of its own yet: runs
        pass
    # Once the estimate is older than PROBE_AFTER_S, one call (only one) runs to measure it again.
    monkeypatch.setattr(Admission, "PROBE_AFTER_S", 0.2)
    time.sleep(0.3)
    # The probe holds one slot; a second call with a slot still free is refused (the probe is under way).
    with adm.slot(CancelToken.within(0.1), kind="as3l"), pytest.raises(Busy), \
            adm.slot(CancelToken.within(0.1), kind="as3l"):
        pass
    assert adm.stats().refused_for_deadline == 2


def test_a_run_cut_by_its_deadline_raises_its_kinds_estimate_to_what_it_ran() -> None:
    adm = Admission(max_concurrent=1, max_queued=1, initial_estimate_s=0.01)
    with adm.slot(CancelToken(), kind="k"):
        pass  # a quick first run: estimate ~0
    token = CancelToken.within(0.3)
    with pytest.raises(DeadlineExceeded), adm.slot(token, kind="k"):
        while True:
            token.check()
            time.sleep(0.01)
    assert adm.estimate("k") >= 0.3  # not 0.8 * 0 + 0.2 * 0.3


# ---- heavy work in threads of its own, and estimates at the CPU share calls get now ---------------------

def spin(cpu_s: float) -> None:
    """Use ``cpu_s`` CPU seconds of this thread."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def throttled(token: CancelToken, share: float, step_s: float = 0.01) -> None:
    """CPU-bound work that gets ``share`` CPU seconds per wall second (or less on a busy machine), as a
    niced call does while the cores are saturated, until ``token`` is cancelled."""
    while not token.cancelled:
        spin(step_s * share)
        time.sleep(step_s * (1 - share))


@contextmanager
def heavy_call(adm: Admission, token: CancelToken, share: float, kind: str) -> Iterator[threading.Event]:
    """Run ``throttled(token, share)`` as a call of ``kind`` in ``adm``'s heavy lane, from a thread of its own,
    for the body of the ``with``; yields an event set once the work has begun in its lane thread. On leaving,
    ``token`` is cancelled and the thread joined (up to 5 s)."""
    started = threading.Event()

    def work() -> None:
        started.set()
        throttled(token, share)

    t = threading.Thread(target=lambda: adm.run(token, work, kind=kind))
    t.start()
    try:
        yield started
    finally:
        token.cancel()
        t.join(5)


def test_heavy_lane_work_runs_niced_with_one_openmp_thread_and_the_callers_token() -> None:
    import sklearn.cluster  # noqa: F401  # loads scikit-learn's OpenMP runtime (libgomp)
    from threadpoolctl import threadpool_info

    def inside() -> tuple[int, str, CancelToken | None, list[int]]:
        return (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), threading.current_thread().name,
                cancel.current(), [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"])

    caller_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    adm = Admission(max_concurrent=2, max_queued=2, threads=LaneThreads(nice=10, openmp_threads=1))
    token = CancelToken()
    nice, thread, current, openmp = adm.run(token, inside, "Select 'k'")
    assert thread.startswith("heavy-work") and nice == min(19, caller_nice + 10)
    assert current is token and openmp and set(openmp) == {1}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller_nice  # the caller is untouched
    # OpenMP's limit is per thread: this thread keeps its own.
    assert all(i["num_threads"] >= 1 for i in threadpool_info() if i["user_api"] == "openmp")
    # Errors and cancellation come back to the caller; the slot is free after.
    with pytest.raises(ValueError):
        adm.run(CancelToken(), lambda: int("x"))
    stopped = CancelToken()
    stopped.cancel()
    with pytest.raises(cancel.Cancelled):
        adm.run(stopped, lambda: cancel.checkpoint())
    assert adm.stats().running == 0
    # Shut down between a call's admission and its hand-over to a worker (the pool is already closed, the
    # slot not yet): UNAVAILABLE, not a RuntimeError from the thread pool.
    assert adm._pool is not None
    adm._pool.shutdown()
    with pytest.raises(ShuttingDown):
        adm.run(CancelToken(), lambda: 1)
    assert adm.stats().running == 0
    adm.shutdown()


def test_thread_limits_come_from_controllers_kept_until_a_module_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import sklearn.cluster  # noqa: F401  # loads scikit-learn's OpenMP runtime (libgomp)
    from threadpoolctl import threadpool_info

    from agent import threads

    def openmp() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"}

    modules = dict(sys.modules)  # what threads.limited sees as imported: this test's, not other threads' imports
    monkeypatch.setattr(threads, "sys", types.SimpleNamespace(modules=modules))
    # None kept from earlier tests: one kept for nearly REFRESH_S would be rebuilt between the calls below.
    monkeypatch.setattr(threads, "_kept", {})
    before = openmp()
    with threads.limited(1, "openmp"):
        assert openmp() == {1}  # as threadpool_limits(limits=1, user_api="openmp")
    assert openmp() == before  # restored
    kept = threads._kept["openmp"][2]
    with threads.limited(1, "openmp"):
        assert openmp() == {1}
    assert threads._kept["openmp"][2] is kept  # no new scan of the libraries
    modules["a_module_imported_since"] = types.ModuleType("a_module_imported_since")  # it may load a library
    with threads.limited(1, "openmp"):
        assert openmp() == {1}
    assert threads._kept["openmp"][2] is not kept
    kept = threads._kept["openmp"][2]
    monkeypatch.setattr(threads, "REFRESH_S", -1.0)  # (as REFRESH_S after the last build): rebuilt, no import
    with threads.limited(1, "openmp"):
        assert openmp() == {1}
    assert threads._kept["openmp"][2] is not kept


def test_the_agents_heavy_selects_run_in_the_heavy_lane_threads(tmp_path: Path, registry: Path,
                                                               slow_registered: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.agent import slow

    names: list[str] = []
    monkeypatch.setattr(slow, "_work", lambda seconds: names.append(threading.current_thread().name))
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(30, labels=6))
        assert len(slow_select(r, 0).selected) == 2
        assert names and names[0].startswith("heavy-work")
        assert r.agent.work.threads == WorkConfig().heavy_threads
    finally:
        r.stop()


def test_a_kinds_estimate_follows_the_cpu_share_running_calls_get_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Admission, "EWMA", 1.0)  # the newest measurement is the estimate: no mixing to reason about
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(0.1, cpu=0.1)  # alone: 0.1 CPU s in 0.1 s
    alone = adm.estimate("k")
    assert alone == pytest.approx(0.1)
    # A CPU-bound call running at a twentieth of a core: "k" would take 2 s now, not its 0.1 s (and 4 s at
    # the share each would get once it ran too).
    with adm.slot(CancelToken(), kind="busy"):
        clock.advance(0.5, cpu=0.025)  # measured for a while
        assert adm.estimate("k") == pytest.approx(2.0)
        with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(1.0), "Select 'k'", kind="k"):
            pass  # a slot is free, but the call could not finish in its 1 s
        assert "CPU share" in str(busy.value) and "take about 4.0 s" in str(busy.value)
        # A kind never seen is expected at the lane's mean CPU at that share: refused the same way.
        with pytest.raises(Busy), adm.slot(CancelToken.within(0.5), "Select 'new'", kind="new"):
            pass
        assert adm.stats().refused_for_deadline == 2
    # Right after, the lane's recent calls still say a twentieth of a core: refused at once ...
    with pytest.raises(Busy), adm.slot(CancelToken.within(1.0), kind="k"):
        pass
    # ... until that measure (and "k"'s own) is older than PROBE_AFTER_S: then the call runs and measures.
    monkeypatch.setattr(Admission, "PROBE_AFTER_S", 0.2)
    clock.advance(0.3)
    with adm.slot(CancelToken.within(1.0), kind="k"):
        clock.advance(0.01, cpu=0.01)
    assert adm.stats().refused_for_deadline == 3


def test_a_running_call_bounds_its_kinds_estimate_from_below() -> None:
    # "k" took ~0 s before; a call of "k" now running has used 0.3 CPU s: a new one needs at least that.
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        spin(0.01)
    # Timed from before the call starts: its 0.3 CPU s take at least 0.3 s of wall time, whenever this thread
    # gets the CPU back (timed from `started`, a loaded machine that kept this thread waiting while the call ran
    # saw the estimate at 0.3 already: CI, 63 us).
    before = time.monotonic()
    with heavy_call(adm, CancelToken(), 1.0, kind="k") as started:
        assert started.wait(5)
        assert wait_until(lambda: adm.estimate("k") >= 0.3, timeout=10)
        assert time.monotonic() - before >= 0.25


def test_no_call_waits_in_the_queue_longer_than_the_lanes_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall clock: the waits are the test's, not the machine's
    adm = Admission(max_concurrent=1, max_queued=4, max_wait_s=0.3)
    with adm.slot(CancelToken(), kind="long"):
        clock.advance(0.6)  # "long" takes 0.6 s
    with adm.slot(CancelToken(), kind="long"):
        # Expected to wait 0.6 s for the running one: more than 0.3 s, refused at once (no deadline needed):
        # before it queued ("would wait", not "waited").
        with pytest.raises(Busy) as busy, adm.slot(CancelToken(), "Select 'x'"):
            pass
        assert "Select 'x' would wait about 0.6 s" in str(busy.value)
        assert "queue wait limit of 0.3 s" in str(busy.value)
    with adm.slot(CancelToken(), kind="short"):
        pass  # "short" takes 0 s
    with adm.slot(CancelToken(), kind="short"):
        # Expected to wait 0 s, so it queues; the running one takes longer than that: it leaves once it has
        # waited 0.3 s (on the test's clock).
        t, ended = queued_call(adm, CancelToken(), "Select 'y'")
        assert wait_until(lambda: adm.stats().queued == 1)
        clock.advance(0.2)
        time.sleep(0.3)  # (its queue sees this clock within 0.1 s; whenever it looks, it has waited 0.2 s)
        assert t.is_alive() and adm.stats().queued == 1 and not ended
        clock.advance(0.2)
        t.join(10)
    assert not t.is_alive() and len(ended) == 1 and isinstance(ended[0], Busy)
    assert "Select 'y' waited 0.4 s" in str(ended[0])
    assert adm.stats().queued == 0 and adm.stats().refused == 2


def test_with_nothing_measured_lately_a_lane_samples_the_cpu_share_instead_of_running_blind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Admission, "EWMA", 1.0)
    adm = Admission(max_concurrent=2, max_queued=2, threads=LaneThreads())
    share = adm._measure_share()  # a thread at the lane's niceness, hashing for SAMPLE_S
    assert share is not None and 0.0 < share <= 1.05
    adm.run(CancelToken(), lambda: spin(0.1), kind="k")  # "k": ~0.1 CPU s
    monkeypatch.setattr(Admission, "PROBE_AFTER_S", 0.2)
    time.sleep(0.3)  # "k"'s estimate and the lane's recent share are stale now
    samples: list[float] = []

    def starved() -> float:  # the machine is saturated: a lane thread would get a hundredth of a core
        samples.append(time.monotonic())
        return 0.01

    monkeypatch.setattr(adm, "_measure_share", starved)
    with pytest.raises(Busy) as busy:  # "k" would take ~10 s: refused at once, not let through to measure
        adm.run(CancelToken.within(1.0), lambda: None, "Select 'k'", kind="k")
    assert "CPU share" in str(busy.value) and len(samples) == 1
    with pytest.raises(Busy):  # the sample stands for SAMPLE_VALID_S: not taken again
        adm.run(CancelToken.within(1.0), lambda: None, kind="k")
    assert len(samples) == 1
    # Without a deadline nothing is estimated or sampled: the call runs.
    assert adm.run(CancelToken(), lambda: 7, kind="k") == 7 and len(samples) == 1
    adm.shutdown()


def test_a_call_that_would_slow_a_running_one_past_its_deadline_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Admission, "EWMA", 1.0)
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="a"):
        clock.advance(0.6, cpu=0.6)  # "a": 0.6 CPU s
    with adm.slot(CancelToken(), kind="b"):
        clock.advance(0.01, cpu=0.01)  # "b": 0.01 CPU s
    # An "a" running at a quarter of a core (the machine is saturated) with 3 s to go: 2.1 s of work left.
    token = CancelToken()
    with adm.slot(token, kind="a"):
        token.deadline = time.monotonic() + 3.0  # (set once running: its own admission is not under test)
        clock.advance(0.3, cpu=0.075)
        # "b" alone would fit easily, but sharing the CPU left (an eighth of a core each) would leave "a"
        # 4.2 s of work for its 3 s.
        with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(30), "Select 'b'", kind="b"):
            pass
        assert "would slow the 1 running" in str(busy.value) and "retry in about 4200 ms" in str(busy.value)
        # A call with no deadline of its own is held to the same rule (it is the running one's deadline).
        with pytest.raises(Busy), adm.slot(CancelToken(), kind="b"):
            pass
    with adm.slot(CancelToken.within(30), kind="b"):  # nothing running: it runs
        pass


def test_the_lanes_share_drops_at_once_to_a_slower_call_and_rises_by_the_running_mean(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(0.2, cpu=0.2)  # alone: "k" 0.2 CPU s at a full core
    with adm.slot(CancelToken(), kind="slow"):
        clock.advance(0.6, cpu=0.03)  # a twentieth of a core
    # The call that just ended got a twentieth of a core: "k" is expected at 4 s now, not at a mean still
    # weighted by the quiet run (0.8 * 1 + 0.2 * 0.05 -> 0.25 s), so a 1 s deadline is refused at once.
    assert adm._share == pytest.approx(0.05)
    assert adm.estimate("k") == pytest.approx(4.0)
    with pytest.raises(Busy), adm.slot(CancelToken.within(1.0), kind="k"):
        pass
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(0.2, cpu=0.2)  # a full core again: the share rises by the running mean only
    assert adm._share == pytest.approx(0.2 * 1 + 0.8 * 0.05)
    assert adm.estimate("k") == pytest.approx(0.2 / 0.24)  # ~0.83 s, not back to 0.2 s


def test_a_kinds_cpu_estimate_rises_at_once_to_a_longer_run_and_falls_by_the_running_mean(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(0.05, cpu=0.05)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(0.5, cpu=0.5)  # "k" costs more now (as3l as the labelled set grows): not the mean's 0.14 CPU s
    assert adm._kind_cpu["k"] == pytest.approx(0.5)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(0.05, cpu=0.05)
    assert adm._kind_cpu["k"] == pytest.approx(0.8 * 0.5 + 0.2 * 0.05)  # down by the running mean


def test_under_contention_a_call_needs_three_times_its_expected_length_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(1.0, cpu=1.0)  # "k": 1 CPU s
    with adm.slot(CancelToken(), kind="busy"):
        clock.advance(0.6, cpu=0.3)  # half a core
    own = adm.estimate("k")
    assert own == pytest.approx(2.0)  # 1 CPU s at the half a core the last call got
    with pytest.raises(Busy), adm.slot(CancelToken.within(2.5 * own), kind="k"):
        pass  # 2.5x its expected length left: twice would fit, three times does not
    with adm.slot(CancelToken.within(3.5 * own), kind="k"):  # (deadlines keep the real clock: 1 s to spare)
        pass


def test_a_call_arriving_beside_one_just_admitted_waits_to_see_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Admission, "EWMA", 1.0)
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="a"):
        spin(0.3)  # "a": ~0.3 CPU s, at about a full core
    # An "a" starts and gets a twentieth of a core (the load began after the quiet run): a second "a"
    # arriving at once is not admitted on the quiet run's share, but after MIN_LIVE_S, on the running
    # one's (~6 s expected, twice that over its 3 s).
    with heavy_call(adm, CancelToken.within(30), 0.05, kind="a") as started:
        assert started.wait(5)
        (running,) = list(adm._running.values())
        t0 = time.monotonic()
        with pytest.raises(Busy), adm.slot(CancelToken.within(3.0), kind="a"):
            pass
        refused = time.monotonic()
        # Refused once the running call had lived MIN_LIVE_S (measured from its start, not from this call's: a
        # test thread that woke late waits less, 0.05 s was not assured), on the share it then saw, not at its
        # 3 s deadline (2.5 s: room for a loaded machine's late wake-ups, where 0.5 s had none).
        assert refused - running.start >= Admission.MIN_LIVE_S
        assert refused - t0 < 2.5


def test_light_prior_labels_run_in_threads_of_their_own_below_light_selects(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(30, labels=6))
        seen: list[tuple[str, int]] = []
        lane = r.agent.light_prior_work
        real_run = lane.run

        def run(token, fn, *a, **kw):  # type: ignore[no-untyped-def]
            def inside():  # type: ignore[no-untyped-def]
                seen.append((threading.current_thread().name,
                             os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
                return fn()
            return real_run(token, inside, *a, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lane, "run", run)
            list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=["s20", "s21"]), timeout=30))
        [(name, nice)] = seen
        assert name.startswith("light-work") and nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
        assert r.agent.light_prior_work.threads == WorkConfig().light_prior_threads
    finally:
        r.stop()


def test_a_kinds_estimate_grows_with_the_work_size_it_was_measured_at() -> None:
    """The first load on a fresh agent: typiclust measured alone at 50 labels (k-means k = 60) cost 0.6 CPU s,
    then the load's labels took k to 500 within seconds and one admitted at that estimate cost 3.6 CPU s
    (docs/reliability.md, Load). A call of a larger work size is expected to cost that much more."""
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="typiclust", size=60.0):
        spin(0.01)
    assert adm._kind_size["typiclust"] == 60.0
    # No timing in what follows: the kind's CPU seconds and the lane's share set to known values.
    adm._kind_cpu["typiclust"], adm._kind_s["typiclust"] = 1.0, 1.0
    adm._share, adm._share_at = 0.2, time.monotonic()
    assert adm.estimate("typiclust", 60.0) == pytest.approx(5.0)  # 1 CPU s at a fifth of a core
    assert adm.estimate("typiclust", 30.0) == pytest.approx(5.0)  # never below what was measured
    assert adm.estimate("typiclust") == pytest.approx(5.0)  # size unknown: as measured
    assert adm.estimate("typiclust", 500.0) == pytest.approx(5.0 * 500 / 60)
    # 3 x 5 s fits a 30 s deadline (contended: share < CONTENDED); 3 x 41.7 s does not: refused at once.
    with adm.slot(CancelToken.within(30.0), kind="typiclust", size=60.0):
        pass
    adm._kind_cpu["typiclust"], adm._share, adm._share_at = 1.0, 0.2, time.monotonic()
    adm._kind_size["typiclust"] = 60.0
    with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(30.0), kind="typiclust", size=500.0):
        pass
    assert "its recent runs" in str(busy.value) and adm.stats().refused_for_deadline == 1
    # A measured run at the larger size is the new reference.
    with adm.slot(CancelToken(), kind="typiclust", size=500.0):
        spin(0.01)
    assert adm._kind_size["typiclust"] == 500.0


def test_a_strategys_work_size_follows_its_kmeans_clusters() -> None:
    typiclust, margin = STRATEGIES["typiclust"], STRATEGIES["margin"]
    assert typiclust.work_size(50_000, 50, 10, {}) == 50_000 * 60
    assert typiclust.work_size(50_000, 4_000, 10, {}) == 50_000 * 500  # k capped at 500
    for name in ("as3l", "kmedoids"):
        assert STRATEGIES[name].work_size(50_000, 4_000, 10, {}) == 50_000 * 500
    assert margin.work_size(50_000, 4_000, 10, {}) == 50_000  # rows only
