"""The temperature as a decision: the MAP T against the T that minimises the posterior-expected ECE (issue 15;
docs/benchmarks.md, "llgc's temperature on the top-label likelihood").

llgc's ECE climbs far more steeply on the sharp side of its best T than on the flat side, so a fit that
lands symmetrically around it in log T (the MAP estimate) pays more for its sharp misses. A Bayes decision
under ECE loss takes that into account: over a grid of log T, the posterior of the calibration's own MAP
fit (``fit_temperature``'s likelihood and log-normal prior) from n labels drawn uniformly from the pool, and
for each candidate T and each hypothetical true T*, the ECE the served answer would have if the rows' top
classes were right with the probability tempered at T* (label-free: computed on REF pool rows' raw
probabilities, 15 bins as bench.metrics). The Bayes T minimises that ECE averaged over the posterior. Per
cell, over DRAWS draws of the n labels: the ECE over every unlabelled row at the MAP T and at the Bayes T
(mean / share within 0.05 / within 0.10), and the means per method.

    python scripts/experiments/bayes_temperature.py runs/emb45e/pool_x.npy runs/emb45e/pool_y.npy \\
        --strategies random,probcover,kmedoids --methods llgc,knn --ns 20,40 --draws 40
"""

from __future__ import annotations

import numpy as np
from cells import cell_parser, load, simulated_cells, uncalibrated  # type: ignore[import-not-found]  # same folder

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids

U = np.linspace(np.log(cal.T_RANGE[0]), np.log(cal.T_RANGE[1]), 161)  # log T grid
BINS = 15
REF = 2000


def tops(raw: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """GxR: each row's top probability at each grid temperature (its top class is the same at every T)."""
    return np.stack([cal.tempered(raw, covered, float(np.exp(u))).max(axis=1) for u in U])


def ece_matrix(top: np.ndarray) -> np.ndarray:
    """GxG: the ECE of serving grid T_i when each row's top class is right with probability top[j] (T_j true)."""
    g, r = top.shape
    out = np.empty((g, g))
    for i in range(g):
        b = np.minimum((top[i] * BINS).astype(int), BINS - 1)
        conf = np.bincount(b, top[i], minlength=BINS)
        truth = np.stack([np.bincount(b, top[j], minlength=BINS) for j in range(g)])  # GxBINS
        out[i] = np.abs(conf[None, :] - truth).sum(axis=1) / r
    return out


def posterior(probs: np.ndarray, labels: np.ndarray, covered: np.ndarray, default: float,
              top_label_from: int | None) -> np.ndarray:
    """G: the MAP fit's posterior over the grid (its likelihood, multiclass or top-label by the method's rule,
    and its log-normal prior)."""
    top_label = cal.top_label_likelihood(len(labels), top_label_from)
    lp = np.array([float(cal.log_likelihoods(cal.tempered(probs, covered, float(np.exp(u))), labels, top_label).sum())
                   - 0.5 * cal.PRIOR_WEIGHT * (u - np.log(default)) ** 2 for u in U])
    p = np.exp(lp - lp.max())
    return np.asarray(p / p.sum())


def main() -> None:
    ap = cell_parser(__doc__, strategies="random,probcover,kmedoids", methods="llgc,knn")
    ap.add_argument("--ns", default="20,40", help="uniform label counts the temperature is fitted on")
    ap.add_argument("--draws", type=int, default=40)
    a = ap.parse_args()
    emb = load(a)
    ns = [int(n) for n in a.ns.split(",")]
    print("| strategy | labels | seed | method | " + " | ".join(f"n = {n}: MAP | Bayes" for n in ns) + " |")
    print("|---|---|---|---|" + "---|---|" * len(ns))
    agg: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = emb.y[rows]
        covered = np.zeros(emb.classes, bool)
        covered[pool.labels] = True
        if not covered.all():  # step 2 (classes without a label) is not modelled here
            continue
        g = np.random.default_rng(seed)
        ref = g.choice(len(rows), min(REF, len(rows)), replace=False)
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            raw = uncalibrated(entry, pool, rng, emb.y).probs
            loss = ece_matrix(tops(raw[ref], covered))
            cells = []
            for n in ns:
                at_map: list[float] = []
                at_bayes: list[float] = []
                for _ in range(a.draws):
                    i = g.choice(len(rows), n, replace=False)
                    post = posterior(raw[i], truth[i], covered, entry.fit.default_temperature, entry.fit.top_label_from)
                    for u, out in ((U[int(np.argmax(post))], at_map), (U[int(np.argmin(loss @ post))], at_bayes)):
                        out.append(ece(cal.tempered(raw, covered, float(np.exp(u))), truth))
                m, b = np.array(at_map), np.array(at_bayes)
                agg.setdefault((name, n), []).append((m, b))
                cells += [f"{v.mean():.3f} / {(v <= .05).mean():.2f} / {(v <= .10).mean():.2f}" for v in (m, b)]
            print(f"| {strategy} | {budget} | {seed} | {name} | " + " | ".join(cells) + " |", flush=True)
    print()
    for (name, n), v in sorted(agg.items()):
        m, b = np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])
        print(f"{name}, n = {n}: MAP {m.mean():.3f} / {(m <= .05).mean():.2f} / {(m <= .10).mean():.2f}, "
              f"Bayes {b.mean():.3f} / {(b <= .05).mean():.2f} / {(b <= .10).mean():.2f}")


if __name__ == "__main__":
    main()
