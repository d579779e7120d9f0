"""Training data in memory: decoded once into a uint8 tensor (Nx3xHxW), augmented later on the device.

Sources: anything ``shortlist.datasets.load_array`` reads (ImageFolder folders, tars of them, torchvision
CIFAR folders, split folders like ../shared/datasets/cifar10), or samples pulled from an agent
(``from_samples``, decoded with ``shortlist.images.decode_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shortlist.images import decode_sample
from shortlist.manifest import Preprocess


@dataclass
class TensorData:
    """images: Nx3xHxW uint8 (CPU); labels: N int64 (-1 = unknown); classes: names by index; ids: N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: Sequence[int] | np.ndarray) -> TensorData:
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return TensorData(self.images[idx], self.labels[idx], self.classes, [self.ids[i] for i in idx.tolist()])

    @property
    def labeled_rows(self) -> torch.Tensor:
        return torch.nonzero(self.labels >= 0).flatten()


def from_hwc(images: np.ndarray, labels: np.ndarray, classes: list[str], ids: list[str]) -> TensorData:
    """NxHxWx3 uint8 numpy -> TensorData (CHW; contiguous so batches gather quickly)."""
    t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return TensorData(t, torch.from_numpy(np.asarray(labels, dtype=np.int64)), list(classes), list(ids))


def load(source: str, split: str, size: tuple[int, int], limit: int | None = None,
         classes: list[str] | None = None) -> TensorData:
    """Decode ``source``'s ``split`` at ``size`` = (H, W). FileNotFoundError if it has no such split."""
    from shortlist.datasets import load_array

    arr = load_array(source, split=split, size=size, limit=limit, classes=classes)
    return from_hwc(arr.images, arr.labels, arr.classes, arr.ids)


def from_samples(samples: Sequence[object], size: tuple[int, int], classes: list[str] | None = None) -> TensorData:
    """Agent ``Sample`` messages (with payloads) -> TensorData. Labels index ``classes`` (default: sorted
    labels found); unlabelled samples get -1. Undecodable payloads raise ValueError naming the sample."""
    images, labels, ids = [], [], []
    found = sorted({s.label for s in samples if s.label})  # type: ignore[attr-defined]
    class_list = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(class_list)}
    pre = Preprocess(size=size)  # only its size is used here
    for s in samples:
        try:
            img = decode_sample(s, pre)  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"sample {s.id}: {e}") from None  # type: ignore[attr-defined]
        images.append(img)
        label = s.label  # type: ignore[attr-defined]
        if label and label not in index:
            raise ValueError(f"sample {s.id} has label {label!r}, not among {class_list}")  # type: ignore[attr-defined]
        labels.append(index[label] if label else -1)
        ids.append(s.id)  # type: ignore[attr-defined]
    if not images:
        raise ValueError("no samples to train on")
    return from_hwc(np.stack(images), np.asarray(labels), class_list, ids)
