"""Model life cycle: no model yet, first model, hot swap while clients query, restart with nothing
lost, half-written versions, --no-blobs, and the index's recall."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent import client
from agent.config import AgentConfig
from agent.index import VersionIndex
from agent.models import ModelManager
from agent.service import create_server, stop_server
from agent.state import ClassListError, State
from agent.testing import linear_encoder, publish_linear
from shortlist.v1 import agent_pb2, agent_pb2_grpc
from tests.agent.conftest import CLASSES, SIZE, Running, make_samples, start


def status(r: Running) -> agent_pb2.Status:
    return r.stub.GetStatus(agent_pb2.GetStatusRequest())


def wait_for(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_no_model_then_first_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    r = start(tmp_path / "data", models)
    try:
        reply = client.ingest(r.stub, make_samples(12, labels=3))
        assert reply.accepted == 12
        st = status(r)
        assert (st.samples, st.labeled, st.embedded, st.model_version) == (12, 3, 0, "")
        sel = r.stub.Select(agent_pb2.SelectRequest(budget=4, strategy="random", seed=1))
        assert sel.model_version == "" and len(sel.selected) == 4
        assert not {s.id for s in sel.selected} & {"s0", "s1", "s2"}
        with pytest.raises(grpc.RpcError) as e:
            r.stub.Select(agent_pb2.SelectRequest(budget=4, strategy="coreset"))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no model is published" in e.value.details() and "shortlist export" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # PriorLabels: no strategy advice, which would not help it
            list(r.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no model is published" in e.value.details() and "strategies" not in e.value.details()
        assert e.value.details().endswith("so no prior method works without one")
        # A half-written version (a .tmp folder, or a vNNNN without its manifest) is never loaded.
        (models / ".tmp-v0001-1").mkdir(parents=True)
        (models / "v0009").mkdir()
        (models / "v0009" / "encoder.onnx").write_bytes(b"partial")
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        time.sleep(0.3)
        assert status(r).model_version == ""
        publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=0)  # becomes v0010
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        wait_for(lambda: status(r).embedded == 12)
        assert status(r).model_version == "v0010"
        assert r.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="coreset")).model_version == "v0010"
    finally:
        r.stop()


def test_hot_swap_while_clients_query(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(200, labels=6), batch=50)
        seen: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def query(k: int) -> None:
            while not stop.is_set():
                try:
                    reply = r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="coreset", seed=k))
                    seen.append(reply.model_version)
                    if k == 0:  # one client keeps ingesting through the swap
                        client.ingest(r.stub, make_samples(5, prefix=f"live{len(seen)}-", seed=len(seen)))
                except BaseException as e:
                    errors.append(e)

        threads = [threading.Thread(target=query, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(seen) >= 5)
        publish_linear(registry, size=SIZE, dim=24, classes=CLASSES, seed=1)  # v0002, other dim
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        wait_for(lambda: status(r).model_version == "v0002")
        wait_for(lambda: seen.count("v0002") >= 5)
        stop.set()
        for t in threads:
            t.join()
        assert not errors
        first_new = seen.index("v0002")
        assert set(seen[:first_new]) == {"v0001"} and "v0001" in seen
        st = status(r)
        assert st.embedded == st.samples  # samples ingested during the re-embed are in the new index
        view = r.agent.manager.current.index.view()  # type: ignore[union-attr]
        assert view.vecs.shape[1] == 24 and len(set(view.seqs.tolist())) == view.n
        assert r.agent.state.model_versions()["v0001"][0] == "retired"
    finally:
        r.stop()


def test_restart_loses_nothing_and_reuses_the_index(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    client.ingest(r.stub, make_samples(50, labels=5), batch=20)
    client.submit_labels(r.stub, [("s10", "dog")], annotator="ann")
    before = r.stub.Select(agent_pb2.SelectRequest(budget=5, strategy="coreset", seed=4))
    st1 = status(r)
    r.stop()
    r = start(tmp_path / "data", registry)
    try:
        st2 = status(r)
        assert (st2.samples, st2.labeled, st2.embedded, st2.model_version) == \
            (st1.samples, st1.labeled, st1.embedded, st1.model_version)
        assert r.agent.manager.current.index.loaded_from_snapshot == 50  # type: ignore[union-attr]
        after = r.stub.Select(agent_pb2.SelectRequest(budget=5, strategy="coreset", seed=4))
        assert [s.id for s in after.selected] == [s.id for s in before.selected]
        assert len(r.agent.state.selections()) == 2
        assert client.ingest(r.stub, make_samples(50, labels=5)).duplicates == 50
    finally:
        r.stop()


def test_restart_without_snapshot_after_a_crash(tmp_path: Path, registry: Path) -> None:
    """Kill -9 equivalent: the snapshot was never written; rows come back from SQLite, not re-embedding."""
    r = start(tmp_path / "data", registry)
    client.ingest(r.stub, make_samples(30), batch=10)
    r.channel.close()
    r.server.stop(0)
    r.agent.manager._stop.set()  # stop polling, but no agent.close(): no snapshot, SQLite left open
    assert r.agent.manager._thread is not None
    r.agent.manager._thread.join()
    r.agent.folder_lock.release()  # as the kernel does for a killed process
    r = start(tmp_path / "data", registry)
    try:
        assert status(r).embedded == 30
        assert r.agent.manager.current.index.loaded_from_snapshot == 0  # type: ignore[union-attr]
    finally:
        r.stop()


def test_no_blobs_refuses_to_reembed(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry, blobs=False)
    try:
        client.ingest(r.stub, make_samples(10))
        with pytest.raises(grpc.RpcError) as e:
            list(client.list_samples(r.stub, include_payload=True))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--no-blobs" in e.value.details()
        publish_linear(registry, size=SIZE, dim=16, seed=3)
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        wait_for(lambda: "v0002" in r.agent.manager.failed)
        st = status(r)
        assert st.model_version == "v0001" and any("v0002" in w and "--no-blobs" in w for w in st.warnings)
    finally:
        r.stop()


def test_closed_class_list_conflict(tmp_path: Path) -> None:
    s = State(tmp_path / "s.sqlite")
    assert s.class_index("cat") == 0 and not s.closed
    from agent.state import NewSample

    s.add_samples([NewSample("a", "", {}, "image", "00", label=0)])
    s.close()
    with pytest.raises(ClassListError, match="cat"):
        State(tmp_path / "s.sqlite", classes=["dog"])
    s = State(tmp_path / "s.sqlite", classes=["dog", "cat"])  # remapped: cat is now index 1
    assert s.classes == ["dog", "cat"] and s.labels_by_seq()[1] == 1 and s.class_index("bird") is None


def test_a_model_naming_other_classes_is_said_and_closing_the_list_fixes_it(tmp_path: Path) -> None:
    """Labels given before any model keep the class list open (a model fine-tuned on them names only the
    classes labelled so far); a model naming other classes, or the same in another order, has its logits
    unused, which GetStatus says with the fix: restarting with --classes in the model's order closes the
    list, remaps the labels, and the logits apply."""
    models = tmp_path / "models"
    models.mkdir()
    r = start(tmp_path / "data", models)
    try:
        assert client.ingest(r.stub, make_samples(12, labels=6)).accepted == 12
        publish_linear(models, size=SIZE, dim=16, classes=["frog", "cat", "dog"])
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        wait_for(lambda: status(r).model_version == "v0001")
        st = status(r)
        assert st.classes_open and list(st.classes) == CLASSES
        assert [w for w in st.warnings if 'names the classes ["frog", "cat", "dog"] but the agent\'s class list is '
                '["cat", "dog", "frog"]: its logits are not used' in w and "--classes frog,cat,dog" in w]
    finally:
        r.stop()
    r = start(tmp_path / "data", models, classes=["frog", "cat", "dog"])
    try:
        st = status(r)
        assert not st.classes_open and list(st.classes) == ["frog", "cat", "dog"]
        assert not [w for w in st.warnings if "logits" in w]
        assert {(lab.id, lab.label) for lab in client.list_labels(r.stub)} == \
            {(f"s{i}", CLASSES[i % 3]) for i in range(6)}
    finally:
        r.stop()


def test_a_class_whose_labels_were_all_retracted_leaves_an_open_list(tmp_path: Path) -> None:
    """An open class list holds the classes some current label uses: a typo taken back is no class of the
    priors or of GetStatus any more (a cycle would otherwise train an output for it), and comes back with
    its next label."""
    publish_linear(tmp_path / "models", size=SIZE, dim=16)  # a model naming no classes: the list stays open
    running = start(tmp_path / "data", tmp_path / "models")
    try:
        retract_a_typo(running)
    finally:
        running.stop()


def retract_a_typo(running: Running) -> None:
    client.ingest(running.stub, make_samples(12, labels=6))
    client.submit_labels(running.stub, [("s6", "ten")], "alice")
    assert list(status(running).classes) == [*CLASSES, "ten"]
    running.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=["s6"], annotator="alice"))
    assert list(status(running).classes) == CLASSES
    priors = list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="knn")))
    assert priors and all(set(p.probs) == set(CLASSES) for p in priors)
    client.submit_labels(running.stub, [("s7", "ten")], "alice")
    assert list(status(running).classes) == [*CLASSES, "ten"]


def test_names_that_would_look_like_others_are_refused(running: Running) -> None:
    """Ids and new class names with white space at an end or control characters are refused per item,
    with the reason; the rest of the request is kept, and the same label twice for one sample too."""
    bad_ids = [" lead", "trail ", "nl\nid", "nul\x00id", "bidi\u202eid"]
    reply = client.ingest(running.stub, [*make_samples(2), *[client.image_sample(i, b"x") for i in bad_ids]])
    assert reply.accepted == 2 and sorted(x.id for x in reply.rejected) == sorted(bad_ids)
    assert all("white space" in x.reason or "control characters" in x.reason for x in reply.rejected)
    labelled = client.submit_labels(running.stub, [("s0", "dog\n"), ("s0", " dog"), ("s1", "cat"), ("s1", "dog")],
                                    "alice")
    assert labelled.accepted == 1 and [x.reason for x in labelled.rejected] == [
        "label \"dog\\n\" holds control characters or invisible ones (U+000A): use one line of printable text",
        "label \" dog\" starts or ends with white space: send it without",
        "listed twice in this request: send one label per sample"]
    assert [(lab.id, lab.label) for lab in client.list_labels(running.stub)] == [("s1", "cat")]
    # names that would break an ImageFolder export, or split a class in two (found by an annotation team)
    client.ingest(running.stub, make_samples(8))
    odd = client.submit_labels(running.stub, [("s2", "Acropora / branching"), ("s3", ".hidden"), ("s4", "Cat"),
                                              ("s5", "star\u200bfish"), ("s6", "ｃａｔ"), ("s7", "dog"), ("s1", "a,b")],
                               "alice")
    assert odd.accepted == 1 and [(x.id, x.reason.split(":")[0]) for x in odd.rejected] == [
        ("s2", "label \"Acropora / branching\" cannot be a folder name (a /, a \\ or a leading dot), and every "
               "class is one in an ImageFolder export"),
        ("s3", "label \".hidden\" cannot be a folder name (a /, a \\ or a leading dot), and every class is one in "
               "an ImageFolder export"),
        ("s4", "label \"Cat\" differs from the class \"cat\" only in case or Unicode form"),
        ("s5", "label \"star\\u200bfish\" holds control characters or invisible ones (U+200B)"),
        ("s6", "label \"ｃａｔ\" differs from the class \"cat\" only in case or Unicode form"),
        ("s1", "label \"a,b\" holds a comma, and `serve --classes a,b,c` splits on commas")]


def test_index_recall_at_10(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VersionIndex("v0001", 32, 0, False)
    for first in range(0, 3000, 500):
        idx.add(np.arange(first, first + 500) + 1, x[first:first + 500])
    q = x[:200]
    rows, dists = idx.knn(q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(rows[i]) & set(exact[i])) / 10 for i in range(len(q))])
    assert recall >= 0.95 and (rows[:, 0] == np.arange(200)).all()
    assert np.all(np.diff(dists, axis=1) >= -1e-6)
    # a view taken earlier never sees rows added after it
    rows, _ = idx.knn(q[:5], 10, limit=1000)
    assert rows.max() < 1000
    idx.save(tmp_path / "v0001")
    from agent.state import StoredEmbeddings

    again = VersionIndex.restore("v0001", StoredEmbeddings(np.arange(3000) + 1, x, None, None), tmp_path / "v0001")
    assert again.loaded_from_snapshot == 3000
    assert np.array_equal(again.knn(q, 10)[0], idx.knn(q, 10)[0])


def test_linear_encoder_has_requested_heads() -> None:
    m = linear_encoder(classes=["a", "b"], rotation=True)
    assert [o.name for o in m.graph.output] == ["embedding", "logits", "rotation_logits"]


def test_a_model_that_disagrees_with_its_manifest_is_not_served(tmp_path: Path) -> None:
    from agent.testing import publish_model
    from shortlist.manifest import Preprocess

    models = tmp_path / "models"
    model = linear_encoder(SIZE, 16)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8  # manifest will say 8, model gives 16
    publish_model(models, model, Preprocess(size=SIZE))
    r = start(tmp_path / "data", models)
    try:
        st = status(r)
        assert st.model_version == "" and any("v0001" in w and "disagree" in w for w in st.warnings)
        assert client.ingest(r.stub, make_samples(3)).accepted == 3  # still stores
    finally:
        r.stop()


def test_closing_the_list_without_a_class_only_the_history_uses(tmp_path: Path) -> None:
    """A typo labelled and then retracted or corrected ("catt") is no class of the pool: --classes need not
    list it (it was refused, asking for a fresh data folder); the history keeps saying it, after restarts."""
    from agent.state import NewSample

    s = State(tmp_path / "s.sqlite")
    s.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:02d}") for i in range(3)])
    cat, catt, dog = (int(s.class_index(n) or 0) for n in ("cat", "catt", "dog"))  # 0, 1, 2: an open list
    s.add_labels([(1, catt), (2, dog)], "ann")
    s.add_labels([(1, cat)], "ann")  # corrected
    s.add_labels([(3, catt)], "ann")
    s.retract_labels([3], "ann")  # taken back
    s.close()
    with pytest.raises(ClassListError, match="dog"):
        State(tmp_path / "s.sqlite", classes=["cat"])  # a current label's class is still required
    s = State(tmp_path / "s.sqlite", classes=["dog", "cat"])
    assert s.classes == ["dog", "cat"] and s.closed and list(s.labels_by_seq()[1:]) == [1, 0, -1]
    assert [h[0] for h in s.label_history(1)] == ["catt", "cat"] and [h[0] for h in s.label_history(3)] == ["catt", ""]
    assert s.class_index("catt") is None  # closed: the retired name is no class to label with
    s.close()
    s = State(tmp_path / "s.sqlite")  # a restart without --classes keeps the closed list and the history
    assert s.classes == ["dog", "cat"] and s.closed and [h[0] for h in s.label_history(1)] == ["catt", "cat"]
    assert [(e.id, e.label) for e in s.label_events(history=True)] == [
        ("s0", "catt"), ("s1", "dog"), ("s0", "cat"), ("s2", "catt"), ("s2", "")]
    s.close()
    s = State(tmp_path / "s.sqlite", classes=["cat", "dog", "bird"])  # closed again in another order
    assert s.classes == ["cat", "dog", "bird"] and list(s.labels_by_seq()[1:]) == [0, 1, -1]
    assert [h[0] for h in s.label_history(3)] == ["catt", ""]
    s.close()


def test_conditional_labels_never_overwrite_a_label_given_meanwhile(running: Running) -> None:
    """Two annotators on one sample: a write that says which label it saw (if_current) is refused, with the
    label now and who gave it, when someone changed it meanwhile; an undo takes back only its own label;
    agreeing is no conflict; writes without the condition behave as before (last one wins)."""
    client.ingest(running.stub, make_samples(4))
    assert client.submit_labels(running.stub, [("s0", "cat")], "alice", if_current={"s0": ""}).accepted == 1
    late = client.submit_labels(running.stub, [("s0", "dog")], "bob", if_current={"s0": ""})  # bob saw it empty
    assert late.accepted == 0 and [(x.id, x.reason) for x in late.rejected] == [
        ("s0", "labelled \"cat\" by alice meanwhile (expected unlabelled): not changed; look again and resend")]
    assert (late.rejected[0].now.label, late.rejected[0].now.annotator) == ("cat", "alice")  # for programs
    same = client.submit_labels(running.stub, [("s0", "cat")], "bob", if_current={"s0": ""})
    assert same.accepted == 1  # the same label: agreement, not a conflict
    assert client.submit_labels(running.stub, [("s0", "dog")], "bob", if_current={"s0": "cat"}).accepted == 1
    undo = client.retract_labels(running.stub, ["s0"], "alice", if_current={"s0": "cat"})  # alice undoes hers
    assert undo.accepted == 0 and "labelled \"dog\" by bob meanwhile (expected \"cat\")" in undo.rejected[0].reason
    assert [(lab.id, lab.label) for lab in client.list_labels(running.stub)] == [("s0", "dog")]
    with pytest.raises(grpc.RpcError) as stray:  # a condition on an id the request does not retract
        running.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=["s0"], if_current={"s0": "dog", "s3": ""}))
    assert stray.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "\"s3\"" in (stray.value.details() or "")
    assert client.retract_labels(running.stub, ["s0"], "bob", if_current={"s0": "dog"}).accepted == 1
    gone = client.submit_labels(running.stub, [("s0", "frog")], "alice", if_current={"s0": "dog"})
    assert "unlabelled (its label taken back by bob) meanwhile (expected \"dog\")" in gone.rejected[0].reason
    assert gone.rejected[0].HasField("now") and (gone.rejected[0].now.label, gone.rejected[0].now.annotator) == (
        "", "bob")
    assert not client.submit_labels(running.stub, [("nope", "cat")], "alice").rejected[0].HasField("now")
    # without the condition: as before (the web app's pages and Label Studio set it where it matters)
    assert client.submit_labels(running.stub, [("s1", "cat")], "alice").accepted == 1
    events = running.stub.GetStatus(agent_pb2.GetStatusRequest()).label_events
    assert client.submit_labels(running.stub, [("s1", "cat")], "alice").accepted == 1  # a resend: no new row
    assert running.stub.GetStatus(agent_pb2.GetStatusRequest()).label_events == events
    s1 = running.agent.state.lookup("s1")
    assert s1 is not None and [h[1] for h in running.agent.state.label_history(s1.seq)] == ["alice"]
    assert client.submit_labels(running.stub, [("s1", "dog")], "bob").accepted == 1
    assert client.retract_labels(running.stub, ["s1"], "alice").accepted == 1
    assert not list(client.list_labels(running.stub))


def test_current_labels_listed_as_of_the_start_while_labels_change(tmp_path: Path) -> None:
    """A listing of the current labels (ListLabels, export-labels) read in pages while someone relabels a
    sample not read yet: the sample is listed once, with its label at the start (was: left out, its old row
    no longer the latest and its new row past the listing's end)."""
    from agent.state import NewSample

    s = State(tmp_path / "s.sqlite")
    s.add_samples([NewSample(f"s{i}", "", {}, "image", f"{i:02d}") for i in range(6)])
    cat, dog = s.class_index("cat"), s.class_index("dog")
    assert cat is not None and dog is not None
    s.add_labels([(q, cat) for q in range(1, 7)], "ann")
    events = s.label_events(chunk=2)
    first = next(events)
    s.add_labels([(6, dog)], "bob")  # the newest-labelled sample, on a later page
    s.retract_labels([5], "bob")
    listed = [first, *events]
    assert [(e.id, e.label) for e in listed] == [(f"s{i}", "cat") for i in range(6)]
    assert all(e.current for e in listed)  # current as of the start
    assert [(e.id, e.label) for e in s.label_events()] == [*((f"s{i}", "cat") for i in range(4)), ("s5", "dog")]
    s.close()


def test_a_shutdown_ends_an_open_ingest_stream_saying_what_it_stored(tmp_path: Path, registry: Path) -> None:
    """A pipeline's long-lived Ingest stream when the agent is stopped: UNAVAILABLE with the count of its
    samples that are stored (was gRPC's "Cancelling all calls" at the end of the grace period, no count)."""
    r = start(tmp_path / "data", registry)
    release = threading.Event()

    def requests() -> Iterator[agent_pb2.IngestRequest]:
        yield agent_pb2.IngestRequest(samples=make_samples(5))
        release.wait(20)  # the pipeline waits for its next images, as a camera stream does
        yield agent_pb2.IngestRequest(samples=make_samples(5, prefix="late"))

    outcome: list[BaseException] = []

    def stream() -> None:
        try:
            r.stub.Ingest(requests(), timeout=30)
        except grpc.RpcError as e:
            outcome.append(e)

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 20
    while r.agent.state.count() < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    stop_server(r.server, r.agent, grace=5.0)  # the client's channel stays open: it hears the agent's answer
    release.set()
    t.join(10)
    r.channel.close()
    assert outcome, "the stream ended without an error"
    err = outcome[0]
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    details = err.details() or ""  # type: ignore[attr-defined]
    assert "shutting down" in details and "5 samples of this stream were stored" in details
    assert time.monotonic() - started < 5  # not the end of the grace period


def test_a_shutdown_answers_a_client_that_is_sending_with_what_it_stored(tmp_path: Path, registry: Path) -> None:
    """``shortlist ingest --batch 4`` sends requests as fast as it can: stopped mid-stream, each client still
    hears the agent's answer, UNAVAILABLE with the count of its samples stored, which is what the folder
    holds (a client still sending when the server closed its connections got "Stream removed (sendmsg: Broken
    pipe)" and no count, about 1 stop in 30 here: the agent now lets clients read the answer first)."""
    requests = [agent_pb2.IngestRequest(samples=make_samples(1, prefix=f"b{i}_", seed=i)) for i in range(4000)]
    for k in range(6):
        r = start(tmp_path / f"data{k}", registry)
        outcome: list[object] = []

        def stream(r: Running = r, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(r.stub.Ingest(iter(requests), timeout=30))
            except grpc.RpcError as e:
                outcome.append(e)

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 20
        while r.agent.state.count() < 1 + k % 4:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        stop_server(r.server, r.agent, grace=5.0)
        t.join(10)
        r.channel.close()
        err = outcome[0]
        assert isinstance(err, grpc.RpcError), err
        details = err.details() or ""  # type: ignore[attr-defined]
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (k, details)  # type: ignore[attr-defined]
        stored = State(tmp_path / f"data{k}" / "state.sqlite")
        try:
            n = stored.count()
        finally:
            stored.close()
        assert "the agent is shutting down and stopped reading this stream" in details, (k, details)
        assert f"; {n} samples of this stream were stored before the failure" in details, (k, n, details)
        assert dict(err.trailing_metadata() or ())["shortlist-stored"] == str(n), (k, n)  # type: ignore[attr-defined]
        assert details.count(f"resend from sample {n + 1} on") == 1, details  # the note once, with the resume point
        assert dict(err.trailing_metadata() or ())["shortlist-handled"] == str(n), (k, n)  # type: ignore[attr-defined]


def test_annotator_names_with_control_characters_are_refused(running: Running) -> None:
    """An annotator name is checked like a class name: a newline or an ANSI escape in it would forge lines and
    send terminal sequences to other users' `shortlist label` output. The whole request (one annotator for
    all its items) is refused with INVALID_ARGUMENT, saying what is allowed; nothing is stored."""
    client.ingest(running.stub, make_samples(2))
    for bad in ["mallory\n  line 9: img099.png: 'dog' by boss", "eve\x1b[31mRED", "bidi\u202eeve", " lead"]:
        for call in (lambda bad=bad: client.submit_labels(running.stub, [("s0", "cat")], bad),
                     lambda bad=bad: client.retract_labels(running.stub, ["s0"], bad)):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "annotator name" in (e.value.details() or "")
            assert "printable text" in (e.value.details() or "") or "white space" in (e.value.details() or "")
    assert list(client.list_labels(running.stub)) == []
    assert client.submit_labels(running.stub, [("s0", "cat")], "chloé O'Brien-Smith").accepted == 1


def test_an_index_rebuilt_at_start_logs_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Without a snapshot (a restored backup) the graph is rebuilt from the stored embeddings: a long rebuild
    logs how far it is, its rate and the time left (at 300,000 rows the log had been silent for 110 s), and
    the index is the same as one built in a single call."""
    from agent import index
    from agent.index import VersionIndex
    from agent.state import StoredEmbeddings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    caplog.set_level(logging.INFO, logger="agent.index")
    monkeypatch.setattr(index, "RESTORE_BLOCK", 300, raising=False)
    monkeypatch.setattr(index, "RESTORE_LOG_S", 0.0, raising=False)
    idx = VersionIndex.restore("v0001", StoredEmbeddings(np.arange(1000) + 1, x, None, None), None)
    lines = [r.getMessage() for r in caplog.records if "rebuilding the graph" in r.getMessage()]
    assert [line.split("embeddings, ")[1].split(" rows")[0] for line in lines] == [
        "300 of 1000", "600 of 1000", "900 of 1000"]
    assert "rows/s, about " in lines[0] and " s left)" in lines[0]
    assert idx.loaded_from_snapshot == 0 and idx.n == 1000
    assert (idx.knn(x[:50], 5)[0][:, 0] == np.arange(50)).all()


def test_reload_model_replies_with_the_status_after_the_agent_looked_at_the_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ReloadModel waits (bounded) for the model manager's thread to look at the registry once after the call,
    then replies with that status: the first model served, a newer version pending (not waiting for its
    re-embedding), a broken one refused, or nothing new. A poll interval of an hour: only ReloadModel wakes it."""
    release, entered = threading.Event(), threading.Event()
    real = ModelManager._embedder

    def embedder(self: ModelManager, name: str, manifest: Any) -> Any:
        emb = real(self, name, manifest)
        if name == "v0002":  # its re-embedding waits: the reply must not wait for it
            inner = emb.embed

            def held(images: np.ndarray) -> Any:
                entered.set()
                release.wait(30)
                return inner(images)

            emb.embed = held  # type: ignore[method-assign]
        return emb

    monkeypatch.setattr(ModelManager, "_embedder", embedder)
    models = tmp_path / "models"
    server, port, agent = create_server(AgentConfig(tmp_path / "data", models, port=0, poll_s=3600.0,
                                                    use_cuda=False))
    ch = client.channel(f"127.0.0.1:{port}")
    stub = agent_pb2_grpc.AgentStub(ch)

    def reload() -> tuple[agent_pb2.Status, float]:
        t0 = time.monotonic()
        reply = stub.ReloadModel(agent_pb2.ReloadModelRequest(), timeout=10)
        return reply, time.monotonic() - t0

    try:
        assert client.ingest(stub, make_samples(12, labels=3)).accepted == 12
        publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=0)
        st, took = reload()
        assert st.model_version == "v0001" and took < 4  # adopted: no FAILED_PRECONDITION "no model" after it
        publish_linear(models, size=SIZE, dim=24, classes=CLASSES, seed=1)
        st, took = reload()
        assert (st.model_version, st.pending_model_version) == ("v0001", "v0002") and took < 4
        # the thread is busy embedding (no look until its next batch): a call's deadline bounds the wait, and
        # the reply comes before it, not DEADLINE_EXCEEDED
        assert entered.wait(10)
        t0 = time.monotonic()
        assert stub.ReloadModel(agent_pb2.ReloadModelRequest(), timeout=1).pending_model_version == "v0002"
        assert 0.5 < time.monotonic() - t0 < 1
        release.set()
        wait_for(lambda: stub.GetStatus(agent_pb2.GetStatusRequest()).model_version == "v0002")
        v3 = models / publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=2)
        (v3 / "encoder.onnx").write_bytes((v3 / "encoder.onnx").read_bytes()[:100])
        st, took = reload()
        assert st.model_version == "v0002" and any(w.startswith("v0003 refused") for w in st.warnings), st.warnings
        assert took < 4
        st, took = reload()  # nothing new: answered at once
        assert st.model_version == "v0002" and st.pending_model_version == "" and took < 4
    finally:
        release.set()
        ch.close()
        stop_server(server, agent, grace=1.0)


