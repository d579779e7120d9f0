"""The benchmark's data: the pool and test rows of a source's train and test splits, at the model's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from bench.checks import require_two_classes
from bench.cifar10.profiles import stratified_subset
from shortlist.datasets import (
    ImageArray,
    MissingSplit,
    load_array,
    resolve_source,
    skipped_summary,
    split_sources_said,
)
from shortlist.images import preprocess_array
from shortlist.manifest import read_complete


def load_pool_and_test(data: Path, pool_size: int | None,
                       test_size: int | None) -> tuple[ImageArray, np.ndarray, ImageArray, np.ndarray]:
    """Decode both splits at the source's size and take class-balanced subsets (seed 0; None: all rows):
    (train split, pool row indices, the test subset, its row indices in the test split). BadParameter
    when a split has unlabelled rows."""
    try:
        train = load_array(data, "train", size=None)
        require_two_classes(len(train.classes), f"{data} (split 'train')")
        test = load_array(data, "test", size=(train.images.shape[1], train.images.shape[2]), classes=train.classes)
    except ValueError as e:  # no readable image, or a test class the train split lacks: said, no traceback
        hint = "; every test class needs training images" if "not among the classes" in str(e) else ""
        typer.echo(f"error: {e}{hint}", err=True)
        raise typer.Exit(2) from None
    for split, arr in (("train", train), ("test", test)):  # left out by load_array: said, not silent
        if arr.skipped:
            typer.echo(f"warning: {data} ({split}): {skipped_summary(arr.skipped, len(arr.ids) + len(arr.skipped))}",
                       err=True)
    pool_idx = stratified_subset(train.labels, pool_size, seed=0)
    test_idx = stratified_subset(test.labels, test_size, seed=0)
    for split, arr, idx, size in (("pool", train, pool_idx, pool_size), ("test", test, test_idx, test_size)):
        note = short_classes_note(arr.labels, idx, size, train.classes)
        if note:
            typer.echo(f"note: {data} ({split}): {note}", err=True)
    if np.any(train.labels[pool_idx] < 0) or np.any(test.labels[test_idx] < 0):
        raise typer.BadParameter(f"{data}: the benchmark needs labelled train and test splits (class folders)")
    test_set = ImageArray(test.images[test_idx], test.labels[test_idx], test.classes, [test.ids[i] for i in test_idx])
    return train, pool_idx, test_set, test_idx


def short_classes_note(labels: np.ndarray, idx: np.ndarray, size: int | None, classes: list[str]) -> str:
    """What ``stratified_subset`` could not balance: the classes (names from ``classes``) with fewer rows in
    ``labels`` (N int) than the subset's ``size // C`` per class, so the subset ``idx`` holds all of them and
    fills with other classes' rows; "" when every class had enough (or no subset was asked)."""
    if size is None or size >= len(labels):
        return ""
    present = np.unique(labels[labels >= 0])
    per = size // max(len(present), 1)
    have = {int(c): int(np.sum(labels == c)) for c in present}
    short = [c for c in present if have[int(c)] < per]
    if not short:
        return ""
    names = ", ".join(f"{classes[int(c)] if 0 <= c < len(classes) else c} {have[int(c)]}" for c in short)
    counts = np.bincount(labels[idx][labels[idx] >= 0], minlength=len(classes))
    return (f"the {len(idx)}-image subset is class-balanced ({per} per class) only where a class has {per} images; "
            f"{names} (all taken), so the rest came from the other classes at random: per class "
            f"{', '.join(f'{classes[i]} {n}' for i, n in enumerate(counts) if n)}")


def images_at_model_size(data: Path, version_dir: Path, train: ImageArray, test_set: ImageArray,
                         pool_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pool rows of ``train`` and ``test_set`` (the ``test_idx`` rows of the test split) as PxHxWx3 and
    TxHxWx3 uint8 brought to the model version's input as the agent brings what the bench ingests (the manifest's
    whole preprocess: size, interpolation, resize mode). A bilinear squash (what ``load_array`` does) decodes a
    split at another size again from its files; any other preprocessing resizes the decoded arrays with
    ``preprocess_array``, the agent's own function (exactly the agent's input when a split's images share one
    size, as CIFAR's do: ``load_pool_and_test`` decodes them at it, untouched)."""
    manifest = read_complete(version_dir, verify_hashes=False)
    assert manifest is not None, f"{version_dir} is not a complete model version"
    pre = manifest.preprocess
    size = pre.size
    if pre.resize != "squash" or pre.interpolation != "bilinear":
        return (np.stack([preprocess_array(im, pre) for im in train.images[pool_idx]]),
                np.stack([preprocess_array(im, pre) for im in test_set.images]))
    pool_images = train.images[pool_idx] if train.images.shape[1:3] == size else \
        load_array(data, "train", size=size).images[pool_idx]
    test_images = test_set.images if test_set.images.shape[1:3] == size else \
        load_array(data, "test", size=size, classes=train.classes).images[test_idx]
    return pool_images, test_images


def require_splits(data: Path) -> None:
    """Exit 2 with a message (no traceback) unless ``data`` holds a train and a test split: checked before
    any work, so a wrong ``--data`` fails at once instead of after pretraining has started. The benchmark
    commands have no --split: a missing split is said without MissingSplit's hint to use one."""
    try:
        for split in ("train", "test"):
            resolve_source(data, split)
    except FileNotFoundError as e:
        said = e.said("") if isinstance(e, MissingSplit) else str(e)
        typer.echo(f"error: {said}; pass --data: {split_sources_said()}", err=True)
        raise typer.Exit(2) from None
