"""Training-step throughput of one pretraining configuration, on synthetic 32x32 uint8 images.

    python scripts/experiments/step_speed.py ARCH BATCH RES THREADS bf16|fp32 [cl|nchw] [simsiam|moby|rotnet]

Times 5 steps (after 2 warm-up steps) of: batched augmentation of every view, forward under autocast,
backward, SGD step. Prints images/s and the share of the time spent in augmentation. Used for the
throughput table in docs/training.md; run it on an otherwise idle machine.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from training.augment import AugmentConfig
from training.backbones import build_backbone
from training.methods import METHODS, Encoder, build_method
from training.pretrain import build_optimizer, preprocess_by_name


def main(argv: list[str]) -> None:
    arch, bs, res, threads, amp = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4] == "bf16"
    channels_last = (argv[5] if len(argv) > 5 else "cl") == "cl"
    method = argv[6] if len(argv) > 6 else "simsiam"
    torch.set_num_threads(threads)
    model = build_method(method, Encoder(build_backbone(arch), rotation_head=METHODS[method].rotation_head))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, 0.1, 5e-4)
    pre = dataclasses.replace(preprocess_by_name("cifar10"), size=(res, res))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (bs, 3, 32, 32), dtype=torch.uint8)  # Bx3x32x32

    def step() -> float:
        t = time.perf_counter()
        views = model.make_views(images, pre, AugmentConfig(), g, channels_last)
        t_aug = time.perf_counter() - t
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(*views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return t_aug

    for _ in range(2):
        step()
    n, t0 = 5, time.perf_counter()
    t_aug = sum(step() for _ in range(n))
    dt = time.perf_counter() - t0
    print(f"{arch} {method} bs{bs} {res}px {threads} threads {'bf16' if amp else 'fp32'} "
          f"{'channels_last' if channels_last else 'NCHW'}: {n * bs / dt:.0f} img/s (augmentation {t_aug / dt:.0%})")


if __name__ == "__main__":
    main(sys.argv[1:])
