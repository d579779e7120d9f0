"""``shortlist models list`` is honest about a version the agent refused on its stored samples (a refusal the
load check, on blank and synthetic images, cannot see): it says what would be served unless the agent refused
it, and with --agent what the agent serves and refused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from agent.testing import publish_linear
from shortlist.cli import app
from tests.agent.conftest import SIZE, start

runner = CliRunner()


def said(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


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
