"""DeleteSamples: a deleted sample leaves every listing, Select, PriorLabels, the counts, queues, recorded draws
and (unless another sample holds the same bytes) the blob store, durably and atomically; the same id may be
ingested again as a new sample."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from agent import client
from agent.blobs import sha256_hex
from agent.config import AgentConfig
from agent.core import NOT_STORED
from agent.index import VersionIndex
from agent.security import ServerSecurity
from agent.service import create_server, stop_server
from agent.state import SCHEMA_VERSION, EmbeddingRows, NewSample, State
from shortlist.cli import app
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start
from tests.agent.test_queues import code_of
from tests.agent.test_security import READ_TOKEN, WRITE_TOKEN

runner = CliRunner()


def status(r: Running) -> agent_pb2.Status:
    return r.stub.GetStatus(agent_pb2.GetStatusRequest())


def delete(r: Running, *ids: str, reason: str = "privacy") -> agent_pb2.DeleteSamplesReply:
    return r.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=list(ids), annotator="ops", reason=reason))


def blob_of(r: Running, sample: agent_pb2.Sample) -> Path:
    return r.agent.blobs.path(sha256_hex(sample.encoded_image))  # type: ignore[union-attr]


def seen_anywhere(r: Running, sid: str) -> list[str]:
    """Where ``sid`` still shows: the names of the reads that list it."""
    where = []
    if sid in {s.id for s in client.list_samples(r.stub)}:
        where.append("ListSamples")
    if sid in {x.id for x in client.list_labels(r.stub, history=True)}:
        where.append("ListLabels")
    if sid in {s.id for s in r.stub.Select(agent_pb2.SelectRequest(budget=100, strategy="random")).selected}:
        where.append("Select")
    if sid in {s.id for s in r.stub.Select(agent_pb2.SelectRequest(budget=100, strategy="margin")).selected}:
        where.append("Select margin")
    if sid in {p.id for p in r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))}:
        where.append("PriorLabels")
    if sid in r.stub.GetQueue(agent_pb2.GetQueueRequest(name="q")).ids:
        where.append("GetQueue")
    return where


def test_deleted_samples_leave_every_read_and_the_blob_store_and_stay_deleted(tmp_path: Path,
                                                                              registry: Path) -> None:
    samples = make_samples(20, labels=6)
    twin = agent_pb2.Sample()
    twin.CopyFrom(samples[4])
    twin.id = "twin4"  # the same bytes as s4: its payload file must stay when s4 goes
    r = start(tmp_path / "data", registry)
    try:
        assert client.ingest(r.stub, [*samples, twin]).accepted == 21
        client.submit_labels(r.stub, [("s10", "dog"), ("s1", "cat")], annotator="ann")
        r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="q", queue=agent_pb2.Queue(ids=["s12", "s3", "s13"]),
                                                        marks=[agent_pb2.QueueMark(id="s12", mark="skip"),
                                                               agent_pb2.QueueMark(id="s13", mark="unsure")]))
        drawn = r.stub.Select(agent_pb2.SelectRequest(budget=20, strategy="random", seed=3))  # a recorded draw
        assert "s12" in {s.id for s in drawn.selected}
        before = status(r)
        assert (before.samples, before.labeled) == (21, 8)  # twin4 carries s4's label
        reply = delete(r, "s1", "s4", "s12", "nope", "s1", "")
        assert (reply.accepted, reply.rejected_count, reply.payloads_removed) == (3, 3, 2)
        assert {(x.id, x.reason) for x in reply.rejected} == {
            ("nope", NOT_STORED), ("s1", "listed twice in this request"), ("", "empty id")}
        for sid in ("s1", "s4", "s12"):
            assert seen_anywhere(r, sid) == [], sid
        assert "twin4" in {s.id for s in client.list_samples(r.stub)}
        assert not blob_of(r, samples[1]).exists() and not blob_of(r, samples[12]).exists()
        assert blob_of(r, samples[4]).exists()  # twin4 holds the same bytes
        q = r.stub.GetQueue(agent_pb2.GetQueueRequest(name="q"))
        assert (list(q.ids), dict(q.marks)) == (["s3", "s13"], {"s13": "unsure"})
        after = status(r)
        assert (after.samples, after.labeled) == (18, 6)  # s1 (relabelled) and s4 were labelled
        assert after.embedded == 18  # not the index's rows (the deleted ones are marked, until a restart)
        assert "not_embedded" not in r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="random")).details
        assert after.label_events > before.label_events  # a revision: never back to an earlier value
        assert r.agent.uniform_labelled() >= 0  # the draw holding s12 still counts (s12 a gap now)
        with sqlite3.connect(tmp_path / "data" / "state.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM embeddings WHERE seq NOT IN (SELECT seq FROM samples)"
                              ).fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM selections WHERE result LIKE '%\"s12\"%'").fetchone()[0] == 0
            assert db.execute("SELECT annotator, reason, samples FROM deletions").fetchall() == [("ops", "privacy", 3)]
        events = after.label_events
    finally:
        r.stop()
    again = start(tmp_path / "data", registry)
    try:
        st = status(again)
        assert (st.samples, st.labeled, st.label_events, st.embedded) == (18, 6, events, 18)
        for sid in ("s1", "s4", "s12"):
            assert seen_anywhere(again, sid) == [], sid
        # The index was rebuilt from the renumbered rows: every sample is still a knn neighbour / prior.
        priors = {p.id for p in again.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))}
        assert len(priors) == 18 - 6
        # The same id again is a new sample: its payload stored, unlabelled, listed once.
        assert client.ingest(again.stub, [samples[1], samples[12]]).accepted == 2
        assert blob_of(again, samples[1]).exists()
        listed = [s.id for s in client.list_samples(again.stub)]
        assert listed.count("s1") == 1 and listed.count("s12") == 1
        # only the label it came with now: the deleted sample's history (ann's "cat") is not its history
        assert [(x.label, x.annotator) for x in client.list_labels(again.stub, history=True) if x.id == "s1"] == [
            ("dog", "ingest")]
        assert "s12" in {s.id for s in again.stub.Select(agent_pb2.SelectRequest(budget=100,
                                                                                  strategy="margin")).selected}
        assert status(again).samples == 20
    finally:
        again.stop()


def test_a_failure_inside_the_transaction_deletes_nothing(running: Running) -> None:
    samples = make_samples(6, labels=3)
    client.ingest(running.stub, samples)

    def boom() -> None:
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        running.agent.delete_samples(["s0", "s5"], "ops", "", before_commit=boom)
    assert seen_anywhere(running, "s5") != [] and blob_of(running, samples[0]).exists()
    assert (status(running).samples, status(running).labeled) == (6, 3)
    assert "s0" in {x.id for x in client.list_labels(running.stub)}


def test_a_crash_between_the_commit_and_the_blob_removal_leaves_a_blob_the_next_start_sweeps(
        tmp_path: Path, registry: Path) -> None:
    samples = make_samples(5)
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, samples)

        def crash() -> None:
            raise SystemExit("killed")

        with pytest.raises(SystemExit):
            r.agent.delete_samples(["s2"], "ops", "", before_blobs=crash)
        assert blob_of(r, samples[2]).exists() and status(r).samples == 4  # committed, the file left
    finally:
        r.stop()
    again = start(tmp_path / "data", registry)
    try:
        assert not blob_of(again, samples[2]).exists()  # removed by BlobStore.sweep at open
        assert status(again).samples == 4 and "s2" not in {s.id for s in client.list_samples(again.stub)}
    finally:
        again.stop()


def test_delete_needs_a_write_token(tmp_path: Path, registry: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{READ_TOKEN}\nwrite:{WRITE_TOKEN}\n")
    server, port, agent = create_server(AgentConfig(tmp_path / "data", registry, port=0, poll_s=0.2, use_cuda=False,
                                                    security=ServerSecurity(tokens=tokens)))
    try:
        reader = client.connect(f"127.0.0.1:{port}", config=client.ClientConfig(token=READ_TOKEN))
        writer = client.connect(f"127.0.0.1:{port}", config=client.ClientConfig(token=WRITE_TOKEN))
        client.ingest(writer, make_samples(3))
        code, details = code_of(lambda: reader.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s0"])))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "role write" in details
        assert agent.state.count() == 3
        assert writer.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s0"])).accepted == 1
    finally:
        stop_server(server, agent, grace=0.5)


def test_cli_delete_samples_asks_first_and_says_what_it_did(tmp_path: Path, running: Running) -> None:
    client.ingest(running.stub, make_samples(4))
    ids = tmp_path / "ids.txt"
    ids.write_text("s2\nnope\n")
    res = runner.invoke(app, ["delete-samples", "s1", "--file", str(ids), "--agent", running.address,
                              "--reason", "junk"], input="n\n")
    assert res.exit_code != 0 and status(running).samples == 4, res.output
    res = runner.invoke(app, ["delete-samples", "s1", "--file", str(ids), "--agent", running.address,
                              "--reason", "junk", "--yes"])
    assert res.exit_code == 0, res.output
    assert "deleted 2" in res.output and "nope" in res.output
    assert status(running).samples == 2 and status(running).samples_deleted == 2
    said = runner.invoke(app, ["status", "--agent", running.address]).output
    assert "samples_deleted: 2 (DeleteSamples, ever; `shortlist check --data-dir D` lists each deletion" in said


def test_cli_delete_samples_exits_1_when_nothing_was_deleted_and_documents_annotator(running: Running) -> None:
    """delete-samples exited 0 when every id was rejected (label and retract-labels exit 1: a script must not go
    on as if it had been done), and its --annotator had no help text."""
    client.ingest(running.stub, make_samples(2))
    for extra in ([], ["--json"]):
        res = runner.invoke(app, ["delete-samples", "nope", "--yes", "--agent", running.address, *extra])
        assert res.exit_code == 1 and "not a stored sample" in res.stdout, res.output
    res = runner.invoke(app, ["delete-samples", "s0", "nope", "--yes", "--agent", running.address])
    assert res.exit_code == 0 and "deleted 1, rejected 1" in res.stdout, res.output
    res = runner.invoke(app, ["delete-samples", "s0", "--yes", "--agent", running.address])  # a resend: gone
    assert res.exit_code == 1 and "deleted 0, rejected 1" in res.stdout, res.output
    helped = " ".join(runner.invoke(app, ["delete-samples", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "who deletes: kept in the deletion's record" in helped


def test_index_rows_taken_out_are_never_neighbours_even_when_k_asks_for_every_row() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(6, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    idx = VersionIndex("v", 4, 0, False)
    idx.add(np.arange(1, 7), vecs)
    view = idx.view()
    assert idx.remove([2, 5, 99]) == 2
    assert not idx.has(2) and idx.has(3)
    rows, _ = idx.knn(vecs, k=6)  # 4 rows left: hnswlib would raise if asked for 6
    assert rows.shape == (6, 4) and not np.isin(rows, [1, 4]).any()
    assert idx.view().seqs.tolist() == [1, 0, 3, 4, 0, 6]
    assert view.seqs.tolist() == [1, 2, 3, 4, 5, 6]  # a view taken before keeps its arrays
    idx.add(np.array([7]), vecs[:1])
    rows, _ = idx.knn(vecs[:1], k=6, limit=6)  # a view of 6 rows (over-fetch past the new one)
    assert rows.shape == (1, 4) and not np.isin(rows, [1, 4, 6]).any()


def test_a_schema_3_folder_is_migrated_and_keeps_its_labels(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    st = State(path, classes=["cat"])
    st.add_samples([NewSample("a", "", {}, "image", "0" * 64, label=0)])
    st.close()
    with sqlite3.connect(path) as db:  # as an agent of schema 3 left it
        db.execute("DROP TABLE deletions")
        db.execute("PRAGMA user_version=3")
    st = State(path)
    assert (st.schema_version(), st.count(), st.labeled_count(), st.label_event_count()) == (SCHEMA_VERSION, 1, 1, 1)
    st.delete_samples([1], "ops", "test")
    assert st.add_samples([NewSample("a", "", {}, "image", "0" * 64)]) == [2]  # seq 1 is not given again
    st.close()
    st = State(path)
    assert st.add_samples([NewSample("b", "", {}, "image", "1" * 64)]) == [3]
    assert (st.count(), st.label_event_count()) == (2, 2)
    st.close()


def test_the_deleted_bytes_do_not_stay_in_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    st = State(path)
    secret = "patient-4711-jane-doe"
    st.add_samples([NewSample(secret, "file:///scans/" + secret, {"name": secret}, "image", "0" * 64),
                    NewSample("other", "", {}, "image", "1" * 64)])
    st.delete_samples([1], "ops", "privacy request")
    st._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    st.close()
    assert secret.encode() not in path.read_bytes()


def test_a_deleted_id_a_rewritten_queue_listed_is_gone_from_the_file_and_a_later_backup(tmp_path: Path) -> None:
    """The security review: the first deletion turned secure_delete off for good (SQLite's default here is on),
    so a queue rewritten after it left its old JSON, with an id deleted later, in the file and in backups."""
    from agent.backup import backup

    data = tmp_path / "d"
    data.mkdir()
    path = data / "state.sqlite"
    st = State(path)
    secret = "ROE_RICHARD_MRN55501234.png"
    others = [f"img{i:03d}.png" for i in range(30)]
    st.add_samples([NewSample(i, "", {}, "image", sha256_hex(i.encode())) for i in [*others, secret]])
    st.delete_samples([30], "ops", "junk")  # any earlier deletion
    st.set_queue("web", {"ids": [*others[:5], secret, *others[5:29]]})
    st.set_queue("web", {"ids": others[:3]})  # rewritten: the old body's bytes are freed
    assert st.lookup(secret) is not None
    st.delete_samples([st.lookup(secret).seq], "ops", "privacy request")  # type: ignore[union-attr]
    st._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    summary = backup(data, tmp_path / "bk")
    st.close()
    assert summary.samples == 29
    assert secret.encode() not in path.read_bytes()
    assert secret.encode() not in (tmp_path / "bk" / "state.sqlite").read_bytes()


def test_a_background_batch_that_embedded_a_deleted_sample_stores_no_row_of_it(tmp_path: Path) -> None:
    st = State(tmp_path / "state.sqlite")
    st.add_samples([NewSample(f"x{i}", "", {}, "image", str(i) * 64) for i in range(3)])
    st.delete_samples([2], "ops", "")
    st.add_embeddings(EmbeddingRows("v2", 0, np.eye(3, 4, dtype=np.float32)), [1, 2, 3])  # read before the deletion
    assert st.load_embeddings("v2", 4, 0).seqs.tolist() == [1, 3]  # stored: rows 0 and 2, a gap
    assert st.compact_embeddings() and not st.compact_embeddings()
    assert st.load_embeddings("v2", 4, 0).seqs.tolist() == [1, 3] and st.repair_embeddings("v2", 4) == []
    st.close()


def test_a_resent_delete_is_safe_and_says_the_samples_are_gone(running: Running) -> None:
    """A DeleteSamples resent after a lost reply changes nothing and says its samples are not stored, without
    SubmitLabels' "ingest it first" (the agent keeps no deleted id, so a typo gets the same answer)."""
    client.ingest(running.stub, make_samples(4, labels=2))
    first = delete(running, "s0", "s1")
    assert (first.accepted, first.rejected_count) == (2, 0)
    events = status(running).label_events
    again = delete(running, "s0", "s1", "nope")
    assert (again.accepted, again.rejected_count, again.payloads_removed) == (0, 3, 0)
    reasons = {r.id: r.reason for r in again.rejected}
    assert set(reasons) == {"s0", "s1", "nope"}
    for reason in reasons.values():
        assert reason.startswith("not a stored sample: never ingested, or deleted already")
        assert "ingest it first" not in reason
    # nothing changed: no tombstone, no label event, the other samples as they were
    assert len(running.agent.state.deletions()) == 1
    assert status(running).label_events == events and status(running).samples == 2
    # SubmitLabels keeps its advice for an unknown id
    reply = running.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id="s0",
                                                                                                      label="a")]))
    assert "ingest it first" in reply.rejected[0].reason
