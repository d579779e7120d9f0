"""``shortlist models list`` and ``shortlist models rollback`` against a real registry and agent."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import client
from agent.embedder import Embedder
from agent.models import ModelManager
from agent.models_cli import _taken_up
from agent.testing import foreign_encoder, linear_encoder, publish_linear, publish_model
from shortlist.cli import app
from shortlist.manifest import (
    HIGH_WATER_NAME,
    PUBLISH_LOCK_NAME,
    Manifest,
    Preprocess,
    check_version,
    list_versions,
)
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running, make_samples, start

runner = CliRunner()
REGISTRY_FILES = (HIGH_WATER_NAME, PUBLISH_LOCK_NAME)  # the registry's own, beside its version folders


def said(output: str) -> str:
    """The words of a command's output, without rich's line wrapping and box edges."""
    return " ".join(output.replace("│", " ").split())


def _serving(r: Running, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while r.stub.GetStatus(agent_pb2.GetStatusRequest()).model_version != version:
        assert time.monotonic() < deadline, f"the agent did not take {version} up"
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rollback_serves_a_copy_of_an_older_version_and_list_shows_why_a_folder_is_not_served(
        running: Running) -> None:
    models = running.models
    assert publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=1) == "v0002"
    _serving(running, "v0002")
    broken = models / "v0003"
    broken.mkdir()
    (broken / "manifest.json").write_text("{")  # a hand-made folder: never served

    listed = runner.invoke(app, ["models", "list", "--models", str(models), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["version"], r["complete"]) for r in rows] == [("v0001", True), ("v0002", True), ("v0003", False)]
    assert "not JSON" in rows[2]["problem"] and rows[0]["classes"] == CLASSES
    table = runner.invoke(app, ["models", "list", "--models", str(models)])
    assert table.exit_code == 0 and "served: v0002 (the newest complete version that passes" in said(table.stdout)
    assert "next version published here: v0004" in said(table.stdout)  # after the hand-made v0003

    back = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--agent", running.address,
                               "--json"])
    assert back.exit_code == 0, back.output
    out = json.loads(back.stdout)
    assert out["published"] == "v0004" and out["copy_of"] == "v0001" and not out["agent"]["refused"]
    assert "v0004" in (out["agent"]["serving"], out["agent"]["embedding"])  # it waited for the agent's answer
    _serving(running, "v0004")
    copy = check_version(models / "v0004")  # complete, hashes checked
    assert copy.republished_from == "v0001" and copy.files == check_version(models / "v0001").files
    assert (models / "v0004" / "encoder.onnx").read_bytes() == (models / "v0001" / "encoder.onnx").read_bytes()
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp")]  # no staging folder left behind


def test_rollback_refusals_change_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    unknown = runner.invoke(app, ["models", "rollback", "v0007", "--models", str(models)])
    assert unknown.exit_code == 2 and "versions: v0001" in said(unknown.output)
    (models / "v0001" / "encoder.onnx").write_bytes(b"changed")  # corrupt: must not be copied into service
    corrupt = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models)])
    assert corrupt.exit_code == 1 and "v0001 cannot be served again" in corrupt.output
    assert "corrupt or was changed after publishing" in said(corrupt.output)
    assert sorted(p.name for p in models.iterdir() if p.name not in REGISTRY_FILES) == ["v0001"]
    not_a_folder = runner.invoke(app, ["models", "list", "--models", str(tmp_path / "nowhere")])
    assert not_a_folder.exit_code == 2 and "is not a folder" in said(not_a_folder.output)
    assert "Traceback" not in unknown.output + corrupt.output + not_a_folder.output


def test_rollback_without_a_reachable_agent_publishes_and_says_when_it_is_taken_up(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    publish_linear(models, size=SIZE, dim=16, seed=1)
    result = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models),
                                 "--agent", f"127.0.0.1:{_free_port()}", "--connect-timeout", "0.5"])
    assert result.exit_code == 0, result.output
    words = said(result.stdout)
    assert "published v0003, a copy of v0001" in words and "was not asked to reload" in words
    assert "at its next registry check" in words
    assert check_version(models / "v0003").republished_from == "v0001"


def test_list_cuts_nothing_when_its_output_is_not_a_terminal(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=0)
    (models / "v0002").mkdir()  # a hand-made folder: not served
    listed = runner.invoke(app, ["models", "list", "--models", str(models)], env={"COLUMNS": "50"})
    assert listed.exit_code == 0, listed.output
    assert "…" not in listed.stdout
    words = said(listed.stdout)
    assert "complete" in words and "not served (below)" in words and str(models) in words


def test_rollback_json_says_why_nothing_was_published(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    publish_linear(models, size=SIZE, dim=16, seed=1)
    for args, code, why in ((["v0009"], 2, 'no version "v0009"'),
                            (["v0002"], 1, "v0002 is the newest complete version"),
                            (["v0001", "--models", str(tmp_path / "nowhere")], 2, "is not a folder")):
        args = [*args, "--models", str(models)] if "--models" not in args else args
        result = runner.invoke(app, ["models", "rollback", *args, "--json", "--no-reload"])
        assert result.exit_code == code, result.output
        out = json.loads(result.stdout)
        assert why in out["error"] and out["published"] is None
    published = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--json", "--no-reload"])
    assert published.exit_code == 0, published.output  # the documented keys, "agent" null: it was not asked
    assert json.loads(published.stdout) == {"published": "v0003", "copy_of": "v0001", "registry": str(models),
                                            "agent": None}
    again = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--no-reload"])
    assert again.exit_code == 1 and "is the same model as v0003" in said(again.output)
    assert sorted(p.name for p in models.iterdir() if p.name not in REGISTRY_FILES) == ["v0001", "v0002", "v0003"]


def test_rollback_to_what_the_agent_serves_is_refused(tmp_path: Path) -> None:
    """The agent serves v0001 and refused the newer v0002 (its graph disagrees with its manifest, which
    only loading shows): a copy of v0001 would be re-embedded for nothing."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        model = linear_encoder(SIZE, 16)
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
        publish_model(models, model, Preprocess(size=SIZE))
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        deadline = time.monotonic() + 20
        while not any(w.startswith("v0002 ") for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        result = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--agent", r.address,
                                     "--json"])
        assert result.exit_code == 1, result.output
        assert "serves v0001 already" in json.loads(result.stdout)["error"]
        assert sorted(p.name for p in models.iterdir() if p.name not in REGISTRY_FILES) == ["v0001", "v0002"]
    finally:
        r.stop()


