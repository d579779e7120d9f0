"""One point of an equal-time pretraining sweep: a short run with a cheaper final kNN.

    python scripts/experiments/pretrain_sweep.py NAME [FIELD=VALUE ...]   # PretrainConfig fields

Defaults: SimSiam, resnet18_w32, 8 minutes, batch 128, 2 threads, no periodic kNN, and a final kNN
(k=200) with a bank of 10,000 training images and 2,000 test images (``final_knn_full=False``), so
that points are comparable with each other but not with the full 50,000/10,000 kNN of a normal run.
Writes the run to runs/sweep/NAME and appends one JSON line to runs/sweep/sweep.jsonl.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from training.pretrain import PretrainConfig, pretrain

OUT = Path("runs/sweep")


def main(argv: list[str]) -> None:
    name, changes = argv[0], {}
    for arg in argv[1:]:
        key, value = arg.split("=", 1)
        try:
            changes[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            changes[key] = value
    settings: dict[str, Any] = dict(
        data="../shared/datasets/cifar10", out=str(OUT / name), method="simsiam", arch="resnet18_w32",
        minutes=8.0, batch_size=128, threads=2, knn_every=0, final_knn_full=False, progress=False,
        checkpoint_minutes=1e9)
    settings.update(changes)
    t = time.time()
    run = pretrain(PretrainConfig(**settings), Console(quiet=True))
    summary = json.loads((run / "summary.json").read_text())
    line = {"name": name, **changes, "knn": round(summary.get("knn_acc", -1), 4), "steps": summary["steps"],
            "img_s": round(summary["images_per_s"]), "wall_s": round(time.time() - t)}
    print(json.dumps(line))
    with open(OUT / "sweep.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
