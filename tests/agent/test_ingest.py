"""The Ingest pipeline (agent.ingest) without gRPC: stages, the three-thread stream, failures that
say what was stored, stream slots, and the one write lock (ModelManager.writing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig, Limits
from agent.core import Agent
from agent.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from agent.ingest import Incoming, same_uri
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_images, make_samples, png


def image(sid: str, pixels: np.ndarray, label: str = "") -> Incoming:
    data = png(pixels)
    return Incoming(sid, "image", data, data, label=label)


def batches(n: int, size: int, prefix: str = "s") -> list[list[Incoming]]:
    imgs = make_images(n)
    items = [image(f"{prefix}{i}", img) for i, img in enumerate(imgs)]
    return [items[i:i + size] for i in range(0, n, size)]


@pytest.fixture
def agent(tmp_path: Path, registry: Path) -> Iterator[Agent]:
    a = Agent(AgentConfig(tmp_path / "data", registry, use_cuda=False, background=False,
                          limits=Limits(max_ingest_streams=1)))
    yield a
    a.close()


def test_stream_stores_every_batch_and_counts_duplicates(agent: Agent) -> None:
    res = agent.ingest.stream(batches(25, 4))
    assert (res.accepted, res.duplicates, res.rejected) == (25, 0, [])
    assert agent.state.count() == 25 and agent.manager.current is not None and agent.manager.current.index.n == 25
    again = agent.ingest.stream(batches(25, 7))
    assert (again.accepted, again.duplicates) == (0, 25)


def test_stages_one_by_one(agent: Agent) -> None:
    items = batches(3, 3)[0] + [Incoming("bad", "image", b"xx", b"xx"), Incoming("", "image", b"x", b"x")]
    prep = agent.ingest.prepare(items)
    assert len(prep.samples) == 3 and [r[0] for r in prep.rejected] == ["bad", ""]
    assert agent.state.count() == 0  # nothing stored before stage 3
    res = agent.ingest.store(agent.ingest.embed(prep))
    assert res.accepted == 3 and agent.state.count() == 3


def test_a_failing_stream_says_what_it_stored(agent: Agent) -> None:
    good = batches(6, 3)

    def broken() -> Iterator[Sequence[Incoming]]:
        yield from good
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as e:
        agent.ingest.stream(broken())
    assert "6 samples of this stream were stored" in " ".join(e.value.__notes__)
    assert agent.state.count() == 6
    with pytest.raises(Cancelled):  # the same failure once the client has gone is a cancellation
        agent.ingest.stream(broken(), active=lambda: False)


def test_stream_slots_are_limited(agent: Agent) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow() -> Iterator[Sequence[Incoming]]:
        yield batches(2, 2, prefix="a")[0]
        entered.set()
        release.wait(10)

    t = threading.Thread(target=agent.ingest.stream, args=(slow(),))
    t.start()
    assert entered.wait(10)
    with pytest.raises(ResourceExhausted) as e:
        agent.ingest.stream(batches(2, 2, prefix="b"))
    assert e.value.retry_after_s and "--max-ingest-streams" in str(e.value)
    release.set()
    t.join(10)
    assert agent.ingest.stream(batches(2, 2, prefix="b")).accepted == 2  # the slot came back


def test_a_silent_stream_is_ended_and_frees_its_slot(tmp_path: Path, registry: Path) -> None:
    """A stream that sends a batch and then nothing for ingest_idle_timeout_s is ended with
    DeadlineExceeded saying what it stored, and its slot serves the next stream; the agent's own time
    (a slow embed) and a client's pauses shorter than the timeout do not count."""
    a = Agent(AgentConfig(tmp_path / "data", registry, use_cuda=False, background=False,
                          limits=Limits(max_ingest_streams=1, ingest_idle_timeout_s=1.0)))
    try:
        release = threading.Event()

        def silent() -> Iterator[Sequence[Incoming]]:
            yield batches(2, 2, prefix="a")[0]
            release.wait(30)  # a client that forgot its stream

        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as e:
            a.ingest.stream(silent())
        assert time.monotonic() - start < 10
        message = " ".join([str(e.value), *e.value.__notes__])
        assert "sent nothing for 1 s" in message and "--ingest-idle-timeout" in message
        assert "2 samples of this stream were stored" in message and a.state.count() == 2
        release.set()
        assert a.ingest.stream(batches(2, 2, prefix="b")).accepted == 2  # the slot came back

        def paused() -> Iterator[Sequence[Incoming]]:
            for b in batches(3, 1, prefix="c"):
                time.sleep(0.2)  # well under the timeout, even on a loaded machine
                yield b

        slow_embed = a.ingest.embed

        def embed(prep):  # type: ignore[no-untyped-def]
            time.sleep(1.5)  # longer than the timeout: the agent's time, not the client's
            return slow_embed(prep)

        a.ingest.embed = embed  # type: ignore[method-assign]
        assert a.ingest.stream(paused()).accepted == 3
    finally:
        a.close()


