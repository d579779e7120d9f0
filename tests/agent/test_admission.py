"""Admission's estimate of a kind it has never measured (agent/admission.py, "Size-aware estimates"): a
strategy's declared prior CPU seconds for the call's size stand in until a run of the kind is measured,
scaled by how much slower than declared the lane's calls have run; no timing in these tests: the lane's
CPU share and the work's CPU seconds are set or injected."""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import pytest

from agent import admission, client
from agent.admission import Admission, Busy
from agent.cancel import Cancelled, CancelToken
from agent.errors import DeadlineExceeded, InvalidArgument
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES
from agent.strategies._common import KMEANS_CPU_PER_UNIT
from shortlist.v1 import agent_pb2
from tests.agent.admission_clock import FakeClock
from tests.agent.conftest import make_samples, start


def lane_with_share(share: float) -> Admission:
    """A lane (no threads of its own) whose calls got ``share`` of a core just now (as after a finished call)."""
    adm = Admission(max_concurrent=2, max_queued=2)
    adm._share, adm._share_at = share, time.monotonic()
    return adm


def test_a_kind_never_measured_is_expected_at_its_prior_for_its_size() -> None:
    # A first call on 50,000 rows at k = 500 (2.5e7 row-clusters) with a prior of 7.5 CPU s: 3e-7 per
    # row-cluster, this test's figure (typiclust declares KMEANS_CPU_PER_UNIT, 5e-7: 12.5 CPU s).
    adm = lane_with_share(1.0)
    assert adm.estimate("Select 'typiclust'", 2.5e7, prior_cpu_s=7.5) == pytest.approx(7.5)
    assert adm.estimate("Select 'typiclust'", 2.5e7) == pytest.approx(1.0)  # no prior: the lane's mean, as before
    # The machine idle (a full core): 2 x 7.5 s fits a 30 s deadline, so it runs, although nothing was measured.
    with adm.slot(CancelToken.within(30.0), kind="Select 'typiclust'", size=2.5e7, prior_cpu_s=7.5):
        pass
    # Under load (a fifth of a core), a kind still never measured: 37.5 s expected, 3x that over 30 s:
    # refused at once, saying why, instead of being admitted at the lane's 1 s and running to its deadline.
    adm = lane_with_share(0.2)
    with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(30.0), "Select 'as3l'", kind="Select 'as3l'",
                                               size=2.5e7, prior_cpu_s=7.5):
        pass  # (a slot free: refused at admission, nothing to wait for)
    # Too long for its deadline by itself: no retry hint (a retry after 100 ms would be refused again), the
    # deadline it needs instead (37.5 s x 3).
    assert busy.value.retry_after_s is None and "needs a deadline of at least 113 s" in str(busy.value)
    assert "its declared cost at its size" in str(busy.value) and adm.stats().refused_for_deadline == 1
    # The same kind at a small size (k = 60: 0.9 CPU s, 4.5 s at a fifth of a core, 13.5 s with the 3x margin) runs.
    with adm.slot(CancelToken.within(30.0), kind="Select 'as3l'", size=3e6, prior_cpu_s=0.9):
        pass


def test_with_no_size_information_a_kind_never_measured_behaves_as_before() -> None:
    # No prior: a lane with no history lets the call run to measure it, whatever its deadline ...
    adm = Admission(max_concurrent=2, max_queued=2, initial_estimate_s=100.0)
    with adm.slot(CancelToken.within(1.0), kind="new", size=2.5e7):
        pass
    # ... while a prior is judged as soon as the share is known (even with nothing of the lane measured).
    adm = Admission(max_concurrent=2, max_queued=2)
    adm._sampled, adm._sampled_at = 0.1, time.monotonic()  # a sample: a tenth of a core
    with pytest.raises(Busy), adm.slot(CancelToken.within(30.0), kind="new", size=2.5e7, prior_cpu_s=7.5):
        pass
    with adm.slot(CancelToken.within(30.0), kind="new", size=2.5e7):  # no prior, no history: runs
        pass


def test_a_kinds_own_measurement_replaces_its_prior(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission._Run, "cpu", lambda self: 0.5)  # every run used 0.5 CPU s
    adm = lane_with_share(1.0)
    with adm.slot(CancelToken(), kind="k", size=100.0, prior_cpu_s=2.0):
        pass
    assert adm.estimate("k", 100.0, prior_cpu_s=2.0) == pytest.approx(0.5)  # measured: the prior no longer counts
    assert adm.estimate("k", 400.0, prior_cpu_s=8.0) == pytest.approx(2.0)  # scaled by size from its run


