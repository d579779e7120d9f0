"""SubmitLabels and Ingest judge a label with one function (agent.ingest.label_refusal): the same reason for
the same label, and SubmitLabels' order of reasons as it was before they shared it (a refused name before the
id; a closed list's lack of the name after the id, a conflict and a resend)."""

from __future__ import annotations

from agent import client
from agent.ingest import unknown_label_reason
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_samples


def submit(r: Running, items: list[tuple[str, str]], annotator: str,
           if_current: dict[str, str] | None = None) -> dict[str, str]:
    reply = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
        agent_pb2.LabelAssignment(id=i, label=lab, if_current=(if_current or {}).get(i)) for i, lab in items],
        annotator=annotator))
    return {x.id: x.reason for x in reply.rejected}


def test_submit_labels_and_ingest_refuse_a_label_alike_in_the_order_of_before(running: Running) -> None:
    assert client.ingest(running.stub, make_samples(4)).accepted == 4
    assert list(running.stub.GetStatus(agent_pb2.GetStatusRequest()).classes) == CLASSES  # closed: the model's
    assert not submit(running, [("s0", "dog")], "bob")
    unknown = unknown_label_reason(CLASSES, "horse")
    reasons = submit(running, [("nope", "horse"), ("nope2", "a/b"), ("s0", "horse"), ("s1", "horse")],
                     "alice", if_current={"s0": ""})
    assert reasons["nope"] == 'unknown id "nope": ingest it first'  # the id before an unlisted name
    assert reasons["nope2"].startswith('label "a/b" cannot be a folder name')  # a refused name before the id
    assert reasons["s0"].startswith('labelled "dog" by bob meanwhile (expected unlabelled)')  # the conflict first
    assert reasons["s1"] == unknown
    ingested = client.ingest(running.stub, [client.image_sample(
        "s5", make_samples(6)[5].encoded_image, label="horse")])
    assert [(x.id, x.reason) for x in ingested.rejected] == [("s5", unknown)]
