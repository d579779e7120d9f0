"""bench/report.py: results.md of ``bench cifar10`` runs; the published CIFAR-10 references go only beside
CIFAR-10's own figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.report import is_cifar10, markdown

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REFERENCE_HEAD = "TypiClust/ProbCover (SSL), 10 labels (published, CIFAR-10: semi-supervised training)"


def run(data: str, classes: list[str] | None, label: str = "r") -> dict[str, Any]:
    records = [{"strategy": s, "budget": 10, "seed": 0, "prior_method": "knn", "prior_accuracy": 0.5, "ece": 0.1,
                "linear_accuracy": acc, "coverage": 4} for s, acc in (("random", 0.3), ("typiclust", 0.4))]
    r: dict[str, Any] = {"label": label, "profile": "quick", "data": data, "seeds": [0], "budgets": [10],
                         "strategies": ["random", "typiclust"], "prior_methods": ["knn"], "pool_size": 100,
                         "test_size": 50, "model_version": "v0001", "encoder": {}, "git_commit": "abc",
                         "records": records}
    if classes is not None:
        r["classes"] = classes
    return r


def test_published_cifar10_columns_only_beside_cifar10() -> None:
    cifar = markdown([run("/data/shared/cifar10", CIFAR10)])
    assert REFERENCE_HEAD in cifar and "| 53.8 |" in cifar and "| 93.2 |" in cifar
    assert "Published references are from the papers" in cifar


def test_published_ssl_figures_are_told_apart_from_this_runs_frozen_encoder_probe() -> None:
    """The published figures are accuracy after semi-supervised training; the table beside them is this run's
    linear probe on a frozen encoder: the headers and a note under the table say which is which (the AS3L
    semi-supervised stage's table, also beside them, says its figures are the same kind)."""
    r = run("/data/shared/cifar10", CIFAR10)
    for rec in r["records"]:
        rec["semi_supervised_accuracy"] = 0.6
    md = markdown([r])
    probe = md.split("## Linear-probe test accuracy")[1].split("\n## ")[0]
    assert "| strategy | 10 labels (this run) | " + REFERENCE_HEAD + " |" in probe
    assert ("The published columns are test accuracy after semi-supervised training of the whole network on those "
            "labels and the unlabelled images (bench/references.py); this run's columns are its linear probe on "
            "the frozen encoder, another measurement") in probe
    ssl = md.split("## AS3L semi-supervised stage")[1].split("\n## ")[0]
    assert "| 10 labels (this run) |" in ssl
    assert "its semi-supervised stage (prior-guided FlexMatch), the same kind" in ssl
    assert "(this run)" not in md.split("## Classes covered")[1]  # no published figures beside: no label needed

    digits = markdown([run("/work/digits", [str(i) for i in range(10)])])
    assert "published" not in digits.split("No published references")[0] and "53.8" not in digits
    assert "No published references: they are CIFAR-10 figures" in digits and "digits (/work/digits)" in digits
    assert "| random | 30.0 |" in digits  # its own figures stay

    mixed = markdown([run("/data/cifar10", CIFAR10, "a"), run("/work/digits", ["0", "1"], "b")])
    assert REFERENCE_HEAD not in mixed and "digits (/work/digits) is another data set" in mixed


def test_is_cifar10_by_classes_else_by_folder_name_for_older_results() -> None:
    assert is_cifar10(run("/anywhere/data", CIFAR10))  # the classes decide
    assert not is_cifar10(run("/x/cifar10", ["0", "1"]))
    assert is_cifar10(run("/x/CIFAR-10/", None)) and is_cifar10(run("../shared/datasets/cifar10", None))
    assert not is_cifar10(run("/x/cifar100", None)) and not is_cifar10(run("/x/cifar-100-python", None))
    assert not is_cifar10(run("/x/digits", None))


def test_balanced_accuracy_tables_beside_the_plain_and_older_results_still_render() -> None:
    new = run("/work/digits", ["0", "1"])
    for r, (lin_bal, prior_bal) in zip(new["records"], ((0.2, 0.25), (0.35, 0.45)), strict=True):
        r["linear_balanced_accuracy"], r["prior_balanced_accuracy"] = lin_bal, prior_bal
    md = markdown([new])
    linear = md.split("## Linear-probe balanced test accuracy")[1].split("##")[0]
    assert "| random | 20.0 |" in linear and "| typiclust | 35.0 |" in linear
    prior = md.split("## Prior-label balanced accuracy")[1].split("##")[0]
    assert "method `knn`" in prior and "| random | 25.0 |" in prior
    # plain accuracy first, its balanced accuracy right after it
    assert md.index("## Linear-probe test accuracy") < md.index("## Linear-probe balanced")
    assert md.index("## Prior-label accuracy") < md.index("## Prior-label balanced") < md.index("## Prior-label ECE")
    old = markdown([run("/work/digits", ["0", "1"])])  # records written before balanced accuracy was measured
    assert "balanced" not in old and "| random | 30.0 |" in old


def test_the_data_set_is_named_in_the_summary_line_and_plot_title_not_only_the_out_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("data/cifar/cifar-10-batches-py", CIFAR10, label="cifar")  # --out runs/cifar
    md = markdown([r])
    assert "- **cifar-10-batches-py**, run folder `cifar`: profile `quick`" in md
    titles: list[str] = []
    monkeypatch.setattr(report, "plot_curves", lambda lines, ylabel, title, *a, **k: titles.append(title))
    report.plot([r], "linear_accuracy", "acc", tmp_path / "p.png")
    assert titles == ["data cifar-10-batches-py (run folder cifar)"]


def test_a_strategy_that_ignores_the_seed_is_noted() -> None:
    r = run("/work/digits", ["0", "1"])
    r["seeds"] = [0, 1]
    again = [dict(x, seed=1) for x in r["records"]]
    again[0]["linear_accuracy"] = 0.35  # random's second seed differs; typiclust's is the same as its first
    r["records"] += again
    md = markdown([r])
    assert ("typiclust gave the same figures at every seed and budget: its ± 0.0 says the seeds changed nothing "
            "(a strategy that picks the same labels whatever the seed, as probcover often does)") in md
    assert "random gave" not in md and "| typiclust | 40.0 ± 0.0 |" in md
    assert "gave the same figures" not in markdown([run("/work/digits", ["0", "1"])])  # one seed: nothing to say


def test_a_seed_blind_strategy_is_noted_also_where_nothing_could_be_scored() -> None:
    """At a budget that labels the whole pool the prior has nothing to score (NaN in memory, null in the
    file): NaN != NaN hid the strategy from the note when results.md was written from memory."""
    from bench.report import seed_blind

    recs = [{"strategy": "random", "seed": s, "budget": 60, "prior_method": "knn", "coverage": 1.0,
             "linear_accuracy": 0.7, "prior_accuracy": float("nan")} for s in (0, 1)]
    assert seed_blind(recs) == ["random"]
    assert seed_blind([dict(r, prior_accuracy=None) for r in recs]) == ["random"]  # as read back from JSON


def test_an_imbalanced_pool_is_said_in_the_header_and_its_plots_show_balanced_accuracy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cat 240 / frog 10 / ship 48: random (all cats) leads on plain accuracy, typiclust on balanced; the
    header gives the counts and says to judge by balanced accuracy, and the plots draw it (so they rank as
    the balanced tables do)."""
    r = run("imbsplit", ["cat", "frog", "ship"])
    r["class_counts"] = [240, 10, 48]
    r["seeds"] = [0, 1]
    for rec, (lin_bal, prior_bal) in zip(r["records"], ((0.34, 0.33), (0.42, 0.46)), strict=True):
        rec["linear_balanced_accuracy"], rec["prior_balanced_accuracy"] = lin_bal, prior_bal
    md = markdown([r])
    assert ("  - pool per class: cat 240, frog 10, ship 48; imbalanced (largest / smallest class 24.0, above 1.5): "
            "judge by balanced accuracy (the plots show it)") in md
    drawn: list[tuple[str, str, list[float]]] = []
    monkeypatch.setattr(report, "plot_curves", lambda lines, ylabel, title, *a, **k: drawn.append(
        (ylabel, title, [pts[0][1] for _, _, pts, _ in lines])))
    (tmp_path / "results.json").write_text(json.dumps(r))
    report.write_report([tmp_path], tmp_path / "rep")
    assert drawn[0][0] == "linear-probe test balanced accuracy (%, mean per-class recall; imbalanced pool)"
    assert drawn[0][2] == pytest.approx([34.0, 42.0])
    assert drawn[1][0] == "prior-label (knn) balanced accuracy (%, mean per-class recall; imbalanced pool)"
    assert drawn[0][1].endswith("; shaded: ± std over seeds")
    balanced = run("b", ["a", "b"])
    balanced["class_counts"] = [10, 9]
    assert report.plotted_metric([balanced], "linear", "x") == ("linear_accuracy", "x accuracy (%)")
    assert "imbalanced" not in markdown([balanced]) and "pool per class: a 10, b 9" in markdown([balanced])


def test_runs_of_several_data_sets_are_grouped_by_data_set_and_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cifar10 run, a digits run and another cifar10 run: each table row says its data set, the rows of one
    data set stay together (random on digits is not put between the cifar10 runs), and results.md and the
    terminal warn that the figures compare only within a data set."""
    folders = []
    for label, data, classes in (("a", "/data/cifar10", CIFAR10), ("b", "/work/digits", ["0", "1"]),
                                 ("c", "/data/cifar10", CIFAR10)):
        (tmp_path / label).mkdir()
        (tmp_path / label / "results.json").write_text(json.dumps(run(data, classes, label)))
        folders.append(tmp_path / label)
    report.write_report(folders, tmp_path / "report")
    md = (tmp_path / "report" / "results.md").read_text()
    warning = ("these runs measure 2 data sets (cifar10, digits): a figure of one does not compare with another's; "
               "each table groups its rows by data set")
    assert warning in md and warning in capsys.readouterr().err
    linear = md.split("## Linear-probe test accuracy")[1].split("##")[0]
    assert [line for line in linear.splitlines() if line.startswith("| ")] == [
        "| data set | strategy | run | 10 labels |",
        "| cifar10 | random | a | 30.0 |", "| cifar10 | random | c | 30.0 |",
        "| cifar10 | typiclust | a | 40.0 |", "| cifar10 | typiclust | c | 40.0 |",
        "| digits | random | b | 30.0 |", "| digits | typiclust | b | 40.0 |"]
    one = markdown([run("/data/cifar10", CIFAR10, "a"), run("/data/cifar10", CIFAR10, "c")])
    assert "data set" not in one and "warning" not in one.lower()  # one data set: as before


# ---- golden: every line of results.md, pinned -------------------------------------------------------------
GOLDEN = Path(__file__).parent / "data"


def _rich_run(data: str, classes: list[str], label: str) -> dict[str, Any]:
    """A run with every part results.md can say: two seeds (typiclust seed-blind), two budgets, two prior
    methods, balanced and semi-supervised figures, reused and audit runs, a skipped cell, class counts, and a
    cell nothing could be scored in."""
    r = run(data, classes, label)
    r.update(seeds=[0, 1], budgets=[10, 40], prior_methods=["knn", "linear"], audit=5, complete=False,
             class_counts=[30, 10] + [6] * (len(classes) - 2), encoder={"kind": "timm", "encoder": "resnet18"},
             git_commit="0123456789abcdef", skipped=[{"strategy": "probcover", "seed": 1, "error": "out of memory"}],
             wall_seconds={"total": 754.0, "reused_runs": 96.0, "ingest": 12.4, "embed": 300.6, "runs/random": 5.0})
    r["records"] = [{"strategy": s, "budget": b, "seed": seed, "prior_method": m,
                     "prior_accuracy": float("nan") if b == 40 and s == "random"
                     else 0.4 + 0.01 * b + (0.02 * seed if s == "random" else 0.0),
                     "prior_balanced_accuracy": 0.3 + 0.005 * b, "ece": 0.123456 - 0.001 * b,
                     "linear_accuracy": acc + 0.004 * b + (0.03 * seed if s == "random" else 0.0),
                     "linear_balanced_accuracy": acc - 0.05, "semi_supervised_accuracy": acc + 0.1,
                     "coverage": 4 + (seed if s == "random" else 0)}
                    for s, acc in (("random", 0.3), ("typiclust", 0.4)) for b in (10, 40) for seed in (0, 1)
                    for m in ("knn", "linear")]
    return r


def _golden_runs(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The golden cases, each as ``load_run`` reads the results.json files the test writes."""
    def written(r: dict[str, Any]) -> dict[str, Any]:
        folder = tmp_path / r["label"]
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(r))
        return report.load_run(folder)

    cifar = written(_rich_run("/data/cifar10", CIFAR10, "quick-a"))
    digits = written(_rich_run("/work/digits", [str(i) for i in range(10)], "digits-b"))
    plain = written(run("/data/cifar-10-batches-py", None, "old-c"))
    return {"report_one_run.md": [cifar], "report_three_runs.md": [cifar, digits, plain]}


@pytest.mark.parametrize("name", ["report_one_run.md", "report_three_runs.md"])
def test_results_md_is_the_golden_text(name: str, tmp_path: Path) -> None:
    """results.md of one rich CIFAR-10 run, and of it beside a digits run and an older plain one, is line for
    line tests/bench/data/NAME as the report code of 246df6e wrote it (regenerate: python -m
    tests.bench.test_report, only on purpose)."""
    got = markdown(_golden_runs(tmp_path)[name])
    assert got.splitlines() == (GOLDEN / name).read_text(encoding="utf-8").splitlines()  # a readable diff first
    assert got == (GOLDEN / name).read_text(encoding="utf-8")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.mkdir(exist_ok=True)
        for name, runs in _golden_runs(Path(tmp)).items():
            (GOLDEN / name).write_text(markdown(runs), encoding="utf-8")


def test_another_bench_commands_results_json_is_named_not_called_torn(tmp_path: Path) -> None:
    """`bench report` on an untouched `bench strategies` output folder (whose results.json is an array of
    cells) said it "holds an array ... edited by hand?" and to rerun `bench cifar10`; it names the command
    that wrote it and that folder's own report instead, exit 2. So for `bench recipe` and `bench as3l`."""
    import numpy as np
    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.agent.strategies.pools import blobs

    x, y = blobs(clusters=2, per_cluster=10, dim=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    strategies = tmp_path / "strategies"
    made = CliRunner().invoke(app, ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels",
                                    str(tmp_path / "y.npy"), "--budgets", "4", "--seeds", "1", "--strategies",
                                    "random", "--priors", "knn", "--out", str(strategies)])
    assert made.exit_code == 0, made.output
    recipe, as3l = tmp_path / "recipe", tmp_path / "as3l"
    recipe.mkdir()
    as3l.mkdir()
    (recipe / "results.json").write_text(json.dumps({"recipe": "das", "profile": "smoke", "cells": []}))
    (as3l / "results.json").write_text(json.dumps({"profile": "smoke", "arms": ["flexmatch"], "labels": [],
                                                   "results": []}))
    for folder, command, plot in ((strategies, "bench strategies", "results.png"),
                                  (recipe, "bench recipe", "accuracy_vs_labels.png"),
                                  (as3l, "bench as3l", "accuracy_vs_steps.png")):
        result = CliRunner().invoke(app, ["bench", "report", str(folder)], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.replace("│", " ").split())
        assert (f"{folder / 'results.json'} is a `shortlist {command}` result, not a `shortlist bench cifar10` one: "
                f"`bench report` renders `bench cifar10` runs; {folder / 'results.md'} and {folder / plot} are that "
                f"run's report") in said, said
        assert "edited by hand" not in said and "Traceback" not in said
    # an array that is no bench command's: still the torn-or-edited error, exit 2
    (recipe / "results.json").write_text("[1, 2]")
    result = CliRunner().invoke(app, ["bench", "report", str(recipe)])
    assert result.exit_code == 2 and "holds an array, not a JSON object" in result.output, result.output
