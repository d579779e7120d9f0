"""Weighted kNN accuracy of frozen features, the standard SSL monitor.

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018, Sec. 3.4
(Eq. 7): each test feature votes with its k nearest training features (cosine similarity s_i), weight
exp(s_i / T); k = 200, T = 0.1 as in InstDisc and the SimSiam / MoCo CIFAR monitors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shortlist.balance import IMBALANCE_RATIO, balanced_accuracy_of, is_imbalanced
from shortlist.manifest import Preprocess
from training.augment import plain


@torch.no_grad()
def embed(encoder: nn.Module, images_u8: torch.Tensor, pre: Preprocess, batch: int = 512,
          device: torch.device | None = None, amp_dtype: torch.dtype | None = None,
          channels_last: bool = False) -> torch.Tensor:
    """Nx3xHxW uint8 -> NxD float32 L2-normalised features (eval mode; the caller's mode is restored)."""
    was_training = encoder.training
    encoder.eval()
    device = device or next(encoder.parameters()).device
    out = []
    try:
        for i in range(0, len(images_u8), batch):
            x = plain(images_u8[i:i + batch].to(device, non_blocking=True), pre, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                f = encoder(x)
            out.append(F.normalize(f.float(), dim=1))
    finally:
        encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN class scores. Features L2-normalised (NxD, MxD); labels N int64 -> MxC scores."""
    k = min(k, len(train_feats))
    scores = []
    for i in range(0, len(test_feats), chunk):
        sim = test_feats[i:i + chunk] @ train_feats.T  # chunk x N cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


@dataclass(frozen=True)
class KnnScore:
    """``knn_predict``'s top-1 ``accuracy`` and ``balanced_accuracy`` (the mean per-class recall over the classes
    the evaluation rows hold), both in [0, 1], and the evaluation rows per class (``class_counts``, index =
    class)."""

    accuracy: float
    balanced_accuracy: float
    class_counts: list[int]

    @property
    def imbalanced(self) -> bool:
        """Whether the evaluation rows are imbalanced (``bench.checks.is_imbalanced``, as the benchmarks judge a
        pool): then plain accuracy is mostly the largest class's recall, and the balanced figure is the one to
        judge by."""
        return is_imbalanced(self.class_counts)

    def said(self) -> str:
        """", balanced accuracy 0.5000 (evaluation set imbalanced: largest / smallest class 9.0, above 1.5; judge
        by balanced accuracy)" for a line after the plain accuracy; "" when the evaluation set is balanced."""
        if not self.imbalanced:
            return ""
        ratio = max(self.class_counts) / max(min(self.class_counts), 1)
        return (f", balanced accuracy {self.balanced_accuracy:.4f} (evaluation set imbalanced: largest / smallest "
                f"class {ratio:.1f}, above {IMBALANCE_RATIO}; judge by balanced accuracy, the plain one is mostly "
                "the largest class's recall)")


def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
               test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> KnnScore:
    """``knn_predict``'s accuracy and balanced accuracy on the M ``test_labels`` (int64), with their counts per
    class (the classes of ``test_labels`` present, 0 .. max)."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature).argmax(dim=1)
    truth = test_labels.cpu().numpy()
    counts = torch.bincount(test_labels.cpu()).tolist()
    return KnnScore(accuracy=float((pred == test_labels).float().mean()),
                    balanced_accuracy=balanced_accuracy_of(pred.cpu().numpy(), truth),
                    class_counts=[c for c in counts if c > 0])


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict``."""
    return knn_scores(train_feats, train_labels, test_feats, test_labels, num_classes, k, temperature).accuracy
