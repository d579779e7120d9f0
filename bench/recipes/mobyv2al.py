"""MoBYv2AL (Caramalau, Bhattarai, Stoyanov & Kim, BMVC 2022; ../shared/papers/004_56ae65dc02c3a175.txt).

Sec. 3: the learner is trained jointly: cross-entropy on the labelled set plus lambda_c = 0.5 x the MoBY
contrastive loss (training.finetune mode ``moby_al``), with the labelled images in the contrastive batch
too (the queue and moving average see both, Sec. 3), on an amount of unlabelled data equal to the
labelled (Sec. 4.1, "Comparison with other SSL-AL"), those with the lowest contrastive loss (Sec. 4.2),
re-trained from scratch each cycle; the pool is then ranked by CoreSet (k-center greedy, Sener &
Savarese 2018) on the query encoder's features f_q(x), which is what the agent embeds with. App. A:
10% labelled to start, 5% added per cycle, 7 cycles. Sec. 4.4 / Table 3: the multi-stage baseline
(MoBY pretraining, then fine-tuning on the labels) and App. B / Fig. B.1: random and maximum-entropy
selection on the same joint training.

``mobyv2al_imbalanced`` is Sec. 4.1's imbalanced CIFAR-10: five classes cut to 500 of their 5,000 pool
images (27,500 in all; 10% of each of those classes at any pool size), 1,000 labels to start, 1,000
added per cycle, 7 cycles.
"""

from __future__ import annotations

from dataclasses import replace

from bench.recipes.simsiam_al import SMOKE
from bench.recipes.spec import Arm, Head, Recipe, Scale

JOINT = Head("moby_al", init="scratch", options={"lambda_c": 0.5, "contrast_labeled": True, "unlabeled_ratio": 1.0,
                                                  "unlabeled_pick": "low_contrastive", "mu": 1})
MULTI = Head("full")

ARMS = (
    Arm("joint-coreset", "coreset", JOINT, note="MoBYv2AL: joint CE + MoBY, CoreSet on f_q"),
    Arm("joint-random", "random", JOINT, note="the same training, random selection (Fig. B.1)"),
    Arm("joint-entropy", "entropy", JOINT, note="the same training, maximum-entropy selection (Fig. B.1)"),
    Arm("multistage-coreset", "coreset", MULTI, note="multi-stage: MoBY pretraining, then fine-tuning (Table 3)"),
)
CLAIMS = ("Joint training beats multi-stage (joint-coreset above multistage-coreset).",
          "CoreSet on the joint model's features beats random and max-entropy (joint-coreset above joint-random "
          "and joint-entropy).")

CPU = Scale(
    name="cpu", pool_size=3000, test_size=1000, arch="resnet18_w32", preprocess="cifar10@16",
    budgets=("10%", "15%", "20%", "25%", "30%", "35%", "40%"), seeds=2, pretrain_minutes=10.0,
    pretrain_options={"batch_size": 128}, steps=300, batch_size=32, head_options={"rank_candidates": 2.0},
    description="2-core CPU, about 70-90 min measured (docs/benchmarks.md): 3,000-image pool, 1,000 test images, "
                "resnet18_w32 at 16 px, 7 cycles from 10% to 40% of the pool (300 to 1,200 labels), 300 steps of "
                "32 labelled + 32 unlabelled per cycle from scratch (lowest-loss subset ranked among 2x "
                "candidates; the multi-stage arm the same 300 steps), MoBY 10 min for the multi-stage arm, 2 seeds")
GPU = Scale(
    name="gpu", pool_size=None, test_size=None, arch="vgg16_bn_cifar", preprocess="cifar10",
    budgets=("5000", "7500", "10000", "12500", "15000", "17500", "20000"), seeds=5,
    pretrain_options={"epochs": 200, "batch_size": 128}, epochs=200, batch_size=128,
    head_options={"lr": 0.01},
    description="the paper's settings (Sec. 4, App. A): full CIFAR-10, VGG-16, 5,000 labels + 2,500 per cycle, "
                "7 cycles, 200 epochs per cycle, batch 128, lr 0.01, queue 4096, tau 0.2, 5 trials")

RECIPE = Recipe(
    name="mobyv2al", title="MoBYv2AL: joint CE + MoBY training, CoreSet on the query encoder",
    paper="Caramalau, Bhattarai, Stoyanov & Kim, MoBYv2AL: Self-supervised Active Learning for Image "
          "Classification, BMVC 2022 (../shared/papers/004_56ae65dc02c3a175.txt)",
    claims=CLAIMS, pretext="moby", arms=ARMS,
    profiles={"smoke": SMOKE, "cpu": CPU, "gpu": GPU},
    reference="Sec. 4.1 / Fig. 2: 89.6% mean test accuracy on CIFAR-10 after 7 cycles (40% labelled), VGG-16, "
              "5 trials; about 20 points above standard learning from the first cycle. Table 3 (left): multi-stage "
              "below joint. Fig. B.1: CoreSet above random and max-entropy.",
)

IMBALANCE = {c: "10%" for c in ("airplane", "automobile", "bird", "cat", "deer")}
IMBALANCED = replace(
    RECIPE, name="mobyv2al_imbalanced", title="MoBYv2AL on imbalanced CIFAR-10 (five classes cut to 10%)",
    claims=("MoBYv2AL (joint-coreset) stays above the baselines on the imbalanced pool.",), imbalance=IMBALANCE,
    profiles={
        "smoke": SMOKE,
        "cpu": replace(CPU, pool_size=5000, budgets=("200", "300", "400", "500", "600", "700", "800"),
                       description="as mobyv2al's cpu profile on the imbalanced pool (2,750 images), 200 labels + "
                                   "100 per cycle (the paper's 1,000 + 1,000 of 27,500, scaled up to a workable "
                                   "start), 7 cycles, 2 seeds; 79 min measured beside other work, about 64 alone "
                                   "(docs/benchmarks.md)"),
        "gpu": replace(GPU, arch="resnet18", budgets=tuple(str(1000 * i) for i in range(1, 8)),
                       description="the paper's imbalanced setting: ResNet-18, pool 27,500 (five classes at 500), "
                                   "1,000 labels + 1,000 per cycle, 7 cycles")},
    reference="Sec. 4.1 / Fig. 4 (left): MoBYv2AL above the CoreGCN baselines through the 7 cycles on the "
              "imbalanced pool (values only in the plot).",
)
