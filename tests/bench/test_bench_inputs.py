"""Ordinary bad input to the bench commands that generate their data (blobs, select-scale, map) or write a
folder: a usage error (exit 2) saying what to give, never a traceback (IndexError, ValueError, OverflowError,
FileExistsError) nor an empty or nan result written with exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shortlist.cli import app

HUGE = "99999999999999999999"  # more than an int64: numpy raised OverflowError


def _invoke(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    return r.exit_code, " ".join(r.output.replace("│", " ").split())


@pytest.mark.parametrize(("args", "said"), [
    (["bench", "blobs", "--n", "0"], "'--n'"),
    (["bench", "blobs", "--n", HUGE], "'--n'"),
    (["bench", "blobs", "--n", "60", "--spread", "nan"], "'--spread'"),
    (["bench", "blobs", "--n", "60", "--spread", "inf"], "inf is not a number this option can use"),
    (["bench", "blobs", "--n", "60", "--clusters", "0"], "'--clusters'"),
    (["bench", "blobs", "--n", "60", "--dim", "0"], "'--dim'"),
    (["bench", "blobs", "--n", "6", "--clusters", "7"], "--n 6 is too few rows for 7 classes: give --n 9"),
    (["bench", "blobs", "--n", "100000000", "--dim", "1000"], "is 100,000,000,000 numbers"),
    (["bench", "select-scale", "--n", "0"], "'--n'"),
    (["bench", "select-scale", "--n", "100", "--dim", "0"], "'--dim'"),
    (["bench", "select-scale", "--n", "10", "--labelled", "10"], "leave none of the 10 to select"),
    (["bench", "select-scale", "--n", "100", "--classes", "0"], "'--classes'"),
    (["bench", "map", "--n", "0"], "'--n'"),
    (["bench", "map", "--n", "100", "--dim", "-1"], "'--dim'"),
    (["bench", "map", "--n", "100", "--max-fit", "1"], "'--max-fit'"),
    (["bench", "map", "--n", HUGE], "'--n'"),
    # bench load: refused before it starts or reaches an agent (--pool HUGE ingested until killed)
    (["bench", "load", "--pool", HUGE], "'--pool'"),
    (["bench", "load", "--clients", HUGE], "'--clients'"),
    (["bench", "load", "--budget", HUGE], "'--budget'"),
    (["bench", "load", "--agent-pid", "-1"], "'--agent-pid'"),
    (["bench", "load", "--timeout", "inf"], "inf is not a number this option can use"),
])
def test_out_of_range_is_a_usage_error(args: list[str], said: str, tmp_path: Path) -> None:
    if args[1] == "blobs":
        args = [*args, "--out", str(tmp_path / "bl")]
    code, text = _invoke(args)
    assert code == 2 and said in text and "Traceback" not in text, text
    assert not (tmp_path / "bl").exists()


@pytest.mark.parametrize("command", [["bench", "blobs", "--n", "60"], ["bench", "cifar10", "--budgets", "1"]])
def test_out_that_is_a_file_is_a_usage_error(command: list[str], tmp_path: Path) -> None:
    file = tmp_path / "one.csv"
    file.write_text("a,b\n")
    code, text = _invoke([*command, "--out", str(file)])
    assert code == 2 and f"--out {file} is a file" in text and "Traceback" not in text, text
    assert file.read_text() == "a,b\n"


def test_blobs_small_set_is_written(tmp_path: Path) -> None:
    import numpy as np

    code, text = _invoke(["bench", "blobs", "--n", "6", "--clusters", "2", "--dim", "3", "--out", str(tmp_path / "b")])
    assert code == 0, text
    assert len(np.load(tmp_path / "b" / "x.npy")) == 5 and len(np.load(tmp_path / "b" / "test_x.npy")) == 1
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["test_x.npy", "test_y.npy", "x.npy", "y.npy"]


@pytest.mark.parametrize("command", [["bench", "blobs", "--n", "60"], ["bench", "cifar10", "--budgets", "1"]])
def test_out_that_cannot_be_made_is_a_usage_error(command: list[str]) -> None:
    """An --out under /proc (no folder can be made there): a FileNotFoundError traceback, exit 1; one line now."""
    code, text = _invoke([*command, "--out", "/proc/self/nope/out"])
    assert code == 2 and "cannot use --out /proc/self/nope/out" in text and "Traceback" not in text, text
