"""``shortlist models list`` and ``rollback`` are honest about what the agent serves and refused, which the
registry alone cannot say: a version it refused on its stored samples (a refusal the load check, on blank and
synthetic images, cannot see), a served folder changed in place after it was loaded (corrupted, manifest edited),
a newest version it refused, two folders claiming one version number; and the agent's refusals agree across a
restart."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import client
from agent.embedder import Embedder
from agent.models import FAILED_ON_SAMPLES, ModelManager
from agent.testing import publish_linear
from shortlist.cli import app
from shortlist.manifest import Manifest, check_version, list_versions
from shortlist.v1 import agent_pb2
from tests.agent.conftest import SIZE, Running, make_samples, start

runner = CliRunner()


def said(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def edit_mean_in_place(version: Path) -> None:
    """Edit a published version's manifest.json in place: another preprocessing mean, so another model."""
    path = version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preprocess"]["mean"] = [0.1, 0.2, 0.3]
    path.write_text(json.dumps(manifest))


def test_list_names_a_version_the_agent_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.agent.manager.check()
        publish_linear(models, size=SIZE, dim=16, seed=1)  # passes the load check
        why = "v0002 refused: it failed while embedding the stored samples: the model v0002 gave NaN ..."
        r.agent.manager._refuse("v0002", why)  # what the agent records when the model fails on its samples
        plain = runner.invoke(app, ["models", "list", "--models", str(models)])
        assert plain.exit_code == 0, plain.output
        words = said(plain.stdout)
        assert "would be served: v0002" in words and "unless it refused it while embedding its stored samples" in words
        assert "--agent HOST:PORT" in words
        asked = runner.invoke(app, ["models", "list", "--models", str(models), "--agent", r.address])
        assert asked.exit_code == 0, asked.output
        words = said(asked.stdout)
        assert f"the agent at {r.address} refused v0002: {why}" in words
        assert f"the agent at {r.address} serves v0001" in words and "refused by the agent (below)" in words
        rows = [json.loads(line) for line in runner.invoke(
            app, ["models", "list", "--models", str(models), "--agent", r.address, "--json"]).stdout.splitlines()]
        assert [(row["version"], row["agent"], row["agent_refused"][:14]) for row in rows] == \
            [("v0001", "serving", ""), ("v0002", "refused", "v0002 refused:")]
    finally:
        r.stop()
    with socket.socket() as s:  # an agent that does not answer: the list still comes, with a warning
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = runner.invoke(app, ["models", "list", "--models", str(models), "--agent", f"127.0.0.1:{port}"],
                         env={"SHORTLIST_CONNECT_TIMEOUT": "0.5"})
    assert gone.exit_code == 0 and f"warning: the agent at 127.0.0.1:{port} did not answer" in said(gone.stdout)