def test_priors_of_kinds_not_measured_yet_follow_how_much_slower_than_declared_the_lane_ran(
        monkeypatch: pytest.MonkeyPatch) -> None:
    used = {"cpu": 3.0}
    monkeypatch.setattr(admission._Run, "cpu", lambda self: used["cpu"])
    adm = lane_with_share(1.0)
    # "a" declared 1 CPU s and took 3: this machine (or these embeddings) is 3x slower than declared.
    with adm.slot(CancelToken(), kind="a", size=10.0, prior_cpu_s=1.0):
        pass
    assert adm.estimate("b", 10.0, prior_cpu_s=4.0) == pytest.approx(12.0)
    # 2 x 12 s no longer fits 20 s: "b", never measured, is refused on an idle lane at its scaled prior.
    with pytest.raises(Busy), adm.slot(CancelToken.within(20.0), kind="b", size=10.0, prior_cpu_s=4.0):
        pass
    # Faster than declared: down by the running mean only (0.8 * 3 + 0.2 * 0.5), never below 1.
    used["cpu"] = 0.5
    with adm.slot(CancelToken(), kind="a", size=10.0, prior_cpu_s=1.0):
        pass
    assert adm._slower == pytest.approx(2.5)
    for _ in range(30):
        with adm.slot(CancelToken(), kind="a", size=10.0, prior_cpu_s=1.0):
            pass
    assert adm._slower == 1.0
    assert adm.estimate("b", 10.0, prior_cpu_s=4.0) == pytest.approx(4.0)


def test_a_kind_judged_by_its_scaled_prior_gets_one_probe_once_the_factor_is_older_than_probe_after_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    # "a" declared 1 CPU s and took 14 (unusual data): every prior is now expected at 14x.
    with adm.slot(CancelToken(), kind="a", size=10.0, prior_cpu_s=1.0):
        clock.advance(14.0, cpu=14.0)
    assert adm._slower == pytest.approx(14.0)

    def idle() -> None:  # the lane's sample says a full core (the heavy lane samples when nothing runs)
        adm._sampled, adm._sampled_at = 1.0, clock.now

    def b(token: CancelToken | None = None) -> AbstractContextManager[None]:
        """A call of "b", never measured, that declares 4 CPU s: 2 x 4 fits 30 s, 2 x 4 x 14 does not."""
        return adm.slot(token or CancelToken.within(30.0), "Select 'b'", kind="b", size=10.0, prior_cpu_s=4.0)

    # Within PROBE_AFTER_S of the run that set the factor: refused on an idle lane.
    clock.advance(Admission.PROBE_AFTER_S - 1.0)
    idle()
    with pytest.raises(Busy) as busy, b():
        pass
    assert "its declared cost at its size" in str(busy.value)
    # Older than that, but the lane contended (a running call gets a tenth of a core): still refused at once.
    clock.advance(2.0)
    with adm.slot(CancelToken(), kind="busy"):
        clock.advance(0.5, cpu=0.05)
        with pytest.raises(Busy), b():
            pass
    # The lane idle again (and the contended share older than PROBE_AFTER_S): one call is let through ...
    clock.advance(Admission.PROBE_AFTER_S + 1.0)
    idle()
    probe = CancelToken.within(30.0)
    with b(probe):
        clock.advance(0.5, cpu=0.5)
        # ... and only one: another kind judged by its prior is refused while it runs (the factor counts as
        # fresh, and the lane's one probe runs).
        with pytest.raises(Busy) as busy, adm.slot(CancelToken.within(30.0), kind="c", size=10.0, prior_cpu_s=4.0):
            pass
        assert "its declared cost at its size" in str(busy.value)
        clock.advance(3.5, cpu=3.5)  # "b" takes its declared 4 CPU s
    assert adm._kind_cpu["b"] == pytest.approx(4.0)  # measured: its own CPU s, no longer its prior x 14
    assert adm._slower == pytest.approx(0.8 * 14.0 + 0.2 * 1.0)  # and the factor comes down by the running mean
    # A call late even at its declared prior (2 x 4 s over 5 s) gets no probe: the factor is not what refuses it.
    clock.advance(Admission.PROBE_AFTER_S + 1.0)
    idle()
    with pytest.raises(Busy), adm.slot(CancelToken.within(5.0), kind="c", size=10.0, prior_cpu_s=4.0):
        pass
    assert adm.stats().refused_for_deadline == 4


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_run_cut_short_may_raise_the_factor_but_never_lowers_it(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="a", size=10.0, prior_cpu_s=1.0):
        clock.advance(3.0, cpu=3.0)
    assert adm._slower == pytest.approx(3.0)

    def cut(kind: str, cpu: float) -> None:  # a run of ``kind`` (1 CPU s declared) stopped after ``cpu`` CPU s
        token = CancelToken()
        with pytest.raises(Cancelled if how == "cancelled" else DeadlineExceeded), \
                adm.slot(token, kind=kind, size=10.0, prior_cpu_s=1.0):
            clock.advance(cpu, cpu=cpu)
            if how == "cancelled":
                token.cancel()
            else:
                token.deadline = time.monotonic() - 1.0  # (the real clock: its deadline has passed)
            token.check()

    # Stopped at half its declared CPU: it would have used at least that, which says nothing against 3x.
    cut("b", 0.5)
    assert adm._slower == pytest.approx(3.0)
    # Stopped at 5x its declared CPU: it needed at least that much, so the factor rises at once.
    cut("c", 5.0)
    assert adm._slower == pytest.approx(5.0)


