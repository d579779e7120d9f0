"""RenameClass (`shortlist rename-class`): a durable, audited rename or merge of a class, in one transaction;
the old name is retired (refused with the new name) on an open and on a closed class list."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from agent import client
from agent.state import ClassListError, State
from shortlist.cli import app
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_images, make_samples, png, start


def _rename(agent: Running, old: str, new: str, annotator: str = "lead") -> agent_pb2.RenameClassReply:
    reply: agent_pb2.RenameClassReply = agent.stub.RenameClass(
        agent_pb2.RenameClassRequest(from_class=old, to_class=new, annotator=annotator))
    return reply


def _history(agent: Running, sid: str) -> list[tuple[str, str, str]]:
    return [(r.label, r.annotator, r.source) for r in agent.stub.ListLabels(agent_pb2.ListLabelsRequest(history=True))
            if r.id == sid]


def _classes(agent: Running) -> list[str]:
    return list(agent.stub.GetStatus(agent_pb2.GetStatusRequest()).classes)


def _labelled(tmp_path: Path, **kw: Any) -> Running:
    agent = start(tmp_path / "data", tmp_path / "models", **kw)
    assert client.ingest(agent.stub, make_samples(9)).accepted == 9
    labels = [(f"s{i}", ["deer", "fox", "boar"][i % 3]) for i in range(6)]
    assert client.submit_labels(agent.stub, labels, annotator="alice").accepted == 6
    return agent


def test_a_rename_moves_the_labels_keeps_the_history_retires_the_name_and_survives_a_restart(tmp_path: Path) -> None:
    agent = _labelled(tmp_path)
    try:
        assert _classes(agent) == ["deer", "fox", "boar"]
        reply = _rename(agent, "deer", "roe_deer")
        assert (reply.moved, reply.merged, list(reply.classes)) == (2, False, ["roe_deer", "fox", "boar"])
        assert _classes(agent) == ["roe_deer", "fox", "boar"]  # the new name keeps the old one's place (its key)
        assert _history(agent, "s0") == [("deer", "alice", "manual"), ("roe_deer", "lead", "rename")]
        # the retired name is refused per item, naming the new one; the other items are stored
        r = agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(annotator="bob", labels=[
            agent_pb2.LabelAssignment(id="s6", label="deer"), agent_pb2.LabelAssignment(id="s7", label="fox")]))
        assert r.accepted == 1 and [(x.id, x.reason) for x in r.rejected] == [
            ("s6", "\"deer\" was renamed to \"roe_deer\"; label with that")]
        ingest = client.ingest(agent.stub, [client.image_sample("n0", b"x" * 10, label="deer")])
        assert "\"deer\" was renamed to \"roe_deer\"" in ingest.rejected[0].reason
        # a resend of the same rename (a retry after a lost reply) changes nothing; another one of it is refused
        assert _rename(agent, "deer", "roe_deer").moved == 0
        with pytest.raises(grpc.RpcError) as e:
            _rename(agent, "deer", "red_deer")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "\"roe_deer\"" in str(e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            _rename(agent, "elk", "moose")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no class \"elk\"" in str(e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            _rename(agent, "fox", "Boar")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "\"boar\"" in str(e.value.details())
    finally:
        agent.stop()
    agent = start(tmp_path / "data", tmp_path / "models")
    try:
        assert _classes(agent) == ["roe_deer", "fox", "boar"]
        labels = {s.id: s.label for s in agent.stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=True))}
        assert labels == {"s0": "roe_deer", "s1": "fox", "s2": "boar", "s3": "roe_deer", "s4": "fox", "s5": "boar",
                          "s7": "fox"}
        assert _history(agent, "s3") == [("deer", "alice", "manual"), ("roe_deer", "lead", "rename")]
        r = client.submit_labels(agent.stub, [("s8", "deer")])
        assert r.accepted == 0 and "renamed to \"roe_deer\"" in r.rejected[0].reason
        # a rename back brings the name back: it is no longer retired
        assert _rename(agent, "roe_deer", "deer").moved == 2 and _classes(agent) == ["deer", "fox", "boar"]
        assert client.submit_labels(agent.stub, [("s8", "deer")]).accepted == 1
    finally:
        agent.stop()


def test_a_merge_into_an_existing_class(tmp_path: Path) -> None:
    agent = _labelled(tmp_path)
    try:
        reply = _rename(agent, "boar", "fox")
        assert (reply.moved, reply.merged, list(reply.classes)) == (2, True, ["deer", "fox"])
        assert _history(agent, "s2") == [("boar", "alice", "manual"), ("fox", "lead", "rename")]
        assert agent.stub.GetStatus(agent_pb2.GetStatusRequest()).labeled == 6
        # a chain of renames: the oldest name names the newest
        _rename(agent, "fox", "canid")
        r = client.submit_labels(agent.stub, [("s8", "boar")])
        assert r.rejected[0].reason == "\"boar\" was renamed to \"canid\"; label with that"
    finally:
        agent.stop()


def test_a_rename_on_a_closed_list_changes_the_list_and_a_restart_says_the_new_list(tmp_path: Path) -> None:
    agent = _labelled(tmp_path, classes=("deer", "fox", "boar", "red_deer"))
    try:
        reply = _rename(agent, "deer", "roe_deer")
        assert list(reply.classes) == ["roe_deer", "fox", "boar", "red_deer"] and reply.moved == 2
        assert client.submit_labels(agent.stub, [("s6", "roe_deer")]).accepted == 1
        assert _rename(agent, "red_deer", "roe_deer").merged  # a class without labels: merged, nothing moved
        status = agent.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert list(status.classes) == ["roe_deer", "fox", "boar"] and not status.classes_open
    finally:
        agent.stop()
    # the serve command's old --classes: refused with the list to pass (not "a fresh --data-dir")
    with pytest.raises(ClassListError) as e:
        State(tmp_path / "data" / "state.sqlite", ["deer", "fox", "boar", "red_deer"])
    assert str(e.value) == ('the given class list names "deer", which was renamed to "roe_deer", "red_deer", which '
                            'was renamed to "roe_deer" (`shortlist rename-class`): pass --classes roe_deer,fox,boar')
    agent = start(tmp_path / "data", tmp_path / "models", classes=("roe_deer", "fox", "boar"))
    try:
        assert _classes(agent) == ["roe_deer", "fox", "boar"]
        assert _history(agent, "s0") == [("deer", "alice", "manual"), ("roe_deer", "lead", "rename")]
    finally:
        agent.stop()


class _FailingDb:
    """A sqlite3 connection whose label INSERT fails: a crash in the middle of the rename's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def executemany(self, sql: str, rows: Any) -> Any:
        if sql.startswith("INSERT INTO labels"):
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return self.db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_a_rename_that_fails_midway_changes_nothing(tmp_path: Path) -> None:
    agent = _labelled(tmp_path)
    state = agent.agent.state
    real = state._db
    try:
        state._db = _FailingDb(real)  # type: ignore[assignment]
        with pytest.raises(grpc.RpcError):
            _rename(agent, "deer", "roe_deer")
        state._db = real
        assert _classes(agent) == ["deer", "fox", "boar"]
        assert client.submit_labels(agent.stub, [("s6", "deer")]).accepted == 1  # not retired
    finally:
        state._db = real
        agent.stop()
    reopened = State(tmp_path / "data" / "state.sqlite")
    try:
        assert reopened.classes == ["deer", "fox", "boar"] and reopened.renamed == {}
        assert reopened.label_history(1) == [("deer", "alice", pytest.approx(reopened.label_history(1)[0][2]))]
    finally:
        reopened.close()


