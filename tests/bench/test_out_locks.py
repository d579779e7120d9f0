"""Every bench command that writes a results folder holds ``<out>/bench.lock`` (bench.checks.OutLock) while it
writes: a second run into a folder another process is writing is refused with one line, exit 2, and writes
nothing (two `bench cifar10` runs into one --out started two agents on one agent-base, and the second died
with a traceback after exporting its own model version into the first's registry)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.checks import LOCK_FILE
from shortlist.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for ci, c in enumerate(("circle", "square")):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                img = np.full((8, 8, 3), 40.0)
                img[..., ci] = 200
                Image.fromarray(np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture()
def held(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """An --out whose lock another process holds (as a running bench command would): (folder, its pid)."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from bench.checks import OutLock; "
        f"OutLock(Path({str(out)!r}), 'bench cifar10'); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield out, holder.pid
    finally:
        holder.kill()
        holder.wait()


def _report_run(folder: Path) -> Path:
    """A minimal `bench cifar10` results folder for `bench report`."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "profile": "quick", "data": "/data/digits", "seeds": [0], "budgets": [4], "strategies": ["random"],
        "prior_methods": ["knn"], "pool_size": 20, "test_size": 8, "model_version": "v0001", "encoder": {},
        "git_commit": "abc", "records": [{"strategy": "random", "budget": 4, "seed": 0, "prior_method": "knn",
                                          "prior_accuracy": 0.5, "ece": 0.1, "linear_accuracy": 0.6,
                                          "coverage": 2}]}))
    return folder


@pytest.mark.parametrize("command", ["cifar10", "as3l", "recipe", "embeddings", "report"])
def test_a_second_bench_run_into_a_locked_out_is_refused_and_writes_nothing(
        command: str, tiny: Path, tmp_path: Path, held: tuple[Path, int]) -> None:
    out, pid = held
    args = {
        "cifar10": ["bench", "cifar10", "--data", str(tiny), "--encoder", str(tmp_path / "enc"), "--out", str(out)],
        "as3l": ["bench", "as3l", "--data", str(tiny), "--profile", "smoke", "--out", str(out)],
        "recipe": ["bench", "recipe", "das", "--profile", "smoke", "--data", str(tiny), "--out", str(out)],
        "embeddings": ["bench", "embeddings", "--encoder", str(tmp_path / "enc"), "--data", str(tiny),
                       "--out", str(out)],
        "report": ["bench", "report", str(_report_run(tmp_path / "run")), "--out", str(out)],
    }[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {out} is in use by another `shortlist bench` run (pid {pid}); wait "
                                     f"for it to finish, or give this `bench {command}` its own --out")
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_a_report_into_a_free_folder_is_written_and_a_refused_input_leaves_no_folder(tmp_path: Path) -> None:
    run = _report_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["bench", "report", str(run), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "results.md").is_file()
    result = CliRunner().invoke(app, ["bench", "report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and not (tmp_path / "r2").exists()