def test_a_measured_kind_gets_one_probe_on_an_idle_lane_whose_share_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)

    def idle() -> None:  # the lane's sample says a full core (the heavy lane of `shortlist serve` samples it)
        adm._sampled, adm._sampled_at = 1.0, clock.now

    def k(token: CancelToken | None = None, kind: str = "k") -> AbstractContextManager[None]:
        return adm.slot(token or CancelToken.within(20.0), f"Select '{kind}'", kind=kind)

    # "m" took 14 CPU s once; "k" takes 2, then one unusual run 14 (its estimate rises at once).
    for kind, cpu in (("m", 14.0), ("k", 2.0), ("k", 14.0)):
        with adm.slot(CancelToken(), kind=kind):
            clock.advance(cpu, cpu=cpu)
    assert adm._kind_cpu["k"] == pytest.approx(14.0)
    # 2 x 14 s over a 20 s deadline: refused on an idle lane while the estimate is recent ...
    clock.advance(Admission.PROBE_AFTER_S - 1.0)
    idle()
    with pytest.raises(Busy) as busy, k():
        pass
    assert "its recent runs" in str(busy.value)
    # ... and older than that but on a contended lane (a running call gets a tenth of a core): at once.
    clock.advance(2.0)
    with adm.slot(CancelToken(), kind="busy"):
        clock.advance(0.5, cpu=0.05)
        with pytest.raises(Busy), k():
            pass
    # The lane idle again, its share known (a sample), the estimate old: one call is let through to measure.
    clock.advance(Admission.PROBE_AFTER_S + 1.0)
    idle()
    with k():
        clock.advance(0.5, cpu=0.5)
        # One probe at a time per lane: another "k" (its estimate now fresh) and "m" (old too) are refused.
        for kind in ("k", "m"):
            with pytest.raises(Busy), k(kind=kind):
                pass
        clock.advance(1.5, cpu=1.5)  # "k" takes its usual 2 CPU s
    assert adm._kind_cpu["k"] == pytest.approx(0.8 * 14.0 + 0.2 * 2.0)  # down by the running mean
    # The probe over, "m" gets its own (its estimate is older than PROBE_AFTER_S, the lane idle).
    with k(kind="m"):
        clock.advance(2.0, cpu=2.0)
    assert adm.stats().refused_for_deadline == 4
    # Probe by probe the estimate comes down until a call fits (2 x 9.7 s within 20 s) without one.
    for _ in range(2):
        clock.advance(Admission.PROBE_AFTER_S + 1.0)
        idle()
        with k():
            clock.advance(2.0, cpu=2.0)
    idle()
    with k():
        clock.advance(2.0, cpu=2.0)
    assert adm.stats().refused_for_deadline == 4


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_run_cut_short_may_raise_its_kinds_estimate_but_never_lowers_it(monkeypatch: pytest.MonkeyPatch,
                                                                        how: str) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(5.0, cpu=5.0)

    def cut(cpu: float) -> None:  # a run of "k" stopped after ``cpu`` CPU s (at a full core)
        token = CancelToken()
        with pytest.raises(Cancelled if how == "cancelled" else DeadlineExceeded), adm.slot(token, kind="k"):
            clock.advance(cpu, cpu=cpu)
            if how == "cancelled":
                token.cancel()
            else:
                token.deadline = time.monotonic() - 1.0  # (the real clock: its deadline has passed)
            token.check()

    # Stopped after 1 CPU s: it would have used at least that, which says nothing against 5.
    cut(1.0)
    assert adm._kind_cpu["k"] == pytest.approx(5.0) and adm._kind_s["k"] == pytest.approx(5.0)
    # Stopped after 8: it needed at least that, so the estimate rises at once.
    cut(8.0)
    assert adm._kind_cpu["k"] == pytest.approx(8.0) and adm._kind_s["k"] == pytest.approx(8.0)


def test_a_probes_own_expected_lateness_refuses_no_one_on_an_uncontended_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="a", size=10.0, prior_cpu_s=1.0):
        clock.advance(14.0, cpu=14.0)  # "a" declared 1 CPU s and took 14: priors are expected at 14x
    with adm.slot(CancelToken(), kind="q"):
        clock.advance(0.2, cpu=0.2)  # "q": 0.2 CPU s
    clock.advance(Admission.PROBE_AFTER_S + 1.0)
    adm._sampled, adm._sampled_at = 1.0, clock.now  # idle: a full core
    # The factor's probe, "b" (4 CPU s declared, 56 s expected): let through, expected past its 30 s deadline ...
    with adm.slot(CancelToken.within(30.0), kind="b", size=10.0, prior_cpu_s=4.0):
        clock.advance(0.5, cpu=0.5)  # ... at a full core: the lane is not contended
        with adm.slot(CancelToken.within(30.0), "Select 'q'", kind="q"):  # it takes nothing from the probe: runs
            pass
    assert adm.stats().refused_for_deadline == 0


