"""How much one draw of audit labels decides the audit-fitted temperature (issue 15; docs/benchmarks.md, "The
served fit after each label-free strategy").

Per seed, the strategy's picks as ``bench strategies`` simulates them, then DRAWS independent draws of A audit
labels (Select strategy ``audit``, uniform over the unlabelled rest), each labelled beside the picks. Per
draw: the served temperature (fitted on the audit labels, ``audit_held_out``) and its ECE over every
unlabelled row; the best single T (chosen on the truth) and its ECE; the T that the same audit fold runs ask
for on REF uniform unlabelled rows (multiclass maximum likelihood: the fit's answer without the audit's
sampling noise); the held-out audit labels' accuracy against those rows' and the served prior's.

    python scripts/experiments/audit_draws.py runs/emb45e/pool_x.npy runs/emb45e/pool_y.npy --strategy probcover
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
from cells import GRID, folds_with_reference, uncalibrated  # type: ignore[import-not-found]  # same folder
from temperature_bias import mle  # type: ignore[import-not-found]

from agent.pool import state_rng
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES
from bench.metrics import expected_calibration_error as ece
from bench.strategies import CachedKnn, SimPool, Variant, hnsw_index, make_pool, normalise, row_ids, simulate

REF = 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("x", type=Path)
    ap.add_argument("y", type=Path)
    ap.add_argument("--strategy", default="probcover")
    ap.add_argument("--method", default="llgc")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--audit", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--draws", type=int, default=4)
    a = ap.parse_args()
    x = normalise(np.load(a.x))
    y = np.asarray(np.load(a.y), np.int64)
    c = int(y.max()) + 1
    knn = CachedKnn(x, hnsw_index(x))
    entry = PRIOR_METHODS[a.method]
    print("| seed | draw | served T (ECE) | best T (ECE) | fold rows' T (ECE) | accuracy: held-out audit / fold rows "
          "/ served |")
    print("|---|---|---|---|---|---|")
    for seed in range(a.seeds):
        picked, _, _, _ = simulate(Variant(a.strategy, {}), a.budget, seed, SimPool(x, y, knn, c))
        before = make_pool(x, y, picked, knn, c, None)
        for d in range(a.draws):
            # draw 0 is audit_calibration.py's draw for this seed
            drawn = np.sort(STRATEGIES["audit"](before, a.audit, state_rng(seed + 100 * d, row_ids(picked)), {}).rows)
            labelled = np.concatenate([picked, drawn])
            pool = replace(make_pool(x, y, labelled, knn, c, None), audit=drawn)
            rows = pool.candidates
            truth = y[rows]
            rng = state_rng(0, row_ids(labelled))
            served = entry.fn(pool, rows, copy.deepcopy(rng), {})
            raw = uncalibrated(entry, pool, rng, y)

            def at(t: float) -> str:
                return f"{t:.2f} ({raw.ece(t):.3f})"  # noqa: B023

            ref = np.sort(np.random.default_rng(d).choice(rows, min(REF, len(rows)), replace=False))
            folds = folds_with_reference(pool, a.method, copy.deepcopy(rng), ref, audit=True)
            ref_probs = np.concatenate([f["ref_probs"] for f in folds])
            ref_truth = np.concatenate([y[ref]] * len(folds))
            held_probs = np.concatenate([f["probs"] for f in folds])
            held_truth = np.concatenate([f["labels"] for f in folds])
            assert served.calibration is not None
            best, _ = raw.best(GRID[::2])
            fold_rows = mle(ref_probs, ref_truth, np.ones(c, bool), False)
            accs = [(p.argmax(1) == t).mean() for p, t in ((held_probs, held_truth), (ref_probs, ref_truth),
                                                           (served.probs, truth))]
            print(f"| {seed} | {d} | {served.calibration.temperature:.2f} ({ece(served.probs, truth):.3f}) "
                  f"| {at(best)} | {at(fold_rows)} | {' / '.join(f'{v:.2f}' for v in accs)} |", flush=True)


if __name__ == "__main__":
    main()
