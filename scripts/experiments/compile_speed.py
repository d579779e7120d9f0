"""Eager vs ``torch.compile`` on a CPU: SimSiam resnet18_w32, batch 128, 16 px views, bf16, channels_last.

    python scripts/experiments/compile_speed.py [THREADS]

Prints the first step's time (which includes compilation) and images/s over 20 steps after 3 more.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from training.augment import AugmentConfig, augment
from training.backbones import build_backbone
from training.methods import Encoder, build_method
from training.pretrain import build_optimizer, preprocess_by_name


def measure(mode: str, images: torch.Tensor, threads: int) -> str:
    """One mode ("eager" or "compile"): first step's seconds, then images/s over 20 steps after 3 more."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pre = dataclasses.replace(preprocess_by_name("cifar10"), size=(16, 16))
    model = build_method("simsiam", Encoder(build_backbone("resnet18_w32"))).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, 0.1, 5e-4)
    forward = torch.compile(model) if mode == "compile" else model
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        views = [augment(images, pre, AugmentConfig(), g, True) for _ in range(2)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward(*views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        step()
    return f"{mode}: first step {first:.1f} s, then {n * len(images) / (time.perf_counter() - t0):.0f} img/s"


def main(threads: int) -> None:
    images = torch.randint(0, 255, (128, 3, 32, 32), dtype=torch.uint8)  # Bx3x32x32
    for mode in ("eager", "compile"):
        print(measure(mode, images, threads), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