def test_a_share_older_than_probe_after_s_is_replaced_not_averaged(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)  # admission's wall and CPU clocks: the timings are the test's, not the machine's
    adm = Admission(max_concurrent=2, max_queued=2)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(1.0, cpu=0.1)  # a tenth of a core
    assert adm._share == pytest.approx(0.1)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(1.0, cpu=1.0)  # a full core right after: up by the running mean only
    assert adm._share == pytest.approx(0.8 * 0.1 + 0.2 * 1.0)
    clock.advance(Admission.PROBE_AFTER_S + 1.0)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(1.0, cpu=1.0)  # a full core a minute on: the old share says nothing of the load now
    assert adm._share == pytest.approx(1.0)


def test_a_refusal_is_logged_with_its_estimates_and_summed_up_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.admission")
    adm = lane_with_share(0.2)
    kind = "Select 'as3l'"
    for _ in range(3):  # 37.5 s expected at a fifth of a core: refused for its 30 s deadline
        with pytest.raises(Busy), adm.slot(CancelToken.within(30.0), "Select 'as3l' on the sample 'secret-id'",
                                           kind=kind, size=2.5e7, prior_cpu_s=7.5):
            pass
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "refused" in r.getMessage()]
    assert len(debug) == 3
    assert (f"heavy: {kind} refused (it would not finish within its deadline (its declared cost at its size)): "
            "expected wait 0.0 s + run 37.5 s, deadline 30.0 s left, CPU share 0.20") in debug[0]
    # At INFO, the first refusal of a kind at once, then at most one summary a minute with the count since.
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and f"refused 1 {kind} call(s) with RESOURCE_EXHAUSTED;" in info[0]
    count, _ = adm._refusal_log[kind]
    adm._refusal_log[kind] = (count, time.monotonic() - adm.REFUSAL_LOG_S - 1)  # a minute has passed
    with pytest.raises(Busy), adm.slot(CancelToken.within(30.0), kind=kind, size=2.5e7, prior_cpu_s=7.5):
        pass
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    # (61 s and however long this thread was kept from running since: the figure is not what is under test)
    assert len(info) == 2 and f"refused 3 {kind} call(s) with RESOURCE_EXHAUSTED in the last " in info[1]
    assert int(info[1].split(" in the last ")[1].split(" s")[0]) >= 61
    # A full lane's refusal too; never the request's description (its ids) or its token.
    full = Admission(max_concurrent=1, max_queued=0)
    with full.slot(CancelToken(), kind="a"), pytest.raises(Busy), \
            full.slot(CancelToken.within(5.0), "decoding 'secret-id'", kind="b"):
        pass
    assert "heavy: b refused (running and queued calls at the lane's limits)" in caplog.text
    assert "secret-id" not in caplog.text and "CancelToken" not in caplog.text


def test_the_kmeans_strategies_declare_a_prior_that_grows_with_their_work_size() -> None:
    for name in ("typiclust", "kmedoids", "as3l"):
        entry = STRATEGIES[name]
        small, large = entry.prior_cpu_s(50_000, 50, 10, {}), entry.prior_cpu_s(50_000, 4_000, 10, {})
        assert small is not None and large is not None and large == pytest.approx(small * 500 / 60)
        assert large == pytest.approx(entry.cpu_per_unit * entry.work_size(50_000, 4_000, 10, {}))
        # Alone on an idle machine the first call on a 50,000-row pool at k = 500 is admitted within the
        # load's 30 s deadline (twice its prior fits), so the prior never starves it.
        assert 2 * large < 30
    assert STRATEGIES["margin"].prior_cpu_s(50_000, 50, 10, {}) is None  # none declared: the lane's mean


def test_an_explicit_k_or_runs_sets_the_work_size_and_prior_proportionally() -> None:
    rows, labelled, budget = 50_000, 5, 10  # k = labelled + budget = 15 when the params do not set it
    for name in ("kmedoids", "as3l"):
        entry = STRATEGIES[name]
        default = entry.prior_cpu_s(rows, labelled, budget, {})
        large = entry.prior_cpu_s(rows, labelled, budget, {"k": "450"})
        assert entry.work_size(rows, labelled, budget, {"k": "450"}) == rows * 450
        assert default is not None and large == pytest.approx(default * 450 / 15)
        with pytest.raises(InvalidArgument):  # an empty value is refused (the request's check does it first)
            entry.work_size(rows, labelled, budget, {"k": ""})
        assert entry.work_size(100, labelled, budget, {"k": "450"}) == 100 * 100  # k-means clips k to the rows
    # typiclust's max_clusters caps its k below the labelled set's.
    typiclust = STRATEGIES["typiclust"]
    assert typiclust.work_size(rows, 4_000, budget, {"max_clusters": "20"}) == rows * 20
    assert typiclust.work_size(rows, labelled, budget, {"max_clusters": "400"}) == rows * 15
    # as3l fits 2C k-means: its size counts them relative to the default C = 6 its prior was measured at.
    as3l = STRATEGIES["as3l"]
    assert as3l.work_size(rows, labelled, budget, {"runs": "6"}) == as3l.work_size(rows, labelled, budget, {})
    assert as3l.work_size(rows, labelled, budget, {"runs": "3", "k": "450"}) == pytest.approx(rows * 450 * 0.5)
    assert as3l.prior_cpu_s(rows, labelled, budget, {"runs": "10", "k": "450"}) == pytest.approx(
        KMEANS_CPU_PER_UNIT * rows * 450 * 10 / 6)
    # ... so admission expects the larger call at proportionally more: refused on a quarter of a core where
    # the default call (0.38 CPU s: 1.5 s, 4.5 s with the margin) runs.
    adm = lane_with_share(0.25)
    big = as3l.prior_cpu_s(rows, labelled, budget, {"runs": "10", "k": "450"})
    small = as3l.prior_cpu_s(rows, labelled, budget, {})
    assert big is not None and small is not None
    assert adm.estimate("Select 'as3l'", rows * 450 * 10 / 6, big) == pytest.approx(big / 0.25)
    with pytest.raises(Busy), adm.slot(CancelToken.within(30.0), kind="Select 'as3l'",
                                       size=as3l.work_size(rows, labelled, budget, {"runs": "10", "k": "450"}),
                                       prior_cpu_s=big):
        pass
    with adm.slot(CancelToken.within(30.0), kind="Select 'as3l'", size=as3l.work_size(rows, labelled, budget, {}),
                  prior_cpu_s=small):
        pass


