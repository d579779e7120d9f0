"""The pretraining kNN monitor on an imbalanced evaluation set: plain accuracy there is about the majority
rate whatever the features are, so the balanced accuracy (mean per-class recall) is reported beside it, with
the imbalance check the benchmarks use (bench.checks.is_imbalanced)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shortlist.balance import IMBALANCE_RATIO
from training.knn import knn_accuracy, knn_scores


def _features(n: int, minority_every: int, informative: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n unit 8-d rows; every ``minority_every``-th is class 1, the rest class 0; ``informative``: the class
    sets the first coordinate, else the rows are noise."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % minority_every == 0).long()
    x = torch.randn(n, 8, generator=g)
    if informative:
        x[:, 0] += 6.0 * (2 * y - 1)
    return F.normalize(x, dim=1), y


def test_an_imbalanced_evaluation_set_gets_a_balanced_accuracy_and_a_line_that_says_so() -> None:
    bank, bank_y = _features(200, 10, informative=False, seed=0)
    test, test_y = _features(100, 10, informative=False, seed=1)  # 90 of class 0, 10 of class 1
    score = knn_scores(bank, bank_y, test, test_y, 2, k=20)
    # features that carry no class: plain accuracy near the 90% majority rate, balanced accuracy near chance
    assert score.accuracy > 0.85 and score.balanced_accuracy < 0.6
    assert score.accuracy == knn_accuracy(bank, bank_y, test, test_y, 2, k=20)
    assert score.class_counts == [90, 10] and score.imbalanced
    assert score.said() == (f", balanced accuracy {score.balanced_accuracy:.4f} (evaluation set imbalanced: largest "
                            f"/ smallest class 9.0, above {IMBALANCE_RATIO}; judge by balanced accuracy, the plain "
                            "one is mostly the largest class's recall)")


def test_a_balanced_evaluation_set_says_nothing_more() -> None:
    bank, bank_y = _features(200, 2, informative=True, seed=0)
    test, test_y = _features(100, 2, informative=True, seed=1)
    score = knn_scores(bank, bank_y, test, test_y, 2, k=20)
    assert score.class_counts == [50, 50] and not score.imbalanced and score.said() == ""
    assert score.accuracy == score.balanced_accuracy == 1.0
