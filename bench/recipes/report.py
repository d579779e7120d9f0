"""results.md and accuracy-vs-labels plots (bench.report.plot_curves, error bands over seeds) for a
``bench recipe`` run, rendered from its results.json alone."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import md_table


def curves(results: dict[str, Any]) -> dict[str, list[tuple[int, float, float, int]]]:
    """arm -> [(labels, mean test accuracy %, std %, seeds)] over the cells finished so far."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for cell in results["cells"]:
        for r in cell["rounds"]:
            acc[cell["arm"]][int(r["budget"])].append(float(r["test_accuracy"]) * 100)
    return {arm: [(b, float(np.mean(v)), float(np.std(v)), len(v)) for b, v in sorted(d.items())]
            for arm, d in acc.items()}


def swap_checks(results: dict[str, Any]) -> tuple[int, int]:
    """(rounds whose Select was answered by the version the previous round published, rounds after the
    first that selected): the agent's hot swap, measured."""
    ok = n = 0
    for cell in results["cells"]:
        rounds = cell["rounds"]
        for prev, cur in itertools.pairwise(rounds):
            if cur["select_model_version"]:
                n += 1
                ok += cur["select_model_version"] == prev["published"]
    return ok, n


def markdown(results: dict[str, Any]) -> str:
    c = curves(results)
    budgets = [int(b) for b in results["budgets"]]
    arms = [a["name"] for a in results["arms"]]
    walls = results.get("wall_seconds", {})
    ok, n = swap_checks(results)
    imb = results.get("imbalance") or {}
    lines = [f"# `bench recipe {results['recipe']}`: {results['title']}\n",
             f"- paper: {results['paper']}",
             f"- profile `{results['profile']}`: {results.get('profile_description', '')}"
             + (f"; **overridden here**: {', '.join(f'{k} {v}' for k, v in results['overrides'].items())}"
                if results.get("overrides") else ""),
             f"- data {results['data']}: pool {results['pool_size']} (per class "
             f"{', '.join(f'{k} {v}' for k, v in zip(results['classes'], results['pool_class_counts'], strict=True))})"
             + (f", imbalanced by {', '.join(f'{k}={v}' for k, v in imb.items())}" if imb else "")
             + f", test {results['test_size']}",
             f"- network {results['scale']['arch']} at {results['scale']['preprocess']}, pretext encoder "
             f"{results['model_version']} ({results['encoder'].get('kind', '')}: "
             f"{results['encoder'].get('encoder', '')})"
             f", steps per round {results['scale']['steps']}, epochs per round {results['scale']['epochs']}",
             f"- seeds {len(results['seeds'])}, commit {results['git_commit'][:10]}"
             + (f" (checkout at {results['git_commit_end'][:10]} by the end: the code changed during the run)"
                if results.get("git_commit_end") else "")
             + ", wall time "
             f"{walls.get('total', float('nan')) / 60:.1f} min"
             + ("" if results.get("complete") else " (INCOMPLETE: still running or interrupted)"),
             f"- hot swap: {ok} of {n} rounds after the first were selected by the model the previous round published",
             "", "## Test accuracy (%) of the served classifier, mean ± std over seeds\n"]
    head = ["arm", "strategy", "head"] + [f"{b} labels" for b in budgets]
    rows = []
    for a in results["arms"]:
        pts = {b: (m, s, k) for b, m, s, k in c.get(a["name"], [])}
        cells = [(f"{pts[b][0]:.1f} ± {pts[b][1]:.1f}" if pts[b][2] > 1 else f"{pts[b][0]:.1f}") if b in pts else "—"
                 for b in budgets]
        rows.append([a["name"], a["strategy"], f"{a['mode']} ({a['init']})", *cells])
    lines += [*md_table(head, rows), ""]
    notes = [f"- `{a['name']}`: {a['note']}" for a in results["arms"] if a.get("note")]
    if notes:
        lines += ["Arms:\n", *notes, ""]
    lines += ["## The paper's claims\n", *[f"- {cl}" for cl in results["claims"]], ""]
    if results.get("reference"):
        lines += ["## The paper's figures (for comparison; its scale, not ours)\n", results["reference"], ""]
    seconds = []
    for a in arms:
        rs = [r for cell in results["cells"] if cell["arm"] == a for r in cell["rounds"]]
        if rs:
            seconds.append([a, *(f"{np.mean([r[k] for r in rs]):.1f}" for k in (
                "select_seconds", "train_seconds", "swap_seconds", "eval_seconds"))])
    lines += ["## Seconds per round (mean over cells)\n",
              *md_table(["arm", "select", "train + publish", "swap", "evaluate"], seconds), ""]
    return "\n".join(lines)


def write_report(out: Path) -> list[Path]:
    """Write results.md and accuracy_vs_labels.png from out/results.json; returns their paths."""
    from bench.report import plot_curves

    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(markdown(results))
    lines = [(arm, 0, [(b, m, s) for b, m, s, _ in pts], any(k > 1 for *_, k in pts))
             for arm, pts in curves(results).items()]
    png = out / "accuracy_vs_labels.png"
    name = Path(results["data"].rstrip("/")).name
    profile = results["profile"] + (", overridden" if results.get("overrides") else "")
    plot_curves(lines, "test accuracy (%)", f"{results['recipe']} ({profile}) on {name}", png,
                log_x=False)
    return [out / "results.md", png]
