"""RetractLabels with restore_previous: an undo of a sample's latest label row puts back the row before it, in
the name of whoever gave it (source "restored"), or leaves the sample unlabelled when there was none; and
how Progress / `status --by-annotator` count such a row (docs/agent.md, RetractLabels)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agent.progress import LabelTally, collect
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start


def submit(r: Running, sid: str, label: str, annotator: str) -> None:
    reply = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=label)], annotator=annotator))
    assert reply.accepted == 1, reply


def undo(r: Running, sid: str, annotator: str, expected: str | None = None) -> agent_pb2.RetractLabelsReply:
    return r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(
        ids=[sid], annotator=annotator, if_current={} if expected is None else {sid: expected},
        restore_previous=True))


def history(r: Running, sid: str) -> list[tuple[str, str, str, bool]]:
    """(label, annotator, source, current) of every row of ``sid``, oldest first ("" label: a retraction)."""
    return [(x.label, x.annotator, x.source, x.current)
            for x in r.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True)) if x.id == sid]


def current(r: Running) -> dict[str, tuple[str, str]]:
    """id -> (label, annotator) of the current labels, through ListLabels."""
    return {x.id: (x.label, x.annotator) for x in r.stub.ListLabels(agent_pb2.ListLabelsRequest())}


def pool(r: Running) -> None:
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(4))]))


def test_undo_of_a_change_to_another_persons_label_gives_it_back_in_their_name(running: Running) -> None:
    r = running
    pool(r)
    submit(r, "s0", "cat", "bob")
    submit(r, "s0", "dog", "alice")
    reply = undo(r, "s0", "alice", "dog")
    assert reply.accepted == 1 and not reply.rejected
    assert current(r)["s0"] == ("cat", "bob")
    # the history keeps everything: alice's retraction, then bob's label put back
    assert history(r, "s0") == [("cat", "bob", "manual", False), ("dog", "alice", "manual", False),
                                ("", "alice", "manual", False), ("cat", "bob", "restored", True)]
    s = r.stub.GetStatus(agent_pb2.GetStatusRequest())
    assert (s.labeled, s.label_events) == (1, 4)
    # bob labelling it "cat" again is a row of his own (the restored row is no resend of his)
    submit(r, "s0", "cat", "bob")
    assert history(r, "s0")[-1] == ("cat", "bob", "manual", True)


def test_undo_of_a_change_to_ones_own_label_and_of_a_first_label(running: Running) -> None:
    r = running
    pool(r)
    submit(r, "s1", "cat", "alice")
    submit(r, "s1", "frog", "alice")
    assert undo(r, "s1", "alice", "frog").accepted == 1
    assert current(r)["s1"] == ("cat", "alice")
    submit(r, "s2", "dog", "alice")  # a first label: undone, the sample is unlabelled
    assert undo(r, "s2", "alice", "dog").accepted == 1
    assert "s2" not in current(r)
    assert history(r, "s2") == [("dog", "alice", "manual", False), ("", "alice", "manual", False)]
    submit(r, "s2", "cat", "bob")  # labelled after a retraction: the row before is the retraction
    assert undo(r, "s2", "bob").accepted == 1
    assert "s2" not in current(r) and len(history(r, "s2")) == 4
    rejected = undo(r, "s2", "bob")  # nothing left to undo
    assert rejected.accepted == 0 and rejected.rejected[0].reason.startswith("not labelled: nothing to retract")


def test_undo_is_refused_when_the_label_is_no_longer_the_expected_one(running: Running) -> None:
    r = running
    pool(r)
    submit(r, "s0", "cat", "bob")
    submit(r, "s0", "dog", "alice")
    submit(r, "s0", "frog", "carol")  # carol changed it after alice
    reply = undo(r, "s0", "alice", "dog")
    assert reply.accepted == 0 and reply.rejected_count == 1
    assert (reply.rejected[0].now.label, reply.rejected[0].now.annotator) == ("frog", "carol")
    assert "meanwhile" in reply.rejected[0].reason
    assert current(r)["s0"] == ("frog", "carol") and len(history(r, "s0")) == 3


def test_restored_source_is_reserved(running: Running) -> None:
    r = running
    pool(r)
    with pytest.raises(grpc.RpcError) as e:
        r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
            labels=[agent_pb2.LabelAssignment(id="s0", label="cat")], annotator="bob", source="restored"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reserved" in (e.value.details() or "")


def test_a_restored_label_is_durable_across_a_restart(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        pool(r)
        submit(r, "s3", "cat", "bob")
        submit(r, "s3", "dog", "alice")
        assert undo(r, "s3", "alice", "dog").accepted == 1
    finally:
        r.stop()
    again = start(tmp_path / "data", registry)
    try:
        assert current(again)["s3"] == ("cat", "bob")
        assert [x[:3] for x in history(again, "s3")][-2:] == [("", "alice", "manual"), ("cat", "bob", "restored")]
        s = again.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert (s.labeled, s.label_events) == (1, 4)
    finally:
        again.stop()


def test_progress_does_not_count_a_restored_label_as_given(running: Running) -> None:
    """bob's label put back by alice's undo is no label given: bob is not credited twice, alice not at all
    (her change and her retraction count as hers); bob holds the current label."""
    r = running
    pool(r)
    submit(r, "s0", "cat", "bob")
    submit(r, "s0", "dog", "alice")
    assert undo(r, "s0", "alice", "dog").accepted == 1
    rows = list(r.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True)))
    tally = LabelTally()
    assert [tally.add(x) for x in rows] == ["new", "changed", "retraction", "restore"]
    per = {n: (c.given, c.new, c.changed, c.retracted, c.current) for n, c in tally.annotators.items()}
    assert per == {"bob": (1, 1, 0, 0, 1), "alice": (1, 0, 1, 1, 0)}
    assert (tally.total.given, tally.total.current, tally.restores) == (2, 1, 1)
    submit(r, "s0", "cat", "carol")  # after the undo, carol agrees with bob's label
    rows = list(r.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True)))
    p = collect(rows, classes=["cat", "dog", "frog"])
    assert p.tally.annotators["carol"].agreeing == 1
    assert p.events == 3 and p.labelled == 1 and p.annotators["bob"].labels == 1
    assert dict(p.per_class) == {"cat": 1, "dog": 0, "frog": 0}
    assert dict(p.per_source) == {"manual": 1}


def test_a_resent_undo_says_it_was_applied(running: Running) -> None:
    """The reply to alice's undo was lost and she sends it again: rejected, nothing changes, and the reason
    says her own undo put bob's label back (not that bob labelled it meanwhile)."""
    r = running
    pool(r)
    submit(r, "s0", "cat", "bob")
    submit(r, "s0", "dog", "alice")
    assert undo(r, "s0", "alice", "dog").accepted == 1
    again = undo(r, "s0", "alice", "dog")
    assert again.accepted == 0 and (again.rejected[0].now.label, again.rejected[0].now.annotator) == ("cat", "bob")
    reason = again.rejected[0].reason
    assert "put back by an undo of this request's annotator, alice) already (expected \"dog\")" in reason, reason
    assert "meanwhile" not in reason and len(history(r, "s0")) == 4
    other = undo(r, "s0", "carol", "dog")  # someone else's view: changed meanwhile
    assert "meanwhile" in other.rejected[0].reason


def test_cli_retract_labels_restore_previous(running: Running) -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    r = running
    pool(r)
    submit(r, "s0", "cat", "bob")
    submit(r, "s0", "dog", "alice")
    res = CliRunner().invoke(app, ["retract-labels", "s0", "--restore-previous", "--annotator", "alice", "--agent",
                                   r.address, "--json"])
    assert res.exit_code == 0, res.output
    assert current(r)["s0"] == ("cat", "bob") and history(r, "s0")[-1][2] == "restored"


def test_a_label_of_a_class_renamed_since_comes_back_under_its_new_name(running: Running) -> None:
    r = running
    pool(r)
    submit(r, "s0", "cat", "bob")
    submit(r, "s0", "dog", "alice")
    r.stub.RenameClass(agent_pb2.RenameClassRequest(from_class="cat", to_class="kitty", annotator="lead"))
    assert undo(r, "s0", "alice", "dog").accepted == 1
    assert current(r)["s0"] == ("kitty", "bob")
