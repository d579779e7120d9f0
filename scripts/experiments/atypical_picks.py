"""Can a label-free statistic tell when the labelled set's held-out picks do not speak for the pool (issue 15;
docs/benchmarks.md, "How many labels a temperature needs")?

The cross-fit's temperature is only as good as the held-out picks are like the pool. Coreset's picks are the
pool's most isolated rows: held out, they are about twice as far from the fold's seeds as pool rows are, and
the temperature fitted on them misses by 0.1-0.3 ECE where uniform labels would not. Per cell, in the
calibration's own fold runs (``cells.folds_with_reference``): the ratio of the held-out picks'
median cosine distance to the fold's nearest seed over that of REF uniform unlabelled rows to the same seeds
(pooled over folds), against the served ECE, the best single T's ECE and their gap.

    python scripts/experiments/atypical_picks.py runs/dig_x.npy runs/dig_y.npy
"""

from __future__ import annotations

import copy

import numpy as np
from cells import GRID, cell_parser, folds_with_reference, load, simulated_cells, uncalibrated  # type: ignore[import-not-found]  # same folder
from scipy.stats import mannwhitneyu

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids

REF = 500


def main() -> None:
    ap = cell_parser(__doc__, budgets="10,20,40", strategies="random,typiclust,coreset,kmedoids,probcover,as3l")
    a = ap.parse_args()
    emb = load(a)
    y, knn = emb.y, emb.knn
    # typicality (TypiClust's: inverse mean cosine distance to the K nearest rows), label-free, per pool row
    typ = 1.0 / np.maximum(knn.dist[:, 1:21].mean(axis=1), 1e-9)
    print("| strategy | labels | seed | method | held-out | distance ratio | AUC distance | AUC typicality "
          "| served ECE (T) | best ECE (T) | gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = y[rows]
        ref = np.sort(np.random.default_rng(seed).choice(rows, min(REF, len(rows)), replace=False))
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            served = entry.fn(pool, rows, copy.deepcopy(rng), {})
            raw = uncalibrated(entry, pool, rng, y)
            folds = folds_with_reference(pool, name, copy.deepcopy(rng), ref)
            if folds:
                held = sum(len(f["labels"]) for f in folds)
                d_held = np.concatenate([f["dist"] for f in folds])
                d_ref = np.concatenate([f["ref_dist"] for f in folds])
                ratio = float(np.median(d_held) / max(np.median(d_ref), 1e-9))
                # AUC = P(held-out pick > uniform row): 0.5 when the picks are like the pool
                auc_d = float(mannwhitneyu(d_held, d_ref).statistic) / (len(d_held) * len(d_ref))
                auc_t = float(mannwhitneyu(typ[picked], typ[ref]).statistic) / (len(picked) * len(ref))
            else:
                ratio, held, auc_d, auc_t = float("nan"), 0, float("nan"), float("nan")
            best_t, best_ece = raw.best(GRID[::4])
            served_t = served.calibration.temperature if served.calibration is not None else float("nan")
            s = ece(served.probs, truth)
            print(f"| {strategy} | {budget} | {seed} | {name} | {held} | {ratio:.2f} | {auc_d:.2f} | {auc_t:.2f} "
                  f"| {s:.3f} ({served_t:.2f}) | {best_ece:.3f} ({best_t:.2f}) | {s - best_ece:+.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
