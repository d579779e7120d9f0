"""How many labels a fitted temperature needs before the prior's ECE can meet a goal (issue 15; docs/benchmarks.md,
"How many labels a temperature needs"). Per (strategy, budget, seed, method), on the labelled set that
``bench strategies`` simulates (same seeds and generators):

- served: the ECE of ``PriorLabels``' default answer (the temperature cross-fitted on the labelled set, or
  on audit labels when the pool has them; here it has none);
- best: the ECE at the best single temperature, chosen on the truth of every unlabelled row (the floor of
  temperature scaling itself on this prior);
- fitted on n uniform labels: n unlabelled rows drawn uniformly (as Select strategy ``audit`` draws), the
  temperature fitted on their outcomes with the calibration's own MAP fit (``fit_temperature``; multiclass
  likelihood below the method's switch, ``FitSettings.top_label_from`` or TOP_LABEL_MIN_HELD_OUT samples,
  top-label from it on; ``--likelihood`` forces one, the served fit's too), then the ECE over every unlabelled
  row at that temperature; ``--draws`` draws per n, reported as the mean and the share within the goals.

The n-label fit scores the prior as it is, before those n labels would join its seeds, so it is the
noise of the estimate alone, without the selection bias of a strategy's picks and without the gain in
accuracy that n more labels would bring: a floor for any fit on n labels, not a forecast of one. Why it
matters: the fit is, at heart, an estimate of the prior's accuracy from n outcomes, whose standard error
is sqrt(p (1 - p) / n) (0.077 at p = 0.4 and n = 40, above the 0.05 goal).

    nice -n 19 python scripts/experiments/calibration_floor.py runs/dig_x.npy runs/dig_y.npy \
        --strategies random,typiclust --budgets 40 --methods knn,llgc,as3l --seeds 2 --ns 20,40,100,200
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
from cells import GRID, cell_parser, load, simulated_cells, uncalibrated, uncalibrated_method  # type: ignore[import-not-found]  # same folder

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--ns", default="20,40,100,200", help="uniform label counts the temperature is fitted on")
    ap.add_argument("--draws", type=int, default=200, help="draws of the n labels per cell")
    ap.add_argument("--likelihood", choices=("auto", "multiclass", "top"), default="auto",
                    help="the fit's likelihood: the calibration's rule (each method's switch to top-label), "
                         "or one of the two at every n, the served fit's included")
    ap.add_argument("--prior-weight", type=float, default=cal.PRIOR_WEIGHT,
                    help="the MAP prior's weight on log T (samples; 0: maximum likelihood)")
    a = ap.parse_args()
    cal.PRIOR_WEIGHT = a.prior_weight  # read by fit_temperature at each call, the served fit's included
    forced = {"auto": None, "top": 0, "multiclass": 10**9}[a.likelihood]  # the held-out count top-label starts at
    emb = load(a)
    y, c = emb.y, emb.classes
    ns = [int(n) for n in a.ns.split(",")]
    print("| strategy | labels | seed | method | accuracy | served ECE (T) | best ECE (T) | "
          + " | ".join(f"n = {n}: mean ECE / <= .05 / <= .10" for n in ns) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(ns))
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = y[rows]
        covered = np.zeros(c, bool)
        covered[pool.labels] = True
        eligible = np.flatnonzero(covered[truth])  # a row of a class with no label cannot be held out
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            # the served answer's fit (as the calibrated wrapper makes it), with the likelihood asked for
            settings = entry.fit if forced is None else replace(entry.fit, top_label_from=forced)
            fit = cal.temperature_fit(pool, uncalibrated_method(entry), {}, copy.deepcopy(rng), settings)
            raw = uncalibrated(entry, pool, rng, y)
            served = raw.at(fit.temperature)
            # ECE over every unlabelled row per grid temperature; a fitted T reads it off by
            # interpolation in log T (the grid's step is 3%, ECE is smooth in T)
            curve = np.array([raw.ece(float(t)) for t in GRID])
            best = int(np.argmin(curve))
            acc = float((served.argmax(axis=1) == truth).mean())
            cells = []
            draw_rng = np.random.default_rng(seed)
            for n in ns:
                got = []
                for _ in range(a.draws):
                    idx = draw_rng.choice(eligible, min(n, len(eligible)), replace=False)
                    t = cal.fit_temperature([(raw.probs[idx], truth[idx], covered)], settings.default_temperature,
                                            top_label_from=settings.top_label_from)
                    got.append(float(np.interp(np.log(t), np.log(GRID), curve)))
                g = np.array(got)
                cells.append(f"{g.mean():.3f} / {(g <= 0.05).mean():.2f} / {(g <= 0.10).mean():.2f}")
            print(f"| {strategy} | {budget} | {seed} | {name} | {acc:.3f} | "
                  f"{ece(served, truth):.3f} ({fit.temperature:.2f}, {fit.fitting_set} {fit.samples}) | "
                  f"{curve[best]:.3f} ({GRID[best]:.2f}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
