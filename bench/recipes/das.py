"""Deep active sampling with self-supervised learning (Shi & Zhou, Front. Comput. Sci. 2023; summary
../shared/papers/003_3d81e58e7055c576.txt).

Algorithm 1: pretrain the model with a pretext task on D_l and D_u (line 2; we use its rotation variant,
RotNet), fine-tune on D_l (line 3), then per round score D_u by Eq. 1, query the top K, add them to D_l and
fine-tune again (lines 4-10; line 10's "based on D_u" is read as the enlarged labelled set, the only set
with labels to fine-tune on).

**Eq. 1 as we use it.** The summary gives the algorithm, not the equation: "uncertainty combined with the
pretext loss", with a hyperparameter lambda as Algorithm 1's input. We use the agent's ``das`` strategy
(agent/strategies/uncertainty.py):

    s(x) = H(p(x)) / log C  +  lambda * l_rot(x) / log 4,    lambda = 1,

H the predictive entropy of the served classifier, l_rot the RotNet loss of x (mean cross-entropy over
its four rotations, computed by the agent with the served model's rotation head), each divided by its
chance level so the two terms share a scale; the additive form is the simplest that makes lambda a
trade-off weight as Algorithm 1's input implies. Why the rotation loss has to be the *current* model's:
our fine-tuning adds ``rotation_weight`` x the RotNet loss of the labelled batch (training.finetune), so
the exported rotation head stays matched to the fine-tuned backbone; without it the head would score a
backbone it was not trained with. Both arms train identically; only the ranking differs.

The claim measured: DAS beats plain uncertainty (the ``entropy`` arm, Eq. 1 with lambda = 0).
"""

from __future__ import annotations

from bench.recipes.simsiam_al import SMOKE
from bench.recipes.spec import Arm, Head, Recipe, Scale

FULL = Head("full", warm_start=True, options={"rotation_weight": 1.0})

RECIPE = Recipe(
    name="das",
    title="Deep active sampling: uncertainty combined with the pretext (rotation) loss",
    paper="Shi & Zhou, Deep Active Sampling with Self-Supervised Learning, Front. Comput. Sci. 2023 "
          "(summary: ../shared/papers/003_3d81e58e7055c576.txt)",
    claims=("Scoring by uncertainty and pretext loss (Eq. 1) beats plain uncertainty sampling (das above entropy).",),
    pretext="rotnet",
    arms=(
        Arm("das", "das", FULL, params={"lambda": "1"}, note="Eq. 1: entropy / log C + lambda x rotation loss / "
            "log 4, lambda 1"),
        Arm("entropy", "entropy", FULL, note="plain uncertainty (maximum entropy), same training"),
    ),
    profiles={
        "smoke": SMOKE,
        "cpu": Scale(
            name="cpu", pool_size=5000, test_size=2000, arch="resnet18_w32", preprocess="cifar10@16",
            budgets=("2%", "4%", "6%", "8%", "10%", "12%"), seeds=3, pretrain_minutes=15.0,
            pretrain_options={"batch_size": 128}, steps=250, batch_size=32,
            description="2-core CPU, about 60 min measured (docs/benchmarks.md): 5,000-image pool, 2,000 test images, "
                        "resnet18_w32 "
                        "at 16 px, RotNet 15 min, 2% to 12% of the pool in 6 rounds (100 to 600 labels), 250 steps "
                        "of 32 per round (each also through the four rotations) continuing the same model, 3 seeds"),
        "gpu": Scale(
            name="gpu", pool_size=None, test_size=None, arch="resnet18", preprocess="cifar10",
            budgets=("2%", "4%", "6%", "8%", "10%", "12%"), seeds=3,
            pretrain_options={"epochs": 100, "batch_size": 512}, epochs=50, batch_size=128,
            description="full CIFAR-10, ResNet-18, RotNet 100 epochs; the summary gives no schedule or training "
                        "length, so 2% to 12% in 6 rounds and 50 epochs per round are ours"),
    },
    reference="The summary's figures (CIFAR-10 and fashion-MNIST, MoCo and rotation pretext) show the proposed "
              "method above the other sampling methods at every budget; no numbers are given in the text.",
)
