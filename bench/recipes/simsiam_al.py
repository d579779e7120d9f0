"""SimSiam + active learning (Bengar, van de Weijer, Twardowski & Raducanu, "Reducing Label Effort:
Self-Supervised Meets Active Learning", ICCV Workshops 2021; read in the review
../shared/papers/000_9356c819b0c14e6f.txt).

Sec. 1.1 of the review: (1) SimSiam trained on the whole data set, (2) a linear classifier *or an SVM*
trained on the frozen backbone's features of the labelled set, (3) the unlabelled pool ranked by an
acquisition function and the top queried; repeated to the budget. Sec. 1.2: informativeness (we use
maximum entropy) and representativeness (we use core-set, Sener & Savarese 2018) against random.
Sec. 2.1: training from scratch as the other baseline: our ``scratch-random`` arm fine-tunes a randomly
initialised network end to end on the same labels. Budgets are percentages of the pool (Sec. 2.1: 1%,
2%, 10%, up to 50%).

Heads: ``linear`` is training.finetune's softmax probe on frozen features; ``svm`` its LinearSVC head
(exported as a linear layer whose logits are the SVM decision values, so the agent's uncertainty
strategies rank by them).
"""

from __future__ import annotations

from bench.recipes.spec import Arm, Head, Recipe, Scale

LINEAR, SVM = Head("linear"), Head("svm")
SCRATCH = Head("full", init="scratch")

SMOKE = Scale(name="smoke", pool_size=None, test_size=None, arch="resnet18_w32", preprocess="cifar10@8",
              budgets=("6", "12"), seeds=1, pretrain_minutes=0.02,
              pretrain_options={"batch_size": 8, "threads": 1, "progress": False, "knn_every": 0},
              steps=2, batch_size=8, threads=1, device="cpu", description="seconds: the tests' profile")

RECIPE = Recipe(
    name="simsiam_al",
    title="SimSiam + linear / SVM head + active learning",
    paper="Bengar et al., Reducing Label Effort: Self-Supervised Meets Active Learning, ICCVW 2021 "
          "(review: ../shared/papers/000_9356c819b0c14e6f.txt)",
    claims=("Self-supervised features cut the labels needed at low budgets: the SimSiam heads beat the network "
            "trained from scratch on the same number of labels (scratch-random).",
            "At low budgets (below 1% of CIFAR-10) random sampling matches or beats the active-learning methods "
            "(random vs entropy / coreset with the same head)."),
    pretext="simsiam",
    arms=(
        Arm("linear-random", "random", LINEAR, note="SimSiam + linear head, random sampling"),
        Arm("linear-entropy", "entropy", LINEAR, note="informativeness: maximum entropy"),
        Arm("linear-coreset", "coreset", LINEAR, note="representativeness: core-set (k-center greedy)"),
        Arm("svm-random", "random", SVM, note="SimSiam + linear SVM head"),
        Arm("svm-entropy", "entropy", SVM),
        Arm("svm-coreset", "coreset", SVM),
        Arm("scratch-random", "random", SCRATCH, note="train from scratch (no self-supervision), random"),
    ),
    profiles={
        "smoke": SMOKE,
        "cpu": Scale(
            name="cpu", pool_size=5000, test_size=2000, arch="resnet18_w32", preprocess="cifar10",
            budgets=("1%", "2%", "10%", "20%"), seeds=3, pretrain_minutes=20.0,
            pretrain_options={"batch_size": 128}, steps=100, batch_size=32,
            description="2-core CPU, about 75 min by estimate: 5,000-image class-balanced pool, 2,000 test images, "
                        "resnet18_w32 at 32 px (SimSiam 20 min with 16 px views), budgets 1/2/10/20% of the "
                        "pool (50/100/500/1000 labels), 3 seeds; the scratch arm trains 100 steps of 32 per round"),
        "gpu": Scale(
            name="gpu", pool_size=None, test_size=None, arch="resnet18", preprocess="cifar10",
            budgets=("0.1%", "0.2%", "1%", "2%", "10%", "20%", "30%", "40%", "50%"), seeds=3,
            pretrain_options={"epochs": 800, "batch_size": 512,
                              "method_options": {"proj_dim": 2048, "pred_dim": 512}},
            epochs=200, batch_size=128, device="auto",
            description="the paper's settings: full CIFAR-10, ResNet-18, SimSiam 800 epochs (batch 512, heads "
                        "2048/512), budgets 0.1% to 50%, 3 seeds; the scratch arm 200 epochs per round"),
    },
    reference="Review Sec. 2.2 (CIFAR-10 figure, values read off the plot, not tabulated in the text): with "
              "self-training the curves start far above training from scratch at 1-2% labels and the two "
              "meet near 50%; below 1% random sampling is above every AL method.",
)
