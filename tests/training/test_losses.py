"""Each loss against a value computed by hand from its paper's equation."""

from __future__ import annotations

import math

import torch

from training.finetune import as3l_posterior, fixmatch_unlabeled_loss, flex_thresholds
from training.methods import info_nce, rotate_batch, rotation_loss, simsiam_loss


def test_simsiam_loss_by_hand() -> None:
    # Eq. 1-2: L = -(cos(p1, z2) + cos(p2, z1)) / 2
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt(2)
    p2, z1 = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, -1.0]])  # cos = -1
    expected = -(1 / math.sqrt(2) + -1.0) / 2
    assert abs(float(simsiam_loss(p1, p2, z1, z2)) - expected) < 1e-6


def test_simsiam_stop_gradient() -> None:
    p1 = torch.randn(4, 8, requires_grad=True)
    p2 = torch.randn(4, 8, requires_grad=True)
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the projections
    assert p1.grad is not None and p1.grad.abs().sum() > 0


def test_info_nce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 3.0]])  # normalised: (0, 1); q.k = 0
    queue = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])  # normalised q.n = 1, -1
    tau = 0.5
    logits = [0 / tau, 1 / tau, -1 / tau]
    expected = -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert abs(float(info_nce(q, k, queue, tau)) - expected) < 1e-5


def test_rotation_loss_by_hand_and_rotations() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    rotated, targets = rotate_batch(x)
    assert rotated.shape == (8, 3, 4, 4)
    assert targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[2], torch.rot90(x[0], 1, dims=(1, 2)))
    assert torch.equal(rotated[4], x[0].flip(1).flip(2))  # 180 degrees
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    expected = -(2.0 - math.log(math.exp(2.0) + 3.0))
    assert abs(float(rotation_loss(logits, torch.tensor([0]))) - expected) < 1e-6


def test_as3l_posterior_uses_prior_until_T() -> None:
    probs = torch.tensor([[0.6, 0.4]])
    prior = torch.tensor([[0.0, 1.0]])
    # Eq. 2-3: normalize(prior + p) = (0.6, 1.4) / 2
    assert torch.allclose(as3l_posterior(probs, prior, step=5, prior_iters=10), torch.tensor([[0.3, 0.7]]))
    assert torch.equal(as3l_posterior(probs, prior, step=10, prior_iters=10), probs)  # after T: p only
    assert torch.equal(as3l_posterior(probs, None, step=0, prior_iters=10), probs)


def test_flexmatch_thresholds_by_hand() -> None:
    # 6 unlabelled samples; learned classes: 0, 0, 1, -1, -1, -1 -> sigma = (2, 1, 0), unused = 3
    learned = torch.tensor([0, 0, 1, -1, -1, -1])
    thr = flex_thresholds(learned, 3, tau=0.9, n_unlabeled=6, warmup=True)
    beta = torch.tensor([2 / 3, 1 / 3, 0.0])  # divided by max(max sigma = 2, unused = 3)
    assert torch.allclose(thr, beta / (2 - beta) * 0.9)
    thr = flex_thresholds(learned, 3, tau=0.9, n_unlabeled=6, warmup=False)
    beta = torch.tensor([1.0, 0.5, 0.0])
    assert torch.allclose(thr, beta / (2 - beta) * 0.9)


def test_fixmatch_unlabeled_loss_masks_by_class_threshold() -> None:
    post = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, mask = fixmatch_unlabeled_loss(logits, post, torch.tensor([0.95, 0.5]))
    assert mask.tolist() == [0.0, 1.0]  # 0.9 < 0.95 for class 0; 0.8 >= 0.5 for class 1
    ce = -(1.0 - math.log(math.e + 1.0))
    assert abs(float(loss) - ce / 2) < 1e-6


def test_fixmatch_lr_decays_to_cos_7pi_16() -> None:
    from training.finetune import fixmatch_lr

    assert fixmatch_lr(0.03, 0.0) == 0.03
    assert abs(fixmatch_lr(0.03, 1.0) - 0.03 * math.cos(7 * math.pi / 16)) < 1e-12