@pytest.mark.parametrize("name,params,runs", [("kmedoids", {"k": "37"}, 1), ("kmedoids", {}, 1),
                                              ("typiclust", {"max_clusters": "7"}, 1), ("typiclust", {}, 1),
                                              ("as3l", {"k": "37", "runs": "2"}, 2), ("as3l", {}, 6)])
def test_a_strategys_kmeans_plan_is_the_k_its_function_fits(name: str, params: dict[str, str], runs: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import numpy as np

    from tests.agent.strategies.pools import blobs, make_pool

    ks: list[int] = []  # the k of every k-means fit the strategy makes
    for module in map(importlib.import_module, ("agent.strategies.clustering", "agent.strategies.as3l")):
        real = module.fit_kmeans

        def record(x, k, *a, _real=real, **kw):  # type: ignore[no-untyped-def]
            ks.append(k)
            return _real(x, k, *a, **kw)
        monkeypatch.setattr(module, "fit_kmeans", record)
    x, y = blobs(clusters=6, per_cluster=20, dim=8)
    pool = make_pool(x, y, labeled=np.arange(0, 120, 10))  # 12 labelled: k = 12 + budget by default
    entry = STRATEGIES[name]
    entry(pool, 5, np.random.default_rng(0), params)
    plan = entry.kmeans
    assert plan is not None
    work = plan(params, len(pool.labeled), 5)
    assert ks == [work.k] * (2 * runs if name == "as3l" else 1)
    assert work.fits == pytest.approx(runs / 6 if name == "as3l" else 1.0)


def test_probcovers_work_size_follows_its_clusters_and_radius_params() -> None:
    from agent.strategies.coverage import probcover_work

    probcover = STRATEGIES["probcover"]
    rows, labelled, budget, classes = 50_000, 75, 10, 10

    def size(params: dict[str, str], classes: int = classes) -> float:
        return probcover.work_size(rows, labelled, budget, params, classes)

    default = size({})
    assert default == probcover_work({}, rows, labelled, budget, classes)
    assert default == pytest.approx(2.74e8, rel=0.01)
    # The purity rule's k-means grows with its clusters (explicit, or the class count by default) ...
    assert size({"clusters": "500"}) == size({}, classes=500) == pytest.approx(1.52e9, rel=0.01)
    assert default < size({"clusters": "100"}) < size({"clusters": "500"})
    assert size({"clusters": "10"}) == default  # the default's own k
    assert size({}, classes=0) == default  # fewer than 2 classes: 10 clusters
    # ... and only a call that runs that rule pays for it: a given delta runs no rule, occupancy no k-means.
    given = size({"delta": "0.5"})
    assert given < size({"delta_from": "occupancy"}) < default
    assert size({"delta": "0.5", "clusters": "500"}) == given
    assert size({"delta_from": "occupancy", "clusters": "500"}) == size({"delta_from": "occupancy"})
    assert size({"delta_from": "purity", "clusters": "500"}) > size({"delta_from": "purity"})
    # Beyond 10,000 rows the sample points and ball centres stop growing: the size as well, but for the picks.
    assert probcover.work_size(200_000, labelled, budget, {}, classes) == pytest.approx(
        probcover.work_size(100_000, labelled, budget, {}, classes))
    assert probcover.prior_cpu_s(rows, labelled, budget, {"clusters": "500"}, classes) is None  # no prior declared
    # So admission expects a call with 500 clusters, after a measured default one, at that many times its cost.
    adm = lane_with_share(1.0)
    with adm.slot(CancelToken(), kind="Select 'probcover'", size=default):
        pass
    measured = adm.estimate("Select 'probcover'", default)
    assert adm.estimate("Select 'probcover'", size({"clusters": "500"})) == pytest.approx(
        measured * size({"clusters": "500"}) / default)
    assert adm.estimate("Select 'probcover'", given) == pytest.approx(measured)  # never scaled down


def test_qbcs_work_size_follows_its_members() -> None:
    qbc = STRATEGIES["qbc"]
    rows, labelled, budget = 50_000, 75, 10
    assert qbc.work_size(rows, labelled, budget, {}) == rows  # the default committee: the rows, as margin
    assert qbc.work_size(rows, labelled, budget, {"members": "5"}) == rows
    assert qbc.work_size(rows, labelled, budget, {"members": "20"}) == 4 * rows
    assert qbc.work_size(rows, labelled, budget, {"members": "2"}) == pytest.approx(0.4 * rows)
    assert qbc.prior_cpu_s(rows, labelled, budget, {"members": "20"}) is None


@pytest.mark.parametrize("params", [{}, {"clusters": "7"}, {"delta": "0.4"}, {"delta_from": "occupancy"},
                                    {"delta_from": "purity", "clusters": "3"}])
def test_probcovers_work_counts_the_kmeans_its_function_fits(params: dict[str, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from agent.strategies import coverage
    from tests.agent.strategies.pools import blobs, make_pool

    fits: list[tuple[int, int]] = []  # (k, n_init) of every k-means fit
    real = coverage.fit_kmeans

    def record(x, k, *a, **kw):  # type: ignore[no-untyped-def]
        fits.append((k, kw["n_init"]))
        return real(x, k, *a, **kw)
    monkeypatch.setattr(coverage, "fit_kmeans", record)
    x, y = blobs(clusters=6, per_cluster=20, dim=8)
    pool = make_pool(x, y, labeled=np.arange(0, 120, 10))  # 12 labelled of 6 classes: 6 clusters by default
    STRATEGIES["probcover"](pool, 5, np.random.default_rng(0), params)
    purity, _ = coverage.probcover_rules(params)
    k = coverage.probcover_clusters(params, pool.num_classes)
    assert fits == ([(k, coverage.PURITY_KMEANS_INIT)] if purity else [])
    assert k == int(params.get("clusters", 6))


def test_qbcs_work_counts_the_heads_its_function_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from agent.strategies import uncertainty
    from tests.agent.strategies.pools import blobs, make_pool

    heads: list[int] = []
    real = uncertainty.fit_head

    def record(*a, **kw):  # type: ignore[no-untyped-def]
        heads.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(uncertainty, "fit_head", record)
    x, y = blobs(clusters=3, per_cluster=20, dim=8)
    pool = make_pool(x, y, labeled=np.arange(0, 60, 6))
    for members in (2, 7):
        heads.clear()
        STRATEGIES["qbc"](pool, 5, np.random.default_rng(0), {"members": str(members)})
        assert len(heads) == members
        assert STRATEGIES["qbc"].work_size(60, 10, 5, {"members": str(members)}) == pytest.approx(60 * members / 5)


def test_the_as3l_prior_methods_work_size_follows_its_runs_and_rows() -> None:
    as3l = PRIOR_METHODS["as3l"]  # (the registry's entry: wrapped by the calibration, which keeps its work)
    rows, labelled, classes, requested = 50_000, 200, 10, 1_000
    default = as3l.work_size(rows, labelled, classes, requested, {})
    # C constrained k-means with K_c = c * classes, over the 200 + 20,000 fit rows and the requested rows.
    assert default is not None and default == (200 + 20_000 + 1_000) * classes * 21
    assert as3l.work_size(rows, labelled, classes, requested, {"runs": "10", "calibrate": "false"}) == \
        pytest.approx(default * 55 / 21)
    every = as3l.work_size(rows, labelled, classes, 49_800, {})  # every candidate asked for
    assert every is not None and every > default
    assert as3l.work_size(rows, labelled, classes, requested, {"runs": "1"}) == pytest.approx(default / 21)
    assert PRIOR_METHODS["knn"].work_size(rows, labelled, classes, requested, {}) is None  # none declared
    # Admission scales the kind's measured run by it: runs=10 after a measured default run, 55/21 the time.
    adm = lane_with_share(1.0)
    adm._kind_cpu["PriorLabels 'as3l'"] = adm._kind_s["PriorLabels 'as3l'"] = 2.0
    adm._kind_size["PriorLabels 'as3l'"] = default
    big = as3l.work_size(rows, labelled, classes, requested, {"runs": "10"})
    assert adm.estimate("PriorLabels 'as3l'", big) == pytest.approx(2.0 * 55 / 21)


def test_the_agents_select_passes_its_size_and_prior_to_admission(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(30, labels=6))
        seen: list[tuple[object, object]] = []
        real_run = r.agent.work.run

        def run(token, fn, *a, **kw):  # type: ignore[no-untyped-def]
            seen.append((kw.get("size"), kw.get("prior_cpu_s")))
            return real_run(token, fn, *a, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(r.agent.work, "run", run)
            r.stub.Select(agent_pb2.SelectRequest(budget=250, strategy="typiclust"), timeout=60)
            # kmedoids at budget 2 (k = 6 + 2 = 8 by default) with an explicit k = 24: three times the size.
            r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="kmedoids", params={"k": "24"}), timeout=60)
            # probcover's purity rule at its default clusters (the 3 classes) and at 12; qbc with 10 members.
            r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="probcover"), timeout=60)
            r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="probcover", params={"clusters": "12"}),
                          timeout=60)
            r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="qbc", params={"members": "10"}), timeout=60)
        typiclust = STRATEGIES["typiclust"]
        # 30 rows, 6 labelled, the budget capped at the 24 candidates: k = 30.
        assert seen[0] == (typiclust.work_size(30, 6, 24, {}), typiclust.prior_cpu_s(30, 6, 24, {}))
        assert seen[0][1] == pytest.approx(KMEANS_CPU_PER_UNIT * 30 * 30)
        assert seen[1][0] == 30 * 24 == 3 * STRATEGIES["kmedoids"].work_size(30, 6, 2, {})
        assert seen[1][1] == pytest.approx(KMEANS_CPU_PER_UNIT * 30 * 24)
        probcover = STRATEGIES["probcover"]
        assert seen[2] == (probcover.work_size(30, 6, 2, {}, 3), None)  # the agent's class count sets k = 3
        assert seen[2][0] != probcover.work_size(30, 6, 2, {}, 0)  # (not the 10 clusters of no classes)
        assert seen[3] == (probcover.work_size(30, 6, 2, {"clusters": "12"}, 3), None)
        assert seen[3][0] > seen[2][0]
        assert seen[4] == (2 * 30, None)  # 10 members: twice the default committee's rows
        # PriorLabels passes the work size its method declares (as3l: C (C + 1) / 2 for C runs), and no prior.
        seen.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(r.agent.work, "run", run)
            for runs in ("1", "4"):
                params = {"runs": runs, "calibrate": "false"}
                list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="as3l", params=params), timeout=60))
        as3l = PRIOR_METHODS["as3l"]
        # 30 rows, 6 labelled of 3 classes, the 24 candidates asked for.
        assert seen == [(as3l.work_size(30, 6, 3, 24, {"runs": "1"}), None),
                        (as3l.work_size(30, 6, 3, 24, {"runs": "4"}), None)]
        assert seen[1][0] == 10 * seen[0][0] == 10 * (30 + 24) * 3
    finally:
        r.stop()


