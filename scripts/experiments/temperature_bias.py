"""Where a served temperature's error comes from (issue 15; docs/benchmarks.md, "The served fit after each
label-free strategy").

Per (strategy, labels, seed, method), on the labelled sets ``bench strategies`` simulates, temperatures and the
ECE over every unlabelled row at each:

- best: the single T with the lowest ECE (chosen on the truth: what temperature scaling could do);
- MLE multiclass / top-label: T maximising that likelihood over every unlabelled row's truth (is the
  likelihood's optimum the ECE optimum?);
- served: PriorLabels' default (the class-balanced cross-fit on the held-out picks, MAP);
- served without the prior on T (``PRIOR_WEIGHT`` 0) and without the class balance: is the fit's prior or
  weighting what moves it?
- fold rows: T fitted (multiclass MLE) on REF uniform unlabelled rows predicted in the same fold runs as the
  held-out picks: are the fold priors, with a fifth of the seeds hidden, unlike the served prior?

    python scripts/experiments/temperature_bias.py runs/emb45e/pool_x.npy runs/emb45e/pool_y.npy \\
        --strategies random,probcover,kmedoids --methods llgc,knn,as3l
"""

from __future__ import annotations

import copy

import numpy as np
from cells import GRID, cell_parser, folds_with_reference, load, simulated_cells, uncalibrated  # type: ignore[import-not-found]  # same folder
from scipy.optimize import minimize_scalar

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from bench.strategies import row_ids

REF = 1000


def mle(probs: np.ndarray, labels: np.ndarray, covered: np.ndarray, top_label: bool) -> float:
    """T maximising the (multiclass or top-label) likelihood of ``labels``, no prior."""
    def loss(u: float) -> float:
        q = cal.tempered(probs, covered, float(np.exp(u)))
        return -float(cal.log_likelihoods(q, labels, top_label).sum())

    return float(np.exp(minimize_scalar(loss, bounds=np.log(cal.T_RANGE), method="bounded").x))


def main() -> None:
    ap = cell_parser(__doc__, strategies="random,probcover,kmedoids", methods="llgc,knn,as3l")
    a = ap.parse_args()
    emb = load(a)
    y, c = emb.y, emb.classes
    print("| strategy | labels | seed | method | best T (ECE) | MLE multiclass | MLE top-label | served "
          "| served, no prior on T | served, no class balance | fold rows |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = y[rows]
        covered = np.zeros(c, bool)
        covered[pool.labels] = True
        if not covered.all():  # step 2 (classes without a label) would enter the ECE; not this probe's question
            continue
        ref = np.sort(np.random.default_rng(seed).choice(rows, min(REF, len(rows)), replace=False))
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            raw = uncalibrated(entry, pool, rng, y)

            def at(t: float) -> str:
                return f"{t:.2f} ({raw.ece(t):.3f})"  # noqa: B023

            folds = folds_with_reference(pool, name, copy.deepcopy(rng), ref)
            held = [(f["probs"], f["labels"], f["covered"]) for f in folds]
            default = entry.fit.default_temperature
            switch = entry.fit.top_label_from  # the method's own switch to the top-label likelihood
            served = cal.fit_temperature(held, default, balance=True, top_label_from=switch)
            weight = cal.PRIOR_WEIGHT
            cal.PRIOR_WEIGHT = 0.0
            no_prior = cal.fit_temperature(held, default, balance=True, top_label_from=switch)
            cal.PRIOR_WEIGHT = weight
            no_balance = cal.fit_temperature(held, default, balance=False, top_label_from=switch)
            fold_rows = mle(np.concatenate([f["ref_probs"] for f in folds]), np.concatenate([y[ref]] * len(folds)),
                            covered, False)
            likelihood_optima = [mle(raw.probs, truth, covered, top) for top in (False, True)]
            print(f"| {strategy} | {budget} | {seed} | {name} | {at(raw.best(GRID[::2])[0])} | "
                  + " | ".join(at(t) for t in (*likelihood_optima, served, no_prior, no_balance, fold_rows)) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
