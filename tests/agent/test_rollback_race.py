"""Two ``shortlist models rollback`` of one version at once: the check that the copy would change nothing is
made again under the registry's publish lock, so only the first publishes (docs/training.md, rollback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import models_cli
from agent.testing import publish_linear
from shortlist.cli import app
from shortlist.manifest import check_version, list_versions

runner = CliRunner()


def test_a_second_rollback_racing_the_first_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=(8, 8), dim=16, seed=0)
    publish_linear(models, size=(8, 8), dim=16, seed=1)
    real = models_cli.republish

    def raced(registry: Path, version: str, **kwargs: Any) -> str:
        real(registry, version)  # the other rollback publishes its copy after this one's checks passed
        return real(registry, version, **kwargs)

    monkeypatch.setattr(models_cli, "republish", raced)
    second = runner.invoke(app, ["models", "rollback", "v0001", "--models", str(models), "--no-reload"])
    assert second.exit_code == 1, second.output
    assert "v0001 is the same model as v0003, which is the newest complete version" in " ".join(second.output.split())
    assert "nothing was published" in second.output
    assert list_versions(models) == ["v0001", "v0002", "v0003"]
    assert check_version(models / "v0003").republished_from == "v0001"
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp-")]  # the refused copy left nothing