def test_a_refusal_hints_a_retry_only_when_waiting_can_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call refused for its deadline gets retry-after-ms only when the wait for a turn makes it late: its own
    run alone fitting, a later try may be admitted; a call too long by itself is told the deadline it needs
    and gets no hint (the Python client's BusyRetry retries only on a hint: it had retried such a call every
    100 ms for 20 s, refused each time)."""
    monkeypatch.setattr(Admission, "EWMA", 1.0)
    clock = FakeClock(monkeypatch, deadlines=True)
    adm = Admission(max_concurrent=1, max_queued=4)
    with adm.slot(CancelToken(), kind="k"):
        clock.advance(2.0)  # "k": 2 s (not CPU-bound: wall time)
    with adm.slot(CancelToken(), kind="k"):  # one running: 2 s to wait, then 2 s of its own
        # 2 x (2 + 2) = 8 s > 6 s, but 2 x 2 = 4 s of its own fits: waiting helps
        with pytest.raises(Busy) as late, adm.slot(CancelToken.within(6.0), "Select 'k'", kind="k"):
            pass
        assert late.value.retry_after_s == pytest.approx(2.0, abs=0.01)
        assert "or a retry in about 2000 ms" in str(late.value) and "at least 8 s" in str(late.value)
        with pytest.raises(Busy) as never, adm.slot(CancelToken.within(3.0), "Select 'k'", kind="k"):
            pass  # 2 x 2 s > 3 s: no wait would help
        assert never.value.retry_after_s is None and "retry in about" not in str(never.value)
        assert "at least 8 s" in str(never.value) and "will not help" in str(never.value)


def test_a_call_without_deadline_is_logged_as_such(caplog: pytest.LogCaptureFixture) -> None:
    from agent.service import deadline_s

    # gRPC's time_remaining() for a call without a deadline: no deadline for the agent, not 9e9 s left
    assert deadline_s(9223372035.058190336) is None and deadline_s(None) is None and deadline_s(30.0) == 30.0
    caplog.set_level(logging.DEBUG, logger="agent.admission")
    full = Admission(max_concurrent=1, max_queued=0)
    with full.slot(CancelToken(), kind="a"), pytest.raises(Busy), full.slot(CancelToken(), kind="b"):
        pass
    assert "no deadline, CPU share" in caplog.text and "s left" not in caplog.text


def test_a_noisy_low_cpu_share_sample_does_not_make_a_prior_estimate_hundreds_of_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart nothing of the lane is measured: a call with a declared prior is judged at the sampled
    share. A 0.01 sample (a loaded machine, one unlucky 0.1 s) had made a 2-CPU-s prior a 200-s estimate; the
    share taken is at least MIN_SAMPLED_SHARE, and the running mean of the recent samples."""
    adm = Admission(max_concurrent=2, max_queued=2, threads=admission.LaneThreads())
    shares = iter([0.01, 0.6])
    monkeypatch.setattr(adm, "_measure_share", lambda: next(shares))
    try:  # 2 CPU s at 0.1 of a core: 20 s, 60 s with the 3x margin: fits 70 s
        assert adm.run(CancelToken.within(70.0), lambda: 7, kind="Select 'kmedoids'", size=1e6,
                       prior_cpu_s=2.0) == 7
        assert adm._sampled == pytest.approx(Admission.MIN_SAMPLED_SHARE)
        adm._sampled_at -= Admission.SAMPLE_VALID_S + 1  # the sample has stood its time: the next one is taken
        adm._add_sample(0.6)
        assert adm._sampled == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)  # the mean of the recent samples
    finally:
        adm.shutdown()