def test_what_the_agent_made_of_a_rollback_is_told_apart() -> None:
    def st(serving: str, pending: str = "", warnings: tuple[str, ...] = ()) -> agent_pb2.Status:
        return agent_pb2.Status(model_version=serving, pending_model_version=pending, warnings=list(warnings))

    reg = Path("/models")
    assert _taken_up(st("v0009"), "v0009", reg)[0] == "serving"
    assert _taken_up(st("v0007", "v0009"), "v0009", reg)[0] == "embedding"
    assert _taken_up(st("v0007", warnings=("v0009 refused: bad",)), "v0009", reg) == (
        "refused", "has not taken it up: v0009 refused: bad")
    state, words = _taken_up(st("v0007", "v0008"), "v0009", reg)  # still on the batch under way
    assert state == "busy" and "still embedding the pool with v0008" in words and "for v0009" in words
    assert "folder" not in words
    state, words = _taken_up(st("v0007", "v0010"), "v0009", reg)
    assert state == "superseded" and "v0010, newer than v0009" in words
    assert _taken_up(st("v0010"), "v0009", reg)[0] == "superseded"
    state, words = _taken_up(st("v0007"), "v0009", reg)
    assert state == "not_taken_up" and "is /models the folder it serves" in words


def test_rollback_during_a_slow_reembed_is_served_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The field's case: v0002 (bad) is being embedded slowly when v0001 is rolled back to. The agent drops
    v0002 after its batch under way and serves the copy, the same model as the served v0001, with v0001's
    embeddings: the CLI's answer is that it serves it; v0002 was never served."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models, batch_size=4)
    try:
        client.ingest(r.stub, make_samples(40))
        _serving(r, "v0001")
        real = ModelManager._embedder

        def slow(self: ModelManager, name: str, manifest: Manifest) -> Embedder:
            emb = real(self, name, manifest)
            if name == "v0002":
                inner = emb.embed

                def slowly(images: Any) -> Any:
                    time.sleep(0.5)
                    return inner(images)

                emb.embed = slowly  # type: ignore[method-assign]
            return emb

        monkeypatch.setattr(ModelManager, "_embedder", slow)
        publish_linear(models, size=SIZE, dim=24, seed=1)
        deadline = time.monotonic() + 20
        while r.stub.GetStatus(agent_pb2.GetStatusRequest()).pending_model_version != "v0002":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        back = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--agent", r.address,
                                   "--json"])
        assert back.exit_code == 0, back.output
        out = json.loads(back.stdout)
        assert out["published"] == "v0003" and out["agent"]["state"] == "serving", out
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert (st.model_version, st.embedded, st.pending_model_version) == ("v0003", 40, "")
        versions = r.agent.state.model_versions()
        assert versions["v0002"][0] == "superseded" and versions["v0001"][0] == "retired"
    finally:
        r.stop()


