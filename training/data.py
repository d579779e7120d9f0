"""Training data in memory: decoded once into a uint8 tensor (Nx3xHxW), augmented later on the device.

Sources: anything ``shortlist.datasets.load_array`` reads (ImageFolder folders, tars of them, torchvision
CIFAR folders, split folders like ../shared/datasets/cifar10), or samples pulled from an agent
(``from_samples``, decoded with ``shortlist.images.decode_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from shortlist.images import decode_sample
from shortlist.manifest import Preprocess

SKIPPED = "skipped.txt"  # in a run folder: the source's files that are not readable images, one "uri<TAB>reason" a line
# What a training command's --data must hold when a split is missing (training reads 'train', and its kNN
# check 'test'; none of the commands has --split).
SPLIT_HINTS = {"train": "--data takes a folder with a train/ split (or train.tar), or a folder of images itself",
               "test": "a held-out kNN check needs --data to hold a test/ split (or test.tar) beside train/"}


@dataclass
class TensorData:
    """images: Nx3xHxW uint8 (CPU); labels: N int64 (-1 = unknown); classes: names by index; ids: N;
    skipped: (uri, reason) of the source's files that are not readable images (not among the N)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: Sequence[int] | np.ndarray) -> TensorData:
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return TensorData(self.images[idx], self.labels[idx], self.classes, [self.ids[i] for i in idx.tolist()],
                          self.skipped)

    @property
    def labeled_rows(self) -> torch.Tensor:
        return torch.nonzero(self.labels >= 0).flatten()


def from_hwc(images: np.ndarray, labels: np.ndarray, classes: list[str], ids: list[str],
             skipped: Sequence[tuple[str, str]] = ()) -> TensorData:
    """NxHxWx3 uint8 numpy -> TensorData (CHW; contiguous so batches gather quickly)."""
    t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return TensorData(t, torch.from_numpy(np.asarray(labels, dtype=np.int64)), list(classes), list(ids),
                      list(skipped))


def load(source: str, split: str, size: tuple[int, int], limit: int | None = None,
         classes: list[str] | None = None) -> TensorData:
    """Decode ``source``'s ``split`` at ``size`` = (H, W), leaving out (and listing in ``skipped``) the files
    that are not readable images (``shortlist.datasets.load_array``). FileNotFoundError if it has no such
    split; ValueError when none of its files is readable."""
    from shortlist.datasets import MissingSplit, load_array

    try:
        arr = load_array(source, split=split, size=size, limit=limit, classes=classes)
    except MissingSplit as e:  # its "choose one with --split" is ingest's: no training command has --split
        raise FileNotFoundError(e.said(SPLIT_HINTS.get(split, ""))) from None
    return from_hwc(arr.images, arr.labels, arr.classes, arr.ids, arr.skipped)



def report_skipped(run_dir: Path, console: Console, *parts: TensorData) -> int:
    """Say, in one line, how many files of ``parts`` (e.g. a train and a test split) were left out as unreadable
    and the first few with their reasons, and list them all in run_dir/skipped.txt (one "uri<TAB>reason" a
    line; a stale one is removed when none was skipped). Returns how many were skipped."""
    from shortlist.atomic import write_atomic
    from shortlist.datasets import skipped_summary

    skipped = [s for part in parts for s in part.skipped]
    path = run_dir / SKIPPED
    if not skipped:
        path.unlink(missing_ok=True)
        return 0
    write_atomic(path, "".join(f"{uri}\t{' '.join(reason.split())}\n" for uri, reason in skipped))
    total = sum(len(part) + len(part.skipped) for part in parts)
    listed = "it, with its reason," if len(skipped) == 1 else f"all {len(skipped):,}, with their reasons,"
    console.print(f"[yellow]warning:[/] {escape(skipped_summary(skipped, total))}; {listed} in {escape(str(path))}; "
                  f"training goes on with the other {total - len(skipped):,}",
                  highlight=False)
    return len(skipped)


def from_samples(samples: Sequence[object], pre: Preprocess, classes: list[str] | None = None) -> TensorData:
    """Agent ``Sample`` messages (with payloads) -> TensorData at ``pre.size`` = (H, W), each image brought there
    exactly as the agent brings it for a model with preprocessing ``pre`` (``decode_sample``: its interpolation and
    resize mode too; the training normalises with ``pre``'s mean and std). Labels index ``classes``
    (default: sorted labels found); unlabelled samples get -1. A sample whose payload cannot be decoded (the
    agent flags a missing or corrupt stored payload with its reason) is left out and listed in ``skipped``
    (id, reason), as ``load`` does with a folder's unreadable files; ValueError when none is left."""
    from agent.ingest import PAYLOAD_ERROR_KEY

    images, labels, ids, skipped = [], [], [], []
    found = sorted({s.label for s in samples if s.label})  # type: ignore[attr-defined]
    class_list = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(class_list)}
    for s in samples:
        label = s.label  # type: ignore[attr-defined]
        if label and label not in index:
            raise ValueError(f"sample {s.id} has label {label!r}, not among {class_list}")  # type: ignore[attr-defined]
        try:
            img = decode_sample(s, pre)  # type: ignore[arg-type]
        except ValueError as e:
            skipped.append((s.id, s.metadata.get(PAYLOAD_ERROR_KEY) or str(e)))  # type: ignore[attr-defined]
            continue
        images.append(img)
        labels.append(index[label] if label else -1)
        ids.append(s.id)  # type: ignore[attr-defined]
    if not images:
        if skipped:
            from shortlist.datasets import first_reasons

            raise ValueError(f"none of the {len(skipped):,} samples the agent sent can be decoded: "
                             f"{first_reasons(skipped)}")
        raise ValueError("no samples to train on")
    return from_hwc(np.stack(images), np.asarray(labels), class_list, ids, skipped)
