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


def _held_args(command: str, data: Path, out: Path) -> list[str]:
    return {
        "pretrain": _pretrain(data, out, "--batch-size", "16"),
        "pretrain --procs": _pretrain(data, out, "--batch-size", "16", "--procs", "2"),
        "finetune": ["finetune", "--out", str(out), "--data", str(data), "--mode", "full", "--steps", "1",
                     "--preprocess", PRE, "--device", "cpu"],
        # refused before it connects: nothing listens on this port
        "cycle": ["cycle", "--agent", "127.0.0.1:57391", "--models", str(out.parent / "models"), "--out", str(out),
                  "--mode", "full", "--steps", "1"],
    }[command]


@pytest.mark.parametrize("command", ["pretrain", "pretrain --procs", "finetune", "cycle"])
def test_a_second_run_into_a_run_folder_in_use_is_refused(command: str, tiny_data: Path, tmp_path: Path,
                                                          no_launch: list[int]) -> None:
    """Two `pretrain --out ptC` at once both exited 0 with the files of both runs mixed in ptC: the folder is
    locked while a run writes it (``run.lock``, as `bench` holds ``bench.lock``); the second exits 2 naming the
    holder's pid and writes nothing."""
    import os

    from shortlist.locks import FolderLock
    from training.cli import RUN_LOCK

    out = tmp_path / "run"
    lock = FolderLock(out, RUN_LOCK)  # (a flock: another open of the file, even in this process, is refused)
    try:
        r = CliRunner().invoke(app, _held_args(command, tiny_data, out), env={"COLUMNS": "300"})
        assert r.exit_code == 2, r.output
        assert _said(f"error: {out} is in use by another training run (pid {os.getpid()})") in _said(r.output)
        assert [p.name for p in out.iterdir()] == [RUN_LOCK] and no_launch == []
    finally:
        lock.release()
    assert not out.exists()  # the lock made it and nothing else was written: removed


