"""``shortlist models list`` and ``shortlist models rollback`` against a real registry and agent."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from typer.testing import CliRunner

from agent.testing import publish_linear
from shortlist.cli import app
from shortlist.manifest import check_version
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running

runner = CliRunner()


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
    assert table.exit_code == 0 and "newest complete: v0002" in said(table.stdout)

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
    assert sorted(p.name for p in models.iterdir()) == ["v0001"]
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