def test_writing_holds_the_one_write_lock(agent: Agent) -> None:
    with agent.manager.writing() as serving:
        assert serving is agent.manager.current
        done = threading.Event()

        def commit() -> None:
            agent.ingest.batch(batches(1, 1)[0])
            done.set()

        t = threading.Thread(target=commit)
        t.start()
        assert not done.wait(0.3)  # the commit waits for the lock
    t.join(10)
    assert done.is_set() and agent.state.count() == 1


def test_a_resend_is_a_duplicate_only_when_it_says_what_is_stored(agent: Agent) -> None:
    """Same id and payload: a duplicate when its uri, metadata and label, where given, are the stored ones
    (retries are safe); a label for a sample stored without one is kept (source ingest); any other
    difference is a rejection naming it, and nothing stored changes."""
    imgs = make_images(3)
    first = [image("a", imgs[0], label="cat"), image("b", imgs[1]), image("c", imgs[2])]
    first[2].uri, first[2].metadata = "s3://x/c.png", {"site": "north"}
    assert agent.ingest.batch(first).accepted == 3
    again = [image("a", imgs[0]), image("b", imgs[1], label="dog"), image("c", imgs[2])]  # no uri or meta: said nothing
    res = agent.ingest.batch(again)
    assert (res.accepted, res.duplicates, res.rejected) == (0, 3, [])
    assert agent.state.label_name(agent.state.lookup("b").seq) == "dog"  # type: ignore[union-attr]
    assert [e.source for e in agent.state.label_events() if e.id == "b"] == ["ingest"]
    changed = [image("a", imgs[0], label="dog"), image("c", imgs[2]), image("c2", imgs[2])]
    changed[1].metadata, changed[1].uri = {"site": "south", "camera": "3"}, "s3://x/c.png"
    res = agent.ingest.batch(changed)
    assert res.accepted == 1 and res.duplicates == 0 and [r[0] for r in res.rejected] == ["a", "c"]
    assert "stored (same payload) with label \"cat\": a resend does not change labels; give \"dog\" with " \
           "SubmitLabels" in res.rejected[0].reason
    assert ("with other metadata (\"camera\": not stored, \"3\" sent; \"site\": \"north\" stored, \"south\" "
            "sent)") in res.rejected[1].reason  # says what differs
    assert agent.state.label_name(agent.state.lookup("a").seq) == "cat"  # type: ignore[union-attr]
    assert agent.state.lookup("c").metadata == {"site": "north"}  # type: ignore[union-attr]


def test_a_model_that_fails_on_a_batch_is_answered_as_its_fault_not_a_bug(tmp_path: Path) -> None:
    """A served model that passes the load check (a batch of 2) but fails on a batch of 1: FAILED_PRECONDITION
    saying the model is at fault and what to do, never INTERNAL "a bug in the agent"; nothing is stored."""
    from agent.embedder import ModelFailed
    from agent.errors import map_exception
    from agent.testing import foreign_encoder, publish_model
    from shortlist.manifest import Preprocess

    models = tmp_path / "models"
    publish_model(models, foreign_encoder((8, 8), 16, reshape_batch=2), Preprocess(size=(8, 8)))
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False))
    try:
        assert a.status().model_version == "v0001"
        with pytest.raises(ModelFailed) as e:
            a.ingest.batch([image("x", make_images(1)[0])])
        mapped = map_exception(e.value)
        assert mapped.code.name == "FAILED_PRECONDITION" and "bug" not in mapped.message
        assert "the model v0001 failed on a batch of 1 images" in mapped.message
        assert a.status().samples == 0
        # the operator sees it in GetStatus until a batch of that version embeds again (here: a batch of 2)
        said = [w for w in a.status().warnings if "Ingest refuses new samples" in w]
        assert len(said) == 1 and "the model v0001 failed on a batch of 1 images" in said[0]
        assert a.ingest.batch([image(f"y{i}", im) for i, im in enumerate(make_images(2))]).accepted == 2
        assert not [w for w in a.status().warnings if "Ingest refuses" in w]
    finally:
        a.close()


