"""Random picks are uniform draws: should the temperature be fitted on them as on audit labels (issue 15;
docs/benchmarks.md, "Random picks as audit labels")?

A labelled set often starts with a random batch (uncertainty sampling's warm start, a team's first look)
and grows with a strategy's picks. The cross-fit over the whole labelled set (what PriorLabels serves
without audit labels) holds out the chosen picks too, which need not speak for the pool; the audit fit
holds out only uniform draws (agent/priors/calibration.py, ``audit_held_out``). Per (strategy, budget, seed,
method): the labelled set is a random first half (``state_rng(seed, [])``, as ``bench strategies``' warm
start) and the strategy's picks for the rest (the whole budget for ``random``); the served ECE with the
pool's audit draws empty (today's labelled-set fit) and with the random half as audit draws (the audit fit
once AUDIT_MIN_LABELS of them count), against the best single temperature's; and a test-then-pool rule
between the two: keep the labelled fit's T unless the audit fit's held-out predictions reject it (likelihood
ratio 2 (NLL(T_labelled) - NLL(T_audit)) above ``--chi2``, chi-square with 1 degree of freedom, 3.84 = 5%).

    python scripts/experiments/uniform_picks.py runs/dig_x.npy runs/dig_y.npy
"""

from __future__ import annotations

import copy

import numpy as np
from cells import GRID, cell_parser, load, uncalibrated, uncalibrated_method  # type: ignore[import-not-found]  # same folder

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from agent.strategies import STRATEGIES
from bench.metrics import expected_calibration_error as ece
from bench.strategies import make_pool, row_ids


def main() -> None:
    ap = cell_parser(__doc__, budgets="40,80", strategies="random,typiclust,coreset,kmedoids,probcover,as3l,margin",
                     seeds=3)
    ap.add_argument("--balance-audit", action="store_true",
                    help="weight the audit fit's held-out samples by class balance too (as the labelled fit's)")
    ap.add_argument("--chi2", type=float, default=3.84, help="the likelihood-ratio threshold of the tested rule")
    a = ap.parse_args()
    if a.balance_audit:
        fit = cal.fit_temperature
        cal.fit_temperature = lambda held, default, balance=False, **kw: fit(held, default, balance=True, **kw)
    emb = load(a)
    x, y, c, knn = emb.x, emb.y, emb.classes, emb.knn
    print("| strategy | labels (random) | seed | method | accuracy | labelled fit: ECE (T, held-out) "
          "| random half as audit: ECE (T, fitted on) | tested: ECE (LR) | best ECE (T) |")
    print("|---|---|---|---|---|---|---|---|---|")
    seen: dict[str, list[tuple[float, float, float]]] = {}
    for strategy in a.strategies.split(","):
        for budget in (int(b) for b in a.budgets.split(",")):
            for seed in range(a.seeds):
                half = budget if strategy == "random" else budget // 2
                cold = make_pool(x, y, np.zeros(0, np.int64), knn, c, None)
                first = STRATEGIES["random"](cold, half, state_rng(seed, []), {}).rows
                picked = first
                if half < budget:
                    warm = make_pool(x, y, first, knn, c, None)
                    more = STRATEGIES[strategy](warm, budget - half, state_rng(seed, row_ids(first)), {}).rows
                    picked = np.concatenate([first, more])
                pool = make_pool(x, y, picked, knn, c, None)
                drawn = make_pool(x, y, picked, knn, c, None, drawn=first)
                rows = pool.candidates
                truth = y[rows]
                for name in a.methods.split(","):
                    entry = PRIOR_METHODS[name]
                    rng = state_rng(0, row_ids(picked))
                    old = entry.fn(pool, rows, copy.deepcopy(rng), {})
                    new = entry.fn(drawn, rows, copy.deepcopy(rng), {})
                    raw = uncalibrated(entry, pool, rng, y)
                    best_t, best_e = raw.best(GRID[::4])
                    e_old, e_new = ece(old.probs, truth), ece(new.probs, truth)
                    fo, fn_ = old.calibration, new.calibration
                    assert fo is not None and fn_ is not None
                    lr = 0.0
                    if fn_.fitting_set == "audit":  # the audit fit's held-out predictions, as it made them
                        held = cal.audit_held_out(drawn, uncalibrated_method(entry), {}, copy.deepcopy(rng))
                        top = cal.top_label_likelihood(sum(len(h[1]) for h in held), entry.fit.top_label_from)
                        lr = 2 * (nll(held, fo.temperature, top) - nll(held, fn_.temperature, top))
                    e_test = e_new if lr > a.chi2 else e_old
                    seen.setdefault(strategy, []).append((e_old, e_new, e_test))
                    acc = float((old.probs.argmax(axis=1) == truth).mean())
                    print(f"| {strategy} | {budget} ({half}) | {seed} | {name} | {acc:.3f} | {e_old:.3f} "
                          f"({fo.temperature:.2f}, {fo.samples}) | {e_new:.3f} ({fn_.temperature:.2f}, "
                          f"{fn_.fitting_set} {fn_.samples}) | {e_test:.3f} ({lr:.1f}) | {best_e:.3f} ({best_t:.2f}) |",
                          flush=True)
    print()
    print("| strategy | cells | labelled fit: mean / <= .05 / <= .10 "
          "| random half as audit: the same | tested: the same |")
    print("|---|---|---|---|---|")
    for strategy, got in seen.items():
        g = np.array(got)
        print(f"| {strategy} | {len(g)} | " + " | ".join(
            f"{g[:, i].mean():.3f} / {(g[:, i] <= .05).sum()} / {(g[:, i] <= .10).sum()}" for i in range(3)) + " |")


def nll(held: list[tuple[np.ndarray, np.ndarray, np.ndarray]], t: float, top: bool) -> float:
    """The held-out predictions' negative log-likelihood at temperature ``t`` (unweighted, as the audit fit's)."""
    return -sum(float(cal.log_likelihoods(cal.tempered(p, c, t), lab, top).sum()) for p, lab, c in held)


if __name__ == "__main__":
    main()
