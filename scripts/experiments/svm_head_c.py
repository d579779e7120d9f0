"""The SVM head's C on frozen SimSiam features (docs/benchmarks.md, the simsiam_al cpu run).

For 50/100/500/1000 random labels (2 draws) of a 5,000-image CIFAR-10 pool, test accuracy on 2,000 test
images of scikit-learn's LinearSVC on standardised frozen features at C = 1e-4 .. 1, the C that
training.finetune.svm_c_by_cv picks, and a logistic regression on the raw features, on the encoder of a
`bench recipe simsiam_al` run (RUN/pretrain).

    python scripts/experiments/svm_head_c.py RUN_DIR [DATA]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from training.augment import plain
from training.data import load
from training.finetune import SVM_C_GRID, svm_c_by_cv
from training.pretrain import load_encoder, preprocess_by_name


def main(run: Path, data: str) -> None:
    torch.set_num_threads(2)
    enc, _ = load_encoder(run)
    cfg = json.loads((run / "config.json").read_text())
    pre = preprocess_by_name(str(cfg.get("preprocess", "cifar10")))
    train, test = load(data, "train", pre.size), load(data, "test", pre.size)
    g = np.random.default_rng(123)  # a class-mixed pool and test set (the folders are stored class by class)
    pool = g.choice(len(train.labels), 5000, replace=False)
    held = g.choice(len(test.labels), 2000, replace=False)

    @torch.no_grad()
    def features(images: torch.Tensor) -> np.ndarray:  # Nx3xHxW uint8 -> NxD
        enc.eval()
        return torch.cat([enc(plain(images[i:i + 512], pre)).float() for i in range(0, len(images), 512)]).numpy()

    t = time.perf_counter()
    x, xt = features(train.images[pool]), features(test.images[held])
    y, yt = train.labels.numpy()[pool], test.labels.numpy()[held]
    print(f"features {x.shape} in {time.perf_counter() - t:.0f} s")
    for n in (50, 100, 500, 1000):
        for seed in (0, 1):
            rows = np.random.default_rng(seed).choice(len(x), n, replace=False)
            mu, sd = x[rows].mean(0), x[rows].std(0) + 1e-6
            z, zt = (x[rows] - mu) / sd, (xt - mu) / sd
            svm = {c: float((LinearSVC(C=c, max_iter=5000, random_state=0).fit(z, y[rows]).predict(zt) == yt).mean())
                   for c in SVM_C_GRID}
            chosen = svm_c_by_cv(z, y[rows], seed)
            logreg = float((LogisticRegression(max_iter=2000).fit(x[rows], y[rows]).predict(xt) == yt).mean())
            cells = " ".join(f"C={c:g}:{a:.3f}" for c, a in svm.items())
            print(f"{n:5d} labels, draw {seed}: svm {cells} | cv picks C={chosen:g} | logreg {logreg:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) / "pretrain", sys.argv[2] if len(sys.argv) > 2 else "../shared/datasets/cifar10")
