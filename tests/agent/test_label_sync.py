"""ListLabels' cursor (after_seq, limit): a label sync resumes after the last record it saw and gets exactly the
rows stored since (labels, changes, retractions, restored labels, renames), none missed and none twice, also
after a DeleteSamples removed the latest rows and across a restart; paged reads add up to the whole history."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from agent import client
from shortlist.cli import app
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start

runner = CliRunner()
Row = tuple[str, str, str, bool]  # (id, label, source, retracted)


def rows(records: list[agent_pb2.LabelRecord]) -> list[Row]:
    return [(r.id, r.label, r.source, r.retracted) for r in records]


def history(r: Running, after: int = 0, limit: int = 0) -> list[agent_pb2.LabelRecord]:
    return list(client.list_labels(r.stub, history=True, after_seq=after, limit=limit))


def label(r: Running, sid: str, name: str, annotator: str = "ana") -> None:
    reply = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=name)], annotator=annotator))
    assert reply.accepted == 1, reply


def retract(r: Running, sid: str, restore: bool = False) -> None:
    reply = r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[sid], annotator="ana", restore_previous=restore))
    assert reply.accepted == 1, reply


def test_a_sync_gets_only_the_rows_stored_since_its_cursor(running: Running) -> None:
    client.ingest(running.stub, make_samples(6, labels=2))  # s0 cat, s1 dog: two ingest rows
    first = history(running)
    assert rows(first) == [("s0", "cat", "ingest", False), ("s1", "dog", "ingest", False)]
    seqs = [x.seq for x in first]
    assert 0 < seqs[0] < seqs[1]
    cursor = seqs[-1]
    assert history(running, cursor) == []  # nothing new

    label(running, "s2", "frog")
    label(running, "s0", "dog", annotator="bob")         # a change
    retract(running, "s1")                               # a retraction
    retract(running, "s0", restore=True)                 # an undo: retraction + the restored 'cat' row
    running.stub.RenameClass(agent_pb2.RenameClassRequest(from_class="frog", to_class="toad", annotator="ana"))
    new = history(running, cursor)
    assert rows(new) == [("s2", "frog", "manual", False), ("s0", "dog", "manual", False),
                         ("s1", "", "manual", True), ("s0", "", "manual", True), ("s0", "cat", "restored", False),
                         ("s2", "toad", "rename", False)]
    whole = history(running)
    assert rows(whole) == rows(first) + rows(new)  # none missed, none repeated
    assert [x.seq for x in whole] == sorted({x.seq for x in whole})  # increasing, unique

    # paging: limit records a page, each from the last one's seq, add up to the whole history
    paged: list[agent_pb2.LabelRecord] = []
    after = 0
    while page := history(running, after, limit=3):
        assert len(page) <= 3
        paged += page
        after = page[-1].seq
    assert rows(paged) == rows(whole) and [x.seq for x in paged] == [x.seq for x in whole]

    # without history: the current labels given since the cursor (s1's retraction does not show there)
    current = list(client.list_labels(running.stub, after_seq=cursor))
    assert sorted((x.id, x.label) for x in current) == [("s0", "cat"), ("s2", "toad")]


def test_the_cursor_skips_nothing_after_a_deletion_and_a_restart(tmp_path: Path, registry: Path) -> None:
    """SQLite numbers a new row one past the highest row left: deleting the samples whose rows were the latest
    gave their numbers to the next labels, which a sync resuming after them missed."""
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(6, labels=1))
        label(r, "s4", "dog")
        label(r, "s5", "frog")
        cursor = history(r)[-1].seq  # s5's row
        assert r.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s4", "s5"], annotator="ops")).accepted == 2
        label(r, "s3", "cat")
        assert rows(history(r, cursor)) == [("s3", "cat", "manual", False)]
        cursor = history(r)[-1].seq
    finally:
        r.stop()
    again = start(tmp_path / "data", registry)
    try:
        assert again.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=["s3"], annotator="ops")).accepted == 1
        label(again, "s2", "dog")
        new = history(again, cursor)
        assert rows(new) == [("s2", "dog", "manual", False)] and new[0].seq > cursor
    finally:
        again.stop()


@pytest.mark.parametrize("field", ["after_seq", "limit"])
def test_a_negative_cursor_or_limit_is_invalid(running: Running, field: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        list(running.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True, **{field: -1})))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} -1 is negative" in (e.value.details() or "")


def test_cli_list_labels_resumes_after_the_seq_it_printed(running: Running) -> None:
    client.ingest(running.stub, make_samples(4, labels=2))
    res = runner.invoke(app, ["list-labels", "--history", "--agent", running.address, "--json"])
    assert res.exit_code == 0, res.output
    first = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(x["id"], x["label"]) for x in first] == [("s0", "cat"), ("s1", "dog")]
    cursor = first[-1]["seq"]
    assert f"2 record(s); next sync: --after-seq {cursor}" in res.stderr
    retract(running, "s0")
    label(running, "s3", "frog")
    res = runner.invoke(app, ["list-labels", "--history", "--after-seq", str(cursor), "--limit", "1",
                              "--agent", running.address])
    assert res.exit_code == 0, res.output
    seq, sid, what = res.stdout.splitlines()[0].split("\t")[:3]
    assert (sid, what) == ("s0", "(retracted)") and len(res.stdout.splitlines()) == 1
    res = runner.invoke(app, ["list-labels", "--history", "--after-seq", seq, "--agent", running.address])
    assert [line.split("\t")[1:3] for line in res.stdout.splitlines()] == [["s3", "frog"]]


def test_a_cursor_past_a_restored_folder_is_refused_not_answered_with_nothing(tmp_path: Path, registry: Path) -> None:
    """After `shortlist restore` of an older backup the next label rows take numbers again; a sync whose saved
    cursor is past the restored folder's last row got nothing, then skipped those rows for good. A cursor past
    every row the folder ever numbered is FAILED_PRECONDITION, saying to sync again from 0."""
    data, bk = tmp_path / "data", tmp_path / "bk"
    r = start(data, registry)
    try:
        client.ingest(r.stub, make_samples(6))
        label(r, "s0", "cat")
        label(r, "s1", "dog")
    finally:
        r.stop()
    assert runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(bk)]).exit_code == 0
    r = start(data, registry)
    try:
        label(r, "s2", "cat")
        label(r, "s3", "dog")
        cursor = history(r)[-1].seq
        assert history(r, cursor) == []  # the cursor at the last row: nothing new, no error
    finally:
        r.stop()
    assert runner.invoke(app, ["restore", str(bk), str(data), "--force"]).exit_code == 0
    r = start(data, registry)
    try:
        high = history(r)[-1].seq
        for history_too in (True, False):
            with pytest.raises(grpc.RpcError) as e:
                list(r.stub.ListLabels(agent_pb2.ListLabelsRequest(history=history_too, after_seq=cursor)))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert e.value.details() == (f"after_seq {cursor} is past this agent's last label row ({high}): its data "
                                         "folder was restored from a backup, or is another agent's; sync again from 0 "
                                         "(after_seq 0)")
        res = runner.invoke(app, ["list-labels", "--after-seq", str(cursor), "--agent", r.address])
        assert res.exit_code == 1 and "sync again from 0" in res.output, res.output
        label(r, "s4", "frog")  # from 0 the sync gets every row, the new one too
        assert [x.id for x in history(r)] == ["s0", "s1", "s4"]
    finally:
        r.stop()


def test_a_schema_4_folder_is_migrated_so_an_agent_of_schema_4_no_longer_opens_it(tmp_path: Path) -> None:
    """Label row numbers past every row ever stored came without a schema version: an agent of yesterday's
    release (schema 4) opened a folder this one had written and numbered new rows from the highest left, giving
    a deleted row's number again (a client syncing by cursor missed the row). Schema 5 keeps it away; the
    migration records the highest row number."""
    import sqlite3

    from agent.state import LABEL_ROWS_HIGH_KEY, SCHEMA_VERSION, NewSample, SchemaVersionError, State

    path = tmp_path / "state.sqlite"
    st = State(path, classes=["cat"])
    st.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:064x}", label=0) for i in range(3)])
    st.close()
    with sqlite3.connect(path) as db:  # as an agent of schema 4 left it
        db.execute("DELETE FROM meta WHERE key = ?", (LABEL_ROWS_HIGH_KEY,))
        db.execute("PRAGMA user_version=4")
    st = State(path)
    assert st.schema_version() == SCHEMA_VERSION == 5
    st.delete_samples([3], "ops", "test")  # the latest label row goes
    st.add_labels([(1, 0)], "ana")
    assert [e.row for e in st.label_events(history=True)] == [1, 2, 4]  # row 3 is not given again
    st.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = ?", (LABEL_ROWS_HIGH_KEY,)).fetchone()[0] == "3"
    old = pytest.raises(SchemaVersionError, match="schema version 5; this agent reads schema versions up to 4")
    import agent.state as state_module

    with old, pytest.MonkeyPatch.context() as mp:  # an agent of schema 4 refuses the folder
        mp.setattr(state_module, "SCHEMA_VERSION", 4)
        State(path)


def test_cli_list_labels_from_an_agent_older_than_the_cursor_says_so(running: Running,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent older than LabelRecord.seq ignores after_seq and limit and numbers no record: the command
    printed every record with seq 0, exit 0, and "next sync: --after-seq 0", so a sync read everything each
    time. It says the agent is older and to upgrade it, exit 1, and prints no record."""
    client.ingest(running.stub, make_samples(4, labels=2))
    real = client.list_labels

    def old_agent(*args: object, **kw: object) -> object:
        for r in real(*args, **kw):  # type: ignore[arg-type]
            r.seq = 0  # as a record of an older agent reads: the field unset
            yield r

    monkeypatch.setattr(client, "list_labels", old_agent)
    res = runner.invoke(app, ["list-labels", "--history", "--after-seq", "1", "--agent", running.address])
    assert res.exit_code == 1 and res.stdout == "", res.output
    assert "UNIMPLEMENTED: the agent does not offer ListLabels' cursor (its records carry no seq" in \
        " ".join(res.stderr.split())
    assert "upgrade the agent" in res.stderr
