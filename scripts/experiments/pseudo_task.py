"""Pseudo-task calibration: a label-free temperature for a prior method from the pool's own clusters (issue 15;
docs/benchmarks.md, "How many labels a temperature needs", "A temperature from a pseudo-task, a probe").

Per cell (strategy, budget, seed: the labelled sets ``bench strategies`` simulates, same seeds and generators)
and method:

- served: ``PriorLabels``' default fit (the audit fit when the pool has audit labels, else the labelled set's
  cross-fit), replicated from ``cal.temperature_fit`` so its held-out predictions are kept; its T (checked
  against ``temperature_fit`` in ``t_check``) and its ECE;
- T_best: the ECE-minimising T over the grid on the truth of every unlabelled row, and the real ECE curve
  over the whole grid, so any temperature can be scored offline;
- the held-out predictions of the served fit (same folds), for MAP refits centred on another temperature;
- per pseudo-task variant: KMeans clusters of the pool's embeddings (no labels; ``n_init=3``,
  ``random_state=0``) mapped to C pseudo-classes: k1 with K = C clusters, k3 and k10 with 3C and 10C
  clusters merged at random into C. The same picks get their pseudo-labels as seeds, the method runs
  uncalibrated on that pseudo-pool with the served call's generator, and T_pseudo is the ECE-minimising T
  (every other grid point) against the pseudo-labels of every unlabelled row.

Appends one JSON line per (cell, method) to ``--out``; ``pseudo_task_summary.py`` turns them into the tables
(offsets learnt on one data set, scored on another).

    nice -n 10 python scripts/experiments/pseudo_task.py runs/dig_x.npy runs/dig_y.npy --out cells40.jsonl --name digits
    nice -n 10 python scripts/experiments/pseudo_task.py runs/emb45e/pool_x.npy runs/emb45e/pool_y.npy \
        --budgets 100 --out cells100.jsonl --name cifar1

Results and reading: docs/benchmarks.md, "A temperature from a pseudo-task, a probe"; full tables in
docs/results/calibration-floor/pseudo-task-40.md and pseudo-task-100.md.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from typing import Any

import numpy as np
from cells import GRID, cell_parser, load, simulated_cells, uncalibrated_method  # type: ignore[import-not-found]  # same folder
from sklearn.cluster import KMeans

from agent.pool import Pool, state_rng
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from bench.metrics import expected_calibration_error as ece
from bench.strategies import row_ids

COARSE = GRID[::2]  # 121 temperatures, 6% steps: the grid of T_pseudo


def fast_curve(pool: Pool, rows: np.ndarray, raw: np.ndarray, truth: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """ECE of ``apply_calibration(pool, rows, raw, t)`` for each t in ``grid`` (the uncovered classes' mass
    computed once): len(grid) floats."""
    c = pool.num_classes
    covered = np.zeros(c, bool)
    covered[pool.labels] = True
    s = int(covered.sum())
    m = cal.unlabelled_class_mass(pool, rows) if s < c else None
    out = []
    for t in grid:
        q = cal.tempered(raw, covered, float(t))
        if m is not None:
            room = (c - s) * q.max(axis=1)
            mm = np.minimum(m, room / (1.0 + room) * (1.0 - 1e-6))
            q = q * (1.0 - mm)[:, None]
            q[:, ~covered] = (mm / (c - s))[:, None]
        out.append(ece(q.astype(np.float32), truth))
    return np.array(out)


def pseudo_maps(x: np.ndarray, c: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Variant name (k1, k3, k10) -> N pseudo-labels in [0, C): KMeans with C, 3C and 10C clusters, the
    latter two merged at random into C pseudo-classes."""
    out = {}
    for k, name in ((c, "k1"), (3 * c, "k3"), (10 * c, "k10")):
        lab = KMeans(k, n_init=3, random_state=seed).fit_predict(x)
        if k == c:
            out[name] = lab
        else:
            perm = np.random.default_rng(seed + k).permutation(k)
            out[name] = (perm[lab] % c).astype(np.int64)  # clusters merged at random into C pseudo-classes
    return out


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--out", required=True, help="JSON lines file, appended to")
    ap.add_argument("--name", required=True, help="data set name written in each line (cifar1, cifar2, digits)")
    a = ap.parse_args()
    emb = load(a)
    y, c = emb.y, emb.classes
    maps = pseudo_maps(emb.x, c)
    print({k: np.bincount(v, minlength=c).tolist() for k, v in maps.items()}, file=sys.stderr, flush=True)
    with open(a.out, "a") as fo:
        for strategy, budget, seed, picked, pool in simulated_cells(a, emb):
            rows = pool.candidates
            truth = y[rows]
            for name in a.methods.split(","):
                entry = PRIOR_METHODS[name]
                um = uncalibrated_method(entry)
                rng = state_rng(0, row_ids(picked))
                settings = entry.fit
                # the served fit, replicated from cal.temperature_fit so the held-out predictions are kept
                r2 = copy.deepcopy(rng)
                held = cal.audit_held_out(pool, um, {}, copy.deepcopy(r2))
                fset = "audit"
                if not held:
                    held = cal.held_out(pool, um, {}, r2)
                    fset = "labelled" if held else "default"
                t_served = cal.fit_temperature(held, settings.default_temperature, balance=fset == "labelled",
                                               top_label_from=settings.top_label_from)
                check = cal.temperature_fit(pool, um, {}, copy.deepcopy(rng), settings).temperature
                # the method's raw answer with the served call's draws (as cells.uncalibrated: a copy of rng)
                raw = np.asarray(entry.fn(pool, rows, copy.deepcopy(rng), {"calibrate": "false"}).probs,
                                 np.float64)
                curve = fast_curve(pool, rows, raw, truth, GRID)
                ib = int(np.argmin(curve))
                acc = float((raw.argmax(1) == truth).mean())
                rec: dict[str, Any] = dict(
                    data=a.name, strategy=strategy, budget=budget, seed=seed, method=name, acc=acc,
                    t_served=t_served, t_check=check, fset=fset, n_held=int(sum(len(h[1]) for h in held)),
                    ece_served=float(np.interp(np.log(t_served), np.log(GRID), curve)),
                    t_best=float(GRID[ib]), ece_best=float(curve[ib]), curve=curve.round(5).tolist(),
                    conf_raw=float(raw.max(1).mean()), default=settings.default_temperature,
                    top_from=settings.top_label_from, pseudo={})
                # held-out predictions for MAP refits (lists for JSON)
                rec["held"] = [[p.round(6).tolist(), lab.tolist(), cv.tolist()] for p, lab, cv in held]
                rec["balance"] = fset == "labelled"
                for vname, yp in maps.items():
                    ppool = replace(pool, labels=yp[pool.labeled])
                    praw = np.asarray(entry.fn(ppool, rows, copy.deepcopy(rng), {"calibrate": "false"}).probs,
                                      np.float64)
                    ptruth = yp[rows]
                    pc = fast_curve(ppool, rows, praw, ptruth, COARSE)
                    ip = int(np.argmin(pc))
                    rec["pseudo"][vname] = dict(t=float(COARSE[ip]), ece=float(pc[ip]),
                                                acc=float((praw.argmax(1) == ptruth).mean()),
                                                conf_raw=float(praw.max(1).mean()),
                                                covered=len(np.unique(yp[pool.labeled])))
                fo.write(json.dumps(rec) + "\n")
                fo.flush()
                print(a.name, strategy, budget, seed, name,
                      f"acc {acc:.3f} served {t_served:.3f}/{check:.3f} ece {rec['ece_served']:.3f} "
                      f"best {rec['t_best']:.2f} ({rec['ece_best']:.3f}) "
                      + " ".join(f"{k}:{v['t']:.2f}/{v['acc']:.2f}" for k, v in rec["pseudo"].items()), flush=True)


if __name__ == "__main__":
    main()