@pytest.mark.parametrize("command", ["pretrain", "finetune", "cycle"])
def test_an_out_that_cannot_be_made_is_a_usage_error(command: str, tiny_data: Path, tmp_path: Path,
                                                      no_launch: list[int]) -> None:
    """An --out the command cannot make or write exited 1 with the bare OSError, where `bench` said which
    --out and exited 2: both say it in the same line now (shortlist.out_lock.OutLock), exit 2, a usage error."""
    out = tmp_path / ("x" * 300)  # ENAMETOOLONG: cannot be made, even by root
    r = CliRunner().invoke(app, _held_args(command, tiny_data, out), env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert _said(f"error: cannot use --out {out}: File name too long; give `shortlist {command}` a folder it can "
                 "write") in _said(r.output)
    assert no_launch == [] and "Traceback" not in r.output


def _recording_finetune(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """training.finetune.finetune replaced by a stand-in that records the --out it was given and writes the
    summary.json the command reads after it; the list it records into."""
    import training.finetune as ft
    from training import loop

    trained: list[str] = []

    def fake(cfg: ft.FinetuneConfig, **kwargs: object) -> Path:
        trained.append(cfg.out)
        (Path(cfg.out) / loop.SUMMARY).write_text('{"mode": "linear"}')
        return Path(cfg.out)

    monkeypatch.setattr(ft, "finetune", fake)
    return trained


def test_finetune_refuses_a_folder_holding_a_finished_run_unless_overwrite(tmp_path: Path, tiny_data: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`finetune --out ft1` a second time silently replaced the finished run's encoder.pt: refused (exit 2) as
    pretrain refuses a folder that holds a run, unless --overwrite; the folder is left as it was."""
    from training import loop

    run = tmp_path / "ft1"
    run.mkdir()
    (run / loop.ENCODER).write_bytes(b"the first run's encoder")
    (run / loop.SUMMARY).write_text('{"mode": "full"}')
    trained = _recording_finetune(monkeypatch)
    args = ["finetune", "--out", str(run), "--data", str(tiny_data), "--mode", "full", "--steps", "1"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert _said(f"error: {run} holds a finished run: pass another --out, or --overwrite") in _said(r.output)
    assert trained == [] and (run / loop.ENCODER).read_bytes() == b"the first run's encoder"
    assert sorted(p.name for p in run.iterdir()) == [loop.ENCODER, loop.SUMMARY]
    again = CliRunner().invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and trained == [str(run)], again.output


def _pretraining_run(run: Path, finished: bool) -> None:
    """What `shortlist pretrain` leaves: its config.json (no fine-tuning "mode"), checkpoint.pt, and when its
    budget ran out summary.json and encoder.pt."""
    from training import loop

    run.mkdir()
    (run / loop.CONFIG).write_text('{"method": "moby", "data": "imgs"}')
    (run / loop.CHECKPOINT).write_bytes(b"the pretraining's checkpoint")
    if finished:
        (run / loop.ENCODER).write_bytes(b"the pretraining's encoder")
        (run / loop.SUMMARY).write_text('{"steps": 10}')


@pytest.mark.parametrize("finished", [False, True])
def test_finetune_and_cycle_refuse_a_folder_holding_a_pretraining_run(
        tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, finished: bool) -> None:
    """A finetune into a pretraining run stopped by Ctrl-C (checkpoint.pt, no summary.json) replaced its
    config.json and checkpoint, so `pretrain --resume` could no longer continue it; a cycle into a finished
    pretraining run replaced its encoder.pt. Both refused (exit 2), naming how to resume the unfinished one;
    nothing in the folder changes. (An unfinished finetune is still run again into its own folder.)"""
    import training.cycle
    import training.finetune as ft
    from training import loop

    run = tmp_path / "pt"
    _pretraining_run(run, finished)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setattr(ft, "finetune", lambda cfg, **kw: pytest.fail("trained"))
    monkeypatch.setattr(training.cycle, "run_cycle", lambda *a, **kw: pytest.fail("cycled"))
    held = "a finished pretraining run" if finished else "an unfinished pretraining run (resume it with"
    for args in (_held_args("finetune", tiny_data, run), _held_args("cycle", tiny_data, run)):
        r = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        assert r.exit_code == 2 and _said(f"error: {run} holds {held}") in _said(r.output), r.output
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    unfinished_finetune = tmp_path / "ft"
    unfinished_finetune.mkdir()
    (unfinished_finetune / loop.CONFIG).write_text('{"mode": "full"}')
    (unfinished_finetune / loop.CHECKPOINT).write_bytes(b"a stopped finetune")
    trained = _recording_finetune(monkeypatch)
    r = CliRunner().invoke(app, _held_args("finetune", tiny_data, unfinished_finetune))
    assert r.exit_code == 0 and trained == [str(unfinished_finetune)], r.output


@pytest.mark.parametrize(("args", "said"), [
    (["finetune", "--lr", "nan"], "'--lr'"),
    (["finetune", "--lr", "inf"], "inf is not a number this option can use"),
    (["finetune", "--ema", "nan"], "'--ema'"),
    (["finetune", "--labels-per-class", "0"], "'--labels-per-class'"),
    (["finetune", "--labels-per-class", "-1"], "'--labels-per-class'"),
    (["pretrain", "--minutes", "inf"], "inf is not a number this option can use"),
    (["pretrain", "--lr", "nan"], "'--lr'"),
    (["pretrain", "--checkpoint-minutes", "inf"], "inf is not a number this option can use"),
])
def test_nonsense_numbers_are_refused_before_training(args: list[str], said: str, tiny_data: Path,
                                                      tmp_path: Path) -> None:
    """`finetune --lr nan` trained and said "fine-tuned" (export refused the nan encoder a step later);
    `--labels-per-class -1` was taken, and 0 said "no labelled samples: label some first". Exit 2 instead,
    naming the option, with no run folder made."""
    budget = ["--steps", "1"] if args[0] == "finetune" else ["--epochs", "1"] if "--minutes" not in args else []
    r = CliRunner().invoke(app, [*args, "--data", str(tiny_data), "--out", str(tmp_path / "run"), *budget],
                           env={"COLUMNS": "300"})
    text = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and said in text and "Traceback" not in text, text
    assert not (tmp_path / "run").exists()