def test_a_repeat_within_one_batch_is_judged_as_a_resend_in_another_batch(agent: Agent) -> None:
    """One IngestRequest holding an id twice with the same payload but another metadata or label counted the
    second as a duplicate and dropped what it said, while the same pair in two requests was rejected: the
    outcome (rejections, what is stored, the label a repeat adds) is the same however the items are batched.
    Another uri is a duplicate from another place in both cases (counted, the first uri kept)."""
    imgs = make_images(5)

    def items(p: str) -> list[Incoming]:
        out = [image(f"{p}m", imgs[0]), image(f"{p}m", imgs[0]),  # metadata k=1, then k=2
               image(f"{p}u", imgs[1]), image(f"{p}u", imgs[1]),  # uri a, then b
               image(f"{p}l", imgs[2], label="cat"), image(f"{p}l", imgs[2], label="dog"),
               image(f"{p}n", imgs[3]), image(f"{p}n", imgs[3], label="dog"),  # no label, then one: its label
               image(f"{p}d", imgs[4]), image(f"{p}d", imgs[4])]  # a true duplicate
        out[0].metadata, out[1].metadata = {"k": "1"}, {"k": "2"}
        out[2].uri, out[3].uri = "s3://a", "s3://b"
        return out

    one = agent.ingest.batch(items("one/"))
    apart = [agent.ingest.batch([it]) for it in items("apart/")]
    assert (one.accepted, one.duplicates) == (sum(r.accepted for r in apart), sum(r.duplicates for r in apart)) \
        == (5, 3)
    assert one.other_uri == sum(r.other_uri for r in apart) == 1
    assert one.other_uri_example == ("one/u", "s3://a", "s3://b")
    assert [r[0] for r in one.rejected] == ["one/m", "one/l"]
    assert [x[0] for r in apart for x in r.rejected] == ["apart/m", "apart/l"]
    reasons = {r.id: r.reason for r in one.rejected}
    assert "appears earlier in this request (same payload) with other metadata (\"k\": \"1\" sent before, " \
           "\"2\" sent again)" in reasons["one/m"]
    assert "with label \"cat\": a resend does not change labels" in reasons["one/l"]
    for p in ("one/", "apart/"):
        rec = {k: agent.state.lookup(p + k) for k in "mulnd"}
        assert rec["m"] is not None and rec["m"].metadata == {"k": "1"}
        assert rec["u"] is not None and rec["u"].uri == "s3://a"
        assert [agent.state.label_name(r.seq) for r in rec.values() if r is not None] == ["", "", "cat", "dog", ""]


def test_a_repeat_of_a_stored_id_within_one_batch_adds_one_label(agent: Agent) -> None:
    """A stored, unlabelled sample resent twice in one batch: with the same label, one label row; with two
    labels, the second is rejected (as the second of two requests would be)."""
    imgs = make_images(2)
    assert agent.ingest.batch([image("a", imgs[0]), image("b", imgs[1])]).accepted == 2
    res = agent.ingest.batch([image("a", imgs[0]), image("a", imgs[0], label="cat"), image("a", imgs[0], label="cat"),
                              image("b", imgs[1], label="cat"), image("b", imgs[1], label="dog")])
    assert (res.accepted, res.duplicates, res.labels_added) == (0, 4, 2)
    assert [r[0] for r in res.rejected] == ["b"] and "with label \"cat\"" in res.rejected[0].reason
    assert [e.id for e in agent.state.label_events(True)] == ["a", "b"]
    assert [agent.state.label_name(agent.state.lookup(i).seq) for i in "ab"] == ["cat", "cat"]  # type: ignore[union-attr]


def test_a_resend_does_not_put_back_a_label_taken_back(agent: Agent) -> None:
    """A sample labelled, then its label taken back (RetractLabels), then ingested again with the label (a nightly
    `ingest --with-labels` resend): the resend stored the label again, undoing the retraction. It is a rejection
    now that says so, and the sample stays unlabelled; one never labelled still gets its label from a resend."""
    imgs = make_images(2)
    assert agent.ingest.batch([image("a", imgs[0], label="cat"), image("b", imgs[1])]).accepted == 2
    assert agent.retract_labels(["a"], "zoe")[0] == 1
    res = agent.ingest.batch([image("a", imgs[0], label="cat"), image("b", imgs[1], label="cat")])
    assert (res.accepted, res.duplicates, res.labels_added) == (0, 1, 1)
    assert [r[0] for r in res.rejected] == ["a"]
    assert "its label was taken back (by zoe): a resend does not put labels back" in res.rejected[0].reason
    assert [agent.state.label_name(agent.state.lookup(i).seq) for i in "ab"] == ["", "cat"]  # type: ignore[union-attr]


