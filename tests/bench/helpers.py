"""Small data the bench tests make for themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def split_folder(root: Path, classes: tuple[str, ...] = ("a", "b")) -> Path:
    """``root`` as a train/test ImageFolder: one black 8x8 PNG per class and split (enough for a command to
    get past reading its data to the part a test stubs)."""
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / c / "0.png")
    return root


def colour_folders(root: Path, classes: list[str], counts: tuple[tuple[str, int], ...], seed: int) -> Path:
    """``root`` as an ImageFolder of 32x32 PNGs, ``counts`` per class of each (split, n), where each class has
    its own dominant colour channel under Gaussian noise (std 25) from ``default_rng(seed)``: a task a few
    steps of training separate. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in counts:
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = np.full((32, 32, 3), 40.0)
                img[..., ci] = 200
                img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:04d}.png")
    return root
