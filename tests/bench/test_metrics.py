"""bench/metrics.py against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.metrics import (
    balanced_accuracy,
    class_coverage,
    expected_calibration_error,
    linear_probe_accuracy,
    linear_probe_scores,
    prior_accuracy,
    prior_scores,
    write_json,
)


def test_class_coverage_counts_distinct_known_classes() -> None:
    assert class_coverage(np.array([0, 0, 3, -1, 7]), 10) == 3
    assert class_coverage(np.array([], np.int64), 10) == 0


def test_prior_accuracy() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert prior_accuracy(probs, np.array([0, 1, 1, 1])) == pytest.approx(0.75)


def test_ece_hand_computed() -> None:
    # Two bins used (15 bins): conf 0.9 (2 rows, 1 correct -> |0.5-0.9| = 0.4) and conf 0.6 (2 rows, both
    # correct -> |1.0-0.6| = 0.4): ECE = 2/4*0.4 + 2/4*0.4 = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    # Perfectly calibrated one-hot predictions that are all right: ECE 0.
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)
    # An explicit confidence replaces max(probs): all correct at confidence 0.5 -> 0.5.
    half = np.full(3, 0.5)
    assert expected_calibration_error(np.eye(3), np.arange(3), confidence=half) == pytest.approx(0.5)


def test_linear_probe_separable_and_single_class() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(size=(60, 2))
    assert linear_probe_accuracy(x[::2], y[::2], x[1::2], y[1::2], seed=0) == pytest.approx(1.0)
    assert linear_probe_accuracy(x[:5], y[:5], x, y, seed=0) == pytest.approx(1 / 3)


def test_the_linear_probe_does_not_depend_on_the_embeddings_scale() -> None:
    """The same embeddings shrunk round one point (as a weak encoder's sit: unit rows at cosine 0.997 to their
    mean on scikit-learn's digits, where the unscaled probe read 17% and 1-NN 36% at 10 labels) give the same
    accuracy: the probe measures them in units of their own spread, so its L2 penalty means the same."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 40)
    x = rng.normal(size=(5, 32))[y] + rng.normal(size=(200, 32))  # overlapping classes
    train = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(5)])  # 10 labels
    test = np.setdiff1d(np.arange(200), train)
    shrunk = 3.0 + 1e-4 * x
    wide = linear_probe_accuracy(x[train], y[train], x[test], y[test], seed=0)
    assert wide > 0.9
    assert linear_probe_accuracy(shrunk[train], y[train], shrunk[test], y[test], seed=0) == pytest.approx(wide)


def test_balanced_accuracy_is_the_mean_recall_that_plain_accuracy_hides() -> None:
    """A prior that always names the large class: 90% plain, but one class of two never found (50% balanced)."""
    labels = np.array([0] * 9 + [1])
    always_zero = np.tile([0.8, 0.2], (10, 1))
    assert prior_accuracy(always_zero, labels) == pytest.approx(0.9)
    assert balanced_accuracy(always_zero, labels) == pytest.approx(0.5)
    assert np.isnan(balanced_accuracy(np.zeros((0, 2)), np.zeros(0, np.int64)))
    # A predicted class that no label has counts against the recall of the true one, and is not a class itself.
    assert balanced_accuracy(np.eye(3)[[0, 0, 2, 1]], np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_linear_probe_scores_give_the_balanced_accuracy_beside_the_plain() -> None:
    x = np.array([[1.0, 0.0]] * 9 + [[0.0, 1.0]])
    y = np.array([0] * 9 + [1])
    assert linear_probe_scores(x, y, x, y, seed=0) == pytest.approx((1.0, 1.0))
    one_class = linear_probe_scores(x[:3], y[:3], x, y, seed=0)  # only class 0 to learn from
    assert one_class == pytest.approx((0.9, 0.5))
    assert linear_probe_accuracy(x[:3], y[:3], x, y, seed=0) == one_class.accuracy


def test_results_json_is_strict_json_with_null_for_nothing_to_score(tmp_path: Path) -> None:
    write_json(tmp_path / "results.json", [{"prior_accuracy": float("nan"), "ece": 0.5, "x": [float("inf")]}])
    text = (tmp_path / "results.json").read_text()

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    assert json.loads(text, parse_constant=refuse) == [{"prior_accuracy": None, "ece": 0.5, "x": [None]}]
    assert not (tmp_path / "results.json.tmp").exists()


def test_prior_scores_are_the_figures_each_benchmark_records_and_nan_when_nothing_is_left() -> None:
    """One place for the four prior figures `bench strategies`, `bench cifar10` and `bench as3l` record (their
    record keys); an empty unlabelled set gives NaN for each (bench as3l's mean_confidence raised ValueError)."""
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 1])
    assert prior_scores(probs, y) == {"prior_accuracy": prior_accuracy(probs, y),
                                      "prior_balanced_accuracy": balanced_accuracy(probs, y),
                                      "ece": expected_calibration_error(probs, y),
                                      "mean_confidence": pytest.approx((0.9 + 0.6 + 0.8) / 3)}
    empty = prior_scores(np.zeros((0, 2)), np.zeros(0, np.int64))
    assert set(empty) == {"prior_accuracy", "prior_balanced_accuracy", "ece", "mean_confidence"}
    assert all(np.isnan(v) for v in empty.values())
