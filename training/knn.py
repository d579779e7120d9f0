"""Weighted kNN accuracy of frozen features, the standard SSL monitor.

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018, Sec. 3.4
(Eq. 7): each test feature votes with its k nearest training features (cosine similarity s_i), weight
exp(s_i / T); k = 200, T = 0.1 as in InstDisc and the SimSiam / MoCo CIFAR monitors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict``."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature).argmax(dim=1)
    return float((pred == test_labels).float().mean())
