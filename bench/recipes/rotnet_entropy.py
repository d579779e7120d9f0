"""RotNet + entropy (Barda, Danese & Vecchi, "Self-Supervised meets Active-Learning", 2023;
../shared/papers/002_ab1e8ee0d7fd21ae.txt).

Sec. 3.2-3.3: a ResNet-18 pretrained on rotation prediction (RotNet, Gidaris et al. 2018; 100 epochs,
batch 512). Sec. 3.4: the 4-way head replaced by a linear classifier and the whole network fine-tuned,
starting from 20% of the training set labelled and adding the entropy picks (Sec. 2.1 item 1) every 50
epochs until 50%; the same model keeps training across rounds (the "jumps" of their Fig. 5), which is
our ``warm_start``. About 85% test accuracy at the end. The claim measured here is that entropy-driven
additions beat random additions (the ``random`` arm: the same schedule and training, random picks).
"""

from __future__ import annotations

from bench.recipes.simsiam_al import SMOKE
from bench.recipes.spec import Arm, Head, Recipe, Scale

FULL = Head("full", warm_start=True)
SCHEDULE = ("20%", "25%", "30%", "35%", "40%", "45%", "50%")

RECIPE = Recipe(
    name="rotnet_entropy",
    title="RotNet pretraining + full fine-tuning, entropy picks from 20% to 50% labelled",
    paper="Barda, Danese & Vecchi, Self-Supervised meets Active-Learning, 2023 "
          "(../shared/papers/002_ab1e8ee0d7fd21ae.txt)",
    claims=("Entropy-driven additions beat random additions (entropy above random at every round after the "
            "first).",
            "About 85% test accuracy on CIFAR-10 at 50% labelled (their Sec. 3.4; full scale only)."),
    pretext="rotnet",
    arms=(
        Arm("entropy", "entropy", FULL, note="RotNet + full fine-tuning, maximum-entropy additions (the paper)"),
        Arm("random", "random", FULL, note="the same, random additions"),
    ),
    profiles={
        "smoke": SMOKE,
        "cpu": Scale(
            name="cpu", pool_size=5000, test_size=2000, arch="resnet18_w32", preprocess="cifar10@16",
            budgets=SCHEDULE, seeds=3, pretrain_minutes=15.0, pretrain_options={"batch_size": 128},
            steps=400, batch_size=64,
            description="2-core CPU, about 50 min measured (docs/benchmarks.md): 5,000-image pool, 2,000 test images, "
                        "resnet18_w32 "
                        "at 16 px, RotNet 15 min, 20% to 50% of the pool in 7 rounds (1,000 to 2,500 labels), 400 "
                        "steps of 64 per round continuing the same model, 3 seeds"),
        "gpu": Scale(
            name="gpu", pool_size=None, test_size=None, arch="resnet18", preprocess="cifar10", budgets=SCHEDULE,
            seeds=3, pretrain_options={"epochs": 100, "batch_size": 512}, epochs=50, batch_size=128,
            description="the paper's settings: full CIFAR-10, ResNet-18, RotNet 100 epochs (batch 512), 20% to "
                        "50% labelled, 50 epochs per round continuing the same model, 3 seeds"),
    },
    reference="Sec. 3.4 / Fig. 5: 85% test accuracy at 50% labelled with entropy (one run; no random curve "
              "is shown in the paper, so its claim against random is the paper's premise, not a figure).",
)
