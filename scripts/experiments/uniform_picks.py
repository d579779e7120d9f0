"""Random picks are uniform draws: should the temperature be fitted on them as on audit labels (issue 15;
docs/benchmarks.md, "Random picks as audit labels")?

A labelled set often starts with a random batch (uncertainty sampling's warm start, a team's first look)
and grows with a strategy's picks. The cross-fit over the whole labelled set (what PriorLabels serves
without audit labels) holds out the chosen picks too, which need not speak for the pool; the audit fit
holds out only uniform draws (agent/priors/calibration.py, ``audit_held_out``). Per (strategy, budget, seed,
method): the labelled set is a random first half (``state_rng(seed, [])``, as ``bench strategies``' warm
start) and the strategy's picks for the rest (the whole budget for ``random``); the served ECE with the
pool's audit draws empty (today's labelled-set fit) and with the random half as audit draws (the audit fit
once AUDIT_MIN_LABELS of them count), against the best single temperature's.

    python scripts/experiments/uniform_picks.py runs/dig_x.npy runs/dig_y.npy
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
from cells import GRID, cell_parser, load, uncalibrated  # type: ignore[import-not-found]  # same folder

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES
from bench.metrics import expected_calibration_error as ece
from bench.strategies import make_pool, row_ids


def main() -> None:
    ap = cell_parser(__doc__, budgets="40,80", strategies="random,typiclust,coreset,kmedoids,probcover,as3l,margin",
                     seeds=3)
    a = ap.parse_args()
    emb = load(a)
    x, y, c, knn = emb.x, emb.y, emb.classes, emb.knn
    print("| strategy | labels (random) | seed | method | accuracy | labelled fit: ECE (T, held-out) "
          "| random half as audit: ECE (T, fitted on) | best ECE (T) |")
    print("|---|---|---|---|---|---|---|---|")
    seen: dict[str, list[tuple[float, float]]] = {}
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
                drawn = replace(pool, audit=np.sort(first))
                rows = pool.candidates
                truth = y[rows]
                for name in a.methods.split(","):
                    entry = PRIOR_METHODS[name]
                    rng = state_rng(0, row_ids(picked))
                    old = entry.fn(pool, rows, copy.deepcopy(rng), {})
                    new = entry.fn(drawn, rows, copy.deepcopy(rng), {})
                    best_t, best_e = uncalibrated(entry, pool, rng, y).best(GRID[::4])
                    e_old, e_new = ece(old.probs, truth), ece(new.probs, truth)
                    fo, fn_ = old.calibration, new.calibration
                    assert fo is not None and fn_ is not None
                    seen.setdefault(strategy, []).append((e_old, e_new))
                    acc = float((old.probs.argmax(axis=1) == truth).mean())
                    print(f"| {strategy} | {budget} ({half}) | {seed} | {name} | {acc:.3f} | {e_old:.3f} "
                          f"({fo.temperature:.2f}, {fo.samples}) | {e_new:.3f} ({fn_.temperature:.2f}, "
                          f"{fn_.fitting_set} {fn_.samples}) | {best_e:.3f} ({best_t:.2f}) |", flush=True)
    print()
    print("| strategy | cells | labelled fit: mean / <= .05 / <= .10 | random half as audit: mean / <= .05 / <= .10 |")
    print("|---|---|---|---|")
    for strategy, got in seen.items():
        g = np.array(got)
        print(f"| {strategy} | {len(g)} | {g[:, 0].mean():.3f} / {(g[:, 0] <= .05).sum()} / {(g[:, 0] <= .10).sum()} "
              f"| {g[:, 1].mean():.3f} / {(g[:, 1] <= .05).sum()} / {(g[:, 1] <= .10).sum()} |")


if __name__ == "__main__":
    main()
