"""`shortlist bench strategies` end to end on a tiny synthetic set (the command, not its figures)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from shortlist.cli import app
from tests.agent.strategies.pools import blobs


def test_bench_strategies_writes_records_table_and_plot(tmp_path: Path) -> None:
    x, y = blobs(clusters=4, per_cluster=30, dim=8, spread=0.1, seed=0)
    np.save(tmp_path / "x.npy", x[::2])
    np.save(tmp_path / "y.npy", y[::2])
    np.save(tmp_path / "tx.npy", x[1::2])
    np.save(tmp_path / "ty.npy", y[1::2])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
        "--test-embeddings", str(tmp_path / "tx.npy"), "--test-labels", str(tmp_path / "ty.npy"),
        "--budgets", "4,8", "--seeds", "2", "--strategies", "random,typiclust,margin", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 3 * 2 * 2 * 3  # strategies x budgets x seeds x prior methods
    keys = {"strategy", "budget", "seed", "prior_method", "coverage", "prior_accuracy", "ece", "linear_accuracy",
            "mean_confidence"}
    assert all(keys <= set(r) for r in records)
    assert all(0.0 < r["mean_confidence"] <= 1.0 for r in records)
    typi = [r for r in records if r["strategy"] == "typiclust" and r["budget"] == 4]
    assert all(r["coverage"] == 4 for r in typi)  # four blobs, four picks
    md = (out / "results.md").read_text()
    assert "| typiclust |" in md and "2 seeds (mean ± std over them), priors calibrated" in md
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seeds"] == 2 and settings["calibrated"] and settings["budgets"] == [4, 8]
    assert (out / "results.png").stat().st_size > 1000


def test_bench_strategies_rejects_unknown_strategy(tmp_path: Path) -> None:
    x, y = blobs(clusters=2, per_cluster=5, dim=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    result = CliRunner().invoke(app, ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels",
                                      str(tmp_path / "y.npy"), "--strategies", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "valid" in result.output


def test_bench_strategies_refuses_inputs_it_cannot_score_with_what_is_wrong(tmp_path: Path) -> None:
    """Labels that are not 0..C-1 would make classes that do not exist (and change ECE); wrong shapes, types
    or files would end in a traceback. Each is a usage error (exit 2) naming the file and the fix."""
    x, y = blobs(clusters=3, per_cluster=10, dim=4)
    with_nan = x.copy()
    with_nan[0, 0] = np.nan
    bad = {"shifted": y + 1, "text": y.astype(str), "two_d": y[:, None], "nan": with_nan, "one_d": x[:, 0],
           "narrow": x[:, :2]}
    for name, arr in {"x": x, "y": y, **bad}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    cases = [(["--labels", "shifted"], "must be 0..C-1 with every class present"),
             (["--labels", "text"], "not integer class indices"), (["--labels", "two_d"], "it must be N"),
             (["--embeddings", "nan"], "NaN or infinite"), (["--embeddings", "one_d"], "it must be N x D"),
             (["--embeddings", "missing"], "cannot read"),
             (["--test-embeddings", "narrow", "--test-labels", "y"], "has 2 dimensions but the pool's")]
    for swap, said in cases:
        files = {"--embeddings": "x", "--labels": "y"}
        files.update(dict(zip(swap[::2], swap[1::2], strict=True)))
        args = [a for k, v in files.items() for a in (k, str(tmp_path / f"{v}.npy"))]
        res = CliRunner().invoke(app, ["bench", "strategies", *args, "--budgets", "3", "--seeds", "1",
                                       "--strategies", "random", "--priors", "knn", "--out", str(tmp_path / "o")])
        text = " ".join("".join(c for c in res.output if c not in "│╭╮╰╯─").split())
        assert res.exit_code == 2 and said in text and "Traceback" not in text, (swap, text)


def test_bench_strategies_runs_variants_with_params(tmp_path: Path) -> None:
    x, y = blobs(clusters=3, per_cluster=20, dim=8, spread=0.1, seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out"
    base = ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
            "--budgets", "3", "--seeds", "1", "--priors", "knn", "--out", str(out)]
    result = CliRunner().invoke(app, [*base, "--strategies", "random", "--variant", "probcover:delta=0.5",
                                      "--variant", "probcover:delta=0.01,alpha=0.9"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    by_label = {r["strategy"]: r for r in records}
    assert set(by_label) == {"random", "probcover delta=0.5", "probcover alpha=0.9 delta=0.01"}
    assert by_label["probcover delta=0.5"]["params"] == {"delta": "0.5"}
    assert by_label["probcover delta=0.5"]["coverage"] == 3  # balls of 0.5 around three tight blobs
    assert "| probcover delta=0.5 |" in (out / "results.md").read_text()
    # Without --strategies only the variants run; a bad param fails before any work, naming the param.
    result = CliRunner().invoke(app, [*base, "--variant", "probcover:delta=0.5"])
    assert result.exit_code == 0, result.output
    assert {r["strategy"] for r in json.loads((out / "results.json").read_text())} == {"probcover delta=0.5"}
    for bad, says in (("probcover:radius=2", "radius"), ("probcover:delta=-1", "delta"), ("nope:k=1", "valid"),
                      ("probcover", "key=value"), ("probcover:delta", "key=value")):
        result = CliRunner().invoke(app, [*base, "--variant", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert says in result.output, (bad, result.output)


def test_bench_select_scale_times_strategies_and_variants() -> None:
    base = ["bench", "select-scale", "--n", "3000", "--dim", "16", "--budget", "5", "--threads", "1"]
    result = CliRunner().invoke(app, [*base, "--strategies", "random,coreset", "--variant", "probcover:delta=0.5"])
    assert result.exit_code == 0, result.output
    for label in ("random:", "coreset:", "probcover delta=0.5:"):
        assert label in result.output and "5 picked" in result.output, result.output
    result = CliRunner().invoke(app, [*base, "--variant", "probcover:radius=1"])
    assert result.exit_code == 2 and "radius" in result.output, result.output


def test_simulated_pools_are_the_labelled_sets_simulate_picks() -> None:
    """Every (strategy, budget, seed) in order, each pool labelled with exactly the rows simulate picks."""
    from bench.strategies import CachedKnn, SimPool, Variant, hnsw_index, normalise, simulate, simulated_pools

    x, y = blobs(clusters=3, per_cluster=20, dim=8, spread=0.1, seed=1)
    x = normalise(x)
    knn = CachedKnn(x, hnsw_index(x))
    got = list(simulated_pools(x, y, knn, 3, ["random", "typiclust"], [3, 6], 2))
    assert [(s, b, seed) for s, b, seed, _, _ in got] == [
        (s, b, seed) for s in ("random", "typiclust") for b in (3, 6) for seed in range(2)]
    for strategy, budget, seed, picked, pool in got:
        np.testing.assert_array_equal(picked, simulate(Variant(strategy), budget, seed, SimPool(x, y, knn, 3))[0])
        np.testing.assert_array_equal(pool.labeled, picked)
        np.testing.assert_array_equal(pool.labels, y[picked])
        assert len(picked) == budget and len(pool.candidates) == len(x) - budget


def test_the_default_strategies_leave_out_the_audit_whose_draw_is_randoms() -> None:
    from agent.strategies import STRATEGIES
    from bench.strategies import selected_variants

    assert [v.name for v in selected_variants("", [])] == sorted(set(STRATEGIES) - {"audit"})
    assert [v.name for v in selected_variants("audit,random", [])] == ["audit", "random"]


def test_help_lists_the_strategy_names() -> None:
    """`bench strategies --help` and `bench select-scale --help` name every strategy --strategies takes, as
    `shortlist select --help` does."""
    import re

    from agent.strategies import STRATEGIES

    for command in ("strategies", "select-scale"):
        result = CliRunner().invoke(app, ["bench", command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        flat = re.sub(r"[\s│]+", " ", result.output)
        assert f"one of: {', '.join(sorted(STRATEGIES))} (see docs/strategies.md)" in flat, flat


def test_strategies_declaring_a_need_for_pretext_losses_run_only_with_them() -> None:
    """Without --pretext-loss the strategies whose registry entry says ``needs_pretext_loss`` (das) are left
    out of the default list, with a note, and refused when asked for by name."""
    import pytest
    import typer
    from rich.console import Console

    from agent.strategies import STRATEGIES
    from bench.strategies import selected_variants, without_pretext_loss

    needy = {n for n, e in STRATEGIES.items() if e.needs_pretext_loss}
    assert needy == {"das"}
    console = Console(record=True, width=200)
    kept = without_pretext_loss(selected_variants("", []), False, console)
    assert [v.name for v in kept] == sorted(set(STRATEGIES) - {"audit"} - needy)
    assert "skipping das: no --pretext-loss given" in console.export_text()
    with pytest.raises(typer.BadParameter, match="das needs --pretext-loss"):
        without_pretext_loss(selected_variants("random", ["das:lambda=2"]), True, console)
    assert without_pretext_loss(selected_variants("random,margin", []), True, console) == \
        selected_variants("random,margin", [])


def test_bench_strategies_names_the_data_set_and_encoder_from_meta_json(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench embeddings` writes meta.json beside pool_x.npy: the heading and the plot's title carry its data
    set and encoder, not only the file name; a meta.json of another pool size (the .npy replaced) is ignored."""
    from bench.strategies import embeddings_source

    x, y = blobs(clusters=3, per_cluster=10, dim=4, seed=0)
    np.save(tmp_path / "pool_x.npy", x)
    np.save(tmp_path / "pool_y.npy", y)
    meta = {"data": "/work/digits/", "encoder": {"encoder": "reg1/v0001", "kind": "model version folder"},
            "model_version": "v0001", "pool_size": len(x)}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert embeddings_source(tmp_path / "pool_x.npy", len(x)) == "digits, encoder reg1/v0001 (model version folder)"
    assert embeddings_source(tmp_path / "pool_x.npy", len(x) + 1) == ""  # not these rows
    from matplotlib.figure import Figure

    titles: list[str] = []
    save = Figure.savefig

    def savefig(fig: Figure, *a: Any, **kw: Any) -> None:
        titles.append(fig.get_suptitle())
        save(fig, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "bench", "strategies", "--embeddings", str(tmp_path / "pool_x.npy"), "--labels", str(tmp_path / "pool_y.npy"),
        "--budgets", "3", "--seeds", "1", "--strategies", "random", "--priors", "knn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "results.md").read_text()
    assert md.startswith("`bench strategies` on digits, encoder reg1/v0001 (model version folder): pool_x.npy (30 rows")
    assert titles == ["digits, encoder reg1/v0001 (model version folder)"]  # the plot's title
    assert json.loads((out / "settings.json").read_text())["source"] == "digits, encoder reg1/v0001 (model version " \
                                                                         "folder)"


def bench_strategies(tmp_path: Path, x: np.ndarray, y: np.ndarray, *options: str) -> Path:
    """`shortlist bench strategies` on embeddings ``x`` and labels ``y`` (saved in ``tmp_path``), with the knn
    prior and ``options``; asserts it succeeded and returns its --out folder."""
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
        "--priors", "knn", "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def test_bench_strategies_reports_balanced_accuracy_beside_the_plain(tmp_path: Path) -> None:
    """An imbalanced pool (one class 24 rows, two of 3): each record has the prior's and the probe's balanced
    accuracy (sklearn's mean per-class recall of what it scored), and results.md shows them next to the
    plain accuracy."""
    x, y = blobs(clusters=3, per_cluster=24, dim=8, spread=0.6, seed=1)
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:3], np.flatnonzero(y == 2)[:3]])
    out = bench_strategies(tmp_path, x[keep], y[keep], "--budgets", "4", "--seeds", "1", "--strategies", "random")
    (record,) = json.loads((out / "results.json").read_text())
    assert 0.0 <= record["prior_balanced_accuracy"] <= 1.0 and 0.0 <= record["linear_balanced_accuracy"] <= 1.0
    md = (out / "results.md").read_text()
    assert ("| linear probe acc (on the unlabelled pool) | linear probe balanced acc (on the unlabelled pool) | knn "
            "prior acc / balanced acc / ECE |") in md  # no test split
    assert (f"{100 * record['prior_accuracy']:.1f} / {100 * record['prior_balanced_accuracy']:.1f} / "
            f"{record['ece']:.3f}") in md  # one seed: the figures alone
    # the pool is imbalanced (24 / 3 / 3): the header says so with the counts, and the plots show balanced accuracy
    assert ("pool per class: 0 24, 1 3, 2 3; imbalanced (largest / smallest class 8.0, above 1.5): judge by "
            "balanced accuracy") in md
    assert "Accuracies are in %; balanced accuracy" in md and "ECE is a fraction" in md
    assert json.loads((out / "settings.json").read_text())["class_counts"] == [24, 3, 3]