def test_reload_model_is_answered_while_a_first_model_embeds_the_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first model's background embedding of the stored pool yields to a ReloadModel between batches: the
    reply names a version refused meanwhile within a batch's time, and the embedding then goes on."""
    real = ModelManager._embedder

    def embedder(self: ModelManager, name: str, manifest: Any) -> Any:
        emb = real(self, name, manifest)
        inner = emb.embed

        def slow(images: np.ndarray) -> Any:
            time.sleep(0.2)
            return inner(images)

        emb.embed = slow  # type: ignore[method-assign]
        return emb  # 15 batches of 2: the pool takes about 3 s

    monkeypatch.setattr(ModelManager, "_embedder", embedder)
    models = tmp_path / "models"
    server, port, agent = create_server(AgentConfig(tmp_path / "data", models, port=0, poll_s=3600.0,
                                                    use_cuda=False, batch_size=2))
    ch = client.channel(f"127.0.0.1:{port}")
    stub = agent_pb2_grpc.AgentStub(ch)
    try:
        assert client.ingest(stub, make_samples(30, labels=3)).accepted == 30
        publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=0)
        assert stub.ReloadModel(agent_pb2.ReloadModelRequest(), timeout=10).model_version == "v0001"
        v2 = models / publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=1)
        (v2 / "encoder.onnx").write_bytes((v2 / "encoder.onnx").read_bytes()[:100])
        t0 = time.monotonic()
        st = stub.ReloadModel(agent_pb2.ReloadModelRequest(), timeout=10)
        assert time.monotonic() - t0 < 1.5 and any(w.startswith("v0002 refused") for w in st.warnings)
        assert st.embedded < 30
        wait_for(lambda: stub.GetStatus(agent_pb2.GetStatusRequest()).embedded == 30)
    finally:
        ch.close()
        stop_server(server, agent, grace=1.0)
