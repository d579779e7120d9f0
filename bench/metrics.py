"""Evaluation helpers shared by the benchmarks (bench/strategies.py, bench/cifar10/). Torch-free.

All inputs are numpy arrays; class indices are int64 in ``[0, C)``; ``-1`` means "unknown" and is
ignored where noted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from agent.client import finite
from shortlist.atomic import write_atomic
from shortlist.balance import balanced_accuracy_of


def strict_json(obj: Any, indent: int | None = 1) -> str:
    """``obj`` as strict JSON text: every float that is not finite (NaN, e.g. an accuracy with nothing to
    score) becomes null, because JSON has no NaN and a parser in another language refuses Python's bare
    ``NaN``; ``allow_nan=False`` makes any that slipped through an error here, not in the reader."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    """Write ``strict_json(obj)`` to ``path`` crash-safely (shortlist.atomic: a reader, or the file after a
    power loss, never holds half of it): every results.json (and its sidecar files) of the benchmarks goes
    through here."""
    write_atomic(path, strict_json(obj, indent) + "\n")


def class_coverage(labels_picked: np.ndarray, num_classes: int) -> int:
    """How many of the ``num_classes`` classes appear among ``labels_picked`` (B int, -1 ignored)."""
    picked = np.asarray(labels_picked, np.int64)
    picked = picked[(picked >= 0) & (picked < num_classes)]
    return int(np.unique(picked).size)


def prior_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``probs`` (RxC) against true ``labels`` (R int); NaN when R == 0."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(probs.argmax(axis=1) == labels))


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy of ``probs`` (RxC) against ``labels`` (R int): the mean over the classes present in
    ``labels`` of their recall (sklearn's balanced_accuracy_score on the argmax); NaN when R == 0.

    Plain accuracy on an imbalanced pool is mostly the large classes' recall: a prior that never predicts a
    rare class loses little of it, and this shows it."""
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return float("nan")
    return balanced_accuracy_of(np.asarray(probs).argmax(axis=1), labels)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15,
                               confidence: np.ndarray | None = None) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks", Sec. 2,
    Eq. 3): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over ``bins`` equal-width confidence bins.

    Args:
        probs: RxC class probabilities (rows sum to 1).
        labels: R int true classes.
        bins: number of equal-width bins over [0, 1].
        confidence: optional R values in [0, 1] to use as the confidence instead of ``max(probs)``
            (e.g. a prior method's own confidence).
    Returns: ECE in [0, 1]; NaN when R == 0.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1) if confidence is None else np.asarray(confidence, np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # Bin b holds conf in (b/bins, (b+1)/bins]; conf == 0 goes to the first bin.
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / len(labels))


def prior_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The prior-label figures every benchmark (`bench strategies`, `bench cifar10`, `bench as3l`) records for
    ``probs`` (RxC) against true ``labels`` (R int), under the keys they record them by: ``prior_accuracy``,
    ``prior_balanced_accuracy``, ``ece`` (15 bins on the max prob) and ``mean_confidence`` (the mean max prob:
    above ``prior_accuracy`` is over-confident), each in [0, 1]; NaN when R == 0 (nothing to score)."""
    probs = np.asarray(probs, np.float64)
    return {"prior_accuracy": prior_accuracy(probs, labels),
            "prior_balanced_accuracy": balanced_accuracy(probs, labels),
            "ece": expected_calibration_error(probs, labels),
            "mean_confidence": float(probs.max(axis=1).mean()) if len(probs) else float("nan")}


class ProbeScores(NamedTuple):
    """The linear probe's test accuracy and balanced accuracy (mean per-class recall), both in [0, 1]."""

    accuracy: float
    balanced_accuracy: float


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                          test_y: np.ndarray, seed: int) -> float:
    """``linear_probe_scores``' plain accuracy."""
    return linear_probe_scores(train_x, train_y, test_x, test_y, seed).accuracy


def linear_probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                        test_y: np.ndarray, seed: int) -> ProbeScores:
    """Test accuracy and balanced accuracy (``ProbeScores``) of a multinomial logistic regression (sklearn,
    L-BFGS, C=100) fitted on ``train_x`` (NxD) / ``train_y`` (N int) and scored on ``test_x`` (MxD) /
    ``test_y`` (M int), both centred at the training rows' mean and divided by their RMS distance to it (one
    number). NaN for both when there is nothing to fit or score.

    With a single training class the probe can only predict that class, so its accuracy is the
    fraction of test samples in it (sklearn refuses to fit one class).
    """
    train_y = np.asarray(train_y, np.int64)
    test_y = np.asarray(test_y, np.int64)
    classes = np.unique(train_y)
    if len(test_y) == 0 or len(classes) == 0:
        return ProbeScores(float("nan"), float("nan"))
    if len(classes) == 1:
        only = np.full(len(test_y), classes[0])
        return ProbeScores(float(np.mean(test_y == classes[0])), balanced_accuracy_of(only, test_y))
    from sklearn.linear_model import LogisticRegression  # here: importing sklearn costs ~1 s per CLI start

    # No per-feature scaling: with 10-100 training rows its per-feature statistics would be noise. One scale
    # for all features instead (the rows' RMS distance to their mean, steady from 10 rows), so that the L2
    # penalty means the same on every encoder: an encoder whose embeddings sit close together (unit rows at
    # cosine 0.997 to their mean on scikit-learn's digits) needs weights hundreds of times larger to tell
    # them apart, which the penalty forbade (the probe at chance where 1-NN reached 36%). Centring changes
    # nothing but keeps the numbers moderate. Weak L2 (C=100): sklearn's C=1 shrinks the weights until the
    # intercepts decide, which on synthetic blobs cost 10-15 points of accuracy at 10-20 labels.
    train_x = np.asarray(train_x, np.float64)
    centre = train_x.mean(axis=0)
    spread = float(np.sqrt(((train_x - centre) ** 2).sum(axis=1).mean())) or 1.0  # 0: identical rows
    clf = LogisticRegression(C=100.0, max_iter=1000, random_state=seed)
    clf.fit((train_x - centre) / spread, train_y)
    predicted = clf.predict((np.asarray(test_x, np.float64) - centre) / spread)
    return ProbeScores(float(np.mean(predicted == test_y)), balanced_accuracy_of(predicted, test_y))
