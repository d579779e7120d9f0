"""The audit of the prior methods (agent/audit.py): the estimator on hand-built pools (the audit labels are
never seeds; the interval covers the prior's real accuracy on the pool) and the whole path through gRPC
(Select strategy "audit" recorded durably, GetStatus's estimates, ListLabels' sources and audit flags)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent import client
from agent.admission import Admission
from agent.audit import PriorAuditor, accuracy, audited_pool, measure
from agent.config import AuditConfig
from agent.pool import Pool, state_rng
from agent.priors import PRIOR_METHODS
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running, make_samples, start
from tests.agent.strategies.pools import blobs, make_pool

CFG = AuditConfig()


def test_accuracy_interval_is_scipys_wilson_and_exact() -> None:
    a = accuracy(8, 10, CFG)
    assert (a.correct, a.total, a.accuracy) == (8, 10, 0.8)
    assert a.low == pytest.approx(0.4902, abs=1e-4) and a.high == pytest.approx(0.9433, abs=1e-4)  # Wilson 1927
    cp = accuracy(8, 10, AuditConfig(interval="exact"))
    assert cp.low == pytest.approx(0.4439, abs=1e-4) and cp.high == pytest.approx(0.9748, abs=1e-4)  # Clopper-Pearson
    assert accuracy(0, 0, CFG).low == 0.0 and accuracy(0, 0, CFG).high == 1.0


def test_audit_labels_are_not_seeds_of_the_audited_prior() -> None:
    # Structureless embeddings and random labels: no prior can beat chance (1/3). Had the audit labels been
    # seeds, kNN would find each audit sample itself and read ~100%.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 3, 400)
    audit = np.arange(300, 400)
    pool = make_pool(x, y, labeled=np.arange(400))  # everything labelled, the audit rows too
    seeded = audited_pool(pool, audit)
    assert not np.isin(audit, seeded.labeled).any() and np.isin(audit, seeded.candidates).all()
    assert len(seeded.labeled) == 300
    got = measure(pool, audit, y[audit], [str(i) for i in range(300)], ["knn"], CFG)[0]
    assert got.overall is not None and got.overall.total == 100
    assert got.overall.accuracy < 0.55 and got.overall.low < 1 / 3 < got.overall.high


def test_the_interval_covers_the_priors_accuracy_on_the_unlabelled_pool() -> None:
    # 4 blobs; the seeds never name class 3, so every prior is wrong on its blob: accuracy on the
    # unlabelled pool is about 3/4. A uniform audit must find that, within its interval.
    x, y = blobs(clusters=4, per_cluster=300, seed=1)
    rng = np.random.default_rng(1)
    seeds = np.concatenate([rng.choice(np.flatnonzero(y == c), 5, replace=False) for c in range(3)])
    unlabelled = np.setdiff1d(np.arange(len(y)), seeds)
    ids = [str(i) for i in seeds]

    def truth(name: str, rows: np.ndarray) -> float:
        full = PRIOR_METHODS[name](make_pool(x, y, labeled=seeds), rows, state_rng(0, ids), {})
        return float(np.mean(np.argmax(full.probs, axis=1) == y[rows]))

    def audit_of(size: int) -> tuple[np.ndarray, np.ndarray]:
        audit = np.sort(rng.choice(unlabelled, size, replace=False))
        pool = make_pool(x, y, labeled=np.concatenate([seeds, audit]))
        pool.classes = [f"c{i}" for i in range(4)]
        return audit, pool  # type: ignore[return-value]

    # Every method, one audit of 150 at a 99.9% level.
    audit, pool = audit_of(150)
    got = {m.method: m for m in measure(pool, audit, y[audit], ids, sorted(PRIOR_METHODS),  # type: ignore[arg-type]
                                        AuditConfig(confidence_level=0.999))}
    assert set(got) == set(PRIOR_METHODS)
    for name, m in got.items():
        real = truth(name, np.setdiff1d(unlabelled, audit))
        assert m.overall is not None and m.overall.low <= real <= m.overall.high, (name, real, m.overall)
        per_class = dict(m.per_class)
        assert set(per_class) == {"c0", "c1", "c2", "c3"} and per_class["c3"].correct == 0
        assert per_class["c0"].accuracy > 0.9 and 0.0 <= m.mean_confidence <= 1.0
    # kNN, 40 audits of 60 at 95%: the interval covers the real accuracy about 95% of the time
    # (Wilson's coverage at n = 60, p = 0.75 is 93-96%); fewer than 34 of 40 would be a broken interval.
    real = truth("knn", unlabelled)
    covered = 0
    for _ in range(40):
        audit, pool = audit_of(60)
        m = measure(pool, audit, y[audit], ids, ["knn"], CFG)[0]  # type: ignore[arg-type]
        assert m.overall is not None
        covered += m.overall.low <= real <= m.overall.high
    assert covered >= 34, covered


def test_a_class_needs_min_per_class_audit_labels_for_its_own_estimate() -> None:
    x, y = blobs(clusters=3, per_cluster=30, seed=2)
    seeds = np.array([0, 30, 60])
    audit = np.array([1, 2, 3, 4, 5, 31, 32, 61])  # 5 of c0, 2 of c1, 1 of c2
    pool = make_pool(x, y, labeled=np.concatenate([seeds, audit]))
    m = measure(pool, audit, y[audit], ["0", "30", "60"], ["knn"], CFG)[0]
    assert [c for c, _ in m.per_class] == ["c0"] and m.overall is not None and m.overall.total == 8


def test_no_seeds_outside_the_audit_is_said_not_guessed() -> None:
    x, y = blobs(clusters=3, per_cluster=10, seed=3)
    pool = make_pool(x, y, labeled=np.array([0, 10, 20]))
    m = measure(pool, np.array([0, 10, 20]), y[[0, 10, 20]], [], ["knn"], CFG)[0]
    assert m.overall is None and "no labels outside the audit" in m.error


def wait_audit(r: Running, labelled: int, timeout: float = 60.0) -> agent_pb2.PriorAudit:
    """GetStatus's audit once it is current and counts ``labelled`` audit labels (it is computed in the
    background)."""
    deadline = time.monotonic() + timeout
    while True:
        a = r.stub.GetStatus(agent_pb2.GetStatusRequest()).audit
        if a.current and a.labelled == labelled and (a.methods or a.error):
            return a
        assert time.monotonic() < deadline, a
        time.sleep(0.05)


def true_label(sample_id: str) -> str:
    return CLASSES[int(sample_id[1:]) % 3]


def test_audit_through_grpc_draw_label_estimate_list_and_restart(tmp_path: Path, registry: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    r = start(tmp_path / "data", registry)
    try:
        assert client.ingest(r.stub, make_samples(36, labels=6)).accepted == 36
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert "audit" in st.strategies and st.audit.drawn == 0 and not st.audit.methods
        drawn = [s.id for s in r.stub.Select(agent_pb2.SelectRequest(budget=9, strategy="audit", seed=3)).selected]
        assert len(drawn) == 9 and all(int(i[1:]) >= 6 for i in drawn)  # only unlabelled samples
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert (st.audit.drawn, st.audit.labelled) == (9, 0)
        # the Pool a calibrated PriorLabels gets knows the draws' labels (its calibration fits on them once
        # enough count): none yet; only it looks them up: Select and an uncalibrated PriorLabels do not
        serving = r.agent.manager.current
        assert serving is not None
        assert len(r.agent.model_pool(serving, {}, audit=True)[0].audit) == 0
        lookups: list[int] = []
        real_audit_seqs = r.agent.state.audit_seqs

        def counted_audit_seqs() -> np.ndarray:
            lookups.append(1)
            return real_audit_seqs()

        monkeypatch.setattr(r.agent.state, "audit_seqs", counted_audit_seqs)
        assert len(r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="random", seed=1)).selected) == 2
        assert len(list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=drawn[:2],
                                                                        params={"calibrate": "false"})))) == 2
        assert lookups == []
        assert len(list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=drawn[:2])))) == 2
        assert lookups == [1]
        monkeypatch.undo()
        # label them (one wrongly first, then corrected: the current label counts)
        client.submit_labels(r.stub, [(drawn[0], "dog" if true_label(drawn[0]) != "dog" else "cat")], "bob")
        client.submit_labels(r.stub, [(i, true_label(i)) for i in drawn], "alice", source="manual")
        a = wait_audit(r, 9)
        pool, seqs = r.agent.model_pool(serving, {}, audit=True)
        assert sorted(r.agent.state.record(int(seqs[row])).id for row in pool.audit) == sorted(drawn)
        assert len(r.agent.model_pool(serving, {})[0].audit) == 0
        assert a.model_version == "v0001" and a.interval_method == "wilson" and a.confidence_level == 0.95
        assert sorted(m.method for m in a.methods) == sorted(PRIOR_METHODS)
        for m in a.methods:
            assert not m.error and m.overall.total == 9
            assert 0.0 <= m.overall.low <= m.overall.accuracy <= m.overall.high <= 1.0
        # the colour clusters are easy: the priors from 6 seeds get most audit samples right
        assert max(m.overall.accuracy for m in a.methods) >= 7 / 9
        # ListLabels: current labels, then the whole history
        current = list(client.list_labels(r.stub))
        assert len(current) == 15 and all(c.current for c in current)
        by_id = {c.id: c for c in current}
        assert {by_id[i].audit for i in drawn} == {True} and not by_id["s0"].audit
        assert (by_id["s0"].source, by_id["s0"].annotator) == ("ingest", "ingest")
        assert (by_id[drawn[0]].source, by_id[drawn[0]].annotator, by_id[drawn[0]].label) == \
            ("manual", "alice", true_label(drawn[0]))
        assert {c.model_version for c in current} == {"v0001"}
        history = list(client.list_labels(r.stub, history=True))
        assert len(history) == 16 and [h.time for h in history] == sorted(h.time for h in history)
        first = [h for h in history if h.id == drawn[0]]
        assert [(h.annotator, h.current) for h in first] == [("bob", False), ("alice", True)]
        # bad input changes nothing
        with pytest.raises(grpc.RpcError) as e:
            r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="audit", where={"site": "a"}))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "where" in (e.value.details() or "")
        for bad in ("ingest", "Bad Source!"):
            with pytest.raises(grpc.RpcError) as e:
                client.submit_labels(r.stub, [("s7", "cat")], "x", source=bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "source" in (e.value.details() or "")
        assert len(list(client.list_labels(r.stub, history=True))) == 16
    finally:
        r.stop()
    r = start(tmp_path / "data", registry)  # the draws are durable
    try:
        a = wait_audit(r, 9)
        assert a.drawn == 9 and len(a.methods) == len(PRIOR_METHODS)
    finally:
        r.stop()


def test_shortlist_status_shows_the_audit(running: Running) -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    def status(*extra: str) -> str:
        res = CliRunner().invoke(app, ["status", "--agent", running.address, *extra])
        assert res.exit_code == 0, res.output
        return res.stdout

    client.ingest(running.stub, make_samples(24, labels=6))
    from agent.priors.calibration import AUDIT_MIN_LABELS
    none = " ".join(status().split())  # rich wraps the line
    assert "audit: none drawn" in none and f"{AUDIT_MIN_LABELS} calibrate the priors' confidences" in none
    drawn = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=6, strategy="audit")).selected]
    client.submit_labels(running.stub, [(i, true_label(i)) for i in drawn], "alice")
    wait_audit(running, 6)
    text = status()
    assert "audit: 6 of 6 drawn samples labelled, priors under v0001" in text
    assert all(f"  {m}: " in text and "95% wilson interval" in text for m in PRIOR_METHODS)
    audit = json.loads(status("--json"))["audit"]
    assert audit["labelled"] == 6 and {m["method"] for m in audit["methods"]} == set(PRIOR_METHODS)
    assert all(m["overall"]["total"] == 6 for m in audit["methods"])


def test_get_status_never_waits_for_the_estimate() -> None:
    # background=True (the agent's default): report() hands the computation to a thread and answers with
    # what it has (current=False) while the pool source is blocked; the estimate arrives later.
    x, y = blobs(clusters=3, per_cluster=10, seed=4)
    pool = make_pool(x, y, labeled=np.arange(30))
    seqs = np.arange(1, 31, dtype=np.int64)  # row r holds seq r + 1
    labels = np.concatenate([[-1], y])
    release = threading.Event()

    def source() -> tuple[Pool, np.ndarray, str]:
        release.wait(30)
        return pool, seqs, "v1"

    auditor = PriorAuditor(CFG, lambda: np.array([2, 3, 12, 22]), lambda: labels, source, lambda q: f"s{q}",
                           lambda: "v1", Admission(1, 1), background=True)
    try:
        first = auditor.report()
        assert (first.current, first.drawn, first.labelled, first.methods) == (False, 4, 4, [])
        release.set()
        deadline = time.monotonic() + 60
        while not (rep := auditor.report()).current:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert rep.model_version == "v1" and {m.method for m in rep.methods} == set(PRIOR_METHODS)
        assert all(m.overall is not None and m.overall.total == 4 for m in rep.methods)
    finally:
        release.set()
        auditor.stop()


def test_a_recomputation_is_stopped_at_its_time_limit_and_frees_the_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """AuditConfig.max_seconds: an audit that would run for minutes (here: a measure that only passes
    checkpoints) stops at its limit, frees the heavy lane's slot, is reported with a note, and is not
    started again for the same labels."""
    import agent.audit as audit_module
    from agent.cancel import checkpoint

    runs: list[float] = []

    def endless(*args: object) -> list[object]:
        runs.append(time.monotonic())
        while True:
            checkpoint()
            time.sleep(0.01)

    monkeypatch.setattr(audit_module, "measure", endless)
    x, y = blobs(clusters=3, per_cluster=10, seed=4)
    pool = make_pool(x, y, labeled=np.arange(30))
    seqs = np.arange(1, 31, dtype=np.int64)
    labels = np.concatenate([[-1], y])
    lane = Admission(1, 1)
    auditor = PriorAuditor(AuditConfig(max_seconds=0.5), lambda: np.array([2, 3, 12, 22]), lambda: labels,
                           lambda: (pool, seqs, "v1"), lambda q: f"s{q}", lambda: "v1", lane, background=True)
    try:
        t0 = time.monotonic()
        first = auditor.report()
        assert not first.current and first.error == ""
        while auditor._running_key is not None:
            assert time.monotonic() - t0 < 5, "the audit ran past its limit"
            time.sleep(0.02)
        assert time.monotonic() - t0 < 2.5 and len(runs) == 1
        assert lane.stats().running == 0  # the slot is free again
        rep = auditor.report()
        assert not rep.current and "limit of 0.5 s" in rep.error and "max_seconds" in rep.error
        time.sleep(0.6)  # past the back-off: still not restarted, the labels are the same
        auditor.report()
        assert auditor._running_key is None and len(runs) == 1
        # A label changed, and the back-off has passed: a new recomputation is started (which the lane may
        # refuse: its recent run of this kind took its whole deadline).
        thread = auditor._thread
        labels[5] = (labels[5] + 1) % 3
        auditor.report()
        assert auditor._thread is not thread
    finally:
        auditor.stop()
    with pytest.raises(ValueError, match="max_seconds"):
        AuditConfig(max_seconds=0)


def test_a_refused_recomputation_waits_for_the_lanes_retry_hint() -> None:
    """The heavy lane is full: the audit is refused (Busy) and not tried again before the hint."""
    from agent.cancel import CancelToken

    x, y = blobs(clusters=3, per_cluster=10, seed=4)
    pool = make_pool(x, y, labeled=np.arange(30))
    seqs = np.arange(1, 31, dtype=np.int64)
    labels = np.concatenate([[-1], y])
    lane = Admission(1, 0)
    release = threading.Event()
    holder = threading.Thread(target=lambda: lane.run(CancelToken(), lambda: release.wait(30)), daemon=True)
    holder.start()
    deadline = time.monotonic() + 5
    while lane.stats().running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    auditor = PriorAuditor(replace(CFG, busy_backoff_s=2.0), lambda: np.array([2, 3, 12, 22]), lambda: labels,
                           lambda: (pool, seqs, "v1"), lambda q: f"s{q}", lambda: "v1", lane, background=True)
    try:
        auditor.report()
        while lane.stats().refused == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while auditor._running_key is not None:
            time.sleep(0.01)
        thread = auditor._thread
        # within the hint (at least 100 ms) and the back-off (2 s): no new attempt
        assert auditor._not_before > time.monotonic()
        auditor.report()
        assert auditor._thread is thread and lane.stats().refused == 1
        release.set()
        holder.join(5)
        time.sleep(max(0.0, auditor._not_before - time.monotonic() + 0.01))
        while not (rep := auditor.report()).current:
            assert time.monotonic() < deadline + 30
            time.sleep(0.02)
        assert {m.method for m in rep.methods} == set(PRIOR_METHODS)
    finally:
        release.set()
        auditor.stop()


def test_an_open_class_list_is_named_in_the_calibration_warning(tmp_path: Path) -> None:
    """With no --classes and no classes in the model the agent knows only the classes labelled so far, so no
    prior can give a class nobody labelled its share: while confidences rest on few labels, the warning
    (and GetStatus's copy) says to declare the classes. The closed-list agent's exact warning is checked
    in the test below."""
    from agent.testing import publish_linear

    registry = tmp_path / "models"
    publish_linear(registry, size=SIZE, dim=16)  # no classes in the manifest: the list stays open
    running = start(tmp_path / "data", registry)
    try:
        client.ingest(running.stub, make_samples(60, labels=2))  # 2 of the 3 clusters labelled
        assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).classes_open
        cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
        assert cal.source == "default" and cal.warning.endswith(
            "; the class list is open, so a class nobody has labelled yet gets no share: declare every class "
            "(shortlist serve --classes a,b,c)")
        warnings = running.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings
        assert any(w.startswith("prior knn (last PriorLabels): ") and w.endswith(cal.warning) for w in warnings)
    finally:
        running.stop()


def test_the_calibration_warning_follows_the_class_list_after_a_restart(tmp_path: Path) -> None:
    """GetStatus's copy of the last PriorLabels' warning, computed while the class list was open, stops asking
    to declare the classes once the agent is restarted with --classes (it said "class list: closed" next to
    "declare every class (shortlist serve --classes a,b,c)" until the next PriorLabels); the rest of it, which
    still holds, stays."""
    from agent.testing import publish_linear

    registry = tmp_path / "models"
    publish_linear(registry, size=SIZE, dim=16)  # no classes in the manifest: the list stays open
    open_warning = "the class list is open"

    def calibration_warnings(r: Running) -> list[str]:
        return [w for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "audit sample" in w]

    running = start(tmp_path / "data", registry)
    try:
        client.ingest(running.stub, make_samples(60, labels=2))
        cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
        assert open_warning in cal.warning and open_warning in calibration_warnings(running)[0]
    finally:
        running.stop()
    closed = start(tmp_path / "data", registry, classes=CLASSES)
    try:
        assert not closed.stub.GetStatus(agent_pb2.GetStatusRequest()).classes_open
        warnings = calibration_warnings(closed)
        assert warnings == [f"prior knn (last PriorLabels): {cal.warning.split('; the class list')[0]}"]
    finally:
        closed.stop()


def test_prior_labels_say_how_their_confidences_were_calibrated(running: Running) -> None:
    """PriorLabel.calibration (first row only): few held-out labels -> "labelled" with a warning that GetStatus
    repeats once priors were asked for; calibrate=false -> "off"; after AUDIT_MIN_LABELS audit labels ->
    "audit", no warning anywhere. ``shortlist prior`` prints the warning (stderr with --json)."""
    from typer.testing import CliRunner

    from agent.priors.calibration import AUDIT_MIN_LABELS
    from shortlist.cli import app

    def priors(**params: str) -> list[agent_pb2.PriorLabel]:
        return list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", params=params)))

    def calibration_warnings() -> list[str]:
        return [w for w in running.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "audit sample" in w]

    client.ingest(running.stub, make_samples(60, labels=3))  # one label per class: no held-out label counts
    assert calibration_warnings() == []  # no PriorLabels asked for yet
    cal = priors()[0].calibration
    assert (cal.source, cal.held_out, cal.temperature) == ("default", 0, 1.0)
    assert cal.warning.startswith("confidences calibrated on no held-out label (the method's default temperature)")
    client.submit_labels(running.stub, [(f"s{i}", true_label(f"s{i}")) for i in range(3, 6)], "alice")
    rows = priors()  # 2 labels per class: at most 6 held out
    cal = rows[0].calibration
    assert cal.source == "labelled" and 0 < cal.held_out <= 6 and cal.temperature > 0 and cal.audit_labels == 0
    assert cal.warning == (f"confidences calibrated on {cal.held_out} held-out labels (few, under 20): label "
                           f"{AUDIT_MIN_LABELS} audit samples (shortlist select --strategy audit) for trustworthy "
                           "confidences")
    assert not any(r.HasField("calibration") for r in rows[1:])  # once per stream
    assert calibration_warnings() == [f"prior knn (last PriorLabels): {cal.warning}"]
    res = CliRunner().invoke(app, ["status", "--agent", running.address])  # one warning a line
    assert f"  - prior knn (last PriorLabels): {cal.warning}" in res.stdout.splitlines(), res.output
    cached = priors()  # the same request again, from the agent's cache: the same provenance
    assert cached[0].calibration == cal
    off = priors(calibrate="false")
    assert (off[0].calibration.source, off[0].calibration.held_out, off[0].calibration.warning) == ("off", 0, "")
    res = CliRunner().invoke(app, ["prior", "--agent", running.address, "--method", "knn"])
    assert res.exit_code == 0 and res.stdout.rstrip().splitlines()[-1] == cal.warning, res.output
    res = CliRunner().invoke(app, ["prior", "--agent", running.address, "--method", "knn", "--json"])
    first = json.loads(res.stdout.splitlines()[0])
    assert first["calibration"]["source"] == "labelled" and res.stderr.strip() == cal.warning
    assert "calibration" not in json.loads(res.stdout.splitlines()[1])
    res = CliRunner().invoke(app, ["prior", "--agent", running.address, "--param", "calibrate=false"])
    assert res.stdout.rstrip().splitlines()[-1] == "confidences not calibrated (calibrate=false): the method's own"
    # the audit: 22 uniform draws, labelled
    drawn = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=22, strategy="audit", seed=1)).selected]
    client.submit_labels(running.stub, [(i, true_label(i)) for i in drawn], "alice")
    assert calibration_warnings() == []  # enough audit labels now, before any new PriorLabels
    cal = priors()[0].calibration
    assert (cal.source, cal.audit_labels, cal.warning) == ("audit", 22, "")
    assert AUDIT_MIN_LABELS <= cal.held_out <= 22 and cal.temperature > 0
    res = CliRunner().invoke(app, ["prior", "--agent", running.address, "--method", "knn"])
    assert res.stdout.rstrip().splitlines()[-1] == \
        f"confidences calibrated on {cal.held_out} audit labels (audit or random draws) (temperature " \
        f"{cal.temperature:.3g})"


def test_a_refusal_with_no_wait_hinted_still_backs_off() -> None:
    """A refusal for the deadline hints 0 s (nothing to wait for): without a floor every GetStatus would
    start, and log, another refused attempt (hundreds a minute under a 16-client load)."""
    from agent.admission import Busy

    class Refusing:
        calls = 0

        def run(self, token: Any, fn: Any, what: str) -> Any:
            Refusing.calls += 1
            raise Busy("it would not finish within its deadline", retry_after_s=0.0)

    x, y = blobs(clusters=3, per_cluster=10, seed=4)
    pool = make_pool(x, y, labeled=np.arange(30))
    labels = np.concatenate([[-1], y])
    auditor = PriorAuditor(replace(CFG, busy_backoff_s=30.0), lambda: np.array([2, 3, 12, 22]), lambda: labels,
                           lambda: (pool, np.arange(1, 31, dtype=np.int64), "v1"), lambda q: f"s{q}",
                           lambda: "v1", Refusing(), background=True)  # type: ignore[arg-type]
    try:
        auditor.report()
        deadline = time.monotonic() + 5
        while Refusing.calls == 0 or auditor._running_key is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(20):
            auditor.report()
        assert Refusing.calls == 1
        assert auditor._not_before - time.monotonic() > 20
    finally:
        auditor.stop()
    with pytest.raises(ValueError, match="busy_backoff_s"):
        AuditConfig(busy_backoff_s=-1)


def test_random_picks_count_as_audit_labels_and_chosen_ones_warn(tmp_path: Path, registry: Path) -> None:
    """Select "random" without a where filter draws uniformly from the pool, as the audit does: once 20 of
    its picks are labelled the temperature is fitted on them ("audit"), also after a restart (the draws are
    read back from the recorded selections). Before that, a labelled-set fit on 20 or more held-out labels
    that a strategy chose says so; random picks under a where filter are not uniform draws of the pool."""
    from agent.priors.calibration import AUDIT_MIN_LABELS

    def calibration(r: Running) -> agent_pb2.Calibration:
        return next(iter(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration

    def pick_and_label(r: Running, strategy: str, budget: int, **where: str) -> list[str]:
        ids = [s.id for s in r.stub.Select(agent_pb2.SelectRequest(budget=budget, strategy=strategy, seed=2,
                                                                   where=where)).selected]
        client.submit_labels(r.stub, [(i, true_label(i)) for i in ids], "alice")
        return ids

    running = start(tmp_path / "data", registry)
    try:
        client.ingest(running.stub, make_samples(90, labels=3))
        pick_and_label(running, "typiclust", 24)
        cal = calibration(running)  # 27 labels a strategy chose (or ingest carried): no uniform draw
        assert cal.source == "labelled" and cal.held_out >= 20 and cal.audit_labels == 0
        assert cal.warning.startswith(f"confidences calibrated on {cal.held_out} held-out labels while 0 labels "
                                      "were drawn uniformly")
        assert f"label {AUDIT_MIN_LABELS} audit samples" in cal.warning
        pick_and_label(running, "random", 10, site="a")  # uniform over site "a" only: not the pool's draw
        assert calibration(running).audit_labels == 0
        pick_and_label(running, "random", 24)
        cal = calibration(running)
        assert (cal.source, cal.audit_labels, cal.warning) == ("audit", 24, "")
        assert AUDIT_MIN_LABELS <= cal.held_out <= 24
        assert not [w for w in running.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "audit sample" in w]
    finally:
        running.stop()
    again = start(tmp_path / "data", registry)  # the draws are read back from the recorded selections
    try:
        assert calibration(again) == cal
    finally:
        again.stop()


def test_a_draws_labels_count_from_its_start() -> None:
    """``counted_labels``: the labelled picks of the longest start of a draw that leaves at most one pick, or
    10% of them, unlabelled; labels scattered over a draw (someone chose which picks to label) do not count."""
    from agent.core import MIN_DRAW_COUNTED, counted_labels

    order = np.arange(100, 200)

    def counted(labelled_positions: list[int] | range, minimum: int = 1) -> list[int]:
        labelled = np.zeros(len(order), bool)
        labelled[list(labelled_positions)] = True
        return (counted_labels(order, labelled, minimum) - 100).tolist()

    assert counted(range(30)) == list(range(30))  # the first 30 picks, labelled in order
    assert counted([i for i in range(20) if i != 7]) == [i for i in range(20) if i != 7]  # one skipped of 20
    assert counted([*range(10), *range(20, 25)]) == list(range(10))  # the next ten skipped: stops at 10
    assert counted(range(1, 8)) == list(range(1, 8))  # the first of 8 taken back: one pick always allowed
    assert counted([3, 17, 42, 58, 77, 91]) == []  # scattered: chosen, not drawn
    assert counted([0, 50, 90]) == [0]
    assert counted([]) == [] and len(counted_labels(order[:0], np.zeros(0, bool))) == 0
    # random's draws (MIN_DRAW_COUNTED): a start of fewer than 10 labelled picks counts nothing
    assert counted([0, 50, 90], MIN_DRAW_COUNTED) == [] and counted(range(9), MIN_DRAW_COUNTED) == []
    assert counted(range(10), MIN_DRAW_COUNTED) == list(range(10))
    small = np.arange(3)  # a draw of 3, wholly labelled: too small to tell a uniform sample from a coincidence
    assert len(counted_labels(small, np.ones(3, bool), MIN_DRAW_COUNTED)) == 0


def test_a_draws_dense_stretches_count_wherever_they_start() -> None:
    """``counted_labels``: the web app's Queue starts each annotator at a tile chosen by their name and wraps
    round, so a draw is labelled in stretches that need not start at its first pick. Every stretch of at
    least MIN_STRETCH_COUNTED labelled picks (a skipped pick or a few allowed) counts, on the draw read as a
    ring; a shorter one away from the start does not."""
    from agent.core import MIN_DRAW_COUNTED, MIN_STRETCH_COUNTED, counted_labels

    def counted(size: int, labelled_positions: list[int] | range, minimum: int = 1) -> list[int]:
        order = np.arange(100, 100 + size)
        labelled = np.zeros(size, bool)
        labelled[list(labelled_positions)] = True
        return (counted_labels(order, labelled, minimum) - 100).tolist()

    maria = [*range(10, 20), *range(5)]  # an audit of 20 from tile 11: tiles 11-20, then 1-5
    for minimum in (1, MIN_DRAW_COUNTED):
        assert counted(20, maria, minimum) == sorted(maria)
        assert counted(20, range(10, 20), minimum) == list(range(10, 20))  # tiles 11-20 alone
    # two annotators on a random draw of 100, from tiles 38 and 81 (the second wraps round to tile 3),
    # each skipping one image
    sam, ana = [i for i in range(37, 52) if i != 40], [i for i in [*range(80, 100), *range(3)] if i != 90]
    assert counted(100, sam + ana, MIN_DRAW_COUNTED) == sorted(sam + ana)
    assert counted(100, [*range(10), *range(20, 30)]) == [*range(10), *range(20, 30)]  # the start and a stretch
    # a stretch of fewer labelled picks away from the start counts nothing; the start still counts alone
    assert MIN_STRETCH_COUNTED == 10
    assert counted(100, range(50, 59)) == [] and counted(100, [0, *range(50, 59)]) == [0]
    # a stretch labelled every other pick in its middle: its two dense ends count, the middle (beyond the
    # slack read from either end) does not
    middle = list(range(42, 62, 2))
    both = [*range(30, 42), *middle, *range(62, 74)]
    assert counted(100, both) == [*range(30, 43), 44, 60, *range(62, 74)]


def test_labels_chosen_from_a_random_order_count_nothing() -> None:
    """Cherry-picking: a pipeline draws the whole pool in random order and labels the pictures of one class
    it wants. Its labels lie where the random order put them, isolated, so (nearly) none counts: one class
    of ten over 200-pick draws counts none beyond the start the old start-only rule counted too, and a
    class of 30% counts well under 1% (with a minimum of 3 labelled picks per stretch instead of 10, it
    had 43% of its labels counted)."""
    from agent.core import MIN_DRAW_COUNTED, counted_labels

    rng = np.random.default_rng(0)
    order = np.arange(200)
    for share, most in ((0.1, 0.0), (0.3, 0.01)):
        labelled_total = beyond_start = 0
        for _ in range(300):
            labelled = rng.random(200) < share  # the picks of the wanted class
            labelled_total += int(labelled.sum())
            m = np.arange(1, 201)  # the start-only rule: the longest start within the slack
            start = int(np.flatnonzero(m - np.cumsum(labelled) <= np.maximum(1, 0.1 * m) + 1e-9)[-1]) + 1
            beyond_start += int((counted_labels(order, labelled) >= start).sum())
            assert len(counted_labels(order, labelled, MIN_DRAW_COUNTED)) == 0 or share > 0.1
        assert beyond_start <= most * labelled_total, (share, beyond_start, labelled_total)


def test_labels_chosen_from_a_large_random_draw_do_not_count(tmp_path: Path, registry: Path) -> None:
    """A random Select of the whole pool, then labels on picks someone chose from it (here the cats after
    its first 30 picks and before its last 6): not a uniform sample, so the calibration does not fit on
    them and says so; labelling the draw from its start does count. (Its last 30 picks would count:
    positions chosen without looking at the images are a uniform sample, ``counted_labels``. The last 6
    are left out as chosen labels next to a counted stretch, on the ring the draw's last picks, join it
    within the slack.)"""
    running = start(tmp_path / "data", registry)
    try:
        client.ingest(running.stub, make_samples(90, labels=3))
        order = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=1000, strategy="random",
                                                                           seed=5)).selected]
        assert len(order) == 87
        cats = [i for i in order[30:-6] if true_label(i) == "cat"]
        assert len(cats) >= 10
        client.submit_labels(running.stub, [(i, "cat") for i in cats], "alice")

        def calibration() -> agent_pb2.Calibration:
            return next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration

        cal = calibration()
        assert (cal.source, cal.audit_labels) == ("labelled", 0) and "label 20 audit samples" in cal.warning
        client.submit_labels(running.stub, [(i, true_label(i)) for i in order[:24]], "alice")
        cal = calibration()
        assert (cal.source, cal.audit_labels, cal.warning) == ("audit", 24, "")
    finally:
        running.stop()


def test_many_small_random_draws_do_not_make_hand_picked_labels_audit_labels(running: Running) -> None:
    """A dashboard's "3 random samples" every few seconds: 150 draws cover the pool between them, so every
    sample labelled by hand afterwards (the first 30 in arrival order) was the first pick of some draw. Not
    a uniform sample: the calibration still fits on the labelled samples and keeps its warning."""
    client.ingest(running.stub, make_samples(300, labels=0))
    for seed in range(150):
        running.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="random", seed=seed))
    assert len(running.agent._draws) == 150
    client.submit_labels(running.stub, [(f"s{i}", true_label(f"s{i}")) for i in range(30)], "alice")
    assert running.agent.uniform_labelled() == 0
    cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
    assert (cal.source, cal.audit_labels) == ("labelled", 0) and "label 20 audit samples" in cal.warning


def test_the_accuracy_audit_counts_a_draw_from_its_start(running: Running) -> None:
    """The accuracy audit scores the same audit labels the calibration counts: labels picked from a large
    audit draw by their class (the cats after its first 12 picks) are ordinary labels (seeds), not a
    uniform sample to score on."""
    client.ingest(running.stub, make_samples(40, labels=6))
    order = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=1000, strategy="audit",
                                                                       seed=4)).selected]
    assert len(order) == 34
    cats = [i for i in order[12:] if true_label(i) == "cat"]
    assert len(cats) >= 5
    client.submit_labels(running.stub, [(i, "cat") for i in cats], "alice")
    a = running.stub.GetStatus(agent_pb2.GetStatusRequest()).audit
    assert (a.drawn, a.labelled) == (34, 0)
    client.submit_labels(running.stub, [(i, true_label(i)) for i in order[:8]], "alice")
    a = wait_audit(running, 8)
    assert a.drawn == 34 and all(m.overall.total == 8 for m in a.methods if not m.error)


def test_the_audit_counts_a_draw_labelled_from_the_queues_start_tile(running: Running) -> None:
    """The web app's Queue starts Maria at tile 11 of an audit of 20: she labels tiles 11-20, then 1-5. All 15
    are audit labels, scored by the accuracy audit (the start-only rule counted 5, and scored 3)."""
    client.ingest(running.stub, make_samples(40, labels=6))
    order = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=20, strategy="audit",
                                                                       seed=4)).selected]
    assert len(order) == 20
    client.submit_labels(running.stub, [(i, true_label(i)) for i in order[10:] + order[:5]], "Maria")
    a = wait_audit(running, 15)
    assert a.drawn == 20 and all(m.overall.total == 15 for m in a.methods if not m.error)
    assert running.agent.uniform_labelled() == 15


def test_two_queues_on_a_random_draw_calibrate_the_priors(tmp_path: Path, registry: Path) -> None:
    """Two annotators label a random draw of the pool from their own start tiles (the second wrapping round
    to the draw's first picks): their labels together are a uniform sample, and the calibration fits on
    them."""
    running = start(tmp_path / "data", registry)
    try:
        client.ingest(running.stub, make_samples(90, labels=3))
        order = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=60, strategy="random",
                                                                           seed=5)).selected]
        assert len(order) == 60
        client.submit_labels(running.stub, [(i, true_label(i)) for i in order[21:33]], "Maria")
        client.submit_labels(running.stub, [(i, true_label(i)) for i in order[50:] + order[:3]], "Sam")
        cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
        assert (cal.source, cal.audit_labels, cal.warning) == ("audit", 25, "")
    finally:
        running.stop()


def test_the_status_warning_survives_a_restart(tmp_path: Path, registry: Path) -> None:
    """GetStatus repeats the last PriorLabels' calibration warning after a restart, before any new
    PriorLabels (the fit is kept in the state, not only in memory), and stops once the labels that fix it
    are given."""
    def calibration_warnings(r: Running) -> list[str]:
        return [w for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "audit sample" in w]

    running = start(tmp_path / "data", registry)
    try:
        client.ingest(running.stub, make_samples(90, labels=3))
        ids = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=24, strategy="typiclust",
                                                                         seed=2)).selected]
        client.submit_labels(running.stub, [(i, true_label(i)) for i in ids], "alice")
        assert calibration_warnings(running) == []  # no PriorLabels yet: nothing to warn about
        cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
        assert cal.warning and calibration_warnings(running) == [f"prior knn (last PriorLabels): {cal.warning}"]
    finally:
        running.stop()
    again = start(tmp_path / "data", registry)
    try:
        assert calibration_warnings(again) == [f"prior knn (last PriorLabels): {cal.warning}"]
        ids = [s.id for s in again.stub.Select(agent_pb2.SelectRequest(budget=20, strategy="audit",
                                                                       seed=3)).selected]
        client.submit_labels(again.stub, [(i, true_label(i)) for i in ids], "alice")
        assert calibration_warnings(again) == []  # 20 uniform draws labelled since the fit
    finally:
        again.stop()


def test_status_repeats_the_calibration_warning_until_the_labels_that_fix_it_arrive() -> None:
    """GetStatus's copy of the last PriorLabels' warning (``Agent.calibration_warning``, given the uniformly
    drawn labels now): it stays until uniform draws labelled since that fit reach 20 (20 labelled that did
    not all count keep it, with the reason); an audit fit whose labels were retracted below 20 warns already."""
    from types import SimpleNamespace

    from agent.core import Agent
    from agent.priors.calibration import TemperatureFit

    def warn(fit: TemperatureFit | None, uniform: int) -> str:
        agent = SimpleNamespace(last_prior_fit=None if fit is None else ("knn", fit),  # all the method reads
                                uniform_labelled=lambda: uniform, state=SimpleNamespace(closed=True))
        return Agent.calibration_warning(agent)  # type: ignore[arg-type]

    assert warn(None, 0) == ""
    chosen = TemperatureFit(0.7, "labelled", 28, 0)
    assert warn(chosen, 10) == "prior knn (last PriorLabels): " + replace(chosen, audit_labels=10).warning()
    assert "label 10 audit samples" in warn(chosen, 10)
    assert warn(chosen, 20) == ""  # 20 uniform labels since: the next PriorLabels fits on them
    short = TemperatureFit(0.7, "labelled", 21, 20)  # 20 labelled, but a class's only one cannot be held out
    assert "label more audit samples (20 are labelled but fewer than 20 count: an audit label whose class has no " \
           "other label cannot be held out)" in warn(short, 20)
    assert warn(short, 21) == ""
    audit = TemperatureFit(0.8, "audit", 24, 24)
    assert warn(audit, 24) == warn(audit, 20) == ""
    assert warn(audit, 14) == (
        "prior knn (last PriorLabels): confidences calibrated on 24 audit labels, but only 14 uniformly drawn "
        "labels are left (labels were retracted): label 6 audit samples (shortlist select --strategy audit) for "
        "trustworthy confidences")


def _counted_by_walking(draws: list[tuple[str, np.ndarray]], labels: np.ndarray, audit: np.ndarray,
                        audit_only: bool) -> np.ndarray:
    """The counted picks as ``Agent.counted_seqs`` computed them before ``CountedDraws``: every draw walked."""
    from agent.core import AUDIT, MIN_DRAW_COUNTED, counted_labels

    def is_labelled(seqs: np.ndarray) -> np.ndarray:
        inside = seqs < len(labels)
        return inside & (labels[np.where(inside, seqs, 0)] >= 0)

    parts = [counted_labels(order, is_labelled(order), 1 if s == AUDIT else MIN_DRAW_COUNTED)
             for s, order in draws if s == AUDIT or not audit_only]
    recorded = [order for _, order in draws]
    orphans = np.setdiff1d(audit, np.concatenate(recorded) if recorded else np.zeros(0, np.int64))
    parts.append(orphans[is_labelled(orphans)])
    return np.unique(np.concatenate(parts))


def test_counted_draws_kept_up_to_date_answer_as_walking_every_draw() -> None:
    """``CountedDraws`` recounts only the draws whose picks' labels changed, and answers as walking every
    draw did: over rounds of new draws (random and audit, from one pick to the pool), labels given and
    retracted, a pool that grows and audit seqs no recorded draw holds (a draw whose record was lost)."""
    from agent.core import AUDIT, CountedDraws

    rng = np.random.default_rng(3)
    kept = CountedDraws()
    draws: list[tuple[str, np.ndarray]] = []
    pool = 60
    labels = np.full(pool + 1, -1, np.int64)
    audit = np.zeros(0, np.int64)
    for round_ in range(40):
        for _ in range(int(rng.integers(0, 4))):
            strategy = AUDIT if rng.random() < 0.4 else "random"
            order = rng.permutation(np.arange(1, pool + 1))[: int(rng.integers(1, pool + 1))].astype(np.int64)
            draws.append((strategy, order))
            kept.add(strategy, order)
            if strategy == AUDIT:
                audit = np.union1d(audit, order)
        if round_ % 7 == 3:  # an audit draw whose record a power loss took, and new samples
            audit = np.union1d(audit, np.arange(pool + 1, pool + 6))
            pool += 5
            labels = np.concatenate([labels, np.full(5, -1, np.int64)])
        flip = rng.choice(np.arange(1, pool + 1), size=int(rng.integers(0, 25)), replace=False)
        labels[flip] = np.where(labels[flip] >= 0, -1, rng.integers(0, 3, len(flip)))
        if round_ % 5 == 0:  # runs of labels from a draw's start, as an annotator labels down the Queue
            _, order = draws[int(rng.integers(len(draws)))] if draws else ("", np.zeros(0, np.int64))
            labels[order[: int(rng.integers(0, len(order) + 1))]] = 1
        for audit_only in (False, True):
            want = _counted_by_walking(draws, labels, audit, audit_only)
            got = kept.counted(labels, audit, audit_only)
            assert got.dtype == np.int64 and got.tolist() == want.tolist()


def test_get_status_does_not_recount_every_draw(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """GetStatus counts the uniform draws' audit labels (calibration warning, accuracy audit) without walking
    every draw ever recorded each time (it grew ~10 us a draw, without bound): with nothing changed it
    counts no draw again, and a label counts again only the draws that hold the labelled sample."""
    from agent import core

    client.ingest(running.stub, make_samples(120, labels=6))
    orders = [[s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=5, strategy=strategy,
                                                                          seed=seed)).selected]
              for seed in range(40) for strategy in ("random", "audit")]
    next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))))  # a fit: the warning counts
    first = running.stub.GetStatus(agent_pb2.GetStatusRequest())
    calls: list[int] = []
    real = core.counted_labels

    def counting(order: np.ndarray, labelled: np.ndarray, minimum: int = 1) -> np.ndarray:
        calls.append(len(order))
        return real(order, labelled, minimum)

    monkeypatch.setattr(core, "counted_labels", counting)
    for _ in range(5):
        assert running.stub.GetStatus(agent_pb2.GetStatusRequest()) == first
    assert calls == []
    picked = orders[0][0]
    client.submit_labels(running.stub, [(picked, true_label(picked))], "alice")
    running.stub.GetStatus(agent_pb2.GetStatusRequest())
    running.stub.GetStatus(agent_pb2.GetStatusRequest())
    assert len(calls) == sum(picked in order for order in orders)


def test_audit_draws_labelled_by_accepting_their_prior_are_not_scored(running: Running) -> None:
    """An audit draw labelled by accepting its prior (source prior:METHOD) would measure the prior against its
    own answer: the accuracy audit leaves it out and says how many (PriorAudit.left_out; `shortlist status`),
    and GetStatus's count of uniformly drawn labels leaves it out as the calibration's audit_labels does. A
    label changed by hand is scored again; an undo of that change puts the accepted prior back, left out."""
    client.ingest(running.stub, make_samples(40, labels=6))
    order = [s.id for s in running.stub.Select(agent_pb2.SelectRequest(budget=12, strategy="audit",
                                                                       seed=4)).selected]
    assert len(order) == 12
    client.submit_labels(running.stub, [(i, true_label(i)) for i in order[:8]], "alice")
    client.submit_labels(running.stub, [(i, true_label(i)) for i in order[8:]], "bob", source="prior:knn")
    a = wait_audit(running, 8)
    assert (a.drawn, a.labelled, a.left_out) == (12, 8, 4), a
    assert all(m.overall.total == 8 for m in a.methods if not m.error)
    assert running.agent.uniform_labelled() == 8
    cal = next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration
    assert (cal.audit_labels, cal.left_out) == (8, 4), cal
    from typer.testing import CliRunner

    from shortlist.cli import app
    res = CliRunner().invoke(app, ["status", "--agent", running.address])
    assert res.exit_code == 0, res.output
    assert "audit: 8 of 12 drawn samples labelled and scored, 4 more labelled by accepting a prior" in \
        " ".join(res.stdout.split())
    client.submit_labels(running.stub, [(order[8], true_label(order[8]))], "carol", source="manual")
    a = wait_audit(running, 9)
    assert (a.labelled, a.left_out) == (9, 3) and running.agent.uniform_labelled() == 9
    client.retract_labels(running.stub, [order[8]], "carol", restore_previous=True)
    a = wait_audit(running, 8)
    assert (a.labelled, a.left_out) == (8, 4)
