"""What a resent SubmitLabels / RetractLabels answers (a retry after a lost reply, e.g. DEADLINE_EXCEEDED or
UNAVAILABLE after the agent had applied the request), and how an empty annotator is named in messages
(docs/agent.md, "Retrying writes")."""

from __future__ import annotations

from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples


def submit(r: Running, sid: str, label: str, annotator: str,
           if_current: str | None = None) -> agent_pb2.SubmitLabelsReply:
    item = agent_pb2.LabelAssignment(id=sid, label=label, if_current=if_current)
    return r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[item], annotator=annotator))


def retract(r: Running, sid: str, annotator: str,
            if_current: dict[str, str] | None = None) -> agent_pb2.RetractLabelsReply:
    return r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=[sid], annotator=annotator,
                                                               if_current=if_current or {}))


def history_rows(r: Running) -> int:
    return len(list(r.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True))))


def test_a_resent_retraction_does_not_blame_its_own_annotator(running: Running) -> None:
    r = running
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(3))]))
    assert submit(r, "s0", "cat", "alice").accepted == 1
    assert retract(r, "s0", "alice", {"s0": "cat"}).accepted == 1
    again = retract(r, "s0", "alice", {"s0": "cat"})  # the reply was lost: resent
    assert again.accepted == 0 and again.rejected_count == 1
    reason = again.rejected[0].reason
    assert "by this request's annotator (alice) already (expected \"cat\")" in reason, reason
    assert "meanwhile" not in reason and again.rejected[0].now.annotator == "alice"
    plain = retract(r, "s0", "alice")
    assert plain.rejected[0].reason.startswith("not labelled: nothing to retract (already taken back by this "
                                               "request's annotator, alice")
    other = retract(r, "s0", "bob", {"s0": "cat"})  # someone else's view is still "meanwhile"
    assert "unlabelled (its label taken back by alice) meanwhile (expected \"cat\")" in other.rejected[0].reason
    assert retract(r, "s0", "bob").rejected[0].reason == "not labelled: nothing to retract"


def test_a_resent_conditional_label_is_accepted_without_a_second_row(running: Running) -> None:
    r = running
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(3))]))
    assert submit(r, "s2", "cat", "alice", if_current="").accepted == 1
    rows = history_rows(r)
    again = submit(r, "s2", "cat", "alice", if_current="")
    assert again.accepted == 1 and not again.rejected and not again.agreed and history_rows(r) == rows


def test_an_empty_annotator_is_named_an_unnamed_annotator_in_conflicts(running: Running) -> None:
    r = running
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(3))]))
    assert submit(r, "s1", "dog", "").accepted == 1
    clash = submit(r, "s1", "cat", "bob", if_current="")
    assert clash.accepted == 0 and clash.rejected[0].now.annotator == "unknown"  # as stored
    assert "labelled \"dog\" by an unnamed annotator meanwhile (expected unlabelled)" in clash.rejected[0].reason
    assert retract(r, "s1", "").accepted == 1
    gone = submit(r, "s1", "cat", "bob", if_current="dog")
    assert "unlabelled (its label taken back by an unnamed annotator) meanwhile" in gone.rejected[0].reason
