"""Training commands into a folder they cannot write end in one line and a non-zero exit, not a traceback (as
``models import`` / ``rollback`` / ``prune`` do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import client
from shortlist.cli import app
from training import cycle

runner = CliRunner()


def said(result: Any) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def test_export_into_a_registry_it_cannot_write_says_so_in_one_line(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.export

    def denied(run: Path, registry: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(registry / ".tmp-export-1-a1aa9ea8"))

    monkeypatch.setattr(exporters.export, "export_run", denied)
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "--models", str(tmp_path / "ro")],
                           env={"COLUMNS": "200"})
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert (f"error: could not export {tmp_path / 'run'} into {tmp_path / 'ro'}: [Errno 13] Permission denied: "
            f"'{tmp_path / 'ro' / '.tmp-export-1-a1aa9ea8'}'; nothing was published") in said(result)
    assert "Traceback" not in result.output


def test_a_cycle_whose_registry_cannot_be_written_is_refused_before_it_pulls(tmp_path: Path) -> None:
    from tests.agent.conftest import make_samples, start

    models = tmp_path / "models"
    (models / cycle.CYCLE_LOCK_NAME).mkdir(parents=True)  # opening the lock fails (EISDIR), even for root
    agent = start(tmp_path / "data", tmp_path / "served")
    try:
        assert client.ingest(agent.stub, make_samples(4)).accepted == 4
        result = runner.invoke(app, ["cycle", "--agent", agent.address, "--models", str(models), "--out",
                                     str(tmp_path / "run"), "--mode", "moby", "--steps", "1"], env={"COLUMNS": "200"})
    finally:
        agent.stop()
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert f"error: cannot write into the registry {models} (Is a directory: {models / cycle.CYCLE_LOCK_NAME})" \
        in said(result) and "nothing was pulled or trained" in said(result)
    assert not (tmp_path / "run").exists()


def test_a_finetune_that_cannot_write_its_run_says_so_in_one_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import training.finetune

    def denied(*args: Any, **kwargs: Any) -> Path:
        raise PermissionError(13, "Permission denied", str(tmp_path / "run"))

    monkeypatch.setattr(training.finetune, "finetune", denied)
    result = runner.invoke(app, ["finetune", "--out", str(tmp_path / "run"), "--data", str(tmp_path), "--mode",
                                 "linear", "--epochs", "1"], env={"COLUMNS": "200"})
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert f"error: [Errno 13] Permission denied: '{tmp_path / 'run'}'" in said(result)