def test_a_big_budget_coreset_or_badge_is_refused_at_once_for_its_declared_greedy_work(
        tmp_path: Path, registry: Path) -> None:
    """coreset and badge cost a pass over the pool per pick: they declare rows x picks as their work and a
    prior per unit, so a large budget is expected to cost that much more and, on its first call, is refused
    at once for a short deadline (RESOURCE_EXHAUSTED) instead of being admitted at the lane's mean and cut
    off by DEADLINE_EXCEEDED (at 300,000 rows a budget-5000 coreset ran its whole 60-s deadline)."""
    coreset, badge = STRATEGIES["coreset"], STRATEGIES["badge"]
    assert coreset.work_size(300_000, 0, 5000, {}) == 25 * coreset.work_size(300_000, 0, 200, {})
    assert coreset.prior_cpu_s(300_000, 50, 5000, {}) == pytest.approx(303.0)  # > 60 s, whatever the share
    assert badge.work_size(300_000, 50, 5000, {}) == 300_000 * 5001
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(3000, labels=30))
        for strategy in ("coreset", "badge"):  # 3,000 x ~3,000 picks: ~1.8 CPU s declared, over 1 s
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                r.stub.Select(agent_pb2.SelectRequest(budget=2960, strategy=strategy), timeout=1.0)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert "its declared cost at its size" in err.value.details()
            assert time.monotonic() - started < 1.0
        # a small budget of the same strategy is still answered
        assert len(r.stub.Select(agent_pb2.SelectRequest(budget=250, strategy="coreset"), timeout=60).selected) == 250
    finally:
        r.stop()


