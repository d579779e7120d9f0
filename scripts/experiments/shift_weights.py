"""Selection bias in the labelled-set temperature fit, corrected by covariate-shift weights (issue 15;
docs/benchmarks.md, "How many labels a temperature needs").

The cross-fit holds out the strategy's picks, which are not a uniform sample of the pool: typiclust's
are typical rows (predicted better than the pool: T too sharp), coreset's isolated ones (worse: T too
flat). Importance weighting for covariate shift (Shimodaira 2000, "Improving predictive inference under
covariate shift by weighting the log-likelihood function", J. Stat. Plan. Inference 90(2), Eq. 4.2)
weights each held-out sample's log-likelihood by w(s) = p_pool(s) / p_held(s) of a label-free score s.
Here each fold's run also predicts REF uniformly drawn unlabelled rows, and w comes from a logistic
regression of "held-out sample vs reference row" on s (the density ratio as a classifier's odds;
Bickel, Brückner & Scheffer, ICML 2007), clipped to [1/CLIP, CLIP]. Scores tried:

- conf: the log-odds of the fold run's raw top probability;
- dist: the cosine distance to the nearest labelled sample of the fold's seeds;
- both.

Per cell: the served ECE (class-balanced cross-fit, PriorLabels' default), the same folds refitted with
each weighting (class-balanced x shift weights), and the best T's ECE. With ``--compare-pool``, instead,
why the picks teach a wrong T: in the same fold runs, the held-out picks against the reference rows (mean
raw top probability at T = 1, accuracy, cosine distance to the nearest seed).

    nice -n 19 python scripts/experiments/shift_weights.py runs/dig_x.npy runs/dig_y.npy --budgets 40
"""

from __future__ import annotations

import copy

import numpy as np
from cells import GRID, cell_parser, folds_with_reference, load, simulated_cells, uncalibrated  # type: ignore[import-not-found]  # same folder
from sklearn.linear_model import LogisticRegression

from agent.pool import Pool, state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids

REF = 1000
CLIP = 10.0


def score(probs: np.ndarray, covered: np.ndarray, dist: np.ndarray, kind: str) -> np.ndarray:
    top = np.clip(cal.tempered(probs, covered, 1.0).max(axis=1), 1e-6, 1 - 1e-6)
    conf = np.log(top / (1 - top))
    cols = {"conf": [conf], "dist": [dist], "both": [conf, dist]}[kind]
    return np.stack(cols, axis=1)


def shift_weights(folds: list[dict], kind: str) -> np.ndarray:
    s_held = np.concatenate([score(f["probs"], f["covered"], f["dist"], kind) for f in folds])
    s_ref = np.concatenate([score(f["ref_probs"], f["covered"], f["ref_dist"], kind) for f in folds])
    mu, sd = s_ref.mean(axis=0), s_ref.std(axis=0) + 1e-9
    z = np.concatenate([s_held, s_ref])
    z = (z - mu) / sd
    t = np.r_[np.ones(len(s_held)), np.zeros(len(s_ref))]
    # balanced classes: the odds P(ref|s)/P(held|s) are then the density ratio p_ref(s)/p_held(s)
    clf = LogisticRegression(C=1.0, class_weight="balanced").fit(z, t)
    p = clf.predict_proba(z[:len(s_held)])[:, 1]
    w = np.clip((1 - p) / p, 1 / CLIP, CLIP)
    return w / w.mean()


def fit(folds: list[dict], default: float, weights: np.ndarray, top_label_from: int | None) -> float:
    """The calibration's own MAP fit on the folds, with these per-sample weights."""
    return cal.fit_temperature([(f["probs"], f["labels"], f["covered"]) for f in folds], default, weights=weights,
                               top_label_from=top_label_from)


def compare_pool(pool: Pool, folds: list[dict], y: np.ndarray, ref: np.ndarray) -> str:
    """Held-out picks against the reference rows in the same fold runs: "n / top / accuracy / distance |
    top / accuracy / distance" (mean raw top probability at T = 1; cosine distance to the nearest seed)."""
    held = np.concatenate([cal.tempered(f["probs"], f["covered"], 1.0) for f in folds])
    truth = np.concatenate([f["labels"] for f in folds])
    rows = np.concatenate([cal.tempered(f["ref_probs"], f["covered"], 1.0) for f in folds])
    rows_truth = np.concatenate([y[ref]] * len(folds))
    d_held, d_rows = (np.concatenate([f[k] for f in folds]) for k in ("dist", "ref_dist"))
    return (f"{len(truth)} / {held.max(1).mean():.3f} / {(held.argmax(1) == truth).mean():.2f} / "
            f"{d_held.mean():.3f} | {rows.max(1).mean():.3f} / {(rows.argmax(1) == rows_truth).mean():.2f} / "
            f"{d_rows.mean():.3f}")


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--compare-pool", action="store_true",
                    help="print the held-out picks against uniform pool rows instead of the weighted fits")
    a = ap.parse_args()
    emb = load(a)
    y = emb.y
    kinds = ("conf", "dist", "both")
    if a.compare_pool:
        print("| strategy | labels | seed | method | held-out picks: n / top / accuracy / distance "
              "| pool rows: top / accuracy / distance |")
        print("|---|---|---|---|---|---|")
    else:
        print("| strategy | labels | seed | method | accuracy | served (cb) | cb again | "
              + " | ".join(f"cb x {k}" for k in kinds) + " | best |")
        print("|---|---|---|---|---|---|---|" + "---|" * len(kinds) + "---|")
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = y[rows]
        ref = np.sort(np.random.default_rng(seed).choice(rows, min(REF, len(rows)), replace=False))
        for name in a.methods.split(","):
            rng = state_rng(0, row_ids(picked))
            if a.compare_pool:
                folds = folds_with_reference(pool, name, copy.deepcopy(rng), ref)
                print(f"| {strategy} | {budget} | {seed} | {name} | {compare_pool(pool, folds, y, ref)} |",
                      flush=True)
                continue
            entry = PRIOR_METHODS[name]
            served = entry.fn(pool, rows, copy.deepcopy(rng), {})
            raw = uncalibrated(entry, pool, rng, y)
            folds = folds_with_reference(pool, name, copy.deepcopy(rng), ref)
            labels = np.concatenate([f["labels"] for f in folds]) if folds else np.zeros(0, np.int64)
            cb = cal.class_balanced_weights(labels)
            default = entry.fit.default_temperature
            switch = entry.fit.top_label_from  # the method's own switch to the top-label likelihood
            cells = [f"{raw.ece(fit(folds, default, cb, switch)):.3f}" if folds else "-"]
            for kind in kinds:
                if len(labels) < 5:
                    cells.append("-")
                    continue
                w = cb * shift_weights(folds, kind)
                cells.append(f"{raw.ece(fit(folds, default, w / w.mean(), switch)):.3f}")
            _, best = raw.best(GRID[::4])
            acc = float((served.probs.argmax(axis=1) == truth).mean())
            print(f"| {strategy} | {budget} | {seed} | {name} | {acc:.3f} | {ece(served.probs, truth):.3f} | "
                  + " | ".join(cells) + f" | {best:.3f} |", flush=True)


if __name__ == "__main__":
    main()