def test_results_png_plots_balanced_accuracy_on_an_imbalanced_pool() -> None:
    from bench.strategies import plot_panels

    assert plot_panels(["knn"], balanced=True) == [
        ("coverage", None, "classes covered"),
        ("linear_balanced_accuracy", None, "linear probe balanced accuracy (%, mean per-class recall)"),
        ("prior_balanced_accuracy", "knn", "knn prior balanced accuracy (%, mean per-class recall)")]
    assert [t for *_, t in plot_panels(["knn"], balanced=False)][1:] == ["linear probe accuracy (%)",
                                                                          "knn prior accuracy (%)"]


def test_bench_strategies_says_a_balanced_pool_is_not_imbalanced(tmp_path: Path) -> None:
    x, y = blobs(clusters=3, per_cluster=10, dim=8, spread=0.6, seed=1)
    out = bench_strategies(tmp_path, x, y, "--budgets", "4", "--seeds", "1", "--strategies", "random")
    md = (out / "results.md").read_text()
    assert "pool per class: 0 10, 1 10, 2 10." in md and "imbalanced" not in md


def test_bench_strategies_refuses_a_single_class(tmp_path: Path) -> None:
    x, _ = blobs(clusters=2, per_cluster=10, dim=8, spread=0.6, seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(len(x), np.int64))
    result = CliRunner().invoke(app, ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels",
                                      str(tmp_path / "y.npy"), "--budgets", "4", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path / 'y.npy'} has 1 class; a benchmark needs at least 2 "
                                     "(every accuracy would be 100%)")
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_second_bench_strategies_into_the_same_out_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    """Another process holds OUT's lock (a child that takes it, as a running `bench strategies` would)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from bench.checks import OutLock; "
        f"OutLock(Path({str(out)!r}), 'bench strategies'); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        x, y = blobs(clusters=3, per_cluster=10, dim=8, spread=0.6, seed=1)
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "y.npy", y)
        args = ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                "--priors", "knn", "--budgets", "4", "--seeds", "1", "--strategies", "random", "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        assert result.output.strip() == (f"error: {out} is in use by another `shortlist bench` run (pid "
                                         f"{holder.pid}); wait for it to finish, or give this `bench strategies` its "
                                         "own --out")
        assert not (out / "cells.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert CliRunner().invoke(app, args).exit_code == 0  # the lock went with its process
    assert os.path.exists(out / "results.json")


def test_bench_strategies_writes_strict_json_when_a_budget_labels_the_whole_pool(tmp_path: Path) -> None:
    """Budget = pool: no unlabelled row is left to score the priors on, and no test split to score the probe
    on. results.json says null (JSON has no NaN: another language's parser refuses a bare NaN), results.md "-"."""
    x, y = blobs(clusters=2, per_cluster=5, dim=4)
    out = bench_strategies(tmp_path, x, y, "--budgets", "10", "--seeds", "1", "--strategies", "random")

    def refuse(name: str) -> None:
        raise AssertionError(f"results.json holds {name}, which is not JSON")

    (record,) = json.loads((out / "results.json").read_text(), parse_constant=refuse)
    assert record["prior_accuracy"] is None and record["prior_balanced_accuracy"] is None and record["ece"] is None
    assert record["linear_accuracy"] is None and record["coverage"] == 2
    assert "nan" not in (out / "results.md").read_text()


def test_bench_strategies_notes_a_strategy_that_ignores_the_seed(tmp_path: Path) -> None:
    """probcover's pick is deterministic: 3 seeds give one figure and "± 0.0", which results.md now explains;
    random's seeds differ and are not named."""
    x, y = blobs(clusters=3, per_cluster=20, dim=8, spread=0.1, seed=2)
    out = bench_strategies(tmp_path, x, y, "--budgets", "6", "--seeds", "3", "--strategies", "random,probcover")
    md = (out / "results.md").read_text()
    assert "probcover gave the same figures at every seed and budget: its ± 0.0 says the seeds changed" in md
    assert "random gave" not in md


def _without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` less their wall times (which differ between any two runs)."""
    return [{k: v for k, v in r.items() if k not in ("select_seconds", "prior_seconds")} for r in records]


def test_bench_strategies_keeps_finished_cells_through_ctrl_c_and_a_rerun_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after 5 of the 12 (strategy, budget, seed, prior method) cells: out/cells.json keeps those 5 and
    the message says so and how to resume; the same command again runs only the other 7 and writes the same
    results.json and results.md as a run that was never stopped, and a rerun asking for fewer reads them
    back. Other calibration, embeddings, test set or code into that --out are refused, naming what differs (the
    input file by its argument, not one hash of them all), strings quoted as JSON."""
    from agent.priors import PRIOR_METHODS

    x, y = blobs(clusters=3, per_cluster=12, dim=8, spread=0.3, seed=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)

    def run(out: Path, *extra: str) -> Any:
        return CliRunner().invoke(app, [
            "bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
            "--budgets", "4,8", "--seeds", "2", "--strategies", "random,typiclust", "--priors", "knn,llgc",
            "--out", str(out), *extra])

    whole = tmp_path / "whole"
    assert run(whole).exit_code == 0
    calls = {"n": 0}
    knn = PRIOR_METHODS["knn"]

    def counted(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th knn call is the run's 7th cell; 6 finished, then Ctrl-C
            raise KeyboardInterrupt
        return knn(*args)

    monkeypatch.setitem(PRIOR_METHODS, "knn", counted)
    out = tmp_path / "out"
    stopped = run(out)
    assert stopped.exit_code == 130, stopped.output
    kept = json.loads((out / "cells.json").read_text())["records"]
    assert len(kept) == 6 and not (out / "results.json").exists()
    assert f"{out / 'cells.json'} keeps 6 finished cells" in stopped.output
    assert "run the same `shortlist bench strategies` command again to resume" in stopped.output

    calls["n"] = -100  # no more interruptions; count the knn calls the rerun makes
    resumed = run(out)
    assert resumed.exit_code == 0, resumed.output
    assert calls["n"] == -100 + 8 - 3  # 8 knn cells in all, 3 finished before Ctrl-C
    assert "resuming: 6 of 16 cell(s)" in resumed.output
    got, want = (json.loads((d / "results.json").read_text()) for d in (out, whole))
    assert _without_timings(got) == _without_timings(want)
    assert (out / "results.md").read_text() == (whole / "results.md").read_text()

    again = run(out)  # everything finished: nothing is run again
    assert again.exit_code == 0 and calls["n"] == -100 + 5
    fewer = run(out, "--priors", "knn", "--seeds", "1")  # a part of what is there: read back, not run
    assert fewer.exit_code == 0 and calls["n"] == -100 + 5
    assert _without_timings(json.loads((out / "results.json").read_text())) == _without_timings(
        [r for r in want if r["prior_method"] == "knn" and r["seed"] == 0])
    def said(result: Any) -> str:
        return "".join(result.output.replace("│", " ").split())  # rich wraps the message anywhere: no spaces

    refused = run(out, "--uncalibrated")
    assert refused.exit_code == 2 and "calibratedTruethere,Falsenow" in said(refused)
    with monkeypatch.context() as m:  # the code changed since (a strategy or a prior may have)
        m.setattr("bench.cifar10.encoder.code_fingerprint", lambda root=None: "0" * 64)
        refused = run(out)
    assert refused.exit_code == 2 and 'othersettings(code"' in said(refused) and '"0000000' in said(refused)
    np.save(tmp_path / "x.npy", x[:, ::-1].copy())  # other embeddings under the same path: named, and only they
    refused = run(out)
    named = re.search(r'othersettings\(thecontentsof--embeddings\(sha256"([0-9a-f]{12})"\.\.\.there,sha256"'
                      r'([0-9a-f]{12})"\.\.\.now\)\):passanother--out', said(refused))
    assert refused.exit_code == 2 and named and named[1] != named[2], refused.output
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ty.npy", y)  # a test set that the cells were made without
    refused = run(out, "--test-embeddings", str(tmp_path / "x.npy"), "--test-labels", str(tmp_path / "ty.npy"))
    assert refused.exit_code == 2 and said(refused).count("thecontentsof") == 2 and (
        "thecontentsof--test-embeddings(notgiventhere,sha256" in said(refused)
        and "thecontentsof--test-labels(notgiventhere" in said(refused)), refused.output


def test_settings_diff_names_each_input_that_differs_and_quotes_strings() -> None:
    """One phrase per differing input, by its argument (absent: "not given"); other settings by key, strings JSON
    quoted; a cells.json of an earlier version (one combined hash) is said to be one."""
    from bench.strategies import settings_diff

    was = {"inputs_sha256": {"--embeddings": "a" * 64, "--labels": "b" * 64, "--test-embeddings": None},
           "calibrated": True, "code": "c" * 64}
    now = {"inputs_sha256": {"--embeddings": "a" * 64, "--labels": "d" * 64, "--test-embeddings": "e" * 64},
           "calibrated": True, "code": "f"}
    assert settings_diff(was, now) == [
        'the contents of --labels (sha256 "bbbbbbbbbbbb"... there, sha256 "dddddddddddd"... now)',
        'the contents of --test-embeddings (not given there, sha256 "eeeeeeeeeeee"... now)',
        f'code "{"c" * 64}" there, "f" now']
    assert settings_diff({**was, "inputs_sha256": "0" * 64}, {**now, "code": "c" * 64}) == [
        "the inputs' fingerprint (one sha256 of all the input files there, written by an earlier version, so which "
        "file differs is not known; one per file now)"]
    assert settings_diff(now, now) == []


def test_a_refused_variant_quotes_what_the_user_wrote_as_json() -> None:
    """As the agent's reasons do (agent.errors.quoted), not Python's repr ('café')."""
    import typer

    from bench.strategies import parse_variant

    with pytest.raises(typer.BadParameter) as e:
        parse_variant("café:k=1")
    assert str(e.value).startswith('--variant "café:k=1": unknown strategy "café"; valid: ')
    with pytest.raises(typer.BadParameter) as e:
        parse_variant("probcover:delta")
    assert str(e.value) == '--variant "probcover:delta": write params as key=value, e.g. probcover:delta=0.4'


def test_a_rerun_of_a_finished_bench_strategies_says_it_computed_nothing_and_fresh_computes_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun that finds every cell in OUT/cells.json says so, where they come from and how to get new ones,
    and computes nothing; --fresh computes them all again and replaces the file; a rerun that adds a seed
    says how many cells it reuses and how many it computes."""
    from agent.priors import PRIOR_METHODS

    x, y = blobs(clusters=3, per_cluster=12, dim=8, spread=0.3, seed=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out"
    calls = {"n": 0}
    knn = PRIOR_METHODS["knn"]

    def counted(*args: Any) -> Any:
        calls["n"] += 1
        return knn(*args)

    monkeypatch.setitem(PRIOR_METHODS, "knn", counted)

    def run(*extra: str) -> tuple[int, str]:
        res = CliRunner().invoke(app, [
            "bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
            "--budgets", "3", "--strategies", "random", "--priors", "knn", "--out", str(out), *extra],
            env={"COLUMNS": "400"})
        assert res.exit_code == 0, res.output
        return calls["n"], " ".join(res.output.split())

    first = run("--seeds", "1")
    assert first[0] == 1 and "nothing to compute" not in first[1] and "resuming" not in first[1]
    records = json.loads((out / "results.json").read_text())
    n, said = run("--seeds", "1")
    assert n == 1 and "building the index" not in said
    assert (f"nothing to compute: all 1 cell(s) (strategy, budget, seed, prior method) are read back from "
            f"{out / 'cells.json'}, written by an earlier run with the same inputs and code; the figures below are "
            "that run's. A cell's draws are fixed by its seed: for other draws ask for more --seeds (only the new "
            "cells are computed); --fresh computes every cell again") in said
    n, said = run("--seeds", "1", "--fresh")
    assert n == 2 and "nothing to compute" not in said and "resuming" not in said
    assert _without_timings(json.loads((out / "results.json").read_text())) == _without_timings(records)
    n, said = run("--seeds", "2")
    assert n == 3 and (f"resuming: 1 of 2 cell(s) (strategy, budget, seed, prior method) reused from "
                       f"{out / 'cells.json'}, 1 left to compute (--fresh computes them all again)") in said
    n, said = run("--seeds", "1", "--uncalibrated", "--fresh")  # other settings: --fresh replaces the cells
    assert n == 4 and len(json.loads((out / "cells.json").read_text())["records"]) == 1


def test_the_results_header_names_the_classes_where_meta_json_beside_the_embeddings_does(tmp_path: Path) -> None:
    """`bench embeddings` (and `bench cifar10`'s embeddings/) write the class names in meta.json beside the
    .npy files: the header's per-class counts use them, in the order the labels index them; a bare .npy of
    labels, or a meta.json of another pool or another class count, keeps the indices."""
    x, y = blobs(clusters=3, per_cluster=10, dim=8, spread=0.6, seed=1)
    y[y == 2] = 1  # 20 "cat"s
    y[-5:] = 2
    meta = {"data": "/data/pets", "classes": ["bird", "cat", "dog"], "pool_size": len(x)}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    out = bench_strategies(tmp_path, x, y, "--budgets", "4", "--seeds", "1", "--strategies", "random")
    assert "pool per class: bird 10, cat 15, dog 5;" in (out / "results.md").read_text()
    assert json.loads((out / "settings.json").read_text())["class_names"] == ["bird", "cat", "dog"]
    for other in ({**meta, "pool_size": len(x) + 1}, {**meta, "classes": ["bird", "cat"]}, None):
        if other is None:
            (tmp_path / "meta.json").unlink()
        else:
            (tmp_path / "meta.json").write_text(json.dumps(other))
        out = bench_strategies(tmp_path, x, y, "--budgets", "4", "--seeds", "1", "--strategies", "random",
                               "--fresh")
        assert "pool per class: 0 10, 1 15, 2 5;" in (out / "results.md").read_text()


def test_without_a_test_split_the_results_say_the_probe_is_scored_on_the_unlabelled_pool(tmp_path: Path) -> None:
    """No --test-embeddings: the probe is scored on the rows not picked, and results.md (a line and the probe
    columns), settings.json and the plot's panel say so; with a test split none of it appears."""
    from bench.strategies import plot_panels

    x, y = blobs(clusters=3, per_cluster=10, dim=8, spread=0.6, seed=1)
    md = (bench_strategies(tmp_path, x, y, "--budgets", "4", "--seeds", "1", "--strategies", "random")
          / "results.md").read_text()
    assert ("No test split (--test-embeddings / --test-labels not given): the linear probe is scored on the "
            "unlabelled pool (the rows the strategy did not pick, as the priors are), not on held-out test rows."
            ) in md
    assert ("| strategy | classes covered | linear probe acc (on the unlabelled pool) | linear probe balanced acc "
            "(on the unlabelled pool) |") in md
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["probe_scored_on"] == "unlabelled pool"
    assert plot_panels(["knn"], False, probe_on_pool=True)[1][2] == "linear probe accuracy (%) (on the unlabelled pool)"
    tx, ty = blobs(clusters=3, per_cluster=4, dim=8, spread=0.6, seed=2)
    np.save(tmp_path / "tx.npy", tx)
    np.save(tmp_path / "ty.npy", ty)
    with_test = tmp_path / "with-test"
    with_test.mkdir()
    md = (bench_strategies(with_test, x, y, "--budgets", "4", "--seeds", "1", "--strategies", "random",
                           "--test-embeddings", str(tmp_path / "tx.npy"), "--test-labels", str(tmp_path / "ty.npy"))
          / "results.md").read_text()
    assert "unlabelled pool (the rows" not in md and "| linear probe acc | linear probe balanced acc |" in md
    assert json.loads((with_test / "out" / "settings.json").read_text())["probe_scored_on"] == "test split"


def test_one_seed_prints_plain_values_not_a_spread_of_zero(tmp_path: Path) -> None:
    """With --seeds 1 results.md said "1 seed (mean ± std over them)" and "± 0.0" in every cell: one seed has
    no spread. It says "1 seed" and prints the plain figures; two seeds keep mean ± std."""
    x, y = blobs(clusters=2, per_cluster=10, dim=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for seeds in (1, 2):
        out = tmp_path / f"s{seeds}"
        result = CliRunner().invoke(app, ["bench", "strategies", "--embeddings", str(tmp_path / "x.npy"), "--labels",
                                          str(tmp_path / "y.npy"), "--budgets", "4", "--seeds", str(seeds),
                                          "--strategies", "random", "--priors", "knn", "--out", str(out)])
        assert result.exit_code == 0, result.output
        md = (out / "results.md").read_text()
        row = next(line for line in md.splitlines() if line.startswith("| random |"))
        if seeds == 1:
            assert ", 1 seed, priors" in md and "±" not in md, md
            assert re.fullmatch(r"\| random \| \d+\.\d \| \d+\.\d \| \d+\.\d \| \d+\.\d / \d+\.\d / \d\.\d{3} \|",
                                row), row
        else:
            assert ", 2 seeds (mean ± std over them), priors" in md and "(mean ± std over seeds)" in md, md
            assert row.count("±") == 5, row
