"""PriorLabels' calibration leaves accepted priors (labels with source prior:METHOD) out of its held-out set
(agent/priors/calibration.py, "Accepted priors are never held out"): the agent reads each label's source."""

from __future__ import annotations

from agent import client
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
    # a label changed since by hand is a person's own again (its latest source): it counts
    client.submit_labels(running.stub, [(best[0].id, true_label(best[0].id))], "carol", source="manual")
    again = calibration()
    assert again.held_out > before.held_out and "; 29 accepted priors (source prior:*)" in again.warning