def test_a_repeat_whose_label_is_refused_leaves_its_sample_stored(tmp_path: Path, registry: Path) -> None:
    """Closed classes; one request [s0, s0 labelled "zebra", s1]: the label, merged into s0's first item, made
    the whole sample be refused (s0 not stored). Sent as two requests s0 is stored and only the label refused;
    one request now does the same."""
    a = Agent(AgentConfig(tmp_path / "data", registry, use_cuda=False, background=False, classes=("cat", "dog")))
    try:
        imgs = make_images(2)
        res = a.ingest.batch([image("s0", imgs[0]), image("s0", imgs[0], label="zebra"), image("s1", imgs[1])])
        assert (res.accepted, res.duplicates) == (2, 0) and [r[0] for r in res.rejected] == ["s0"]
        assert "zebra" in res.rejected[0].reason
        rec = a.state.lookup("s0")
        assert rec is not None and a.state.label_name(rec.seq) == ""
    finally:
        a.close()


def test_rejection_ids_are_the_ids_as_sent(agent: Agent) -> None:
    """Rejections found before decoding carried the id cut to 64 characters, so a client could not match them
    to its items; now the id as sent, also one over max_id_chars, unless longer than 4,096 characters as well."""
    base = "site-north/camera-07/2024-05-01/IMG_20240501_061209_burst03_frame"
    img = make_images(1)[0]
    items = [image(base + "0012.JPG", img, label="a/b"), image(base + "0013.JPG", img),
             Incoming(base + "0014.JPG", "", b"", b""), image("x" * 600, img), image("z" * 5000, img)]
    items[1].metadata = {"shortlist.payload_error": "x"}
    res = agent.ingest.batch(items)
    assert [r[0] for r in res.rejected] == [base + "0012.JPG", base + "0013.JPG", base + "0014.JPG", "x" * 600,
                                            "z" * 4096]
    assert "id of 600 characters is longer than the limit of 512" in res.rejected[3].reason
    assert agent.ingest.batch([image(base + "0015.JPG", img)]).accepted == 1
    accepted, rejected = agent.submit_labels([(base + "0015.JPG", "a/b"), (base + "0015.JPG", "x" * 300),
                                              ("y" * 513, "cat")], "ana")
    assert accepted == 0 and [r.id for r in rejected] == [base + "0015.JPG", base + "0015.JPG", "y" * 513]


def test_the_reply_says_how_many_labels_a_resend_added(running: Running) -> None:
    """An ingest without labels, then the same items with labels: the labels are stored, and the reply said
    only "duplicates 2"; IngestReply.labels_added counts them (and Rejection.id is the whole id over gRPC)."""
    samples = make_samples(3, prefix="p" * 100)
    assert running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)])).accepted == 3
    samples[0].label, samples[1].label, samples[2].label = "cat", "cat", "a/b"
    reply = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)]))
    assert (reply.accepted, reply.duplicates, reply.labels_added) == (0, 2, 2)
    assert [r.id for r in reply.rejected] == [samples[2].id]
    again = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples[:2])]))
    assert (again.duplicates, again.labels_added) == (2, 0)


def test_a_resend_from_another_place_is_a_duplicate_that_keeps_the_stored_uri(running: Running) -> None:
    """The same ingest run from another directory, or with an absolute path, sent every stored image with
    another uri and each was rejected (RESEND_CHANGES_SAMPLE): the same id and bytes under another uri is a
    duplicate, the stored uri is kept, and the reply counts them (with one example); changed bytes or metadata
    stay rejections."""
    samples = make_samples(3)
    for s in samples:
        s.uri = f"data/odd/{s.id}.png"
    assert running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)])).accepted == 3
    moved = make_samples(3)
    for s in moved:
        s.uri = f"/mnt/card/odd/{s.id}.png"
    moved[2].metadata["site"] = "south"  # another value than stored: still a rejection
    reply = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=moved)]))
    assert (reply.accepted, reply.duplicates, reply.duplicates_other_uri) == (0, 2, 2)
    assert [(r.id, r.code) for r in reply.rejected] == [("s2", agent_pb2.REJECTION_CODE_RESEND_CHANGES_SAMPLE)]
    ex = reply.other_uri_example
    assert (ex.id, ex.stored_uri, ex.sent_uri) == ("s0", "data/odd/s0.png", "/mnt/card/odd/s0.png")
    listed = {s.id: s.uri for s in running.stub.ListSamples(agent_pb2.ListSamplesRequest())}
    assert listed == {f"s{i}": f"data/odd/s{i}.png" for i in range(3)}  # the first uri is kept
    same = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)]))
    assert (same.duplicates, same.duplicates_other_uri, same.HasField("other_uri_example")) == (3, 0, False)


