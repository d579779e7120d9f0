"""Accepted priors in the temperature fit (docs/strategies.md, "Accepted priors and the calibration").

Per method and seed: 4 overlapping blobs of 150 rows in 8-d, 40 labels drawn at random, then the N
unlabelled rows the method is most confident of labelled with its own top class (what "accept all" on a
page of Review priors sorted by confidence does). Three temperatures for the same served prior (seeded
by all 40 + N labels): fitted on the 40 alone ("left out": the accepted priors neither held out nor seeds
in the folds, what the calibration does), on all 40 + N as ordinary labels ("held out": before), and on
the 40 held out with the N as seeds in every fold ("seeds"). Printed: the mean over seeds of
|mean confidence - accuracy| over the rows still unlabelled, judged against the true classes.

    python scripts/experiments/accepted_priors.py --accepted 150 --seeds 8
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from agent.pool import Pool, PriorMethod
from agent.priors import PRIOR_METHODS
from agent.priors.as3l import as3l_prior
from agent.priors.calibration import apply_calibration, fit_temperature, held_out
from agent.priors.knn import knn_prior
from agent.priors.llgc import llgc_prior
from tests.agent.strategies.pools import blobs, make_pool

UNWRAPPED: dict[str, PriorMethod] = {"as3l": as3l_prior, "knn": knn_prior, "llgc": llgc_prior}


def seeds_kept_temperature(pool: Pool, method: PriorMethod, default: float, top_label_from: int | None) -> float:
    """T from the cross-fit that holds out only the labels not in ``pool.accepted``, the accepted ones
    staying seeds in every fold (``held_out``'s ``among``), class-balanced as the labelled-set fit is."""
    among = ~np.isin(pool.labeled, pool.accepted)
    held = held_out(replace(pool, accepted=np.zeros(0, np.int64)), method, {}, np.random.default_rng(0), among)
    return fit_temperature(held, default, balance=True, top_label_from=top_label_from)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accepted", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    for name, entry in sorted(PRIOR_METHODS.items()):
        gaps = []
        for seed in range(args.seeds):
            x, y = blobs(clusters=4, per_cluster=150, dim=8, spread=0.45, seed=seed)
            lab = np.sort(np.random.default_rng(seed).choice(len(x), 40, replace=False))
            base = make_pool(x, y, lab)
            raw = entry(base, base.candidates, np.random.default_rng(0), {"calibrate": "false"})
            top = np.argsort(-raw.confidence, kind="stable")[:args.accepted]
            accepted = base.candidates[top]
            y2 = y.copy()
            y2[accepted] = raw.probs[top].argmax(axis=1)
            grown = replace(make_pool(x, y2, np.sort(np.r_[lab, accepted])), accepted=np.sort(accepted))
            rows = grown.candidates
            served = entry(grown, rows, np.random.default_rng(0), {"calibrate": "false"})
            t_left = entry(grown, rows[:1], np.random.default_rng(0), {}).calibration
            t_held = entry(replace(grown, accepted=np.zeros(0, np.int64)), rows[:1], np.random.default_rng(0),
                           {}).calibration
            assert t_left is not None and t_held is not None
            t_seeds = seeds_kept_temperature(grown, UNWRAPPED[name], entry.fit.default_temperature,
                                             entry.fit.top_label_from)
            row = []
            for t in (t_left.temperature, t_held.temperature, t_seeds):
                pr = apply_calibration(grown, rows, served, t)
                row.append(abs(float(pr.confidence.mean() - (pr.probs.argmax(axis=1) == y[rows]).mean())))
            gaps.append(row)
        g = np.mean(gaps, axis=0)
        print(f"{name}: |conf - acc| left out {g[0]:.3f}  held out {g[1]:.3f}  seeds {g[2]:.3f}")


if __name__ == "__main__":
    main()
