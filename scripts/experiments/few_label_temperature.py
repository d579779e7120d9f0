"""Why the priors miss the ECE goal after 10 representative labels (docs/benchmarks.md, "The temperature
at 10 labels: served, best, and from class balance"). Per (strategy, seed, method), on the labelled set that
``bench strategies`` simulates (same seeds and generators):

- the temperature the calibration serves (``PriorLabels``' default path: fitting set, held-out count, T)
  and its ECE on the unlabelled rows;
- accuracy, mean confidence and step 2's mass m (``unlabelled_class_mass``) on the rows of the classes
  with a label and on the rest;
- the best single T (chosen on the truth, the same step 2) and its ECE;
- the T that makes the mean calibrated distribution over the labelled classes closest to uniform (KL), a
  label-free candidate: a calibrated prior's mean posterior equals the class prior (Saerens et al. 2002),
  which step 2 takes to be uniform.

    python scripts/experiments/few_label_temperature.py /tmp/ece/s61_x.npy /tmp/ece/s61_y.npy --budget 10 \
        --strategies random,kmedoids,typiclust,probcover,as3l --methods knn,llgc,as3l --seeds 2
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

from agent.pool import Priors, state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from bench.metrics import expected_calibration_error as ece
from bench.strategies import CachedKnn, hnsw_index, normalise, row_ids, simulated_pools

GRID = np.exp(np.linspace(np.log(0.03), np.log(30.0), 80))  # temperatures tried (log-spaced)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("x", type=Path, help="pool embeddings NxD (.npy)")
    ap.add_argument("y", type=Path, help="pool classes N (.npy)")
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--strategies", default="random,kmedoids,typiclust,probcover,as3l")
    ap.add_argument("--methods", default="knn,llgc,as3l")
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    x = normalise(np.load(a.x))
    y = np.asarray(np.load(a.y), np.int64)
    c = int(y.max()) + 1
    knn = CachedKnn(x, hnsw_index(x))
    for strategy, _, seed, picked, pool in simulated_pools(x, y, knn, c, a.strategies.split(","), [a.budget], a.seeds):
        rows = pool.candidates
        truth = y[rows]
        covered = np.zeros(c, bool)
        covered[pool.labels] = True
        inside = covered[truth]  # rows of a class with a label
        m = cal.unlabelled_class_mass(pool, rows)
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            served = entry.fn(pool, rows, copy.deepcopy(rng), {})
            raw = entry.fn(pool, rows, copy.deepcopy(rng), {"calibrate": "false"}).probs
            eces, kls = [], []
            for t in GRID:
                q = cal.apply_calibration(pool, rows, Priors(probs=raw, confidence=raw.max(axis=1)), t).probs
                eces.append(ece(q, truth))
                mean_q = cal.tempered(raw, covered, t)[:, covered].mean(axis=0)  # S
                kls.append(float(np.mean(np.log(1.0 / covered.sum() / mean_q))))
            best, bal = int(np.argmin(eces)), int(np.argmin(kls))
            ok = served.probs.argmax(axis=1) == truth
            conf = served.confidence
            fit = served.calibration
            assert fit is not None  # the registry's methods are calibrated
            out = "" if inside.all() else f"conf {conf[~inside].mean():.2f} m {m[~inside].mean():.2f}"
            print(f"{strategy:9s} seed {seed} {name:4s} S={covered.sum()} served: {fit.fitting_set} "
                  f"({fit.samples} held out) T {fit.temperature:.2f} ECE {ece(served.probs, truth):.3f} "
                  f"(conf {conf.mean():.2f}, acc {ok.mean():.2f}) | labelled classes' rows {inside.mean():.2f}: "
                  f"acc {ok[inside].mean():.2f} conf {conf[inside].mean():.2f} m {m[inside].mean():.2f} | "
                  f"others: {out or '-'} | best T {GRID[best]:.2f} ECE {eces[best]:.3f} | "
                  f"balance T {GRID[bal]:.2f} ECE {eces[bal]:.3f}", flush=True)


if __name__ == "__main__":
    main()