def test_the_cli_says_how_many_labels_moved(tmp_path: Path) -> None:
    agent = _labelled(tmp_path)
    try:
        cmd = ["rename-class", "--agent", agent.address, "--annotator", "lead"]
        res = CliRunner().invoke(app, [*cmd, "deer", "roe_deer"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert res.stdout.strip() == '"deer" renamed to "roe_deer": 2 labels moved; classes: roe_deer, fox, boar'
        assert res.stderr == ""  # the result is on stdout (it was on stderr: `2>/dev/null` showed nothing)
        res = CliRunner().invoke(app, [*cmd, "boar", "fox", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout) == {"from": "boar", "to": "fox", "moved": 2, "merged": True,
                                          "classes": ["roe_deer", "fox"]}
        res = CliRunner().invoke(app, [*cmd, "elk", "moose"], env={"COLUMNS": "200"})
        assert res.exit_code == 1 and "no class \"elk\" to rename" in res.output
    finally:
        agent.stop()


def test_priors_after_a_merge_of_a_class_without_labels_name_the_new_list(tmp_path: Path) -> None:
    """A closed list's class without labels merged away leaves the label indices as they were: a PriorLabels
    cached before it must not be answered with the old list's probabilities."""
    from agent.testing import publish_linear
    from tests.agent.conftest import CLASSES, SIZE

    publish_linear(tmp_path / "models", size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
    agent = start(tmp_path / "data", tmp_path / "models", classes=("cat", "dog", "frog", "newt"))
    try:
        assert client.ingest(agent.stub, make_samples(12, labels=6)).accepted == 12
        deadline = time.monotonic() + 30
        while agent.stub.GetStatus(agent_pb2.GetStatusRequest()).embedded < 12:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        req = agent_pb2.PriorLabelsRequest(method="knn", ids=["s9"])
        assert len([*agent.stub.PriorLabels(req)][-1].probs) == 4
        assert _rename(agent, "newt", "frog").merged
        prior = [*agent.stub.PriorLabels(req)][-1]
        assert len(prior.probs) == 3 and prior.label in ("cat", "dog", "frog")
    finally:
        agent.stop()


def test_status_advises_a_restart_with_the_models_classes_only_when_the_agent_would_accept_it(tmp_path: Path) -> None:
    """An open list whose labels use a class the serving model does not name (a class renamed after the model
    was trained): GetStatus says so and advises a cycle, not `--classes <the model's>`, which the agent refuses
    (was: it advised that restart)."""
    from agent.testing import publish_linear
    from tests.agent.conftest import SIZE

    agent = _labelled(tmp_path)
    try:
        publish_linear(tmp_path / "models", size=SIZE, dim=16, classes=["boar", "fox", "deer"])
        agent.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        deadline = time.monotonic() + 30
        while agent.stub.GetStatus(agent_pb2.GetStatusRequest()).model_version != "v0001":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        warned = [w for w in agent.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "logits" in w]
        assert len(warned) == 1 and "restart the agent with --classes boar,fox,deer" in warned[0]  # accepted: yes
        _rename(agent, "deer", "roe_deer")
        warned = [w for w in agent.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "logits" in w]
        assert len(warned) == 1 and "--classes boar,fox,deer" not in warned[0], warned
        assert warned[0].endswith("publish a model trained on these labels (`shortlist cycle`); the labels use "
                                  "\"roe_deer\", which the model does not name, so a restart with the model's "
                                  "classes (--classes) would be refused")
    finally:
        agent.stop()
    with pytest.raises(ClassListError, match="relabel those samples"):
        State(tmp_path / "data" / "state.sqlite", ["boar", "fox", "roe"])


def _rename_during_ingest(agent: Running, monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    """Make the agent's next Ingest batch pass its first checks (stage 1), then rename ``old`` to ``new``
    before the batch is stored (stage 3): the interleaving of a rename with an ingest in flight."""
    pipeline = agent.agent.ingest
    embed = pipeline.embed

    def embed_then_rename(prep: Any) -> Any:
        monkeypatch.setattr(pipeline, "embed", embed)  # once
        out = embed(prep)
        agent.agent.rename_class(old, new, "lead")
        return out

    monkeypatch.setattr(pipeline, "embed", embed_then_rename)


@pytest.mark.parametrize("closed", [False, True])
def test_an_ingest_in_flight_during_a_rename_stores_no_label_of_the_retired_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed: bool) -> None:
    agent = _labelled(tmp_path, **({"classes": ("deer", "fox", "boar")} if closed else {}))
    try:
        raced = make_samples(3, prefix="w", seed=1)
        for s in raced:
            s.label = "deer"
        raced.append(client.image_sample("s8", make_samples(9)[8].encoded_image, label="deer"))  # stored unlabelled
        _rename_during_ingest(agent, monkeypatch, "deer", "roe_deer")
        reply = client.ingest(agent.stub, raced)
        assert reply.accepted == 0 and sorted((r.id, r.reason) for r in reply.rejected) == [
            (sid, "\"deer\" was renamed to \"roe_deer\"; label with that") for sid in ("s8", "w0", "w1", "w2")]
        assert _classes(agent) == ["roe_deer", "fox", "boar"]
        labels = {s.id: s.label for s in agent.stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=True))}
        assert "deer" not in labels.values() and "s8" not in labels
    finally:
        agent.stop()


def test_a_rename_retried_moves_labels_of_the_retired_name_left_by_an_earlier_agent(tmp_path: Path) -> None:
    agent = _labelled(tmp_path)
    try:
        assert _rename(agent, "deer", "roe_deer").moved == 2
        state = agent.agent.state
        # a label of the retired name, as an Ingest in flight stored it before its check was made under the lock
        rec, deer = state.lookup("s8"), state.class_index("deer")
        assert rec is not None and deer is not None
        state.add_labels([(rec.seq, deer)], "ingest", "ingest")
        assert "deer" in _classes(agent)
        reply = _rename(agent, "deer", "roe_deer")
        assert (reply.moved, list(reply.classes)) == (1, ["roe_deer", "fox", "boar"])
        assert _history(agent, "s8") == [("deer", "ingest", "ingest"), ("roe_deer", "lead", "rename")]
        assert _rename(agent, "deer", "roe_deer").moved == 0  # a plain retry
    finally:
        agent.stop()


@pytest.mark.parametrize("closed", [False, True])
def test_a_case_or_width_variant_of_a_retired_name_is_advised_the_class_it_became(tmp_path: Path, closed: bool) -> None:
    agent = _labelled(tmp_path, **({"classes": ("deer", "fox", "boar")} if closed else {}))
    try:
        _rename(agent, "deer", "roe_deer")
        r = client.submit_labels(agent.stub, [("s6", "Deer"), ("s7", "ｄｅｅｒ")])
        assert r.accepted == 0 and [x.reason for x in r.rejected] == [
            f'label "{v}" differs from "deer" only in case or Unicode form, and "deer" was renamed to "roe_deer": '
            'use "roe_deer"' for v in ("Deer", "ｄｅｅｒ")]
        ingest = client.ingest(agent.stub, [client.image_sample("n0", b"x" * 10, label="Deer")])
        assert ingest.rejected[0].reason.endswith("use \"roe_deer\"")
        with pytest.raises(grpc.RpcError) as e:
            _rename(agent, "fox", "Deer")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and str(e.value.details()).endswith(
            "use \"roe_deer\"")
        with pytest.raises(grpc.RpcError) as e:  # renaming the class back: its old name is the one to give
            _rename(agent, "roe_deer", "Deer")
        assert str(e.value.details()).endswith("use \"deer\"")
        assert _rename(agent, "roe_deer", "deer").moved == 2
    finally:
        agent.stop()


def test_a_retired_name_is_refused_to_another_class_and_given_back_only_to_the_class_it_became(
        tmp_path: Path) -> None:
    agent = _labelled(tmp_path)
    try:
        _rename(agent, "deer", "roe_deer")
        # fox taking 'deer' would make a pipeline still sending 'deer' (meaning roe_deer) label foxes, silently
        with pytest.raises(grpc.RpcError) as e:
            _rename(agent, "fox", "deer")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(e.value.details()) == (
            "to_class: \"deer\" was renamed to \"roe_deer\", and a label \"deer\" is refused naming \"roe_deer\"; pick "
            "another name (only \"roe_deer\" can take \"deer\" back)")
        assert _classes(agent) == ["roe_deer", "fox", "boar"]  # nothing changed
        r = client.submit_labels(agent.stub, [("s8", "deer")])
        assert r.rejected[0].reason == "\"deer\" was renamed to \"roe_deer\"; label with that"
        # along a chain, the class the retired names now point to is refused the other's name too ...
        _rename(agent, "roe_deer", "capreolus")
        for name in ("deer", "roe_deer"):
            with pytest.raises(grpc.RpcError) as e:
                _rename(agent, "boar", name)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "\"capreolus\"" in str(e.value.details())
        # ... and it alone takes either old name back
        assert _rename(agent, "capreolus", "deer").moved == 2
        assert _classes(agent) == ["deer", "fox", "boar"]
        assert client.submit_labels(agent.stub, [("s8", "deer")]).accepted == 1
        # a merged class's name goes back only to the class it was merged into
        _rename(agent, "boar", "fox")
        with pytest.raises(grpc.RpcError) as e:
            _rename(agent, "deer", "boar")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "renamed to \"fox\"" in str(e.value.details())
        assert _rename(agent, "fox", "boar").moved == 4 and _classes(agent) == ["deer", "boar"]
    finally:
        agent.stop()


def test_the_current_labels_after_a_rename_name_who_gave_them_and_an_import_elsewhere_keeps_them(
        tmp_path: Path) -> None:
    """ListLabels without history (export-labels' labels.csv reads it) listed a renamed label as the renamer's,
    source "rename", at the rename's time: an import of that file stored every renamed label as the renamer's.
    Now it is the label row the rename moved, under the new name (its row number stays the rename's: the
    cursor); the history keeps both rows."""
    agent = _labelled(tmp_path)
    other = start(tmp_path / "data2", tmp_path / "models")
    try:
        given = {r.id: r for r in agent.stub.ListLabels(agent_pb2.ListLabelsRequest())}
        _rename(agent, "deer", "roe_deer")
        _rename(agent, "roe_deer", "red_deer")  # a chain: still the label as alice gave it
        now = {r.id: r for r in agent.stub.ListLabels(agent_pb2.ListLabelsRequest())}
        assert [(now[s].label, now[s].annotator, now[s].source, now[s].time, now[s].model_version)
                for s in ("s0", "s3")] == [("red_deer", "alice", "manual", given[s].time, given[s].model_version)
                                           for s in ("s0", "s3")]
        assert now["s0"].seq > given["s5"].seq  # the rename's row: a client syncing from a cursor gets it
        assert _history(agent, "s0")[1:] == [("roe_deer", "lead", "rename"), ("red_deer", "lead", "rename")]
        out = tmp_path / "export"
        res = CliRunner().invoke(app, ["export-labels", "--agent", agent.address, "--out", str(out), "--format",
                                       "csv", "--prior-method", ""])
        assert res.exit_code == 0, res.output
        rows = (out / "labels.csv").read_text().splitlines()
        assert not [r for r in rows if ",rename," in r or "lead" in r], rows
        assert client.ingest(other.stub, make_samples(9)).accepted == 9
        res = CliRunner().invoke(app, ["label", str(out / "labels.csv"), "--agent", other.address,
                                       "--annotator", "importer"])
        assert res.exit_code == 0, res.output
        assert {(r.id, r.label, r.annotator, r.source) for r in other.stub.ListLabels(
            agent_pb2.ListLabelsRequest())} == {(s, r.label, r.annotator, r.source) for s, r in now.items()}
        assert {r.annotator for r in now.values()} == {"alice"}
    finally:
        agent.stop()
        other.stop()


def test_a_labels_csv_with_source_rename_is_stored_with_the_given_source(tmp_path: Path) -> None:
    """Source "rename" is the agent's own (RenameClass), as "ingest" and "restored": SubmitLabels refuses it
    (a client row with it would be taken for a rename's), and `shortlist label` of a file with it (an export
    made before the listing named the giver) stores such rows with --source instead of refusing the file."""
    agent = _labelled(tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as e:
            agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
                annotator="bob", source="rename", labels=[agent_pb2.LabelAssignment(id="s6", label="fox")]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "source \"rename\" is reserved for the labels a class rename moves" in str(e.value.details())
        f = tmp_path / "labels.csv"
        f.write_text("id,label,annotator,source\ns7,fox,alice,rename\n")
        res = CliRunner().invoke(app, ["label", str(f), "--agent", agent.address, "--source", "import"])
        assert res.exit_code == 0, res.output
        assert '1 row(s) with source "ingest" or "restored" or "rename"' in res.output
        assert _history(agent, "s7") == [("fox", "alice", "import")]
    finally:
        agent.stop()


def test_after_a_rename_a_refused_conditional_write_names_who_gave_the_label(tmp_path: Path) -> None:
    """A rename moves a label, it does not give it: a conditional SubmitLabels / RetractLabels refused after one
    names the label's giver in ``Rejection.now`` (as ListLabels and ListSamples' Sample.annotator do), not the
    renamer; so do an Agreement's ``now`` and an Overwritten's annotator."""
    agent = _labelled(tmp_path)  # s0, s3: "deer" by alice
    try:
        _rename(agent, "deer", "roe_deer")
        reply = agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
            agent_pb2.LabelAssignment(id="s0", label="fox", if_current="")], annotator="bob"))
        assert reply.accepted == 0 and [(r.id, r.now.label, r.now.annotator) for r in reply.rejected] == [
            ("s0", "roe_deer", "alice")]
        assert "by alice" in reply.rejected[0].reason
        retract = agent.stub.RetractLabels(agent_pb2.RetractLabelsRequest(ids=["s0"], if_current={"s0": "fox"},
                                                                         annotator="bob"))
        assert [(r.now.label, r.now.annotator) for r in retract.rejected] == [("roe_deer", "alice")]
        # alice's own label, renamed: her conditional write on the old name is a conflict, not her resend
        mine = agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
            agent_pb2.LabelAssignment(id="s0", label="fox", if_current="deer")], annotator="alice"))
        assert (mine.rejected[0].now.label, mine.rejected[0].now.annotator) == ("roe_deer", "alice")
        assert "renamed" in mine.rejected[0].reason and "already" not in mine.rejected[0].reason
        agreed = agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
            agent_pb2.LabelAssignment(id="s0", label="roe_deer", if_current="")], annotator="bob"))
        assert [(a.id, a.now.label, a.now.annotator) for a in agreed.agreed] == [("s0", "roe_deer", "alice")]
        over = agent.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=[
            agent_pb2.LabelAssignment(id="s3", label="fox")], annotator="bob"))
        assert [(o.id, o.annotator) for o in over.overwritten] == [("s3", "alice")]
    finally:
        agent.stop()


