"""ListSamples' Sample.annotator / label_time / label_source: who gave each sample's current label, when and how,
as ListLabels without history lists it ("" / 0 when unlabelled); a read token may ask; Ingest ignores them (output
only, as Google's AIP-203 has it: a sample read with ListSamples can be sent back to Ingest as it is;
docs/agent.md, ListSamples)."""

from __future__ import annotations

import time
from pathlib import Path

from agent import client
from agent.config import AgentConfig
from agent.security import ServerSecurity
from agent.service import create_server, stop_server
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples

READ_TOKEN = "r" * 8 + "-read-token-0123456789"
WRITE_TOKEN = "w" * 8 + "-write-token-0123456789"


def submit(r: Running, sid: str, label: str, annotator: str, source: str = "") -> None:
    reply = r.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=sid, label=label)], annotator=annotator, source=source))
    assert reply.accepted == 1, reply


def giver(r: Running, *ids: str) -> dict[str, tuple[str, str, float, str]]:
    """id -> (label, annotator, label_time, label_source) by ListSamples of ``ids``."""
    return {s.id: (s.label, s.annotator, s.label_time, s.label_source)
            for s in r.stub.ListSamples(agent_pb2.ListSamplesRequest(ids=list(ids)))}


def current(r: Running) -> dict[str, tuple[str, str, float, str]]:
    """id -> (label, annotator, time, source) of the current labels, by ListLabels."""
    return {x.id: (x.label, x.annotator, x.time, x.source) for x in r.stub.ListLabels(agent_pb2.ListLabelsRequest())}


def test_list_samples_names_who_gave_the_current_label(running: Running) -> None:
    r = running
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(4))]))
    before = time.time()
    assert giver(r, "s0") == {"s0": ("", "", 0.0, "")}  # unlabelled: empty
    submit(r, "s0", "cat", "bob")
    submit(r, "s1", "dog", "carol", source="prior:knn")
    got = giver(r, "s1", "s0", "s2")
    assert list(got) == ["s1", "s0", "s2"]  # in the order asked
    assert got["s0"][:2] == ("cat", "bob") and got["s0"][3] == "manual" and before <= got["s0"][2] <= time.time()
    assert got["s1"][:2] == ("dog", "carol") and got["s1"][3] == "prior:knn"
    assert got["s2"] == ("", "", 0.0, "")
    # changed by another annotator: theirs now
    submit(r, "s0", "dog", "alice")
    assert giver(r, "s0")["s0"][:2] == ("dog", "alice")
    # the undo of that change (restore_previous) puts bob's label back: his, source "restored"
    reply = r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=["s0"], annotator="alice", restore_previous=True))
    assert reply.accepted == 1 and not reply.rejected
    assert giver(r, "s0")["s0"][:2] == ("cat", "bob") and giver(r, "s0")["s0"][3] == "restored"
    # a plain retraction: unlabelled, nobody holds it
    r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=["s1"], annotator="alice"))
    assert giver(r, "s1")["s1"] == ("", "", 0.0, "")
    # every listing (not only by ids) carries them, and they agree with ListLabels' current labels
    listed = {s.id: (s.label, s.annotator, s.label_time, s.label_source)
              for s in r.stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=True))}
    assert listed == current(r) == {"s0": giver(r, "s0")["s0"]}


def test_after_a_rename_the_giver_is_who_gave_the_label_as_list_labels_says(running: Running) -> None:
    r = running
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(3))]))
    submit(r, "s0", "cat", "bob")
    given = giver(r, "s0")["s0"]
    r.stub.RenameClass(agent_pb2.RenameClassRequest(from_class="cat", to_class="feline", annotator="lead"))
    renamed = giver(r, "s0")["s0"]
    # the label under its new name, still bob's, with his time and source (not the renamer's "rename" row)
    assert renamed == ("feline", "bob", given[2], "manual")
    assert current(r)["s0"] == renamed


def test_ingest_ignores_the_listsamples_only_fields(running: Running) -> None:
    r = running
    samples = make_samples(4)
    samples[1].annotator = "bob"
    samples[2].label_time = 1.5
    samples[3].label_source = "manual"
    for s in samples:
        s.label = "cat"
    reply = r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)]))
    assert reply.accepted == 4 and reply.rejected_count == 0
    for sid in ("s0", "s1", "s2", "s3"):  # stored as every ingested label is: by "ingest", source "ingest", now
        label, by, t, source = giver(r, sid)[sid]
        assert (label, by, source) == ("cat", "ingest", "ingest") and t > 1000


def test_a_sample_read_with_listsamples_goes_back_to_ingest_as_it_is(running: Running) -> None:
    r = running
    r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(2))]))
    client.submit_labels(r.stub, [("s0", "cat")], annotator="ana")
    read = list(r.stub.ListSamples(agent_pb2.ListSamplesRequest(include_payload=True)))
    assert read[0].annotator == "ana"
    reply = r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=read)]))  # a copy tool's resend
    assert reply.rejected_count == 0 and reply.duplicates == 2
    assert giver(r, "s0")["s0"][:2] == ("cat", "ana")  # nothing changed


def test_a_read_token_lists_who_gave_the_labels(tmp_path: Path, registry: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{READ_TOKEN}\nwrite:{WRITE_TOKEN}\n")
    server, port, agent = create_server(AgentConfig(tmp_path / "data", registry, host="127.0.0.1", port=0,
                                                    use_cuda=False, security=ServerSecurity(tokens=tokens)))
    try:
        writer = client.connect(f"127.0.0.1:{port}", config=client.ClientConfig(token=WRITE_TOKEN))
        reader = client.connect(f"127.0.0.1:{port}", config=client.ClientConfig(token=READ_TOKEN))
        client.ingest(writer, make_samples(2))
        writer.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id="s1", label="cat")],
                                                          annotator="bob"))
        got = [(s.id, s.label, s.annotator) for s in reader.ListSamples(agent_pb2.ListSamplesRequest(ids=["s1", "s0"]))]
        assert got == [("s1", "cat", "bob"), ("s0", "", "")]
    finally:
        stop_server(server, agent, grace=0.5)