def test_a_training_run_or_image_folder_given_as_the_registry_is_said_to_be_one(tmp_path: Path) -> None:
    """``--models runs/pre1`` (a training run) or a folder of images: ``models list`` said "no versions in
    runs/pre1 (publish one with `shortlist export RUN --models runs/pre1`)", a command export refuses and a
    folder to publish into by mistake; ``serve`` started without a word and ``status`` said "warnings: none".
    Now each says what the folder is and what to do. An empty folder is an empty registry."""
    run = tmp_path / "runs" / "pre1"
    run.mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "encoder.pt"):
        (run / name).write_text("{}")
    images = tmp_path / "photos"
    (images / "fox").mkdir(parents=True)
    (images / "fox" / "001.JPG").write_bytes(b"")
    empty = tmp_path / "models"
    empty.mkdir()
    listed = runner.invoke(app, ["models", "list", "--models", str(run)], env={"COLUMNS": "300"})
    assert listed.exit_code == 2 and (
        f"{run} is a training run folder, not a model registry: publish it with `shortlist export --run {run} "
        "--models REGISTRY`") in said(listed.output)
    listed = runner.invoke(app, ["models", "list", "--models", str(images)], env={"COLUMNS": "300"})
    assert listed.exit_code == 2 and f"{images} holds images, not model versions" in said(listed.output)
    listed = runner.invoke(app, ["models", "list", "--models", str(empty)])
    assert listed.exit_code == 0 and said(listed.stdout) == (
        f"no versions in {empty} (publish one with `shortlist export --run RUN --models {empty}`)")
    for folder, what in ((run, "is a training run folder"), (images, "holds images")):
        r = start(tmp_path / f"data-{folder.name}", folder)
        try:
            warnings = r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings
            assert [w for w in warnings if w.startswith(f"--models {folder} {what}")], warnings
            assert r.agent.registry_warning() in warnings  # what `shortlist serve` prints at start
        finally:
            r.stop()
    r = start(tmp_path / "data-empty", empty)
    try:
        assert not r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings
    finally:
        r.stop()


def _publish_unloadable(models: Path) -> str:
    """A complete version (hashes right) whose graph disagrees with its manifest: refused when loaded."""
    model = linear_encoder(SIZE, 16)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    return publish_model(models, model, Preprocess(size=SIZE))


