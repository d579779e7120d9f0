"""Guards of the training commands against ordinary mistakes, checked before any rank or training starts:
``pretrain --procs`` above the CPU cores, and a batch larger than the data under ``--procs`` (said once, by
the launcher, before it starts a rank)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shortlist.cli import app
from tests.training.conftest import PRE


def _said(output: str) -> str:
    return "".join(output.split())  # rich wraps long lines (paths too): compare without any whitespace


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``_launch_local`` replaced by a recorder of the --procs it was asked to start; 2 usable cores."""
    import training.cli

    started: list[int] = []
    monkeypatch.setattr(training.cli, "_launch_local", lambda cfg, procs: started.append(procs))
    monkeypatch.setattr(training.cli, "usable_cores", lambda: 2, raising=False)
    return started


def _pretrain(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--epochs", "1", "--preprocess", PRE,
            "--device", "cpu", *extra]


def test_procs_above_the_cores_is_refused_unless_oversubscribe(tiny_data: Path, tmp_path: Path,
                                                               no_launch: list[int]) -> None:
    r = CliRunner().invoke(app, _pretrain(tiny_data, tmp_path / "p", "--procs", "999"), env={"COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert _said("999 is more than the 2 CPU cores") in _said(r.output) and "--oversubscribe" in r.output
    assert no_launch == [] and not (tmp_path / "p").exists()
    ok = CliRunner().invoke(app, _pretrain(tiny_data, tmp_path / "p", "--procs", "2", "--batch-size", "16"))
    assert ok.exit_code == 0 and no_launch == [2], ok.output
    over = CliRunner().invoke(app, _pretrain(tiny_data, tmp_path / "p", "--procs", "3", "--batch-size", "16",
                                             "--oversubscribe"))
    assert over.exit_code == 0 and no_launch == [2, 3], over.output


def test_procs_checks_the_batch_against_the_data_before_starting_ranks(tiny_data: Path, tmp_path: Path,
                                                                       no_launch: list[int]) -> None:
    r = CliRunner().invoke(app, _pretrain(tiny_data, tmp_path / "p", "--procs", "2", "--batch-size", "512"))
    assert r.exit_code == 2, r.output
    assert _said("--batch-size 512 is larger than the 48 training images") in _said(r.output)
    assert no_launch == [] and "Traceback" not in r.output
    limited = CliRunner().invoke(app, _pretrain(tiny_data, tmp_path / "p", "--procs", "2", "--batch-size", "16",
                                                "--limit", "10"))
    assert limited.exit_code == 2 and _said("larger than the 10 training images") in _said(limited.output)
    missing = CliRunner().invoke(app, _pretrain(tmp_path / "nowhere", tmp_path / "p", "--procs", "2"))
    assert missing.exit_code == 2 and "does not exist" in missing.output and no_launch == []