def test_an_id_stored_from_the_same_uri_with_other_bytes_says_both_ways(agent: Agent) -> None:
    """Same id, new bytes: when the uri sent is the stored one as paths, the file was replaced in place (a new
    --id-prefix would store the whole folder again) or another source's file has the same path (two folders
    ingested from different working directories): FILE_CHANGED, whose reason says both ways. A stored relative
    uri that is the tail of the absolute one sent is no proof of one file (stored ``red/002.png`` from ``cd
    test && ingest .``, then train's ``/d/train/red/002.png``): it was taken for the same file and the reason
    advised deleting the stored sample. It and another absolute path are another source's id (ID_TAKEN);
    nothing stored changes."""
    imgs = make_images(8)
    first = [image(f"s{i}", imgs[i]) for i in range(4)]
    for s, uri in zip(first, ("/d/red/001.png", "red/002.png", "/d/red/003.png", "red/004.png"), strict=True):
        s.uri = uri
    assert agent.ingest.batch(first).accepted == 4
    again = [image(f"s{i}", imgs[i + 4]) for i in range(4)]
    for s, uri in zip(again, ("/d/red/./001.png", "/d/train/red/002.png", "/site2/red/003.png", "./red/004.png"),
                      strict=True):
        s.uri = uri
    res = agent.ingest.batch(again)
    assert res.accepted == 0 and [(r.id, r.code) for r in res.rejected] == [
        ("s0", agent_pb2.REJECTION_CODE_FILE_CHANGED), ("s1", agent_pb2.REJECTION_CODE_ID_TAKEN),
        ("s2", agent_pb2.REJECTION_CODE_ID_TAKEN), ("s3", agent_pb2.REJECTION_CODE_FILE_CHANGED)]
    for r in (res.rejected[0], res.rejected[3]):
        assert "now holds other bytes than when it was ingested: if it was replaced in place, " \
               f"`shortlist delete-samples {r.id}` then ingest again (or keep the stored one); if it is another " \
               "source's file with the same path, give each source its own --id-prefix" in r.reason, r.reason
    for r in res.rejected[1:3]:
        assert "already in the pool with a different payload" in r.reason and "delete-samples" not in r.reason
    assert [agent.state.lookup(f"s{i}").uri for i in range(4)] == [  # type: ignore[union-attr]
        "/d/red/001.png", "red/002.png", "/d/red/003.png", "red/004.png"]


def test_same_uri_compares_uris_as_paths_only() -> None:
    assert same_uri("/d/a/./b.png", "/d/a/b.png") and same_uri("a//b.png", "./a/b.png")
    assert not same_uri("a/b.png", "/d/a/b.png") and not same_uri("/d/a/b.png", "../a/b.png")  # no tails
    assert not same_uri("/d/a/b.png", "/e/a/b.png") and not same_uri("x/b.png", "/d/a/b.png")
    assert not same_uri("", "") and not same_uri("b.png", "")
    assert same_uri("/d/x.tar:a/b.png", "/d/x.tar:a/b.png")


def test_a_resend_of_the_same_uri_written_otherwise_is_no_other_place(running: Running) -> None:
    """``note_other_uri`` compared the uris as strings: ``./data/s0.png`` (``ingest ./data``) against a stored
    ``data/s0.png`` was counted as read from another place. As paths they are one; another path still counts."""
    samples = make_samples(2)
    for s in samples:
        s.uri = f"data/{s.id}.png"
    assert running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)])).accepted == 2
    for s in samples:
        s.uri = f"./data//{s.id}.png"
    reply = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)]))
    assert (reply.duplicates, reply.duplicates_other_uri, reply.HasField("other_uri_example")) == (2, 0, False)
    samples[1].uri = "/abs/data/s1.png"
    reply = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=samples)]))
    assert (reply.duplicates, reply.duplicates_other_uri) == (2, 1)