def _served_folder_corrupted(tmp_path: Path) -> tuple[Path, Running]:
    """An agent serving v0002, whose encoder.onnx was then corrupted in place: v0001 is the newest complete
    version, v0002 is still served (the model it loaded)."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    r.agent.manager.check()
    publish_linear(models, size=SIZE, dim=16, seed=1)
    r.agent.manager.check()
    assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).model_version == "v0002"
    onnx = models / "v0002" / "encoder.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100])
    return models, r


def test_list_says_what_the_agent_serves_when_its_folder_is_not_complete_any_more(tmp_path: Path) -> None:
    models, r = _served_folder_corrupted(tmp_path)
    try:
        asked = runner.invoke(app, ["models", "list", "--models", str(models), "--agent", r.address])
        assert asked.exit_code == 0, asked.output
        words = said(asked.stdout)
        assert (f"the agent at {r.address} serves v0002, whose folder is not complete any more (above: changed after "
                "the agent loaded it): it serves the model it loaded; a restart would refuse it") in words
        assert "v0002's folder is not complete any more: encoder.onnx is corrupt" in words
        assert "not complete (below); the agent serves the model it loaded" in words
        assert "v0002 is not served" not in words
        rows = [json.loads(line) for line in runner.invoke(
            app, ["models", "list", "--models", str(models), "--agent", r.address, "--json"]).stdout.splitlines()]
        assert [(row["version"], row["complete"], row["agent"]) for row in rows] == \
            [("v0001", True, ""), ("v0002", False, "serving")]
        shutil.rmtree(models / "v0002")  # gone: still said
        words = said(runner.invoke(app, ["models", "list", "--models", str(models), "--agent", r.address]).stdout)
        assert f"the agent at {r.address} serves v0002, whose folder is not in {models}" in words
    finally:
        r.stop()


def test_rollback_to_the_newest_complete_version_asks_the_agent_what_it_serves(tmp_path: Path) -> None:
    """The explorer's case: the served v0002's folder was corrupted in place, so v0001 is the newest complete
    version; the agent still serves v0002. Rolling back to v0001 is the way back and must publish."""
    models, r = _served_folder_corrupted(tmp_path)
    try:
        gone = f"127.0.0.1:{_free_port()}"  # no agent there: what it serves is unknown, said so, --force offered
        blind = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--agent", gone,
                                    "--connect-timeout", "0.5"])
        assert blind.exit_code == 1, blind.output
        words = said(blind.output)
        assert "v0001 is the newest complete version" in words and f"the agent at {gone} did not answer" in words
        assert "--force publishes the copy anyway" in words and "serves it already" not in words
        assert list_versions(models) == ["v0001", "v0002"]
        back = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--agent", r.address,
                                   "--json"])
        assert back.exit_code == 0, back.output
        assert json.loads(back.stdout)["published"] == "v0003"
        assert check_version(models / "v0003").republished_from == "v0001"
        r.agent.manager.check()
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).model_version == "v0003"
        again = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--agent", r.address])
        assert again.exit_code == 1 and "serves v0001 as v0003 already" in said(again.output)
    finally:
        r.stop()


def test_rollback_force_publishes_without_an_agent(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    forced = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--no-reload", "--force"])
    assert forced.exit_code == 0, forced.output
    assert list_versions(models) == ["v0001", "v0002"]
    again = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--no-reload"])
    assert again.exit_code == 1 and "is the same model as v0002" in said(again.output)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rollback_to_a_newest_version_the_agent_refused_publishes(tmp_path: Path) -> None:
    """The agent refused the newest v0002 (e.g. its manifest edited while it embedded it) and serves v0001: a
    copy of v0002 is what takes it up again, not "it serves it already"."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.agent.manager.check()
        publish_linear(models, size=SIZE, dim=16, seed=1)
        r.agent.manager._refuse("v0002", "v0002 refused: its folder changed while the pool was being embedded")
        back = runner.invoke(app, ["models", "rollback", "v0002", "--models", str(models), "--agent", r.address,
                                   "--json"])
        assert back.exit_code == 0, back.output
        assert json.loads(back.stdout)["published"] == "v0003"
    finally:
        r.stop()


def test_a_served_manifest_edited_in_place_is_said_to_be_changed_not_a_reused_number(tmp_path: Path) -> None:
    """The served v0001's manifest.json is edited (its preprocessing's mean): the agent's warning names that
    possibility, and `models list --agent`, whose load check finds the folder complete, repeats it."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.agent.manager.check()
        edit_mean_in_place(models / "v0001")
        r.agent.manager.check()
        warned = [w for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "holds another model" in w]
        assert warned and "its files were changed in place (e.g. its manifest.json edited" in warned[0], warned
        words = said(runner.invoke(app, ["models", "list", "--models", str(models), "--agent", r.address]).stdout)
        assert f"the agent at {r.address} serves v0001; it warns: {models / 'v0001'}, the folder of the version " \
            "this agent serves, now holds another model" in words
    finally:
        r.stop()


def test_a_version_refused_for_changing_mid_embedding_is_refused_after_a_restart_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """v0002's manifest is edited while the pool is being embedded with it: refused. The running agent and a
    restarted one agree while the folder stays so (both serve v0001); a folder changed again is tried again."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models, batch_size=4)
    path = models / "v0002" / "manifest.json"
    try:
        client.ingest(r.stub, make_samples(24))
        _wait(r, lambda st: st.model_version == "v0001" and st.embedded == 24)
        real = ModelManager._embedder
        edited: list[str] = []

        def editing(self: ModelManager, name: str, manifest: Manifest) -> Embedder:
            emb = real(self, name, manifest)
            if name == "v0002":
                inner = emb.embed

                def edit_then_embed(images: Any) -> Any:
                    if not edited:  # the first batch of the pool: the folder changes under it
                        m = json.loads(path.read_text())
                        m["preprocess"]["mean"] = [0.1, 0.2, 0.3]
                        path.write_text(json.dumps(m))
                        edited.append(path.read_text())
                    return inner(images)

                emb.embed = edit_then_embed  # type: ignore[method-assign]
            return emb

        monkeypatch.setattr(ModelManager, "_embedder", editing)
        publish_linear(models, size=SIZE, dim=24, seed=1)
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        st = _wait(r, lambda st: any(w.startswith("v0002 refused") for w in st.warnings))
        why = next(w for w in st.warnings if w.startswith("v0002 refused"))
        assert "holds another model than the one being embedded" in why and "after a restart too" in why
        assert "`shortlist models rollback v0002`" in why
        r.agent.manager.check()  # the running agent does not take it up again
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).model_version == "v0001"
    finally:
        r.stop()
    monkeypatch.undo()
    # an upgraded agent (another manifest reader) too: this refusal is the folder's, not the reader's
    monkeypatch.setattr("agent.models.READER_ID", "a-newer-reader")
    r = start(tmp_path / "data", models)  # the folder unchanged: refused after the restart too
    try:
        time.sleep(1.0)  # a few polls (0.2 s)
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert (st.model_version, st.pending_model_version) == ("v0001", ""), st
        assert [w for w in st.warnings if w.startswith("v0002 refused")], st.warnings
        path.write_text(edited[0] + "\n")  # changed again (e.g. the editing done): looked at again
        _wait(r, lambda st: st.model_version == "v0002")
    finally:
        r.stop()