def test_prune_keeps_the_newest_and_what_the_agent_serves_and_no_number_is_used_again(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(6))]))
        publish_linear(models, size=SIZE, dim=16, seed=1)
        _serving(r, "v0002")
        _publish_unloadable(models)  # v0003 and v0004: complete, refused: v0002 keeps serving
        _publish_unloadable(models)
        deadline = time.monotonic() + 20
        while not any(w.startswith("v0004 ") for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (models / "v0005").mkdir()  # not complete (being copied?): left alone
        args = ["models", "prune", "--models", str(models), "--keep", "1", "--agent", r.address]
        dry = runner.invoke(app, [*args, "--dry-run", "--json"])
        assert dry.exit_code == 0, dry.output
        out = json.loads(dry.stdout)
        assert out["removed"] == ["v0001", "v0003"] and out["kept"] == ["v0002", "v0004"] and out["dry_run"]
        assert "serves it" in out["kept_because"]["v0002"] and out["left"][0]["version"] == "v0005"
        assert list_versions(models) == ["v0001", "v0002", "v0003", "v0004", "v0005"]  # nothing removed

        real = runner.invoke(app, args)
        assert real.exit_code == 0, real.output
        words = said(real.stdout)
        assert "removed v0001, v0003 from" in words and f"kept v0002: the agent at {r.address} serves it" in words
        assert "left v0005 alone: not complete" in words and "next version published here: v0006" in words
        assert list_versions(models) == ["v0002", "v0004", "v0005"]
        assert not [p for p in models.iterdir() if p.name.startswith(".trash-")]
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert st.model_version == "v0002" and not [w for w in st.warnings if "is gone" in w], st.warnings
        shutil.rmtree(models / "v0005")
        assert publish_linear(models, size=SIZE, dim=16, seed=3) == "v0006"  # never a removed number
        _serving(r, "v0006")
    finally:
        r.stop()


def test_the_run_files_are_those_training_writes() -> None:
    """shortlist.manifest.RUN_FILES names training's files without importing training (torch)."""
    loop = pytest.importorskip("training.loop")
    from shortlist.manifest import RUN_FILES

    assert set(RUN_FILES) == {loop.CHECKPOINT, loop.ENCODER, loop.CONFIG}


def test_prune_without_agent_keeps_the_newest_and_says_so(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for seed in range(4):
        publish_linear(models, size=SIZE, dim=16, seed=seed)
    leftover = models / ".trash-v0000-1-abcdef01"  # what a prune interrupted after its rename leaves
    leftover.mkdir()
    (leftover / "encoder.onnx").write_bytes(b"x")
    bad = runner.invoke(app, ["models", "prune", "--models", str(models), "--keep", "0", "--without-agent"])
    assert bad.exit_code == 2 and list_versions(models) == ["v0001", "v0002", "v0003", "v0004"]
    result = runner.invoke(app, ["models", "prune", "--models", str(models), "--keep", "2", "--json",
                                 "--without-agent"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["removed"] == ["v0001", "v0002"] and out["kept"] == ["v0003", "v0004"] and out["freed_bytes"] > 0
    assert out["agent"] is None and out["next_version"] == "v0005"
    assert list_versions(models) == ["v0003", "v0004"] and not leftover.exists()
    again = runner.invoke(app, ["models", "prune", "--models", str(models), "--keep", "1", "--without-agent"])
    assert again.exit_code == 0
    assert "--without-agent: kept the newest complete version only (and the newest one that passes" in said(
        again.stdout)
    assert list_versions(models) == ["v0004"]
    for _ in range(2):  # the newest is never removed
        assert runner.invoke(app, ["models", "prune", "--models", str(models), "--keep", "1",
                                   "--without-agent"]).exit_code == 0
    assert list_versions(models) == ["v0004"]
    assert publish_linear(models, size=SIZE, dim=16, seed=9) == "v0005"


def test_prune_keeps_the_newest_version_an_agent_can_serve(tmp_path: Path) -> None:
    """Newer versions the agent's load check refuses (a fixed batch axis) would otherwise be all that --keep 1
    leaves: an agent restarted on the folder would have no model. The newest loadable one stays, and says why."""
    models = tmp_path / "models"
    for seed in range(2):
        publish_linear(models, size=SIZE, dim=16, seed=seed)
    for _ in range(2):
        publish_model(models, foreign_encoder(SIZE, 16, batch=1), Preprocess(size=SIZE))
    result = runner.invoke(app, ["models", "prune", "--models", str(models), "--keep", "1", "--json",
                                 "--without-agent"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["removed"] == ["v0001", "v0003"] and out["kept"] == ["v0002", "v0004"]
    assert "passes the agent's load check" in out["kept_because"]["v0002"]
    assert list_versions(models) == ["v0002", "v0004"]


def test_prune_removes_nothing_when_the_agent_does_not_answer(tmp_path: Path) -> None:
    """With SHORTLIST_AGENT unset (the default 127.0.0.1:50051) or the agent down, prune removed every version
    but the newest N, the one another agent served among them, and only then said "no agent answered". Now
    it removes nothing, exits 1 and says which address it tried and what to pass (--agent, --without-agent)."""
    models = tmp_path / "models"
    for seed in range(3):
        publish_linear(models, size=SIZE, dim=16, seed=seed)
    leftover = models / ".trash-v0000-1-abcdef01"
    leftover.mkdir()
    address = f"127.0.0.1:{_free_port()}"
    args = ["models", "prune", "--models", str(models), "--keep", "1", "--agent", address, "--connect-timeout", "0.5"]
    for extra in ([], ["--dry-run"]):
        refused = runner.invoke(app, [*args, *extra])
        assert refused.exit_code == 1, refused.output
        words = said(refused.stderr)
        assert f"no agent answered at {address}" in words and "nothing was removed" in words, words
        assert "--agent HOST:PORT of the agent serving this folder" in words and "--without-agent" in words
        assert not refused.stdout
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 1, as_json.output
    out = json.loads(as_json.stdout)
    assert out["removed"] == [] and out["agent"]["address"] == address and "--without-agent" in out["error"]
    assert list_versions(models) == ["v0001", "v0002", "v0003"] and leftover.exists()


def test_prune_and_rollback_say_the_agent_refused_them_without_a_token(tmp_path: Path) -> None:
    """`models prune` without --token against an agent that requires tokens said "no agent answered at ADDR
    (this agent requires a token...)": it answered, UNAUTHENTICATED. Now it says the agent refused the call and
    to pass --token; nothing is removed (exit 1), and rollback publishes nothing (the check of what the agent
    serves could not be made, and the reload would be refused)."""
    from agent.security import ServerSecurity

    models = tmp_path / "models"
    for seed in range(3):
        publish_linear(models, size=SIZE, dim=16, seed=seed)
    token = "w" * 8 + "-write-token-0123456789"
    (tmp_path / "tokens").write_text(f"write:{token}\n")
    r = start(tmp_path / "data", models, security=ServerSecurity(tokens=tmp_path / "tokens"))
    try:
        for args in (["prune", "--keep", "1"], ["prune", "--keep", "1", "--dry-run"], ["rollback", "v0001"]):
            result = runner.invoke(app, ["models", *args, "--models", str(models), "--agent", r.address],
                                   env={"SHORTLIST_TOKEN": ""})
            words = said(result.stderr)
            assert result.exit_code == 1 and not result.stdout, (args, result.output)
            assert f"the agent at {r.address} refused the call: UNAUTHENTICATED" in words and "pass --token" in words
            assert "no agent answered" not in words
            assert ("nothing was removed" if args[0] == "prune" else "nothing was published") in words, words
        out = json.loads(runner.invoke(app, ["models", "prune", "--keep", "1", "--json", "--models", str(models),
                                             "--agent", r.address], env={"SHORTLIST_TOKEN": ""}).stdout)
        assert out["removed"] == [] and "refused the call" in out["error"]
        assert list_versions(models) == ["v0001", "v0002", "v0003"]
        result = runner.invoke(app, ["models", "prune", "--keep", "2", "--models", str(models), "--agent", r.address,
                                     "--token", token])
        assert result.exit_code == 0 and list_versions(models) == ["v0002", "v0003"], result.output
    finally:
        r.stop()


def test_every_models_command_refuses_a_run_image_or_version_folder_as_the_registry(tmp_path: Path) -> None:
    """``models prune --models runs/pre1`` (or a folder of images, or ``models/v0001``) said "nothing to remove
    ... next version published here: v0001" and exited 0 where ``list`` and ``rollback`` refused the folder:
    now prune, list and rollback make the one check export makes (registry_mistake), exit 2, remove nothing."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    publish_linear(models, size=SIZE, dim=16, seed=1)
    run = tmp_path / "runs" / "pre1"
    run.mkdir(parents=True)
    (run / "encoder.pt").write_text("{}")
    images = tmp_path / "photos"
    images.mkdir()
    (images / "001.png").write_bytes(b"")
    version = models / "v0001"
    for folder, what in ((run, "is a training run folder"), (images, "holds images, not model versions"),
                         (version, f"is a version folder of the registry {models}: pass --models {models}")):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        nobody = ["--agent", f"127.0.0.1:{_free_port()}", "--connect-timeout", "0.5"]
        for args in (["prune", "--keep", "1", *nobody], ["prune", "--keep", "1", "--json", *nobody], ["list"],
                     ["rollback", "v0001", *nobody]):
            result = runner.invoke(app, ["models", *args, "--models", str(folder)], env={"COLUMNS": "300"})
            assert result.exit_code == 2 and f"{folder} {what}" in said(result.output), (args, result.output)
            if "--json" in args:
                assert json.loads(result.stdout)["removed"] == []
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_dry_run_prune_reports_the_bytes_it_would_free(tmp_path: Path) -> None:
    """``--dry-run --json`` said ``freed_bytes: 0`` beside the versions it would remove: it is what removing
    them would free, the number the real prune then reports."""
    models = tmp_path / "models"
    for seed in range(3):
        publish_linear(models, size=SIZE, dim=16, seed=seed)
    args = ["models", "prune", "--models", str(models), "--keep", "1", "--without-agent"]
    dry = runner.invoke(app, [*args, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    would = json.loads(dry.stdout)
    assert would["removed"] == ["v0001", "v0002"] and would["freed_bytes"] > 0
    words = said(runner.invoke(app, [*args, "--dry-run"]).stdout)
    assert f"would remove v0001, v0002 from {models}, freeing {would['freed_bytes'] / 1e6:.1f} MB" in words, words
    real = runner.invoke(app, [*args, "--json"])
    assert real.exit_code == 0 and json.loads(real.stdout)["freed_bytes"] == would["freed_bytes"]


def test_list_and_rollback_use_the_agents_load_check(tmp_path: Path) -> None:
    """Versions the agent refuses are not called servable: list names the one an agent serves and marks the newer
    ones refused with the agent's reason; rollback of a refused version exits 1 and publishes nothing."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    publish_linear(models, size=SIZE, dim=16, seed=1)
    publish_model(models, foreign_encoder(SIZE, 16, batch=1), Preprocess(size=SIZE))  # v0003: fixed batch
    publish_model(models, foreign_encoder(SIZE, 16, float16=True), Preprocess(size=SIZE))  # v0004: float16 input
    listed = runner.invoke(app, ["models", "list", "--models", str(models), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["version"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert [(v, r["complete"], r["loads"], r["served"]) for v, r in rows.items()] == [
        ("v0001", True, None, False), ("v0002", True, True, True), ("v0003", True, False, False),
        ("v0004", True, False, False)]  # v0001, older than the served one, is not checked
    assert "the batch axis is fixed at 1" in rows["v0003"]["refused"]
    assert "the agent feeds float32" in rows["v0004"]["refused"]
    table = said(runner.invoke(app, ["models", "list", "--models", str(models)]).stdout)
    assert "served: v0002 (the newest complete version that passes the agent's load check" in table
    assert "v0003 is refused by the agent's load check: the batch axis is fixed at 1" in table
    assert "complete (load not checked)" in table and "refused (below)" in table
    every = runner.invoke(app, ["models", "list", "--models", str(models), "--json", "--check-all"])
    assert [json.loads(line)["loads"] for line in every.stdout.splitlines()] == [True, True, False, False]

    back = runner.invoke(app, ["models", "rollback", "v0003", "--models", str(models), "--no-reload"])
    assert back.exit_code == 1 and "Traceback" not in back.output
    assert "v0003 cannot be served again: the agent refuses it: the batch axis is fixed at 1" in said(back.output)
    assert "nothing was published" in said(back.output)
    assert list_versions(models) == ["v0001", "v0002", "v0003", "v0004"]


def test_models_help_names_every_command() -> None:
    r = runner.invoke(app, ["models", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "list its versions, roll back to one, remove old ones, import an ONNX encoder" in text
    assert all(f"│ {c} " in r.stdout for c in ("list", "rollback", "prune", "import"))


@pytest.mark.parametrize(("field", "value"), [("created", 5), ("method", [1])])
def test_a_version_with_a_bad_manifest_field_is_listed_as_refused_and_the_agent_keeps_the_previous(
        running: Running, field: str, value: object) -> None:
    models = running.models
    _serving(running, "v0001")
    bad = publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=1)
    manifest = json.loads((models / bad / "manifest.json").read_text())
    manifest[field] = value  # a hand edit (the manifest is not among the hashed files)
    (models / bad / "manifest.json").write_text(json.dumps(manifest))

    listed = runner.invoke(app, ["models", "list", "--models", str(models)])
    assert listed.exit_code == 0 and "Traceback" not in listed.output, listed.output
    words = said(listed.stdout)
    assert "v0001" in words and f"manifest '{field}' is {json.dumps(value)}" in words, words
    back = runner.invoke(app, ["models", "rollback", bad, "--models", str(models), "--no-reload"])
    assert back.exit_code == 1 and f"manifest '{field}'" in said(back.output), back.output
    rows = [json.loads(line) for line in runner.invoke(
        app, ["models", "list", "--models", str(models), "--json"]).stdout.splitlines()]
    assert [(r["version"], r["complete"]) for r in rows] == [("v0001", True), (bad, False)]

    deadline = time.monotonic() + 10
    while True:
        st = running.stub.GetStatus(agent_pb2.GetStatusRequest())
        if any(f"manifest '{field}'" in w for w in st.warnings):
            break
        assert time.monotonic() < deadline, f"the agent gave no warning about {bad}: {list(st.warnings)}"
        time.sleep(0.1)
    assert st.model_version == "v0001"  # refused with a warning; the previous version still served
