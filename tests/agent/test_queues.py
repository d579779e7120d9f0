"""Labelling queues (GetQueue / UpdateQueue) over gRPC, and label retraction (RetractLabels): durable,
per-item rejections, the history kept, and what Select / PriorLabels / ListLabels see afterwards."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agent import client
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start


def code_of(fn: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()  # type: ignore[operator]
    return e.value.code(), e.value.details()


def current(r: Running) -> dict[str, str]:
    return {x.id: x.label for x in client.list_labels(r.stub)}


def events(r: Running) -> int:
    return r.stub.GetStatus(agent_pb2.GetStatusRequest()).label_events


def test_retract_makes_samples_unlabelled_and_keeps_the_history(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        assert events(r) == 0
        client.ingest(r.stub, make_samples(30, labels=6))
        assert events(r) == 6  # the labels given at ingest
        client.submit_labels(r.stub, [("s10", "dog")], annotator="ann")
        assert events(r) == 7
        reply = client.retract_labels(r.stub, ["s1", "s10", "s20", "nope", "s1", ""], annotator="bob")
        assert reply.accepted == 2
        assert {(x.id, x.reason) for x in reply.rejected} == {
            ("s20", "not labelled: nothing to retract"), ("nope", "unknown id \"nope\": ingest it first"),
            ("s1", "listed twice in this request"), ("", "empty id")}
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 5
        assert events(r) == 9  # the two retractions; the rejected ids change nothing
        assert set(current(r)) == {"s0", "s2", "s3", "s4", "s5"}
        assert "s1" not in {s.id for s in client.list_samples(r.stub, labeled_only=True)}
        history = [x for x in client.list_labels(r.stub, history=True) if x.id == "s10"]
        assert [(x.label, x.annotator, x.source, x.retracted, x.current) for x in history] == [
            ("dog", "ann", "manual", False, False), ("", "bob", "manual", True, False)]
        # The retracted samples are candidates again, for Select and PriorLabels.
        picked = r.stub.Select(agent_pb2.SelectRequest(budget=30, strategy="random"))
        assert {"s1", "s10"} <= {s.id for s in picked.selected}
        assert {p.id for p in r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn"))} >= {"s1", "s10"}
        client.submit_labels(r.stub, [("s10", "cat")], annotator="ann")  # labelled again
        assert current(r)["s10"] == "cat"
        assert (r.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled, events(r)) == (6, 10)  # labeled: as before
        code, details = code_of(lambda: r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=["s0"],
                                                                                             source="ingest")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "reserved" in details
    finally:
        r.stop()
    again = start(tmp_path / "data", registry)  # durable: the restarted agent sees the same labelled set
    try:
        assert set(current(again)) == {"s0", "s2", "s3", "s4", "s5", "s10"}
        assert again.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 6
        assert events(again) == 10  # counted from the history at start
    finally:
        again.stop()


def test_queue_is_kept_by_the_agent_across_restarts(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(10))
        empty = r.stub.GetQueue(agent_pb2.GetQueueRequest(name="web"))
        assert (empty.name, list(empty.ids), empty.created) == ("web", [], 0.0)
        q = r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(
            ids=["s3", "s1", "s7"], source="select", strategy="random", params={"k": "1"}, selection_id="abc",
            model_version="v0001", details={"d": "x"})))
        assert list(q.ids) == ["s3", "s1", "s7"] and q.created > 0 and not q.marks
        marked = r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", marks=[
            agent_pb2.QueueMark(id="s1", mark="skip"), agent_pb2.QueueMark(id="s7", mark="unsure"),
            agent_pb2.QueueMark(id="s7", mark="")]))
        assert dict(marked.marks) == {"s1": "skip"}
        assert r.stub.GetQueue(agent_pb2.GetQueueRequest()).ids == []  # another name, another queue
        for req, want in [
            (agent_pb2.UpdateQueueRequest(name="web", marks=[agent_pb2.QueueMark(id="s2", mark="skip")]),
             grpc.StatusCode.NOT_FOUND),
            (agent_pb2.UpdateQueueRequest(name="web", marks=[agent_pb2.QueueMark(id="s1", mark="maybe")]),
             grpc.StatusCode.INVALID_ARGUMENT),
            (agent_pb2.UpdateQueueRequest(name="Web!", queue=agent_pb2.Queue(ids=["s1"])),
             grpc.StatusCode.INVALID_ARGUMENT),
            (agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=["s1", "zz"])),
             grpc.StatusCode.NOT_FOUND),
            (agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=["s1", "s1"])),
             grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            assert code_of(lambda req=req: r.stub.UpdateQueue(req))[0] == want
    finally:
        r.stop()
    again = start(tmp_path / "data", registry)
    try:
        q = again.stub.GetQueue(agent_pb2.GetQueueRequest(name="web"))
        assert list(q.ids) == ["s3", "s1", "s7"] and dict(q.marks) == {"s1": "skip"}
        assert (q.source, q.strategy, dict(q.params), q.selection_id, q.model_version, dict(q.details)) == (
            "select", "random", {"k": "1"}, "abc", "v0001", {"d": "x"})
    finally:
        again.stop()


def test_update_queue_refuses_if_created_without_a_queue_and_empty_ids(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(4))
        q = r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=["s1", "s2"])))
        code, msg = code_of(lambda: r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
            name="web", if_created=q.created + 5, marks=[agent_pb2.QueueMark(id="s1", mark="skip")])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("if_created goes with queue")
        code, msg = code_of(lambda: r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
            name="web", queue=agent_pb2.Queue(ids=["s3", ""]))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg == (
            "an empty id in the queue: give the ids of stored samples")
        code, msg = code_of(lambda: r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
            name="web", marks=[agent_pb2.QueueMark(id="", mark="skip")])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty id" in msg
        now = r.stub.GetQueue(agent_pb2.GetQueueRequest(name="web"))  # none of them changed anything
        assert (list(now.ids), dict(now.marks), now.created) == (["s1", "s2"], {}, q.created)
    finally:
        r.stop()


def test_update_queue_refuses_a_non_finite_if_created(tmp_path: Path, registry: Path) -> None:
    # NaN compared with the tolerance was never "different", so the replacement went through unconditionally.
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(4))
        q = r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=["s1", "s2"])))
        for bad in (float("nan"), float("inf"), float("-inf")):
            code, msg = code_of(lambda: r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
                name="web", queue=agent_pb2.Queue(ids=["s3"]), if_created=bad)))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a finite number" in msg, (bad, code, msg)
            assert "as GetQueue answered it" in msg
        # On a queue never filled, too (its created is 0).
        code, _ = code_of(lambda: r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
            name="other", queue=agent_pb2.Queue(ids=["s3"]), if_created=float("nan"))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        now = r.stub.GetQueue(agent_pb2.GetQueueRequest(name="web"))
        assert (list(now.ids), now.created) == (["s1", "s2"], q.created)
        assert not r.stub.GetQueue(agent_pb2.GetQueueRequest(name="other")).ids
        # Within the documented 1e-6 s the condition holds.
        again = r.stub.UpdateQueue(agent_pb2.UpdateQueueRequest(
            name="web", queue=agent_pb2.Queue(ids=["s3"]), if_created=q.created + 5e-7))
        assert list(again.ids) == ["s3"]
    finally:
        r.stop()
