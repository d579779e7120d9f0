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
