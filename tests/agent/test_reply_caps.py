"""Unary replies that list per-item outcomes (IngestReply, SubmitLabelsReply, RetractLabelsReply) stay well
under a default gRPC client's 4 MiB receive limit whatever the request: each list holds its first entries up
to ``REPLY_LIST_BYTES`` and a ``*_count`` field counts them all. Before, a SubmitLabels of 300 valid and
40,000 unknown ids answered a 5.1 MB reply: the client got RESOURCE_EXHAUSTED although the labels were
stored. The CLI reports the totals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from agent.service import REPLY_LIST_BYTES
from shortlist.cli import app
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import Running, make_samples

DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024
UNKNOWN = 40_000


def unknown_ids(n: int) -> list[str]:
    """Ids not in the pool, 100 characters each (an export that covers another site)."""
    return [f"site2/{i:07d}/" + "x" * 86 for i in range(n)]


@pytest.fixture
def plain(running: Running) -> Iterator[agent_pb2_grpc.AgentStub]:
    """A stub on a channel with gRPC's default limits (4 MiB received), as a pipeline's would be."""
    with grpc.insecure_channel(running.address) as ch:
        yield agent_pb2_grpc.AgentStub(ch)


def test_label_replies_that_would_exceed_4_mib_are_capped_and_counted(running: Running,
                                                                      plain: agent_pb2_grpc.AgentStub) -> None:
    running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(30))]))
    valid = [f"s{i}" for i in range(30)]
    ids = valid + unknown_ids(UNKNOWN)
    req = agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id=i, label="cat") for i in ids],
                                        annotator="alice")
    # the reply before: one rejection per unknown id, well over 4 MiB
    assert sum(len(i) + 60 for i in ids[30:]) > DEFAULT_RECEIVE_LIMIT
    reply = plain.SubmitLabels(req, timeout=60)
    assert reply.accepted == 30 and reply.rejected_count == UNKNOWN
    assert 0 < len(reply.rejected) < UNKNOWN and reply.ByteSize() < DEFAULT_RECEIVE_LIMIT // 2
    assert sum(r.ByteSize() for r in reply.rejected) <= REPLY_LIST_BYTES
    assert [r.id for r in reply.rejected] == ids[30:30 + len(reply.rejected)]  # the first ones, in order
    assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 30

    bob = agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id=i, label="dog") for i in ids],
                                        annotator="bob")
    reply = plain.SubmitLabels(bob, timeout=60)
    assert reply.accepted == 30 and reply.rejected_count == UNKNOWN
    assert reply.overwritten_count == 30 and len(reply.overwritten) == 30  # small lists are whole

    retract = plain.RetractLabels(agent_pb2.RetractLabelsRequest(ids=ids, annotator="carol"), timeout=60)
    assert retract.accepted == 30 and retract.rejected_count == UNKNOWN and retract.overwritten_count == 30
    assert 0 < len(retract.rejected) < UNKNOWN and retract.ByteSize() < DEFAULT_RECEIVE_LIMIT // 2
    assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 0


def test_an_ingest_reply_with_many_rejections_is_capped_and_counted(running: Running,
                                                                    plain: agent_pb2_grpc.AgentStub) -> None:
    def stream() -> Iterator[agent_pb2.IngestRequest]:
        yield agent_pb2.IngestRequest(samples=make_samples(5))
        bad = [agent_pb2.Sample(id=i) for i in unknown_ids(20_000)]  # no payload: one rejection each
        for start in range(0, len(bad), 4000):
            yield agent_pb2.IngestRequest(samples=bad[start:start + 4000])

    reply = plain.Ingest(stream(), timeout=120)
    assert reply.accepted == 5 and reply.rejected_count == 20_000
    assert 0 < len(reply.rejected) < 20_000 and reply.ByteSize() < DEFAULT_RECEIVE_LIMIT // 2


def test_the_cli_reports_the_totals_of_capped_replies(running: Running, tmp_path: Path) -> None:
    running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(10))]))
    ids = [f"s{i}" for i in range(10)] + unknown_ids(12_000)  # two requests of the CLI, each capped
    csv = tmp_path / "answers.csv"
    csv.write_text("id,label\n" + "".join(f"{i},cat\n" for i in ids))
    runner = CliRunner()
    res = runner.invoke(app, ["label", str(csv), "--agent", running.address, "--json"])
    out = json.loads(res.stdout)
    assert out["accepted"] == 10 and out["rejected_count"] == 12_000 and len(out["rejected"]) < 12_000
    csv.write_text("id,label\n" + "".join(f"{i},dog\n" for i in ids))
    res = runner.invoke(app, ["label", str(csv), "--agent", running.address, "--annotator", "bob"])
    assert res.exit_code == 0 and "accepted 10, rejected 12000" in res.stdout
    assert "overwrote 10 label(s)" in res.stdout and "--json lists the first" in res.stdout
    res = runner.invoke(app, ["retract-labels", "--agent", running.address, *ids[:5], *ids[10:6010], "--json"])
    out = json.loads(res.stdout)
    assert out["accepted"] == 5 and out["rejected_count"] == 6000 and len(out["rejected"]) < 6000
    assert len(out["overwritten"]) == 5 and "overwritten_count" not in out  # a whole list: no count, as before
