"""The kept fresh-clone quickstart runs side by side (docs/benchmarks.md, "Quick profile", "The kept runs at
a glance"): per run, the linear-probe accuracy at 10 labels of every strategy and the knn prior's ECE there,
read from each run's results.json under docs/results/quick-*; the last rows are the mean and the range over
runs. The encoder's kNN accuracy is not in results.json (the pretraining run prints it): pass it per commit.

    python scripts/experiments/quick_runs.py --knn a514475=36.5 --knn fe63a40=36.1 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
BUDGET = 10


def at_budget(results: dict, budget: int) -> dict[str, tuple[float, float]]:
    """strategy -> (linear-probe accuracy %, knn prior ECE as a fraction) at ``budget`` labels, seed 0."""
    out: dict[str, tuple[float, float]] = {}
    for record in results["records"]:
        if record["budget"] == budget and record["prior_method"] == "knn" and record["seed"] == 0:
            out[record["strategy"]] = (100.0 * record["linear_accuracy"], record["ece"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knn", action="append", default=[], help="COMMIT=PERCENT, the encoder's kNN accuracy")
    args = parser.parse_args()
    knn = dict(item.split("=", 1) for item in args.knn)
    runs = []
    for path in RESULTS.glob("quick-*/results.json"):
        results = json.loads(path.read_text())
        runs.append((results["git_commit"][:7], results["strategies"], at_budget(results, BUDGET)))
    order = [commit for commit in knn] + sorted(c for c, _, _ in runs if c not in knn)
    runs.sort(key=lambda run: order.index(run[0]))
    strategies = runs[0][1]
    print("| run | kNN % | " + " | ".join(strategies) + " |")
    print("|---" * (2 + len(strategies)) + "|")
    for commit, _, cells in runs:
        row = [f"{cells[s][0]:.1f} ({cells[s][1]:.3f})" for s in strategies]
        print(f"| {commit} | {knn.get(commit, '?')} | " + " | ".join(row) + " |")
    for name, reduce in (("mean", np.mean), ("min", np.min), ("max", np.max)):
        acc = [reduce([cells[s][0] for _, _, cells in runs]) for s in strategies]
        ece = [reduce([cells[s][1] for _, _, cells in runs]) for s in strategies]
        row = [f"{a:.1f} ({e:.3f})" for a, e in zip(acc, ece, strict=True)]
        print(f"| {name} | | " + " | ".join(row) + " |")
    above = {s: sum(cells[s][0] > cells["random"][0] for _, _, cells in runs) for s in strategies if s != "random"}
    counts = ", ".join(f"{s} {n}" for s, n in above.items())
    print(f"\nruns above random at {BUDGET} labels (of {len(runs)}): {counts}")


if __name__ == "__main__":
    main()