def _wait(r: Running, done: Callable[[agent_pb2.Status], bool], timeout: float = 30.0) -> agent_pb2.Status:
    deadline = time.monotonic() + timeout
    while not done(st := r.stub.GetStatus(agent_pb2.GetStatusRequest())):
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    return st


def test_two_folders_claiming_one_version_number_are_refused_and_said(tmp_path: Path) -> None:
    """`models/v2` made by hand beside `models/v0002`, another model: which is version 2 is ambiguous. Neither
    is listed complete nor taken up, the agent says why, and once one goes the other is served."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.agent.manager.check()
        publish_linear(models, size=SIZE, dim=16, seed=1, classes=None)
        shutil.copytree(models / "v0001", models / ".hand")
        (models / ".hand").rename(models / "v2")
        rows = [json.loads(line) for line in runner.invoke(
            app, ["models", "list", "--models", str(models), "--json"]).stdout.splitlines()]
        assert [(row["version"], row["complete"]) for row in rows] == \
            [("v0001", True), ("v0002", False), ("v2", False)], rows
        assert "v0002 and v2 in" in rows[1]["problem"] and "claim the same version number 2" in rows[1]["problem"]
        words = said(runner.invoke(app, ["models", "list", "--models", str(models)]).stdout)
        assert "would be served: v0001" in words and "v2 is not served: v2 and v0002" in words
        r.agent.manager.check()
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert st.model_version == "v0001"
        assert [w for w in st.warnings if "claim the same version number 2" in w], st.warnings
        shutil.rmtree(models / "v2")  # the clash gone: v0002 is looked at again and served
        r.agent.manager.check()
        assert r.stub.GetStatus(agent_pb2.GetStatusRequest()).model_version == "v0002"
        shutil.copytree(models / "v0001", models / "v02")  # now beside the served version: it warns
        r.agent.manager.check()
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert st.model_version == "v0002"
        warned = [w for w in st.warnings if "the folder of the version this agent serves" in w]
        assert warned and "claim the same version number 2" in warned[0], st.warnings
        words = said(runner.invoke(app, ["models", "list", "--models", str(models), "--agent", r.address]).stdout)
        assert f"the agent at {r.address} serves v0002, whose folder is not complete any more" in words
        assert "claim the same version number 2" in words
    finally:
        r.stop()


def test_list_asks_an_agent_that_requires_a_token_with_token(tmp_path: Path) -> None:
    """`models list --agent` against an agent started with --tokens told the user to "pass --token TOKEN or set
    SHORTLIST_TOKEN", and had no --token: it takes the agent options every agent command takes."""
    from agent.security import ServerSecurity

    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    token = "r" * 8 + "-read-token-0123456789"
    (tmp_path / "tokens").write_text(f"read:{token}\n")
    r = start(tmp_path / "data", models, security=ServerSecurity(tokens=tmp_path / "tokens"))
    try:
        r.agent.manager.check()
        args = ["models", "list", "--models", str(models), "--agent", r.address]
        refused = runner.invoke(app, args, env={"SHORTLIST_TOKEN": ""})
        words = said(refused.stdout)
        assert refused.exit_code == 0, refused.output
        assert f"warning: the agent at {r.address} refused the call: UNAUTHENTICATED" in words, words
        assert "pass --token" in words and "what it serves and refused is not shown" in words
        asked = runner.invoke(app, [*args, "--token", token], env={"SHORTLIST_TOKEN": ""})
        assert asked.exit_code == 0, asked.output
        assert f"the agent at {r.address} serves v0001" in said(asked.stdout) and "warning" not in asked.stdout
        from_env = runner.invoke(app, [*args, "--json"], env={"SHORTLIST_TOKEN": token})
        assert [json.loads(line)["agent"] for line in from_env.stdout.splitlines()] == ["serving"]
        plain = runner.invoke(app, ["models", "list", "--models", str(models)],
                              env={"SHORTLIST_AGENT": "127.0.0.1:1"})  # no --agent: no agent asked
        assert plain.exit_code == 0 and "did not answer" not in plain.stdout and "the agent at" not in plain.stdout
    finally:
        r.stop()


