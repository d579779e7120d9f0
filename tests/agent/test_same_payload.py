"""Byte-identical images under different ids (a re-uploaded card): Select never spends a label on one twice,
PriorLabels gives a labelled sample's twins its label, SubmitLabels says when twins get different labels."""

from __future__ import annotations

import numpy as np

from agent import client
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, Running, make_samples

SAME_PAYLOAD_LEFT_OUT = "same_payload_left_out"  # agent.core's: a literal, so the test runs on older code


def twin_pool(r: Running, n: int = 40, copies: int = 8, labels: int = 12) -> None:
    """``n`` distinct samples s0.. (the first ``labels`` labelled, by cluster), then ``copies`` more under ids
    c0.. with the exact bytes of s0.. (re-uploaded: c0..c{labels-1} are twins of labelled samples)."""
    samples = make_samples(n, labels=labels)
    reply = client.ingest(r.stub, samples, batch=32)
    assert reply.accepted == n
    again = client.ingest(r.stub, [client.image_sample(f"c{i}", samples[i].encoded_image) for i in range(copies)])
    assert again.accepted == copies and again.same_payload == copies


def select(r: Running, budget: int, strategy: str, seed: int = 0) -> agent_pb2.SelectReply:
    return r.stub.Select(agent_pb2.SelectRequest(budget=budget, strategy=strategy, seed=seed))


def test_select_leaves_out_twins_for_every_strategy(running: Running) -> None:
    # c0..c5 are twins of labelled s0..s5; c12, c13 of unlabelled s12, s13 (and ingested after them)
    samples = make_samples(40, labels=12)
    client.ingest(running.stub, samples, batch=32)
    copies = [client.image_sample(f"c{i}", samples[i].encoded_image) for i in (*range(6), 12, 13)]
    assert client.ingest(running.stub, copies).same_payload == 8
    unlabelled = {f"s{i}" for i in range(12, 40)}
    for name in sorted(STRATEGIES):
        reply = select(running, 48, name, seed=2)
        ids = [s.id for s in reply.selected]
        assert ids and len(set(ids)) == len(ids), name
        assert set(ids) <= unlabelled, f"{name} picked a byte-identical twin: {sorted(set(ids) - unlabelled)}"
        assert "8 unlabelled samples left out" in reply.details[SAME_PAYLOAD_LEFT_OUT], name
        assert [s.id for s in select(running, 48, name, seed=2).selected] == ids, f"{name} not deterministic"


def test_select_with_only_twins_left_says_why(running: Running) -> None:
    samples = make_samples(6, labels=6)
    client.ingest(running.stub, samples)
    client.ingest(running.stub, [client.image_sample(f"c{i}", samples[i].encoded_image) for i in range(3)])
    reply = select(running, 5, "random")
    assert list(reply.selected) == []
    assert "every unlabelled sample (3) has the exact bytes of a labelled sample" in reply.details["nothing_selected"]


def test_select_without_twins_keeps_candidates(running: Running) -> None:
    client.ingest(running.stub, make_samples(30, labels=6))
    agent = running.agent
    assert agent.state.payload_groups() is None
    cand = np.arange(5, 30, dtype=np.int64)
    same, left_out = agent.twin_free(cand, agent.state.all_seqs())
    assert same is cand and left_out == 0
    assert SAME_PAYLOAD_LEFT_OUT not in select(running, 5, "entropy").details


def test_prior_of_a_labelled_samples_twin_is_its_label(running: Running) -> None:
    twin_pool(running)
    # give the twins' originals labels against their cluster, so no method would guess them
    wrong = [(f"s{i}", CLASSES[(i + 1) % 3]) for i in range(4)]
    assert client.submit_labels(running.stub, wrong, annotator="a").accepted == 4
    for method in sorted(PRIOR_METHODS):
        priors = {p.id: p for p in running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method))}
        for i in range(8):
            p = priors[f"c{i}"]
            want = CLASSES[(i + 1) % 3] if i < 4 else CLASSES[i % 3]
            assert (p.label, p.confidence) == (want, 1.0), (method, p.id, p.label, p.confidence)
            assert p.probs[want] == 1.0 and sum(p.probs.values()) == 1.0
        asked = list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method, ids=["c1", "s20"])))
        assert (asked[0].label, asked[0].confidence) == (CLASSES[2], 1.0) and asked[1].confidence < 1.0


def test_prior_of_twins_with_different_labels_is_the_methods(running: Running) -> None:
    samples = make_samples(30, labels=9)
    client.ingest(running.stub, samples)
    copies = [client.image_sample(f"c{i}", samples[0].encoded_image) for i in range(2)]
    client.ingest(running.stub, copies)
    client.submit_labels(running.stub, [("c0", "dog")], annotator="a")  # s0 is 'cat': its twins disagree
    (p,) = running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn", ids=["c1"]))
    assert p.confidence < 1.0  # the method's answer, not one of the twins' labels


def test_submit_labels_reports_a_twin_with_another_label(running: Running) -> None:
    twin_pool(running, labels=2)
    reply = client.submit_labels(running.stub, [("c0", "dog"), ("c1", "dog"), ("c2", "frog")], annotator="b")
    assert reply.accepted == 3  # stored: last write wins per id
    got = [(t.id, t.twin_id, t.twin_label) for t in reply.twin_conflicts]
    assert got == [("c0", "s0", "cat")]  # s1 is 'dog' already; s2 is unlabelled
    assert running.agent.state.label_name(running.agent.state.lookup("c0").seq) == "dog"  # type: ignore[union-attr]
    # in one request: the second twin's label disagrees with the first's, stored just before
    again = client.submit_labels(running.stub, [("s5", "cat"), ("c5", "frog")], annotator="b")
    assert [(t.id, t.twin_id, t.twin_label) for t in again.twin_conflicts] == [("c5", "s5", "cat")]
