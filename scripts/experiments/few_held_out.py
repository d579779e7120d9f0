"""Few held-out samples: is the method's default temperature better than a fit on them (issue 15;
docs/benchmarks.md, "llgc's temperature on the top-label likelihood")?

Per (strategy, picks, seed, method) on the labelled sets ``bench strategies`` simulates: the held-out samples
the served fit counted, the served ECE (the fit on them) and the ECE at the method's default temperature (what
a rule "too few held-out samples: keep the default" would serve). Then both means by held-out count.

    python scripts/experiments/few_held_out.py runs/dig_x.npy runs/dig_y.npy
"""

from __future__ import annotations

import copy

import numpy as np
from cells import cell_parser, load, simulated_cells, uncalibrated  # type: ignore[import-not-found]  # same folder

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids

GROUPS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, 10**9))


def main() -> None:
    ap = cell_parser(__doc__, budgets="10,20", strategies="random,typiclust,coreset,kmedoids,probcover,as3l")
    a = ap.parse_args()
    emb = load(a)
    print("| strategy | picks | seed | method | held-out (fitted on) | served ECE (T) | default ECE (T) |")
    print("|---|---|---|---|---|---|---|")
    seen: list[tuple[int, float, float]] = []
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = emb.y[rows]
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            served = entry.fn(pool, rows, copy.deepcopy(rng), {})
            fit = served.calibration
            assert fit is not None
            e_served, e_default = ece(served.probs, truth), uncalibrated(entry, pool, rng, emb.y).ece(
                entry.fit.default_temperature)
            seen.append((fit.samples, e_served, e_default))
            print(f"| {strategy} | {budget} | {seed} | {name} | {fit.samples} ({fit.fitting_set}) | {e_served:.3f} "
                  f"({fit.temperature:.2f}) | {e_default:.3f} ({entry.fit.default_temperature:.2f}) |", flush=True)
    print()
    print("| held-out | cells | served: mean / within 0.10 | default: mean / within 0.10 |")
    print("|---|---|---|---|")
    for lo, hi in GROUPS:
        got = np.array([(s, d) for n, s, d in seen if lo <= n <= hi]).reshape(-1, 2)
        if len(got):
            span = f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
            print(f"| {span} | {len(got)} | {got[:, 0].mean():.3f} / {(got[:, 0] <= .10).sum()} "
                  f"| {got[:, 1].mean():.3f} / {(got[:, 1] <= .10).sum()} |")


if __name__ == "__main__":
    main()