def test_rollback_to_a_version_the_agent_refused_on_its_samples_publishes_nothing(tmp_path: Path) -> None:
    """The agent refused v0002 for good because it failed on the stored samples (a failure the load check, on
    blank and synthetic images, cannot see). A rollback to it published a copy (same model, same samples) the
    agent would refuse again after embedding the pool with it, without a word; now it says why, publishes
    nothing, and --force publishes anyway."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.agent.manager.check()
        bad = publish_linear(models, size=SIZE, dim=16, seed=1)  # passes the load check
        why = f"{bad} refused: {FAILED_ON_SAMPLES}: the model {bad} failed on a batch of 12 images (...)"
        r.agent.manager._refuse(bad, why)  # what the agent records when the model fails on its samples
        told = client.refusal(r.stub.GetStatus(agent_pb2.GetStatusRequest()), bad)
        assert told is not None and told.startswith(why)
        args = ["models", "rollback", bad, "--models", str(models), "--agent", r.address]
        back = runner.invoke(app, args)
        assert back.exit_code == 1, back.output
        assert said(back.output) == said(f"{bad} cannot be served again: the agent at {r.address} refused {bad} "
                                         f"because it failed on the stored samples ({told}); a copy would fail on them "
                                         "again; nothing was published (roll back to another version, publish a "
                                         "fixed model, or --force to publish the copy anyway)")
        assert list_versions(models) == ["v0001", bad]
        as_json = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
        assert as_json["published"] is None and "failed on the stored samples" in as_json["error"]
        forced = runner.invoke(app, [*args, "--force", "--json"])
        assert forced.exit_code == 0, forced.output
        copy = json.loads(forced.stdout)["published"]
        assert check_version(models / copy).republished_from == bad
    finally:
        r.stop()


def test_rollback_to_the_served_version_whose_folder_changed_says_so(tmp_path: Path) -> None:
    """The served v0001's manifest.json was edited in place (another model now, the agent warns). A rollback to
    v0001 means "the model the agent loaded": it was refused as "serves v0001 already"; now it says the agent
    serves v0001 as it was loaded, that the folder changed, and what to do; --force publishes the folder as is."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    r = start(tmp_path / "data", models)
    try:
        r.agent.manager.check()
        edit_mean_in_place(models / "v0001")
        r.agent.manager.check()
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        warned = next(w for w in st.warnings if "holds another model" in w)
        args = ["models", "rollback", "v0001", "--models", str(models), "--agent", r.address]
        back = runner.invoke(app, args)
        assert back.exit_code == 1, back.output
        words = said(back.output)
        assert words == said(f"the agent at {r.address} serves v0001 as it was loaded, but its folder has changed "
                             f"since (it warns: {warned}); a copy would publish the folder as it is now, not the "
                             f"model it serves; nothing was published (put {models / 'v0001'} back as it was, or "
                             "roll back to another version, or --force to publish the folder as it is now)")
        assert "serves v0001 already" not in words and list_versions(models) == ["v0001"]
        forced = runner.invoke(app, [*args, "--force", "--json"])
        assert forced.exit_code == 0, forced.output
        assert json.loads(forced.stdout)["published"] == "v0002"
        assert check_version(models / "v0002").preprocess.mean == (0.1, 0.2, 0.3)
    finally:
        r.stop()


def test_checks_of_the_registry_run_one_at_a_time(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """The polling thread's check and a direct one never overlap (CI, under load: a test's direct check and the
    polling thread's both saved v0003's index snapshot through one temporary folder named by the pid, and one
    removed the other's: FileNotFoundError)."""
    import threading

    inside, most = [0], [0]
    count = threading.Lock()

    def slow_check() -> None:
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with count:
            inside[0] -= 1

    monkeypatch.setattr(running.agent.manager, "_check", slow_check)
    threads = [threading.Thread(target=running.agent.manager.check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
