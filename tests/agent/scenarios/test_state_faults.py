"""The data folder's durable state under faults: schema versions (migrate older, refuse newer),
payloads that cannot be read any more, and stored embeddings that disagree with the samples table."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from agent import client
from agent.config import AgentConfig
from agent.core import PAYLOAD_ERROR_KEY, Agent
from agent.ingest import Incoming
from agent.state import SCHEMA_VERSION, SchemaVersionError, State
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, make_images, make_samples, png, start

SCHEMA0 = Path(__file__).parents[1] / "data" / "schema0"


def test_a_folder_from_the_release_before_schema_versions_is_migrated(tmp_path: Path) -> None:
    data, models = tmp_path / "data", tmp_path / "models"
    shutil.copytree(SCHEMA0, data)
    publish_linear(models, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)  # the folder's v0001
    assert sqlite3.connect(data / "state.sqlite").execute("PRAGMA user_version").fetchone()[0] == 0
    r = start(data, models)
    try:
        assert r.agent.state.schema_version() == SCHEMA_VERSION
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert (st.samples, st.labeled, st.embedded, st.model_version) == (6, 3, 6, "v0001")
        assert r.agent.manager.current.index.loaded_from_snapshot == 6  # type: ignore[union-attr]
        listed = {s.id: s for s in client.list_samples(r.stub, include_payload=True)}
        assert {i: s.label for i, s in listed.items()} == \
            {"old0": "cat", "old1": "dog", "old2": "", "old3": "frog", "old4": "", "old5": ""}
        assert listed["old3"].uri == "file:///old3.png" and listed["old3"].encoded_image
        assert r.agent.state.label_history(4)[-1][1] == "alice" and len(r.agent.state.selections()) == 1
        # schema 2: labels got a source (older ones: "ingest" or "manual") and a model version (unknown)
        listed_labels = {e.id: e for e in client.list_labels(r.stub, history=True)}
        assert {i: (e.source, e.annotator, e.model_version, e.audit) for i, e in listed_labels.items()} == {
            "old0": ("ingest", "ingest", "", False), "old1": ("ingest", "ingest", "", False),
            "old3": ("manual", "alice", "", False)}
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).audit.drawn == 0
        # still writable and queryable after the migration
        assert client.ingest(r.stub, make_samples(4, prefix="new")).accepted == 4
        assert len(r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="coreset")).selected) == 3
        assert len(r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="audit")).selected) == 2
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).audit.drawn == 2
        # schema 3: queues are kept, labels can be retracted
        r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(queue=agent_pb2.Queue(ids=["old2", "old4"])))
        assert list(r.stub.GetQueue(agent_pb2.GetQueueRequest()).ids) == ["old2", "old4"]
        assert client.retract_labels(r.stub, ["old3"]).accepted == 1
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 2
    finally:
        r.stop()
    db = sqlite3.connect(data / "state.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_folder_from_a_newer_agent_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    State(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"):
        State(path)
    assert path.read_bytes() == before


def test_serve_refuses_a_newer_folder_with_a_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    data = tmp_path / "data"
    data.mkdir()
    State(data / "state.sqlite").close()
    db = sqlite3.connect(data / "state.sqlite")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    db.commit()
    db.close()
    out = CliRunner().invoke(app, ["serve", "--data-dir", str(data), "--models", str(tmp_path / "m"), "--port", "0"])
    text = " ".join(out.output.split())  # rich wraps lines
    assert out.exit_code == 2 and "newer shortlist agent" in text and "Traceback" not in text, text


def test_unembeddable_payloads_are_reported_and_do_not_block_a_swap(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=0)
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False, batch_size=4))
    try:
        imgs = make_images(12)
        samples = [Incoming(f"s{i}", "image", png(im), png(im)) for i, im in enumerate(imgs)]
        assert a.ingest.batch(samples).accepted == 12
        assert a.blobs is not None
        gone, bad = a.state.lookup("s3"), a.state.lookup("s7")
        assert gone is not None and bad is not None
        a.blobs.path(gone.sha256).unlink()
        a.blobs.path(bad.sha256).write_bytes(b"bit rot")
        v2 = publish_linear(models, size=SIZE, dim=24, classes=CLASSES, seed=1)
        a.manager.check()  # returns: two bad payloads (more than none left) do not hold the swap back
        st = a.status()
        assert (st.model_version, st.samples, st.embedded) == (v2, 12, 10)
        [w] = [w for w in st.warnings if "cannot be embedded" in w]
        assert w.startswith(f"2 sample(s) cannot be embedded by {v2}") and "re-ingest" in w
        rows = {rec.id: (rec.metadata, data) for rec, _, data in a.list_samples(False, True)}
        assert len(rows) == 12 and rows["s0"][1] == png(imgs[0])
        assert rows["s3"] == ({PAYLOAD_ERROR_KEY: "payload file missing"}, b"")
        assert "corrupt" in rows["s7"][0][PAYLOAD_ERROR_KEY] and rows["s7"][1] == b""
        # re-ingesting the same payloads repairs them (counted as duplicates)
        res = a.ingest.batch([Incoming(f"s{i}", "image", png(imgs[i]), png(imgs[i])) for i in (3, 7)])
        assert (res.accepted, res.duplicates) == (0, 2)
        a.manager.check()
        st = a.status()
        assert st.embedded == 12 and not st.warnings
    finally:
        a.close()


def test_list_samples_stream_flags_a_missing_payload(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        client.ingest(r.stub, make_samples(5))
        assert r.agent.blobs is not None
        rec = r.agent.state.lookup("s2")
        assert rec is not None
        r.agent.blobs.path(rec.sha256).unlink()
        got = list(client.list_samples(r.stub, include_payload=True))
        assert [s.id for s in got] == [f"s{i}" for i in range(5)]
        assert got[2].WhichOneof("payload") is None and got[2].metadata[PAYLOAD_ERROR_KEY] == "payload file missing"
        assert all(s.encoded_image for i, s in enumerate(got) if i != 2)
        reserved = client.ingest(r.stub, [client.image_sample("x", got[0].encoded_image,
                                                              metadata={PAYLOAD_ERROR_KEY: "fake"})])
        assert reserved.accepted == 0 and "reserved" in reserved.rejected[0].reason
    finally:
        r.stop()


def test_embeddings_that_disagree_with_the_samples_are_repaired_at_start(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    client.ingest(r.stub, make_samples(20), batch=5)
    r.stop()  # with an index snapshot of 20 rows
    db = sqlite3.connect(tmp_path / "data" / "state.sqlite")
    vec = np.ones(16, np.float32).tobytes()
    with db:
        db.execute("DELETE FROM embeddings WHERE row=4")  # a gap
        db.execute("INSERT INTO embeddings(version, row, seq, vec) VALUES ('v0001', 50, 999, ?)", (vec,))  # orphan
        db.execute("INSERT INTO embeddings(version, row, seq, vec) VALUES ('v0001', 51, 1, ?)", (vec,))  # repeat
    db.close()
    r = start(tmp_path / "data", models)
    try:
        [w] = [w for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "did not agree" in w]
        assert "1 row(s) of samples that do not exist" in w and "1 repeated" in w
        deadline = time.monotonic() + 20
        while r.stub.GetStatus(agent_pb2.GetStatusRequest()).embedded < 20:  # the dropped row is re-embedded
            assert time.monotonic() < deadline
            time.sleep(0.05)
        view = r.agent.manager.current.index.view()  # type: ignore[union-attr]
        assert sorted(view.seqs.tolist()) == r.agent.state.all_seqs().tolist()  # the missing row re-embedded
        assert r.agent.manager.current.index.loaded_from_snapshot == 0  # type: ignore[union-attr]
        sel = r.stub.Select(agent_pb2.SelectRequest(budget=20, strategy="coreset"))
        assert len(sel.selected) == 20
    finally:
        r.stop()


# ---- a damaged state.sqlite (a plain copy of a live folder, a bad disk) ----------------------------------------
def small_state(path: Path, labelled: int = 4) -> list[int]:
    """A state database with 10 samples, the first ``labelled`` labelled "cat"; their seqs."""
    from agent.state import NewSample

    s = State(path)
    seqs = s.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:064x}") for i in range(10)])
    s.class_index("cat")
    s.add_labels([(q, 0) for q in seqs[:labelled]], "alice")
    s.close()
    return seqs


def lose_index_rows(path: Path, seqs: list[int]) -> None:
    """Label ``seqs`` behind the index labels_seq's back (its schema row removed meanwhile): the rows are in
    the table but not in the index, the damage a `cp` of a live folder's state.sqlite + WAL most often has
    (an operations review's copies: "row N missing from index labels_seq"; docs/agent.md, "Backup and restore")."""
    db = sqlite3.connect(path, isolation_level=None)
    row = db.execute("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master WHERE name='labels_seq'").fetchone()
    db.execute("PRAGMA writable_schema=ON")
    db.execute("DELETE FROM sqlite_master WHERE name='labels_seq'")
    db.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.executemany("INSERT INTO labels(seq, class, annotator, time) VALUES (?, 0, 'bob', 0)", [(q,) for q in seqs])
    db.execute("PRAGMA writable_schema=ON")
    db.execute("INSERT INTO sqlite_master VALUES (?, ?, ?, ?, ?)", row)
    db.close()


def overwrite_page(path: Path, table: str) -> None:
    """Fill the root page of ``table`` with garbage (what a torn copy or a bad sector leaves)."""
    db = sqlite3.connect(path)
    size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xa5" * size)


def test_a_copy_whose_index_lost_rows_is_refused_where_quick_check_would_serve_it_short(tmp_path: Path) -> None:
    from agent.state import StateCorruptError

    path = tmp_path / "state.sqlite"
    seqs = small_state(path)
    lose_index_rows(path, seqs[4:])
    with pytest.raises(StateCorruptError, match=r"state.sqlite is corrupt \(SQLite: row \d+ missing from index "
                                                r"labels_seq.*restore it from a backup: shortlist restore BACKUP"):
        State(path)
    # why "full" is the default: quick_check finds nothing, and the labels read through the index come up short
    s = State(path, check="quick")
    try:
        assert s.labeled_count() == 4 and sqlite3.connect(path).execute(
            "SELECT COUNT(DISTINCT seq) FROM labels NOT INDEXED").fetchone()[0] == 10
    finally:
        s.close()


@pytest.mark.parametrize("damage,check", [("page", "full"), ("page", "none"), ("header", "full"), ("index", "full")])
def test_serve_refuses_a_corrupt_state_with_a_message_and_no_traceback(tmp_path: Path, damage: str,
                                                                       check: str) -> None:
    """A malformed state.sqlite (found by the start check, or by SQLite while the agent reads it with
    --state-check none), a file that is no database, or one whose index lost rows (found by the check only):
    one line saying so and what to do, exit 2, the file untouched (it printed a 60-line traceback ending in
    `DatabaseError: database disk image is malformed`, or served the last one with labels missing)."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    data = tmp_path / "data"
    data.mkdir()
    path = data / "state.sqlite"
    seqs = small_state(path)
    if damage == "page":
        overwrite_page(path, "samples")
    elif damage == "index":
        lose_index_rows(path, seqs[4:])
    else:
        with open(path, "r+b") as f:
            f.write(b"not a database, not at all")
    before = path.read_bytes()
    out = CliRunner().invoke(app, ["serve", "--data-dir", str(data), "--models", str(tmp_path / "m"), "--port", "0",
                                   "--state-check", check])
    text = " ".join(out.output.split())  # rich wraps lines
    why = {"page": "database disk image is malformed", "header": "file is not a database",
           "index": "missing from index labels_seq"}[damage]
    assert out.exit_code == 2, text
    assert f"cannot start: {path} is corrupt (SQLite: " in text and why in text, text
    assert f'restore it from a backup: shortlist restore BACKUP {data} --force (docs/agent.md "Backup and restore")' \
        in text, text
    assert "state.sqlite-wal, replayed onto the copy, is the likely cause" in text, text
    assert "Traceback" not in text and len(out.output) < 800, out.output
    assert path.read_bytes() == before


def test_the_wal_is_cut_back_to_the_journal_size_limit_after_a_big_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big transaction (a retired version's embeddings dropped, an outside VACUUM) grows the WAL; once it is
    checkpointed, the next commit truncates it to JOURNAL_SIZE_LIMIT (it stayed at its largest size until the
    agent stopped). Here with a 1 MiB limit and a ~6 MiB transaction."""
    from agent import state as state_module
    from agent.state import EmbeddingRows, NewSample

    default = State(tmp_path / "default.sqlite")
    assert default._db.execute("PRAGMA journal_size_limit").fetchone()[0] == state_module.JOURNAL_SIZE_LIMIT == 16 << 20
    default.close()
    monkeypatch.setattr(state_module, "JOURNAL_SIZE_LIMIT", 1 << 20)
    path = tmp_path / "state.sqlite"
    wal = tmp_path / "state.sqlite-wal"
    s = State(path)
    try:
        seqs = s.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:064x}") for i in range(1500)])
        s.add_embeddings(EmbeddingRows("v0001", 0, np.ones((1500, 1024), np.float32)), seqs)  # ~6 MiB, one commit
        grown = wal.stat().st_size
        s.class_index("cat")
        s.add_labels([(seqs[0], 0)], "alice")  # the WAL was checkpointed after the big commit: this one restarts it
        assert grown > 5 << 20 and wal.stat().st_size <= 1 << 20, (grown, wal.stat().st_size)
        assert s.labeled_count() == 1
    finally:
        s.close()
    assert State(path).labeled_count() == 1
