"""kNN accuracy of a run's encoder when its input images are resized to other sides.

    python scripts/experiments/eval_resolution.py RUN_DIR 16 24 32

Checks whether an encoder trained on small views (the CPU default, 16 px) should also be evaluated at
that size: k=200, bank 10,000 training images, 2,000 test images, CIFAR-10 from ../shared/datasets.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from training import loop
from training.data import load
from training.pretrain import evaluate_knn, load_encoder, preprocess_by_name

DATA = "../shared/datasets/cifar10"


def main(run: str, sides: list[int]) -> None:
    torch.set_num_threads(2)
    encoder, _ = load_encoder(Path(run))
    rt = loop.setup_runtime("cpu", True, True, 2)
    for side in sides:
        pre = dataclasses.replace(preprocess_by_name("cifar10"), size=(side, side))
        train = load(DATA, "train", (side, side))
        test = load(DATA, "test", (side, side), classes=train.classes)
        acc = evaluate_knn(encoder, train, test, pre, rt, 200, 10000, 2000)
        print(f"{run} evaluated at {side} px: kNN {acc:.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]])
