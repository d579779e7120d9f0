"""Class balance of a labelled set: whether its classes are imbalanced, and the balanced accuracy to judge a
classifier by when they are. Shared by training (the kNN monitor) and bench (results and plots), so that both
draw the line at the same ratio; no torch, no CLI framework."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

# A pool whose largest class has more than this many times the rows of its smallest is "imbalanced": its
# reports show balanced accuracy (mean per-class recall), since plain accuracy there is mostly the largest
# class's recall and can rank strategies backwards (docs/benchmarks.md, "Imbalanced pools").
IMBALANCE_RATIO = 1.5


def is_imbalanced(counts: Sequence[int]) -> bool:
    """Whether per-class row ``counts`` are imbalanced: largest / smallest above ``IMBALANCE_RATIO`` (a class
    with 0 rows counts as imbalanced)."""
    present = [int(c) for c in counts]
    if len(present) < 2:
        return False
    return min(present) == 0 or max(present) / min(present) > IMBALANCE_RATIO


def balanced_accuracy_of(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy of ``predicted`` class indices (R int) against ``labels`` (R int); NaN when R == 0."""
    if len(labels) == 0:
        return float("nan")
    from sklearn.metrics import balanced_accuracy_score  # here: importing sklearn costs ~1 s per CLI start

    with warnings.catch_warnings():  # predicted classes absent from labels: a warning, and rightly not counted
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(np.asarray(labels, np.int64), np.asarray(predicted, np.int64)))
