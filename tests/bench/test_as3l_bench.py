"""``shortlist bench as3l --profile smoke`` end to end on tiny generated data: it pretrains a tiny encoder,
picks labels through a real agent (Select random / as3l, PriorLabels as3l), trains every arm a few steps,
writes results.json / results.md / the plot, and a rerun skips the finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.as3l import ARMS
from shortlist.cli import app
from tests.bench.helpers import colour_folders

CLASSES = ["circle", "square", "stripe"]


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    return colour_folders(tmp_path / "data", CLASSES, (("train", 10), ("test", 4)), seed=0)


# About 25 CPU seconds (three agent processes, ten 4-step trainings); the wider limit is for a machine that
# lends this test a fraction of a core (measured: 23 s of CPU in 400 s of wall time at load 20 on 2 cores).
@pytest.mark.timeout(900)
def test_smoke_profile_end_to_end_and_resumes(tiny_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out[x]"  # "[x]" in a path was read as rich markup and dropped from the lines printed
    args = ["bench", "as3l", "--data", str(tiny_data), "--profile", "smoke", "--budgets", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'results.md'}" in " ".join(result.output.split())
    run = json.loads((out / "results.json").read_text())
    assert run["complete"] and run["profile"] == "smoke" and run["pool_size"] == 30 and run["test_size"] == 12
    assert run["budgets"] == [3] and run["size"] == [8, 8] and run["encoder"]["kind"] == "pretrained here"
    assert {(r["strategy"], r["budget"]) for r in run["labels"]} == {("random", 3), ("as3l", 3)}
    for r in run["labels"]:
        assert 1 <= r["coverage"] <= 3 and 0 <= r["prior_accuracy"] <= 1 and 0 <= r["ece"] <= 1
        assert 0 <= r["linear_accuracy"] <= 1 and 1 / 3 - 1e-6 <= r["mean_confidence"] <= 1
        assert 0 <= r["ece_calibrated"] <= 1
    assert {r["arm"] for r in run["results"]} == {a.name for a in ARMS}
    for r in run["results"]:
        # Equal steps for every arm; test accuracy at the start, at evenly spaced points and at the end.
        assert r["steps"] == 4 and [s for s, _ in r["eval"]] == [0, 2, 4]
        assert 0 <= r["test_accuracy"] <= r["best_test_accuracy"] <= 1
    labels = json.loads((out / "cells" / "labels" / "as3l-3-seed0" / "cell.json").read_text())
    assert len(labels["labeled"]) == 3
    prior = np.load(out / "cells" / "labels" / "as3l-3-seed0" / "prior.npy")
    assert prior.shape == (30, 3) and np.allclose(prior.sum(axis=1), 1, atol=1e-4)
    md = (out / "results.md").read_text()
    assert "| as3l+prior+update |" in md and "Table 3" in md  # beside the paper's tables
    assert (out / "accuracy_vs_steps.png").stat().st_size > 1000

    # Rerun: every finished cell is read back, nothing else trains; a removed cell alone is redone.
    import training.finetune as ft

    calls: list[str] = []
    real = ft.finetune

    def counting(cfg: ft.FinetuneConfig, *a: object, **k: object) -> Path:
        calls.append(cfg.out)
        return real(cfg, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(ft, "finetune", counting)
    (out / "cells" / "arms" / "as3l+prior+remove-3-seed0" / "cell.json").unlink()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(calls) == 1 and "as3l+prior+remove-3-seed0" in calls[0]
    rerun = json.loads((out / "results.json").read_text())["results"]
    assert [r for r in rerun if r["arm"] != "as3l+prior+remove"] == [
        r for r in run["results"] if r["arm"] != "as3l+prior+remove"]
    # Other settings into the same folder: refused, naming what differs; nothing trains.
    other = CliRunner().invoke(app, [*args, "--steps", "5"])
    assert other.exit_code != 0 and "steps at 3 labels 4 there, 5 now" in other.output and len(calls) == 1


def test_bad_arguments_are_clear(tiny_data: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "as3l", "--data", str(tiny_data), "--profile", "nope"])
    assert r.exit_code != 0 and "unknown profile 'nope'" in r.output
    r = CliRunner().invoke(app, ["bench", "as3l", "--data", str(tiny_data), "--profile", "smoke", "--arms", "magic",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "unknown arm(s) magic" in r.output


def test_a_signal_during_training_says_to_rerun_bench_as3l(tiny_data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal inside the pretraining or a cell's training (loop.Interrupted, whose own hint names
    `shortlist pretrain --resume`): one line naming `bench as3l`, exit 130, no traceback."""
    import bench.as3l as as3l
    from training import loop

    def stopped(*a: object, **k: object) -> None:
        raise loop.Interrupted("SIGTERM", 2, tmp_path / "out" / "pretrain", "continue with the same command and "
                               "--resume (nothing to export until it finishes)")

    monkeypatch.setattr(as3l, "run_benchmark", stopped)
    result = CliRunner().invoke(app, ["bench", "as3l", "--profile", "smoke", "--data", str(tiny_data), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())
    assert said == (f"interrupted: SIGTERM: training stopped at step 2, checkpointed in "
                    f"{tmp_path / 'out' / 'pretrain'}; run the same `shortlist bench as3l`"
                    " command again to resume (what finished is reused)"), said
