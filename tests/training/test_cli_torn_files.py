"""``shortlist pretrain --resume`` and ``shortlist finetune`` read back a run's config.json / summary.json: one that
is not whole JSON (torn by a crash of an older version, or edited by hand) is an ``error:`` naming the file and
what to do, never a JSONDecodeError traceback nor a message about something else."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shortlist.cli import app


def _said(output: str) -> str:
    return "".join(output.split())  # rich wraps long lines (paths too): compare without any whitespace


@pytest.mark.parametrize("with_data", [False, True])
def test_pretrain_resume_with_a_torn_config_json(tmp_path: Path, with_data: bool) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"data": "cifar10", "meth')
    args = ["pretrain", "--out", str(run), "--resume", "--epochs", "1"]
    r = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "imgs")] if with_data else args)
    said = _said(r.output)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output
    assert _said(f"error: {run / 'config.json'} is not valid JSON (line 1 column 21") in said
    assert _said("which --resume reuses: restore it") in said and "--resume found no config.json" not in r.output


def test_finetune_with_a_torn_summary_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune wrote summary.json just now; if it is not whole JSON anyway (another process), the command says so
    and fails: export would refuse the run as unfinished."""
    import training.finetune as ft

    def torn(cfg: ft.FinetuneConfig, *a: object, **k: object) -> Path:
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)  # (the command made it: it holds its run.lock)
        (run / "summary.json").write_bytes(b"\xff\xfe")
        return run

    monkeypatch.setattr(ft, "finetune", torn)
    run = tmp_path / "ft"
    r = CliRunner().invoke(app, ["finetune", "--out", str(run), "--data", str(tmp_path / "imgs"), "--mode", "linear",
                                 "--epochs", "1"])
    said = _said(r.output)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output and "fine-tuned" not in r.output
    assert _said(f"error: {run / 'summary.json'} is not valid JSON (not UTF-8") in said
    assert _said("run the same command again") in said
