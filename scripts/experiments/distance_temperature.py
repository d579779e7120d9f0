"""A temperature that depends on each row's distance to the nearest labelled sample (issue 15; the "next
thing to try" of docs/benchmarks.md, "How many labels a temperature needs").

Why: llgc's probabilities flatten with a row's distance to the seeds faster than its accuracy falls, so
held-out picks far from the other seeds (coreset's) teach one temperature that is too sharp for the pool's
nearer rows. Temperature scaling with a per-row temperature (Guo et al. 2017, Sec. 4.2, with T a function
of one label-free feature, as in Platt-style scaling on an extra input) lets the fit describe that slope:

    log T_i = a + b * (d_i - mu) / sd

d_i the cosine distance from row i to its nearest seed (in a fold run: the fold's seeds), mu and sd those
of the pool rows in the served run. MAP: the calibration's weighted held-out multiclass log-likelihood, a's
log-normal prior of ``cal.PRIOR_WEIGHT`` samples around the method's default, and b ~ Normal(0, B_SD^2).

Per cell (the simulated labelled sets of ``bench strategies``): the served ECE (PriorLabels' default), the
constant T refitted on the same folds, the distance T fitted on them, and two oracles fitted on the truth of
every unlabelled row: the constant T and (a, b) maximising the pool's likelihood, so one can read whether a
distance term could help at all and whether the held-out picks find it.

    python scripts/experiments/distance_temperature.py runs/emb45e/pool_x.npy runs/emb45e/pool_y.npy --budgets 40,100

Results and reading: docs/benchmarks.md, "A temperature that grows with the distance to the seeds".
"""

from __future__ import annotations

import copy

import numpy as np
from cells import cell_parser, folds_with_reference, load, simulated_cells, uncalibrated  # type: ignore[import-not-found]  # same folder
from scipy.optimize import minimize

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from agent.priors._common import nearest_labelled_distance
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids

B_SD = 0.5


def tempered_rows(probs: np.ndarray, covered: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``cal.tempered`` with one temperature per row (R floats): RxC."""
    z = np.log(np.asarray(probs, np.float64) + cal.EPS) / t[:, None]
    z = np.where(covered[None, :], z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return np.asarray(q / q.sum(axis=1, keepdims=True))


def fit_ab(probs: np.ndarray, labels: np.ndarray, covered: np.ndarray, z: np.ndarray, weights: np.ndarray,
           default: float, slope: bool, prior: bool = True) -> tuple[float, float]:
    """(a, b) maximising the weighted multiclass log-likelihood (+ priors when ``prior``); b = 0 unless
    ``slope``. ``covered`` may be one C vector or RxC (per fold)."""
    cov = np.broadcast_to(covered, probs.shape) if covered.ndim == 1 else covered
    logp = np.log(np.asarray(probs, np.float64) + cal.EPS)
    u0 = np.log(default)

    def loss(p: np.ndarray) -> float:
        t = np.exp(np.clip(p[0] + (p[1] if slope else 0.0) * z, np.log(cal.T_RANGE[0]), np.log(cal.T_RANGE[1])))
        s = np.where(cov, logp / t[:, None], -np.inf)
        s -= s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        ll = s[np.arange(len(labels)), labels] - lse
        out = -float(weights @ ll)
        if prior:
            out += 0.5 * cal.PRIOR_WEIGHT * (p[0] - u0) ** 2 + (0.5 * p[1] ** 2 / B_SD ** 2 if slope else 0.0)
        return out

    res = minimize(loss, np.array([u0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6})
    return float(res.x[0]), float(res.x[1]) if slope else 0.0


def pool_ece(raw: np.ndarray, covered: np.ndarray, z: np.ndarray, truth: np.ndarray, ab: tuple[float, float]) -> float:
    """ECE over the unlabelled rows (raw RxC probs, z R distances z-scored) at log T = a + b z."""
    t = np.exp(np.clip(ab[0] + ab[1] * z, np.log(cal.T_RANGE[0]), np.log(cal.T_RANGE[1])))
    return ece(tempered_rows(raw, covered, t), truth)


def main() -> None:
    ap = cell_parser(__doc__)
    a = ap.parse_args()
    emb = load(a)
    y, c = emb.y, emb.classes
    print("| strategy | labels | seed | method | accuracy | served | const refit | distance fit (b) "
          "| oracle const | oracle distance (b) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
        rows = pool.candidates
        truth = y[rows]
        covered = np.zeros(c, bool)
        covered[pool.labels] = True
        d_pool = nearest_labelled_distance(pool, rows).astype(np.float64)
        mu, sd = d_pool.mean(), d_pool.std() + 1e-9
        z_pool = (d_pool - mu) / sd
        ref = np.sort(np.random.default_rng(seed).choice(rows, min(200, len(rows)), replace=False))
        for name in a.methods.split(","):
            entry = PRIOR_METHODS[name]
            rng = state_rng(0, row_ids(picked))
            served = entry.fn(pool, rows, copy.deepcopy(rng), {})
            raw = uncalibrated(entry, pool, rng, y).probs
            folds = folds_with_reference(pool, name, copy.deepcopy(rng), ref)
            acc = float((served.probs.argmax(axis=1) == truth).mean())
            head = f"| {strategy} | {budget} | {seed} | {name} | {acc:.3f} | {ece(served.probs, truth):.3f} |"
            if not folds or not covered.all():
                print(head + " - | - | - | - |", flush=True)
                continue
            probs = np.concatenate([f["probs"] for f in folds])
            labels = np.concatenate([f["labels"] for f in folds])
            cov = np.concatenate([np.broadcast_to(f["covered"], f["probs"].shape) for f in folds])
            z_held = (np.concatenate([f["dist"] for f in folds]) - mu) / sd
            w = cal.class_balanced_weights(labels)
            default = entry.fit.default_temperature

            const = fit_ab(probs, labels, cov, z_held, w, default, slope=False)
            dist = fit_ab(probs, labels, cov, z_held, w, default, slope=True)
            ones = np.ones(len(rows))
            o_const = fit_ab(raw, truth, covered, z_pool, ones, default, slope=False, prior=False)
            o_dist = fit_ab(raw, truth, covered, z_pool, ones, default, slope=True, prior=False)
            e = [pool_ece(raw, covered, z_pool, truth, ab) for ab in (const, dist, o_const, o_dist)]
            print(head + f" {e[0]:.3f} | {e[1]:.3f} ({dist[1]:+.2f}) | {e[2]:.3f} | {e[3]:.3f} ({o_dist[1]:+.2f}) |",
                  flush=True)


if __name__ == "__main__":
    main()
