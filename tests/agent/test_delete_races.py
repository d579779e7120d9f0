"""DeleteSamples racing other work: a seq list read before a deletion (the unembeddable samples, a re-embedding's
missing samples, a Select's picks, the labelled ids that seed a request's rng) must not make a later call fail
with INTERNAL, nor keep a deleted id in the state. Each race is forced: the deletion runs at the point where it
would have to interleave."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import client
from agent.blobs import sha256_hex
from agent.core import NOT_STORED
from agent.index import VersionIndex
from agent.state import EmbeddingRows
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running, make_samples, start


def status(r: Running) -> agent_pb2.Status:
    return r.stub.GetStatus(agent_pb2.GetStatusRequest())


def wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def delete_now(r: Running, sid: str) -> None:
    """Delete ``sid`` in this thread, through the agent (what DeleteSamples runs)."""
    assert r.agent.delete_samples([sid], "ops", "privacy")[0] == 1


def recorded_ids(data: Path) -> list[str]:
    """Every id in the recorded selections of the data folder ``data``."""
    with sqlite3.connect(data / "state.sqlite") as db:
        return [str(p[0]) for (res,) in db.execute("SELECT result FROM selections") for p in json.loads(res)]


def audit_seqs(data: Path) -> set[int]:
    with sqlite3.connect(data / "state.sqlite") as db:
        return {int(q) for (q,) in db.execute("SELECT seq FROM audit")}


# ---- the unembeddable samples ----------------------------------------------------------------------

def test_deleting_a_sample_that_cannot_be_embedded_keeps_getstatus_working(tmp_path: Path) -> None:
    reg = tmp_path / "models"
    reg.mkdir()
    r = start(tmp_path / "d", reg)
    try:
        samples = make_samples(10)
        client.ingest(r.stub, samples)
        r.agent.blobs.path(sha256_hex(samples[3].encoded_image)).unlink()  # type: ignore[union-attr]  # a lost payload
        publish_linear(reg, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        wait("the pool embedded", lambda: status(r).embedded >= 9
             and any("cannot be embedded" in w for w in status(r).warnings))
        seq3 = r.agent.state.lookup("s3").seq  # type: ignore[union-attr]
        delete_now(r, "s3")
        st = status(r)  # was INTERNAL (AssertionError): the warning looked the deleted seq up
        assert (st.samples, st.embedded) == (9, 9)
        assert not [w for w in st.warnings if "cannot be embedded" in w or "not embedded yet" in w]
        # An embedding batch that read a sample before its deletion can list it as unembeddable after (its payload
        # file went with it): GetStatus leaves it out too.
        r.agent.manager.unembeddable["v0001"][seq3] = "payload file missing"
        st = status(r)
        assert not [w for w in st.warnings if "cannot be embedded" in w or "not embedded yet" in w]
    finally:
        r.stop()


# ---- a re-embedding ---------------------------------------------------------------------------------

def test_a_deletion_during_a_re_embedding_neither_refuses_the_version_nor_serves_the_deleted_row(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = start(tmp_path / "d", registry)
    try:
        client.ingest(r.stub, make_samples(30))
        wait("v0001 embedding the pool", lambda: status(r).embedded == 30)
        manager, state = r.agent.manager, r.agent.state
        seq = {sid: state.lookup(sid).seq for sid in ("s5", "s6")}  # type: ignore[union-attr]
        missing, add_embeddings = manager._missing, state.add_embeddings
        fired: list[str] = []

        def missing_then_delete(index: VersionIndex) -> list[int]:
            out = missing(index)
            if index.version == "v0002" and "s5" not in fired and seq["s5"] in out:
                fired.append("s5")
                delete_now(r, "s5")  # after the list of samples to embed was taken (was: AssertionError, refused)
            return out

        def delete_then_store(e: EmbeddingRows, seqs: list[int]) -> None:
            if e.version == "v0002" and "s6" not in fired and seq["s6"] in seqs:
                fired.append("s6")
                delete_now(r, "s6")  # between the batch's check and the row's add to the pending index
            add_embeddings(e, seqs)

        monkeypatch.setattr(manager, "_missing", missing_then_delete)
        monkeypatch.setattr(state, "add_embeddings", delete_then_store)
        publish_linear(registry, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=1)
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        wait("v0002 served", lambda: status(r).model_version == "v0002" or bool(manager.failed))
        assert fired == ["s5", "s6"]
        assert not manager.failed  # was: "v0002 refused: it failed while embedding the stored samples"
        st = status(r)
        assert (st.samples, st.embedded) == (28, 28)
        served = manager.current
        assert served is not None and not served.index.has(seq["s5"]) and not served.index.has(seq["s6"])
        view = served.index.view()
        assert not np.isin(view.seqs, list(seq.values())).any()
        rows, _ = served.index.knn(view.vecs[view.seqs > 0][:1], served.index.n)
        assert not np.isin(view.seqs[rows[rows >= 0]], list(seq.values())).any()
    finally:
        r.stop()


# ---- Select ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["random", "audit"])
def test_a_sample_deleted_after_select_picked_it_is_neither_answered_nor_recorded(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, strategy: str) -> None:
    r = start(tmp_path / "d", registry)
    try:
        client.ingest(r.stub, make_samples(20))
        wait("the pool embedded", lambda: status(r).embedded == 20)
        run_strategy = r.agent._run_strategy
        victims: list[str] = []

        def pick_then_delete(*args: Any, **kw: Any) -> tuple[list[tuple[str, float]], dict[str, str]]:
            chosen, details = run_strategy(*args, **kw)
            victims.append(chosen[0][0])
            delete_now(r, chosen[0][0])  # after the picks, before they are recorded
            return chosen, details

        monkeypatch.setattr(r.agent, "_run_strategy", pick_then_delete)
        sel = r.stub.Select(agent_pb2.SelectRequest(budget=5, strategy=strategy, seed=1))  # audit: was INTERNAL
        answered = [s.id for s in sel.selected]
        assert len(victims) == 1 and victims[0] not in answered and len(answered) == 4
        assert r.agent.counted_seqs(strategy == "audit").size == 0  # nothing labelled; the draw is recorded
        monkeypatch.undo()
        assert victims[0] not in {s.id for s in client.list_samples(r.stub)}
    finally:
        r.stop()
    ids = recorded_ids(tmp_path / "d")
    assert victims[0] not in ids and set(answered) <= set(ids)
    assert len(audit_seqs(tmp_path / "d")) == (4 if strategy == "audit" else 0)


@pytest.mark.parametrize(("strategy", "window"), [("random", "record_selection"), ("audit", "add_audit")])
def test_a_deletion_that_arrives_while_select_records_waits_and_then_takes_the_id_out(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, window: str) -> None:
    r = start(tmp_path / "d", registry)
    try:
        client.ingest(r.stub, make_samples(20))
        wait("the pool embedded", lambda: status(r).embedded == 20)
        state = r.agent.state
        original = getattr(state, window)
        deleters: list[threading.Thread] = []
        errors: list[BaseException] = []
        victims: list[str] = []

        def deleting(*args: Any) -> None:
            try:
                delete_now(r, victims[0])
            except BaseException as e:  # reported by the test below
                errors.append(e)

        def racing(*args: Any) -> None:
            if not deleters:
                victims.append(args[2][0][0] if window == "record_selection" else state.record(int(args[0][0])).id)
                deleters.append(threading.Thread(target=deleting))
                deleters[0].start()
                deleters[0].join(0.5)  # was: the deletion committed here, and the write below kept the id
            original(*args)

        monkeypatch.setattr(state, window, racing)
        sel = r.stub.Select(agent_pb2.SelectRequest(budget=5, strategy=strategy, seed=1))  # audit: was INTERNAL
        deleters[0].join(10)
        assert not deleters[0].is_alive() and not errors
        # The answer predates the deletion: it may name the victim; the state must not keep it.
        assert victims[0] in {s.id for s in sel.selected}
        assert state.lookup(victims[0]) is None
    finally:
        r.stop()
    assert victims[0] not in recorded_ids(tmp_path / "d")
    assert len(audit_seqs(tmp_path / "d")) == (4 if strategy == "audit" else 0)


# ---- the labelled ids and the where filter ------------------------------------------------------------

def test_a_sample_deleted_while_select_or_priorlabels_reads_the_labels_is_no_internal_error(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = start(tmp_path / "d", registry)
    try:
        client.ingest(r.stub, make_samples(30, labels=10))
        wait("the pool embedded", lambda: status(r).embedded == 30)
        state, agent = r.agent.state, r.agent
        labels_by_seq, alive_by_seq, labelled_ids = state.labels_by_seq, state.alive_by_seq, agent.labelled_ids
        armed: list[Any] = []  # [what, victim, thread]: the next read of ``what`` in that thread deletes victim
        victims = ["s0", "s1"]  # labelled (make_samples labels the first 10)

        def fire(what: str) -> None:
            if armed and armed[0] == what and armed[2] == threading.get_ident():
                victim = armed[1]
                armed.clear()
                delete_now(r, victim)

        def labels_then_delete() -> np.ndarray:
            out = labels_by_seq()
            fire("labels")  # a labelled sample, after its label was read
            return out

        def alive_then_delete() -> np.ndarray:
            out = alive_by_seq()
            fire("alive")  # a stored sample, after it was read as alive
            return out

        def arm_labelled_ids() -> list[str]:
            if not armed and victims:
                armed.extend(["labels", victims.pop(0), threading.get_ident()])
            return labelled_ids()

        monkeypatch.setattr(state, "labels_by_seq", labels_then_delete)
        monkeypatch.setattr(state, "alive_by_seq", alive_then_delete)
        monkeypatch.setattr(agent, "labelled_ids", arm_labelled_ids)
        r.stub.Select(agent_pb2.SelectRequest(budget=5, strategy="random", seed=2))  # was INTERNAL
        assert list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))  # was INTERNAL
        assert victims == [] and state.lookup("s0") is None and state.lookup("s1") is None
        monkeypatch.setattr(agent, "labelled_ids", labelled_ids)
        select_in = agent.select

        def arm_alive(*args: Any, **kw: Any) -> Any:
            armed.extend(["alive", "s20", threading.get_ident()])  # unlabelled, site a: read alive by the filter
            return select_in(*args, **kw)

        monkeypatch.setattr(agent, "select", arm_alive)
        sel = r.stub.Select(agent_pb2.SelectRequest(budget=30, strategy="random", seed=3, where={"site": "a"}))
        assert not armed and state.lookup("s20") is None and "s20" not in {s.id for s in sel.selected}
    finally:
        r.stop()


def test_the_select_filter_drops_an_id_deleted_and_ingested_again_since_the_pool_was_read(running: Running) -> None:
    r = running
    client.ingest(r.stub, make_samples(3))
    newest = r.agent.state.max_seq()
    r.agent.delete_samples(["s1"], "ops", "t")
    client.ingest(r.stub, make_samples(3)[1:2])  # s1 again: a new sample under a new seq
    assert r.agent._still_stored([("s0", 1.0), ("s1", 0.5), ("s2", 0.2)], newest) == [("s0", 1.0), ("s2", 0.2)]


# ---- status --by-annotator after a deletion ----------------------------------------------------------

def test_status_by_annotator_counts_what_deletions_left_in_label_events(
        running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """label_events keeps counting the label rows of deleted samples, plus one per deletion (agent/state.py): the
    history no longer holds them, so `status --by-annotator` names them as a fifth figure (was: "label_events
    counts all four" beside four figures that did not add up to it)."""
    from tests.agent.test_cli import run

    r = running
    client.ingest(r.stub, make_samples(6, labels=2))  # s0, s1 labelled at ingest
    client.submit_labels(r.stub, [("s1", "dog"), ("s2", "cat"), ("s3", "cat")], "kim")
    assert client.retract_labels(r.stub, ["s3"], annotator="kim").accepted == 1
    assert r.agent.delete_samples(["s1", "s3"], "ops", "privacy")[0] == 2  # 2 + 2 label rows, one deletion
    d = json.loads(run("status", "--agent", r.address, "--json", "--by-annotator"))
    assert (d["labels_given"], d["retracted"], d["renamed"], d["restored"], d["deleted"]) == (2, 0, 0, 0, 5)
    assert d["label_events"] == d["labels_given"] + d["retracted"] + d["renamed"] + d["restored"] + d["deleted"] == 7
    human = run("status", "--agent", r.address, "--by-annotator")
    assert ("0 moved by a class rename, 0 put back by an undo, 5 for deletions (label rows of deleted samples, and "
            "one per DeleteSamples; label_events counts all five)") in human
    assert "label_events counts all four)" not in human

    list_labels = client.list_labels
    given = iter(["cat", "dog"])

    def listing_then_label(*args: Any, **kw: Any) -> Any:
        yield from list_labels(*args, **kw)
        client.submit_labels(r.stub, [("s4", next(given))], "kim")  # label_events moves while the history is read

    monkeypatch.setattr(client, "list_labels", listing_then_label)
    d = json.loads(run("status", "--agent", r.address, "--json", "--by-annotator"))
    assert d["deleted"] is None
    human = run("status", "--agent", r.address, "--by-annotator")
    assert "plus the label rows of deleted samples and one per DeleteSamples; labels changed while" in human


def test_a_deletion_waiting_for_a_backup_holds_up_no_other_write(running: Running) -> None:
    """A `shortlist backup` between its state copy and its blob links holds blobs/.lock shared; a DeleteSamples
    waits for it. It waited under the agent's write lock, so labels and Ingest timed out for as long as the
    backup ran (minutes to another disk; for ever if it was suspended): they go on now, and the deletion ends
    once the backup lets go."""
    import fcntl
    import os

    client.ingest(running.stub, make_samples(10))
    fd = os.open(running.data / "blobs" / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    done: list[agent_pb2.DeleteSamplesReply] = []
    t = threading.Thread(target=lambda: done.append(running.stub.DeleteSamples(
        agent_pb2.DeleteSamplesRequest(ids=["s1"], annotator="ops", reason="privacy"), timeout=30)))
    try:
        t.start()
        time.sleep(0.5)
        labelled = running.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
            labels=[agent_pb2.LabelAssignment(id="s2", label=CLASSES[0])], annotator="alice"), timeout=3)
        assert labelled.accepted == 1
        assert client.ingest(running.stub, make_samples(12)[10:]).accepted == 2
        assert not done  # still waiting for the backup
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    t.join(10)
    assert done and done[0].accepted == 1 and done[0].payloads_removed == 1


def test_a_deletion_of_nothing_answers_at_once_while_a_backup_holds_the_blobs_lock(running: Running) -> None:
    """A DeleteSamples whose ids are all unknown or deleted already (a resend after a lost reply, the common
    case) deletes nothing, so it has no payload to keep from a backup: it waited for the backup all the same
    (minutes; until its deadline if the backup was suspended). It answers at once now, with its rejections."""
    import fcntl
    import os

    client.ingest(running.stub, make_samples(3))
    assert running.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s1"], annotator="ops",
                                                                     reason="privacy")).accepted == 1
    fd = os.open(running.data / "blobs" / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # as `shortlist backup` holds it between its state copy and its links
    try:
        started = time.monotonic()
        again = running.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(
            ids=["s1", "nope", "s1"], annotator="ops", reason="privacy"), timeout=5)
        assert time.monotonic() - started < 2
        assert again.accepted == 0 and again.payloads_removed == 0
        assert [(x.id, x.reason) for x in again.rejected] == [
            (sid, NOT_STORED) for sid in ("s1", "nope", "s1")]
        assert [r.id for r in client.list_samples(running.stub)] == ["s0", "s2"]  # nothing else deleted
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
