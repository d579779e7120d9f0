"""shortlist.out_lock.OutLock, the --out lock of the bench and training commands: each refusal (another run
holds it, --out is a file, --out cannot be made or written) is one ``error:`` line on stderr and exit 2, a
usage error, in the same words for both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from shortlist.out_lock import OutLock


def _refused(capsys: pytest.CaptureFixture[str], out: Path, command: str) -> str:
    with pytest.raises(typer.Exit) as refused:
        OutLock(out, "run.lock", command, "training run")
    assert refused.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def test_each_refusal_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with OutLock(out, "run.lock", "shortlist pretrain", "training run"):
        assert _refused(capsys, out, "shortlist finetune") == (
            f"error: {out} is in use by another training run (pid {os.getpid()}); wait for it to finish, or give "
            "this `shortlist finetune` its own --out")
    assert not out.exists()  # made by the lock, nothing written: removed
    (tmp_path / "one.csv").write_text("a\n")
    assert _refused(capsys, tmp_path / "one.csv", "bench cifar10") == (
        f"error: --out {tmp_path / 'one.csv'} is a file (or lies under one): give `bench cifar10` a folder to write "
        "its results into")
    long = tmp_path / ("x" * 300)  # ENAMETOOLONG: cannot be made, even by root
    assert _refused(capsys, long, "shortlist cycle") == (
        f"error: cannot use --out {long}: File name too long; give `shortlist cycle` a folder it can write")
