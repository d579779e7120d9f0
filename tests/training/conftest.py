"""Tiny generated image folders for training/exporter tests (16x16 PNGs in 3 colour classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["blue", "green", "red"]
SIZE = 16
PRE = f"cifar10@{SIZE}"


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n HxWx3 uint8 images; class c (index into CLASSES, sorted) has a bright channel 2 - c."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 90, (n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    for i, c in enumerate(labels):
        imgs[i, :, :, 2 - c] += 150
    return imgs, labels


def write_folder(root: Path, n: int, seed: int) -> Path:
    imgs, labels = make_images(n, seed)
    for i, (img, c) in enumerate(zip(imgs, labels, strict=True)):
        d = root / CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train/ (48 images) and test/ (24 images) ImageFolder splits."""
    root = tmp_path_factory.mktemp("tiny")
    write_folder(root / "train", 48, 0)
    write_folder(root / "test", 24, 1)
    return root


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the test machine is shared; small ops gain nothing from threads
