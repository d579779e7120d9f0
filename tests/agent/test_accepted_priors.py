"""PriorLabels' calibration leaves accepted priors (labels with source prior:METHOD) out of its held-out set
(agent/priors/calibration.py, "Accepted priors are never held out"): the agent reads each label's source."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agent import client
from agent.state import ACCEPTED_SQL, RENAME_SOURCE, RESTORE_SOURCE, RETRACTED, NewSample, State, accepted_history
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_samples


def true_label(sample_id: str) -> str:
    return CLASSES[int(sample_id[1:]) % 3]


def test_accepted_priors_are_left_out_of_the_calibration(running: Running) -> None:
    def calibration() -> agent_pb2.Calibration:
        return next(iter(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))).calibration

    client.ingest(running.stub, make_samples(90, labels=3))
    client.submit_labels(running.stub, [(f"s{i}", true_label(f"s{i}")) for i in range(3, 33)], "alice")
    before = calibration()
    assert before.source == "labelled" and before.held_out > 20 and "accepted prior" not in before.warning
    rows = list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))
    best = sorted(rows, key=lambda r: -r.confidence)[:30]  # "accept all" on the most confident page
    client.submit_labels(running.stub, [(r.id, r.label) for r in best], "bob",
                         source="prior:knn")
    after = calibration()
    assert after.held_out == before.held_out, (before, after)  # counted, they would be held out too
    assert "; 30 accepted priors (source prior:*) left out of the held-out labels" in after.warning
    assert (before.left_out, after.left_out) == (0, 30)  # Calibration.left_out: the count for programs
    # a label changed since by hand is a person's own again (its latest source): it counts
    client.submit_labels(running.stub, [(best[0].id, true_label(best[0].id))], "carol", source="manual")
    again = calibration()
    assert again.held_out > before.held_out and "; 29 accepted priors (source prior:*)" in again.warning
    # the change undone (the web app's Queue undo: restore_previous) puts the accepted prior back: left out again
    reply = client.retract_labels(running.stub, [best[0].id], "carol", restore_previous=True)
    assert reply.accepted == 1
    undone = calibration()
    assert undone.held_out == before.held_out, (before, undone)
    assert "; 30 accepted priors (source prior:*) left out" in undone.warning and undone.left_out == 30


def test_a_source_naming_no_prior_method_of_the_agent_is_refused(running: Running) -> None:
    # prior:nope was accepted and then counted as an accepted prior by every PriorLabels.
    client.ingest(running.stub, make_samples(6))
    for source in ("prior:nope", "prior:", "prior:knn:x"):
        for send in (lambda: client.submit_labels(running.stub, [("s1", "cat")], "bob", source=source),  # noqa: B023
                     lambda: client.retract_labels(running.stub, ["s1"], "bob", source=source)):  # noqa: B023
            with pytest.raises(grpc.RpcError) as e:
                send()
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, source
            assert "as3l, knn, llgc" in str(e.value.details()) and "names no prior method" in str(e.value.details())
    assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 0
    assert client.submit_labels(running.stub, [("s1", "cat")], "bob", source="prior:knn").accepted == 1


def test_the_accepted_set_kept_in_memory_is_what_the_label_rows_say(tmp_path: Path) -> None:
    """State keeps the accepted priors' seqs in memory (a query of the whole labels table per label revision
    ran under the lock): after labels, changes, retractions, restores, a rename, a deletion and a rolled-back
    transaction it equals the query of the rows, and again after a reopen."""
    st = State(tmp_path / "state.sqlite", classes=["cat", "dog", "fox"])
    seqs = st.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:064x}") for i in range(8)])

    def queried() -> list[int]:
        return sorted(int(r[0]) for r in st._db.execute(ACCEPTED_SQL, (RENAME_SOURCE, RETRACTED)).fetchall())

    st.add_labels([(q, 0) for q in seqs[:6]], "bob", source="prior:knn")
    st.add_labels([(seqs[0], 1)], "carol")  # changed by hand: a person's own label
    st.retract_labels([seqs[1]], "bob")
    st.retract_labels([seqs[2]], "bob", restore=[(seqs[2], 0, "bob")])  # put back as "restored"
    st.add_labels([(seqs[6], 2)], "ana", source="prior:llgc")
    st.rename_class("fox", "vixen", "lead")  # s6's latest row is the rename's: still an accepted prior
    with pytest.raises(RuntimeError):
        st.delete_samples([seqs[3]], "ops", "x", before_commit=lambda: (_ for _ in ()).throw(RuntimeError()))
    st.delete_samples([seqs[4]], "ops", "privacy")
    assert st.accepted_prior_seqs().tolist() == queried() == [seqs[3], seqs[5], seqs[6]]
    st.close()
    st = State(tmp_path / "state.sqlite")
    assert st.accepted_prior_seqs().tolist() == queried() == [seqs[3], seqs[5], seqs[6]]
    st.close()


def test_a_label_an_undo_puts_back_keeps_where_it_came_from(tmp_path: Path) -> None:
    """RetractLabels with restore_previous stores the label put back with source "restored": an accepted prior
    changed and the change undone is an accepted prior again (was: a person's label, held out by the
    calibration), also after undos of undos, a rename and a reopen; a person's label put back stays one."""
    st = State(tmp_path / "state.sqlite", classes=["cat", "dog", "fox"])
    seqs = st.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:064x}") for i in range(4)])
    st.add_labels([(q, 0) for q in seqs[:3]], "bob", source="prior:knn")
    st.add_labels([(seqs[3], 0)], "ana")  # a person's own label
    st.add_labels([(q, 1) for q in seqs], "carol")  # all four changed by hand
    assert st.accepted_prior_seqs().tolist() == []
    for q in seqs:  # each change undone: the label before comes back in its giver's name
        st.retract_labels([q], "carol", restore=[(q, 0, "bob" if q != seqs[3] else "ana")])
    assert st.accepted_prior_seqs().tolist() == seqs[:3]
    st.add_labels([(seqs[1], 2)], "dan")  # changed again, and undone again: the put-back row copies a put-back row
    st.retract_labels([seqs[1]], "dan", restore=[(seqs[1], 0, "bob")])
    st.rename_class("cat", "kitten", "lead")  # a rename keeps where the label came from
    st.retract_labels([seqs[2]], "eve")  # taken back: no label, no accepted prior
    assert st.accepted_prior_seqs().tolist() == seqs[:2]
    st.close()
    st = State(tmp_path / "state.sqlite")
    assert st.accepted_prior_seqs().tolist() == seqs[:2]
    st.close()
    # the rule alone: a restore of a restore of an accepted prior; a restore with no row three back
    assert accepted_history([(0, "prior:knn"), (1, "manual"), (RETRACTED, "manual"), (0, RESTORE_SOURCE),
                             (2, "manual"), (RETRACTED, "manual"), (0, RESTORE_SOURCE)])
    assert not accepted_history([(0, "prior:knn"), (RETRACTED, "manual"), (0, RESTORE_SOURCE)])


def test_the_cli_shows_the_accepted_priors_left_out() -> None:
    """`shortlist prior`'s calibration line and every JSON of a calibration (--json, priors.meta.json, the web
    app) carry Calibration.left_out; a warning names the count itself, so the line adds it only without one."""
    cal = agent_pb2.Calibration(source="audit", held_out=25, temperature=0.8, audit_labels=25, left_out=7)
    assert client.calibration_line(cal) == ("confidences calibrated on 25 audit labels (audit or random draws) "
                                            "(temperature 0.8); 7 accepted priors (source prior:*) left out")
    assert client.calibration_dict(cal)["left_out"] == 7
    one = agent_pb2.Calibration(source="labelled", held_out=30, temperature=1.2, left_out=1)
    assert client.calibration_line(one).endswith("(temperature 1.2); 1 accepted prior (source prior:*) left out")
    assert "left out" not in client.calibration_line(agent_pb2.Calibration(source="labelled", held_out=30,
                                                                            temperature=1.2))