def test_the_first_ingest_with_labels_run_again_after_a_rename_is_all_duplicates(tmp_path: Path) -> None:
    """`ingest --with-labels` of a class-folder tree, `rename-class deer roe_deer`, then the same ingest again (a
    nightly job): the deer/ files were rejected (`"deer" was renamed to "roe_deer"; label with that`, though the
    rename had moved them there), exit 1 for a folder holding only deer/. They are duplicates, exit 0; a new file
    in deer/ is still refused naming the new class (a retired name is not mapped silently)."""
    agent = start(tmp_path / "data", tmp_path / "models")
    try:
        tree = tmp_path / "labelled"
        for i, img in enumerate(make_images(6)):
            (tree / ["deer", "fox"][i % 2]).mkdir(parents=True, exist_ok=True)
            (tree / ["deer", "fox"][i % 2] / f"{i}.png").write_bytes(png(img))
        ingest = ["ingest", "--with-labels", "--id-prefix", "lab/", "--agent", agent.address]
        res = CliRunner().invoke(app, [*ingest, str(tree)])
        assert res.exit_code == 0 and res.stdout.splitlines()[0] == "accepted 6, duplicates 0, rejected 0", res.output
        res = CliRunner().invoke(app, ["rename-class", "deer", "roe_deer", "--agent", agent.address])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(app, [*ingest, str(tree)])
        assert res.exit_code == 0 and res.stdout.splitlines() == ["accepted 0, duplicates 6, rejected 0"], res.output
        # a folder holding only the renamed class
        res = CliRunner().invoke(app, [*ingest, "--id-prefix", "lab/deer/", str(tree / "deer")])
        assert res.exit_code == 0 and res.stdout.splitlines() == ["accepted 0, duplicates 3, rejected 0"], res.output
        (tree / "deer" / "new.png").write_bytes(png(255 - make_images(1)[0]))
        res = CliRunner().invoke(app, [*ingest, str(tree), "--json"])
        out = json.loads(res.stdout)
        assert (out["accepted"], out["duplicates"]) == (0, 6), res.output
        assert [(r["id"], r["reason"]) for r in out["rejected"]] == [
            ("lab/deer/new.png", "\"deer\" was renamed to \"roe_deer\"; label with that")]
        assert {r.id: r.label for r in agent.stub.ListSamples(agent_pb2.ListSamplesRequest())} == {
            f"lab/{c}/{i}.png": {"deer": "roe_deer"}.get(c, c) for i in range(6) for c in [["deer", "fox"][i % 2]]}
    finally:
        agent.stop()
