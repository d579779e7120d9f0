"""The linear probe with and without its scale (bench.metrics.linear_probe_accuracy), beside 1-NN, on saved
embeddings (a `bench embeddings` / `bench cifar10` embeddings folder: pool_x.npy, pool_y.npy, test_x.npy,
test_y.npy): the mean test accuracy over 20 random labelled sets of each size drawn from the pool.

    PYTHONPATH=. python scripts/experiments/probe_scale.py EMB_DIR [EMB_DIR ...] [--sizes 10,40] [--draws 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from bench.metrics import linear_probe_accuracy


def unscaled(tx: np.ndarray, ty: np.ndarray, vx: np.ndarray, vy: np.ndarray, seed: int) -> float:
    """The probe before it was scaled: the same logistic regression on the raw rows."""
    return float(np.mean(LogisticRegression(C=100.0, max_iter=1000, random_state=seed).fit(tx, ty).predict(vx) == vy))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--sizes", default="10,40")
    ap.add_argument("--draws", type=int, default=20)
    args = ap.parse_args()
    print("| embeddings | mean cosine to the mean | labels | probe unscaled (%) | probe scaled (%) | 1-NN (%) |")
    print("|---|---|---|---|---|---|")
    for d in args.folders:
        px, py, vx, vy = (np.load(d / f"{n}.npy") for n in ("pool_x", "pool_y", "test_x", "test_y"))
        mean = px.mean(axis=0)
        cos = float(np.mean(px @ mean / np.linalg.norm(mean) / np.linalg.norm(px, axis=1)))
        for n in map(int, args.sizes.split(",")):
            got: dict[str, list[float]] = {"raw": [], "scaled": [], "1nn": []}
            for seed in range(args.draws):
                idx = np.random.default_rng(seed).choice(len(px), n, replace=False)
                if len(set(py[idx].tolist())) < 2:
                    continue
                got["raw"].append(unscaled(px[idx], py[idx], vx, vy, seed))
                got["scaled"].append(linear_probe_accuracy(px[idx], py[idx], vx, vy, seed))
                got["1nn"].append(float(np.mean(KNeighborsClassifier(1).fit(px[idx], py[idx]).predict(vx) == vy)))
            print(f"| {d} | {cos:.3f} | {n} | " + " | ".join(f"{100 * np.mean(v):.1f}" for v in got.values()) + " |")


if __name__ == "__main__":
    main()