def test_a_late_call_beside_running_ones_is_not_said_to_wait_and_gets_a_retry_hint() -> None:
    """A thumbnail of a large image, refused for its deadline while another decode ran and a slot was free,
    said "would wait about 0.0 s for a turn (1 decode requests running, 0 queued)" and gave no retry hint
    (so the app's 429 had no Retry-After): it says it would run beside the running one, and when to retry
    (once that one has ended, it gets more of the CPU)."""
    lane = Admission(2, 2, lane="decode")
    with lane.slot(CancelToken(), "another decode", kind="large image decode"):
        busy = lane._too_late("a thumbnail of the 8000x8000 image 'big.png'", wait=0.0, own=12.6, remaining=30.0,
                              safety=3.0)
    text = str(busy)
    assert "would wait" not in text and "about 0.0 s" not in text, text
    assert text.startswith("a thumbnail of the 8000x8000 image 'big.png' would take about 12.6 s beside the 1 "
                           "decode requests running (its recent runs"), text
    assert busy.retry_after_s is not None and 0.1 <= busy.retry_after_s <= 60
    assert text.endswith(f"or a retry in about {round(busy.retry_after_s * 1000)} ms (once the calls ahead of it "
                         "have ended)")
    alone = lane._too_late("a thumbnail", wait=0.0, own=12.6, remaining=30.0, safety=3.0)
    assert alone.retry_after_s is None and str(alone).startswith("a thumbnail would take about 12.6 s (")


def test_a_refusals_numbers_add_up() -> None:
    """0.07 s at a 3x margin said "about 0.1 s ..., 0.2 s with the 3x margin"; a call refused while waiting
    (no margin passed) said no margin at all, though the deadline it needs is twice its estimate."""
    lane = Admission(1, 1)
    small = str(lane._too_late("Select 'random'", wait=0.0, own=0.07, remaining=0.05, safety=3.0))
    assert "would take about 0.07 s (its recent runs, at the CPU share such calls get now), 0.21 s with the 3x " \
           "margin kept for estimates, more than the 0.05 s left of the call's deadline" in small, small
    assert "it needs a deadline of at least 1 s" in small  # whole seconds, at least 1 (clients read an integer)
    waited = str(lane._too_late("Select 'kmedoids'", wait=4.0, own=8.0, remaining=20.0))
    assert "would wait about 4.0 s for a turn (0 heavy requests running, 0 queued) and then take about 8.0 s " \
           "(its recent runs, at the CPU share such calls get now), 24.0 s with the 2x margin kept for estimates, " \
           "more than the 20.0 s left of the call's deadline; it was not started; it needs a deadline of at least " \
           "24 s" in waited, waited