def test_a_labelled_ingest_says_when_the_same_bytes_are_stored_with_another_label(running: Running) -> None:
    """A file moved to another class folder becomes a new id whose label conflicts with its twin's: stored
    (both kept, as SubmitLabels does), and the reply counts and names the conflict; an unlabelled twin or the
    same label is no conflict."""
    first = make_samples(2)
    first[0].id, first[0].label = "cat/a.png", "cat"
    first[1].id = "b.png"  # unlabelled
    assert running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=first)])).accepted == 2
    again = make_samples(2)
    again[0].id, again[0].label = "dog/a.png", "dog"
    again[1].id, again[1].label = "cat/b.png", "cat"
    reply = running.stub.Ingest(iter([agent_pb2.IngestRequest(samples=again)]))
    assert (reply.accepted, reply.same_payload, reply.twin_conflicts) == (2, 2, 1)
    assert [(t.id, t.twin_id, t.twin_label) for t in reply.twin_conflict_examples] == [("dog/a.png", "cat/a.png",
                                                                                        "cat")]


def test_a_resend_of_a_retired_label_is_a_duplicate_when_the_rename_moved_the_sample_there(agent: Agent) -> None:
    """A rerun of the first `ingest --with-labels` after `rename-class cat lynx` resends "cat" for samples
    whose label the rename moved: it rejected each (UNKNOWN_CLASS, "label with that", though it was that already),
    so a nightly ingest of a class-folder tree failed after any rename. The retired name is taken for the class it
    became (a chain followed to its end): a duplicate when that is the stored label, also repeated within one
    request; a new sample, a sample stored unlabelled and a sample with another label are refused as before."""
    imgs = make_images(7)
    first = [image("a0", imgs[0], "cat"), image("a1", imgs[1], "cat"), image("a2", imgs[2], "dog"),
             image("a3", imgs[3])]
    assert agent.ingest.batch(first).accepted == 4
    agent.state.rename_class("cat", "lynx", "lead")
    agent.state.rename_class("lynx", "felis", "lead")  # cat -> lynx -> felis
    res = agent.ingest.batch([
        image("a0", imgs[0], "cat"), image("a1", imgs[1], "lynx"),  # the rename moved them: duplicates
        image("a0", imgs[0], "felis"), image("a0", imgs[0], "cat"),  # repeated within the request
        image("a2", imgs[2], "cat"),  # stored as "dog": a resend does not change labels
        image("a3", imgs[3], "cat"),  # stored unlabelled: a retired name is no label to add
        image("n0", imgs[4], "cat"),  # a new sample: not mapped silently
        image("n1", imgs[5], "felis"), image("n1", imgs[5], "cat"),  # new, then repeated with its old name
        image("n2", imgs[6]), image("n2", imgs[6], "cat"),  # new unlabelled, then its retired label: refused
    ])
    assert (res.accepted, res.duplicates) == (2, 5), res.rejected
    assert sorted((r.id, r.code) for r in res.rejected) == [
        ("a2", agent_pb2.REJECTION_CODE_RESEND_CHANGES_LABEL), ("a3", agent_pb2.REJECTION_CODE_UNKNOWN_CLASS),
        ("n0", agent_pb2.REJECTION_CODE_UNKNOWN_CLASS), ("n2", agent_pb2.REJECTION_CODE_UNKNOWN_CLASS)]
    reasons = {r.id: r.reason for r in res.rejected}
    assert reasons["n0"] == reasons["a3"] == "\"cat\" was renamed to \"felis\"; label with that"
    assert reasons["a2"] == ("id \"a2\" is stored (same payload) with label \"dog\": a resend does not change labels; "
                             "give \"felis\" (\"cat\" was renamed to \"felis\") with SubmitLabels "
                             "(`shortlist label`)")
    labels = {sid: agent.state.label_name(rec.seq) for sid in ("a0", "a1", "a2", "a3", "n1", "n2")
              if (rec := agent.state.lookup(sid)) is not None}
    assert labels == {"a0": "felis", "a1": "felis", "a2": "dog", "a3": "", "n1": "felis", "n2": ""}
    assert agent.state.lookup("n0") is None
    # a retired name sent with other bytes is still a taken id
    other = agent.ingest.batch([image("a0", imgs[6], "cat")])
    assert [r.code for r in other.rejected] == [agent_pb2.REJECTION_CODE_ID_TAKEN]
