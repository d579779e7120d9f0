"""Fine-tuning an encoder with labels: ``finetune(FinetuneConfig(...), data, priors) -> run_dir``.

Modes (``FINETUNE_MODES``):

- ``linear``: linear probe on the frozen encoder (Bengar et al., "Reducing Label Effort: Self-Supervised
  Meets Active Learning", ICCV Workshops 2021): features computed once, a softmax classifier trained on them.
- ``full``: encoder + classifier trained end to end with cross-entropy on weakly augmented labelled images.
- ``as3l``: the semi-supervised stage of AS3L (Wen, Pizarro & Williams, "Active self-semi-supervised learning
  for few labeled samples", Neurocomputing 2024; Sec. 3.4 and Sec. 4.1, checked against the paper's text in
  ../shared/papers/001_972fd52aa54e2368.txt). Eq. 2: loss = CE(labelled, weak view) (Eq. 3) + lambda *
  Loss_un; Eq. 4: Loss_un is FixMatch's consistency loss (Sohn et al. 2020) over the mu*B unlabelled rows,
  the hard pseudo-label of the posterior against the strong view, masked by FlexMatch's class-wise
  thresholds (Zhang et al. 2021, convex mapping M(x) = x / (2 - x) with threshold warm-up, checked against
  the USB reference code); Eq. 5: the posterior is ``normalize(prior + prediction)`` for the first T
  (``prior_iters``) iterations and the prediction alone afterwards (``prior_after="remove"``), or, with
  ``prior_after="update"``, the prior is re-computed by clustering the semi-supervised features (the
  agent's as3l prior method on the current encoder's features) every T iterations and kept in Eq. 5
  ("update y_prior by re-clustering on semi-supervised features", Sec. 3.4). Sec. 4.1's settings are the
  defaults: SGD momentum 0.9 (Nesterov, as FixMatch), lr 0.03 with FixMatch's cosine decay
  lr * cos(7 pi k / (16 K)), lambda = 1, mu = 7, batch 64, T = 6900. tau = 0.95 is FixMatch's (Sohn et al.
  2020, Sec. 4; FlexMatch's upper threshold): AS3L's Sec. 3.4 names FlexMatch's adaptive threshold and Sec.
  4.1 gives no value. The priors are the agent's PriorLabels (class probabilities per unlabelled sample).
- ``svm``: a linear SVM on the same frozen features (Bengar et al. 2021 use "a linear classifier or an
  SVM"): scikit-learn's ``LinearSVC`` (one-vs-rest, squared hinge; C = ``svm_c``, or by default chosen by
  stratified cross-validation on the labelled rows from ``SVM_C_GRID``) on standardised
  features; the scaling is folded into the weights so the exported ``logits`` are the SVM's decision
  values (signed distances to the hyperplanes, the SVM uncertainty of Barda et al. Sec. 2.1 item 4).
- ``moby_al``: MoBYv2AL's joint objective (Caramalau et al. 2022, Sec. 3): cross-entropy on the labelled
  batch + lambda_c * MoBY contrastive loss on unlabelled views, lambda_c = 0.5. ``contrast_labeled`` adds
  the labelled images to the contrastive batch (Sec. 3: the queue and the moving average are updated
  with both). ``unlabeled_ratio`` limits the unlabelled rows trained on to ratio x the labelled count (Sec.
  4.1 "Comparison with other SSL-AL": an amount equal to the labelled samples), chosen by
  ``unlabeled_pick``: "random", or "low_contrastive" (Sec. 4.2: the unlabelled samples with the lowest
  contrastive loss). The paper does not say how often or over what the loss is ranked; ours: training
  starts on a random subset, and at 1/3 and 2/3 of the run the subset becomes the lowest-loss rows under
  the current model among a random candidate set ``rank_candidates`` x the subset's size (ranking all of
  a 45,000-image pool would cost more than the training).

Any mode: ``rotation_weight`` > 0 adds that weight times the RotNet loss of the labelled batch (the encoder
needs its rotation head, i.e. a RotNet-pretrained init), so the exported rotation head stays matched to
the fine-tuned backbone and the agent's pretext loss (strategy ``das``) is the current model's.

Augmentation (training.augment, batched on the device with per-sample draws from the run's generator): the
labelled batch and as3l's weak view get the weak crop + flip (``WEAK``); as3l's strong view is FixMatch's,
``strong_augment``: its own weak crop + flip, then RandAugment (2 ops per sample from FixMatch's 14, each with a
random magnitude in the paper's ranges) and Cutout (side up to half the image, gray), see ``rand_augment``.
moby_al's two contrastive views are SimCLR-strength crop + colour jitter (``CONTRASTIVE``).
"""

from __future__ import annotations

import dataclasses
import math
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.optim.swa_utils import AveragedModel

from shortlist.manifest import Preprocess
from training import loop
from training.augment import WEAK, AugmentConfig, augment, strong_augment
from training.backbones import build_backbone
from training.configs import FinetuneConfig as FinetuneConfig
from training.data import TensorData, load, report_skipped
from training.methods import Encoder, MoBY, rotate_batch, rotation_loss
from training.modes import FINETUNE_MODES as FINETUNE_MODES
from training.modes import MODES, FinetuneMode
from training.pretrain import load_encoder, preprocess_by_name, save_encoder

UNLABELED_PICKS = ("random", "low_contrastive")
PRIOR_AFTER = ("remove", "update")  # AS3L Sec. 3.4: what happens to the prior after T iterations
HEAD_INITS = ("random", "probe")  # the classifier a trained mode starts from (see FinetuneConfig.head_init)
CONTRASTIVE = AugmentConfig(crop_scale=(0.2, 1.0))  # moby_al's views (SimSiam / SimCLR CIFAR strength)


def keep_labels_per_class(data: TensorData, n: int, seed: int) -> TensorData:
    """A copy where only ``n`` random labels per class remain (the others set to -1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full_like(data.labels, -1)
    for c in range(len(data.classes)):
        rows = torch.nonzero(data.labels == c).flatten()
        keep = rows[torch.randperm(len(rows), generator=g)[:n]]
        labels[keep] = c
    return TensorData(data.images, labels, data.classes, data.ids, data.skipped)


# ------------------------------------------------------------------------------------------ AS3L pieces


def as3l_posterior(probs: torch.Tensor, prior: torch.Tensor | None, step: int, prior_iters: int) -> torch.Tensor:
    """AS3L's posterior (Sec. 3.4, Eq. 5): q = normalize(prior + p) for the first T iterations (steps 0..T-1,
    the paper's t <= T counting from 1), else p.

    probs, prior: UxC -> UxC, rows sum to 1."""
    if prior is None or step >= prior_iters:
        return probs
    q = probs + prior
    return q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)


def flex_thresholds(learned: torch.Tensor, num_classes: int, tau: float, n_unlabeled: int,
                    warmup: bool = True) -> torch.Tensor:
    """FlexMatch class-wise thresholds (Zhang et al. 2021; as in the USB reference code): C float.

    ``learned``: per unlabelled sample, the class it is confidently (>= tau) predicted as, or -1.
    sigma_c = count of c; beta_c = sigma_c / max(max_c sigma, #unused) (with warm-up) or / max sigma;
    threshold_c = M(beta_c) * tau with M(x) = x / (2 - x).
    """
    sigma = torch.bincount(learned[learned >= 0], minlength=num_classes).float()
    unused = float(n_unlabeled - int((learned >= 0).sum()))
    denom = max(float(sigma.max()), unused) if warmup else float(sigma.max())
    beta = sigma / max(denom, 1.0)
    return beta / (2 - beta) * tau


def fixmatch_unlabeled_loss(logits_strong: torch.Tensor, posterior: torch.Tensor,
                            thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AS3L's Loss_un (Sec. 3.4, Eq. 4), FixMatch's unlabelled loss (Sohn et al. 2020) with per-class
    thresholds: the batch mean of 1[max q >= t_argmax] CE(strong, argmax q). Eq. 4 writes ">"; ">=" is the
    FlexMatch reference code's (the two differ only on exact ties).

    logits_strong: UxC; posterior: UxC (no gradient); thresholds: C. Returns (loss, mask U float).
    """
    conf, pseudo = posterior.max(dim=1)
    mask = (conf >= thresholds[pseudo]).float()
    ce = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (ce * mask).mean(), mask


def ema_avg_fn(momentum: float) -> Any:
    """The averaging function of the weight EMA (``torch.optim.swa_utils.AveragedModel``'s ``avg_fn``).

    FlexMatch's reference code (USB, config/classic_cv/flexmatch/flexmatch_cifar10_40_0.yaml: ema_m 0.999;
    TorchSSL likewise, as FixMatch, Sohn et al. 2020) evaluates an EMA of the parameters, started from the
    initial weights, with the live model's BatchNorm statistics (``use_buffers=False`` here). Over the few
    hundred iterations of a short run a 0.999 EMA would still be mostly the initial weights (0.999^300 =
    0.74), so the momentum warms up as in ``tf.train.ExponentialMovingAverage(num_updates=n)``:
    d_n = min(momentum, (1 + n) / (10 + n)); from n of about 9,000 on it is the reference's 0.999."""

    def avg(ema_p: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = ((1.0 + n) / (10.0 + n)).clamp(max=momentum).to(ema_p.dtype)
        return ema_p * d + p * (1 - d)

    return avg


def fixmatch_lr(base: float, progress: float) -> float:
    """FixMatch's cosine decay (Sohn et al. 2020, Sec. 4; FlexMatch's too), the "cosine annealing learning
    rate scheduler" of AS3L's Sec. 4.1: base * cos(7 pi k / (16 K)), ``progress`` = k / K in [0, 1]."""
    return base * math.cos(7 * math.pi * min(max(progress, 0.0), 1.0) / 16)


@torch.no_grad()
def test_accuracy(enc: Encoder, data: TensorData, pre: Preprocess, rt: loop.Runtime) -> float:
    """Top-1 accuracy in [0, 1] of enc's classifier on ``data`` (plain preprocessing, eval mode); the
    module's train/eval mode is restored."""
    from training.augment import plain

    was = enc.training
    enc.eval()
    correct = 0
    for i in range(0, len(data), 512):
        with rt.autocast():
            logits = _logits(enc, plain(data.images[i:i + 512].to(rt.device), pre))
        correct += int((logits.float().argmax(dim=1).cpu() == data.labels[i:i + 512]).sum())
    enc.train(was)
    return correct / max(1, len(data))


def _no_knn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``Pool.knn`` for ``recluster_prior``: the as3l prior reads no neighbours (it clusters the embeddings), so
    none is built; a method that asked would fail here rather than run a dense QxN product and a full sort."""
    raise RuntimeError(f"recluster_prior: the as3l prior asked for {k} neighbours of {len(queries)} rows; build a "
                       "kNN index (agent.index) for the pool before using a method that needs one")


def recluster_prior(enc: Encoder, data: TensorData, lab: torch.Tensor, unl: torch.Tensor, pre: Preprocess,
                    rt: loop.Runtime, seed: int) -> torch.Tensor:
    """AS3L's prior update (Sec. 3.4: "update y_prior by re-clustering on semi-supervised features"): the
    agent's as3l prior method (constrained seed k-means, Sec. 3.3) on the current encoder's L2-normalised
    features of every row, seeded by the labelled rows. Returns UxC float32 (rows of ``unl``)."""
    from agent.pool import Pool
    from agent.priors import get_prior_method

    was = enc.training
    feats = _raw_features(enc, data.images, pre, rt).cpu().numpy().astype(np.float32)
    enc.train(was)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

    pool = Pool(embeddings=feats, labeled=lab.numpy().astype(np.int64), labels=data.labels[lab].numpy(),
                classes=list(data.classes), candidates=unl.numpy().astype(np.int64), knn=_no_knn)
    # The paper's y_prior (normalised votes), not the agent's calibrated default.
    priors = get_prior_method("as3l")(pool, pool.candidates, np.random.default_rng(seed), {"calibrate": "false"})
    return torch.from_numpy(np.asarray(priors.probs, np.float32))


# ---------------------------------------------------------------------------------------------- runner


def _init_encoder(cfg: FinetuneConfig, num_classes: int) -> tuple[Encoder, str]:
    if cfg.init:
        enc, meta = load_encoder(Path(cfg.init))
        if not (cfg.keep_head and enc.classifier is not None and enc.classifier.out_features == num_classes):
            enc.classifier = nn.Linear(enc.dim, num_classes)
        return enc, str(meta["arch"])
    return Encoder(build_backbone(cfg.arch), num_classes=num_classes), cfg.arch


def _logits(enc: Encoder, x: torch.Tensor) -> torch.Tensor:
    assert enc.classifier is not None
    return enc.classifier(enc(x))


def linear_probe(enc: Encoder, data: TensorData, pre: Preprocess, rt: loop.Runtime, epochs: int,
                 seed: int) -> float:
    """Train enc.classifier (softmax regression, full batch, Adam) on frozen raw features of the labelled
    rows, computed once; returns the final training accuracy in [0, 1]."""
    assert enc.classifier is not None
    rows = data.labeled_rows
    feats = _raw_features(enc, data.images[rows], pre, rt)  # LxD, what the exported classifier sees
    y = data.labels[rows].to(rt.device)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(enc.classifier.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        loss = F.cross_entropy(enc.classifier(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((enc.classifier(feats).argmax(1) == y).float().mean())


# LinearSVC's C candidates. On standardised features with few labels (50 rows of 512-d features: separable)
# a large C is a hard margin fitted to noise dimensions; at C = 1 the simsiam_al cpu run's SVM head fell well
# below the linear one (docs/benchmarks.md, "`simsiam_al`, the `cpu` profile end to end"), so C is chosen per fit.
SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def svm_c_by_cv(x: np.ndarray, y: np.ndarray, seed: int, grid: tuple[float, ...] = SVM_C_GRID) -> float:
    """The C of ``grid`` with the best mean accuracy under stratified k-fold cross-validation on x (NxD,
    standardised) / y (N int), k = min(5, the smallest class's count); ties go to the smaller C. With a
    class of one row there is no fold to validate on: the middle of the grid."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    k = min(5, int(np.bincount(y)[np.unique(y)].min()))
    if k < 2:
        return grid[len(grid) // 2]
    search = GridSearchCV(LinearSVC(random_state=seed, max_iter=5000), {"C": list(grid)},
                          cv=StratifiedKFold(k, shuffle=True, random_state=seed)).fit(x, y)
    scores = search.cv_results_["mean_test_score"]
    return float(grid[int(np.flatnonzero(scores >= scores.max() - 1e-12)[0])])


def svm_probe(enc: Encoder, data: TensorData, pre: Preprocess, rt: loop.Runtime, c: float, seed: int) -> float:
    """Fit a linear SVM (scikit-learn ``LinearSVC``, one-vs-rest, C = ``c``, or when ``c`` is 0 the C that
    ``svm_c_by_cv`` picks) on the standardised frozen raw
    features of the labelled rows and write it into enc.classifier: for standardisation (mu, sigma) and
    SVM weights (w, b), logits = x @ (w / sigma).T + (b - (w / sigma) @ mu), the decision values. Classes
    with no labelled row get weight 0 and bias -10 (far below any labelled class's margin); with two
    labelled classes the single hyperplane d becomes (-d/2, +d/2). Returns the training accuracy."""
    from sklearn.svm import LinearSVC

    assert enc.classifier is not None
    rows = data.labeled_rows
    feats = _raw_features(enc, data.images[rows], pre, rt).cpu().double().numpy()
    y = data.labels[rows].numpy()
    mu, sigma = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    classes = np.unique(y)
    weight = np.zeros((enc.classifier.out_features, feats.shape[1]))
    bias = np.full(enc.classifier.out_features, -10.0)
    if len(classes) == 1:  # one labelled class: it wins everywhere
        bias[classes[0]] = 10.0
    else:
        z = (feats - mu) / sigma
        svm = LinearSVC(C=c if c > 0 else svm_c_by_cv(z, y, seed), random_state=seed, max_iter=5000).fit(z, y)
        w, b = svm.coef_, svm.intercept_
        if len(classes) == 2:
            w, b = np.stack([-w[0] / 2, w[0] / 2]), np.asarray([-b[0] / 2, b[0] / 2])
        weight[classes] = w / sigma
        bias[classes] = b - (w / sigma) @ mu
    with torch.no_grad():
        enc.classifier.weight.copy_(torch.from_numpy(weight).float())
        enc.classifier.bias.copy_(torch.from_numpy(bias).float())
        logits = enc.classifier(torch.from_numpy(feats).float().to(enc.classifier.weight.device))
        return float((logits.argmax(1).cpu().numpy() == y).mean())


Probe = Callable[[Encoder, TensorData, Preprocess, loop.Runtime, FinetuneConfig], float]


def linear_head(enc: Encoder, data: TensorData, pre: Preprocess, rt: loop.Runtime, cfg: FinetuneConfig) -> float:
    """linear's FinetuneMode.probe."""
    return linear_probe(enc, data, pre, rt, cfg.linear_epochs, cfg.seed)


def svm_head(enc: Encoder, data: TensorData, pre: Preprocess, rt: loop.Runtime, cfg: FinetuneConfig) -> float:
    """svm's FinetuneMode.probe."""
    return svm_probe(enc, data, pre, rt, cfg.svm_c, cfg.seed)


def probe_of(mode: FinetuneMode) -> Probe:
    """A frozen mode's fit of enc.classifier on the frozen features (its ``probe``, training.modes.MODES);
    returns the training accuracy in [0, 1]."""
    return cast(Probe, pkgutil.resolve_name(mode.probe))


def _cosine_lr(base: float, progress: float) -> float:
    return loop.cosine_lr(base, progress, 0.0)


# The trained modes' learning rate at ``progress`` in [0, 1] of the budget, by FinetuneMode.lr_schedule.
LR_SCHEDULES: dict[str, Callable[[float, float], float]] = {"cosine": _cosine_lr, "fixmatch": fixmatch_lr}


@torch.no_grad()
def contrastive_losses(moby: MoBY, images: torch.Tensor, pre: Preprocess, gen: torch.Generator,
                       rt: loop.Runtime, batch: int = 512) -> torch.Tensor:
    """Per-image MoBY contrastive loss (MoBYv2AL Sec. 4.2) under the current model, without updating it:
    two ``CONTRASTIVE`` views, ``MoBY.per_sample_loss``. images: Nx3xHxW uint8 -> N float (nats)."""
    was = moby.training
    moby.eval()
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(rt.device)
        v1 = augment(x, pre, CONTRASTIVE, gen, rt.channels_last)
        v2 = augment(x, pre, CONTRASTIVE, gen, rt.channels_last)
        with rt.autocast():
            out.append(moby.per_sample_loss(v1, v2).float().cpu())
    moby.train(was)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def _raw_features(enc: Encoder, images: torch.Tensor, pre: Preprocess, rt: loop.Runtime) -> torch.Tensor:
    from training.augment import plain

    enc.eval()
    out = [enc(plain(images[i:i + 512].to(rt.device), pre)).float() for i in range(0, len(images), 512)]
    return torch.cat(out)


def finetune(config: FinetuneConfig, data: TensorData | None = None, priors: torch.Tensor | None = None,
             console: Console | None = None, eval_data: TensorData | None = None,
             eval_from_data: bool = False, pre: Preprocess | None = None) -> Path:
    """Train per ``config``; ``data`` overrides config.data (``pre``: the preprocessing it was decoded with, to
    train and publish with instead of config.preprocess's preset, e.g. an --init run's own: ``shortlist cycle``);
    ``priors`` is UxC (rows of the unlabelled samples of ``data`` in order) for as3l. ``eval_data`` (labelled, at
    the model's input size): test accuracy every ``eval_every`` steps and at the end, in metrics.jsonl (kind
    "eval") and the summary (``eval``: [[step, accuracy], ...], ``test_accuracy``, ``best_test_accuracy``).
    ``eval_from_data`` (the CLI): without ``eval_data``, the test split of ``config.data`` when it has one (said
    when it has none). Returns the run folder (encoder.pt has the classifier)."""
    cfg = config
    if cfg.mode not in FINETUNE_MODES:
        raise ValueError(f"unknown fine-tuning mode {cfg.mode!r}; valid: {', '.join(FINETUNE_MODES)}")
    if cfg.prior_after not in PRIOR_AFTER:
        raise ValueError(f"unknown prior_after {cfg.prior_after!r}; valid: {', '.join(PRIOR_AFTER)}")
    if cfg.unlabeled_pick not in UNLABELED_PICKS:
        raise ValueError(f"unknown unlabeled_pick {cfg.unlabeled_pick!r}; valid: {', '.join(UNLABELED_PICKS)}")
    if cfg.head_init not in HEAD_INITS:
        raise ValueError(f"unknown head_init {cfg.head_init!r}; valid: {', '.join(HEAD_INITS)}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1) (0: off; FlexMatch's 0.999), got {cfg.ema}")
    mode = MODES[cfg.mode]
    if mode.probe_epochs and cfg.epochs is not None:  # a head fitted once: epochs are the probe's (steps and
        cfg = dataclasses.replace(cfg, linear_epochs=cfg.epochs)  # minutes do not apply; the CLI refuses them)
    console = console or Console()
    rt = loop.setup_runtime(cfg.device, cfg.amp, cfg.channels_last, cfg.threads)
    pre = pre if pre is not None else preprocess_by_name(cfg.preprocess)
    if data is None:
        if not cfg.data:
            raise ValueError("give --data SOURCE (or pass TensorData)")
        data = load(cfg.data, "train", pre.size)
    if eval_data is None and eval_from_data and cfg.data:
        try:
            eval_data = load(cfg.data, "test", pre.size, classes=data.classes)
        except (FileNotFoundError, ValueError) as e:
            if rt.is_main:
                console.print(f"[yellow]no held-out evaluation:[/] {e}")
    if cfg.labels_per_class is not None:
        data = keep_labels_per_class(data, cfg.labels_per_class, cfg.seed)
    lab = data.labeled_rows
    unl = torch.nonzero(data.labels < 0).flatten()
    if len(lab) == 0:
        raise ValueError("no labelled samples: label some first (shortlist label) or use pretrain")
    if priors is not None and priors.shape != (len(unl), len(data.classes)):
        raise ValueError(f"priors must be {len(unl)}x{len(data.classes)} (unlabelled x classes), "
                         f"got {tuple(priors.shape)}")
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    enc, arch = _init_encoder(cfg, len(data.classes))
    if cfg.rotation_weight > 0 and enc.rotation is None:
        raise ValueError("rotation_weight needs an encoder with a rotation head: --init a RotNet pretraining run")
    enc = enc.to(rt.device)
    if rt.channels_last:
        enc = enc.to(memory_format=torch.channels_last)
    log = loop.MetricsLog(run_dir, rt.is_main)
    config_dict = dataclasses.asdict(cfg)
    # A folder used before (a cycle's --out again): its encoder.pt and summary.json are another run's; left
    # beside this run's checkpoint they would be published if this one were stopped (export refuses a run with
    # checkpoint.pt and no summary.json). This run writes its own when it finishes.
    loop.discard_result(run_dir)
    loop.write_json(run_dir / loop.CONFIG, config_dict)
    skipped = report_skipped(run_dir, console, data) if rt.is_main else 0
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"mode": cfg.mode, "labeled": len(lab), "unlabeled": len(unl),
                               "skipped_images": skipped}

    if mode.frozen:
        acc = probe_of(mode)(enc, data, pre, rt, cfg)
        summary.update(train_acc=acc)
        log.write(kind=cfg.mode, train_acc=acc)
        if eval_data is not None:
            summary.update(test_accuracy=test_accuracy(enc, eval_data, pre, rt))
    else:
        if cfg.head_init == "probe" and not cfg.resume:  # LP-FT: the probe's head, then train end to end
            summary.update(probe_train_acc=linear_probe(enc, data, pre, rt, cfg.linear_epochs, cfg.seed))
        run = _Run(cfg=cfg, enc=enc, data=data, lab=lab, unl=unl, pre=pre, rt=rt, run_dir=run_dir, log=log,
                   eval_data=eval_data)
        summary.update(_train_loop(run, priors))
    summary["seconds"] = time.perf_counter() - t0
    if eval_data is not None:
        summary["test_images"] = len(eval_data.labeled_rows)
    save_encoder(run_dir, enc, arch=arch, method=f"finetune:{cfg.mode}", pre=pre, classes=data.classes,
                 config=config_dict, dataset=cfg.data or "", metrics=summary)
    loop.write_json(run_dir / loop.SUMMARY, summary)
    return run_dir


@dataclass(frozen=True)
class _Run:
    """A fine-tuning run's fixed inputs, set up by ``finetune``: what the training loop of the trained modes
    reads (and trains: ``enc``, in place)."""

    cfg: FinetuneConfig
    enc: Encoder  # on rt.device, with its classifier
    data: TensorData  # Nx3xHxW uint8 images; N labels (-1: unlabelled)
    lab: torch.Tensor  # L long: the rows of data with a label
    unl: torch.Tensor  # U long: the rows without one
    pre: Preprocess
    rt: loop.Runtime
    run_dir: Path
    log: loop.MetricsLog
    eval_data: TensorData | None  # labelled test images (test_accuracy), or None


@dataclass
class _Loop:
    """The training loop of the trained modes (full, as3l, moby_al), set up by ``_prepare_loop``: the
    optimiser, the step budget, and what carries over from step to step (and through checkpoint.pt's
    ``state.extra``: ``learned``, ``evals``, ``upool``, moby_al's ``ranked``)."""

    run: _Run
    model: nn.Module  # what is optimised and checkpointed: moby_al's MoBY around enc, else enc
    moby: MoBY | None
    opt: torch.optim.Optimizer
    ema: AveragedModel | None  # an EMA of enc's weights, evaluated and exported (FlexMatch's), or None: enc's
    modules: dict[str, Any]  # checkpoint.pt's modules (model, optimizer, ema)
    gen: torch.Generator  # the augmentations' draws, on rt.device
    budget: loop.Budget
    state: loop.TrainState
    semi: bool  # as3l / moby_al with unlabelled rows to train on
    bs: int  # labelled batch
    ubs: int  # unlabelled batch (mu x batch_size, at most ``subset``; 0 without semi)
    subset: int  # unlabelled rows trained on: moby_al's unlabeled_ratio x L, else U
    update: bool  # as3l with prior_after="update" and priors: the prior is re-clustered every T steps
    learned: torch.Tensor  # U long: FlexMatch's confidently (>= tau) predicted class per unlabelled row, or -1
    prior_dev: torch.Tensor | None  # UxC float on rt.device: the prior of AS3L's Eq. 5
    upool: torch.Tensor  # moby_al's unlabelled subset: ``subset`` indices into run.unl
    evals: list[list[float]]  # [[step, test accuracy in [0, 1]], ...]
    lr_at: Callable[[float, float], float]  # the mode's schedule (LR_SCHEDULES): lr at a progress in [0, 1]
    step_loss: StepLoss  # a step's loss: the mode's unlabelled_loss_of with ``semi``, else _labelled_loss
    mask_rate: float = 0.0  # as3l: the last step's fraction of unlabelled rows above their threshold
    loss_val: float = float("nan")  # the last step's loss
    last_ckpt: float = 0.0  # time.perf_counter() of the last checkpoint

    def evaluated(self) -> Encoder:
        return self.run.enc if self.ema is None else self.ema.module  # type: ignore[return-value]

    def evaluate(self) -> None:
        """Test accuracy of the evaluated weights on run.eval_data at this step (once per step), logged."""
        run, state = self.run, self.state
        if run.eval_data is not None and (not self.evals or self.evals[-1][0] != state.step):
            acc = test_accuracy(self.evaluated(), run.eval_data, run.pre, run.rt)
            self.evals.append([state.step, acc])
            run.log.write(kind="eval", step=state.step, test_accuracy=acc, seconds=state.seconds)

    def checkpoint(self) -> None:
        """checkpoint.pt, with what the loop carries in ``state.extra``."""
        self.state.extra["learned"] = self.learned.tolist()
        self.state.extra["eval"] = self.evals
        if self.subset < len(self.run.unl):
            self.state.extra["upool"] = self.upool.tolist()
        loop.save_checkpoint(self.run.run_dir, self.state, self.modules, self.gen, dataclasses.asdict(self.run.cfg))

    def train_step(self) -> float:
        """One optimiser step on a labelled batch (+ as3l's or moby_al's unlabelled batch); returns its lr.
        Random draws, in this order: the labelled rows (a CPU generator seeded by seed and step), their weak
        view (``gen``), then the mode's unlabelled rows and views (``_as3l_loss``, ``_moby_loss``)."""
        run, cfg, state = self.run, self.run.cfg, self.state
        data, pre, rt, enc = run.data, run.pre, run.rt, run.enc
        t0 = time.perf_counter()
        g_cpu = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
        lrows = run.lab[torch.randint(0, len(run.lab), (self.bs,), generator=g_cpu)]
        xl = augment(data.images[lrows].to(rt.device), pre, WEAK, self.gen, rt.channels_last)
        yl = data.labels[lrows].to(rt.device)
        progress = self.budget.progress(state.step, state.seconds)
        lr = self.lr_at(cfg.lr, progress)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with rt.autocast():
            loss = self.step_loss(self, xl, yl, lrows, g_cpu)
            if cfg.rotation_weight > 0:
                rotated, targets = rotate_batch(xl)
                assert enc.rotation is not None
                loss = loss + cfg.rotation_weight * rotation_loss(enc.rotation(enc(rotated)), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {state.step}: lower --lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(enc)
        self.loss_val = float(loss.detach())
        state.step += 1
        state.seconds += time.perf_counter() - t0
        state.images += self.bs + self.ubs
        return lr

    def _as3l_loss(self, xl: torch.Tensor, yl: torch.Tensor, g_cpu: torch.Generator) -> torch.Tensor:
        """AS3L's Eq. 2 on one batch: CE(labelled) (Eq. 3) + lambda_u * Loss_un (Eq. 4) over ``ubs`` unlabelled
        rows drawn from ``g_cpu``, their weak then strong views drawn from ``gen``. xl: Bx3xHxW (weak view),
        yl: B. Updates ``learned`` (FlexMatch) and ``mask_rate``."""
        run, cfg, rt = self.run, self.run.cfg, self.run.rt
        data, unl, pre = run.data, run.unl, run.pre
        pick = torch.randint(0, len(unl), (self.ubs,), generator=g_cpu)
        imgs = data.images[unl[pick]].to(rt.device)
        xw = augment(imgs, pre, WEAK, self.gen, rt.channels_last)
        xs = strong_augment(imgs, pre, self.gen, rt.channels_last)
        # One forward pass over labelled + weak + strong, as FlexMatch's code (TorchSSL; USB's
        # use_cat): BatchNorm normalises all three with the statistics of the whole batch, and its
        # running statistics (eval mode) are those of that mix. Separate passes normalised the
        # labelled CE with the statistics of a batch of a few distinct images (10 labels: 64 draws
        # of 10) and left the running statistics to the strongly augmented batch, the last pass.
        logits_l, logits_w, logits_s = _logits(run.enc, torch.cat([xl, xw, xs])).split(
            [len(xl), len(xw), len(xs)])
        loss = F.cross_entropy(logits_l.float(), yl)
        probs = logits_w.detach().float().softmax(dim=1)
        # Eq. 5; with "update" the (re-clustered) prior stays in the posterior after T.
        prior_batch = self.prior_dev[pick.to(rt.device)] if self.prior_dev is not None else None
        post = as3l_posterior(probs, prior_batch, 0 if self.update else self.state.step, cfg.prior_iters)
        if cfg.flex:
            thr = flex_thresholds(self.learned, len(data.classes), cfg.threshold, len(unl)).to(rt.device)
        else:
            thr = torch.full((len(data.classes),), cfg.threshold, device=rt.device)
        lu, mask = fixmatch_unlabeled_loss(logits_s, post, thr)
        conf, pseudo = post.max(dim=1)
        hit = (conf >= cfg.threshold).cpu()  # >= as the reference code
        self.learned[pick[hit]] = pseudo.cpu()[hit]
        loss = loss + cfg.lambda_u * lu
        self.mask_rate = float(mask.mean())
        return loss

    def _moby_loss(self, lrows: torch.Tensor, g_cpu: torch.Generator) -> torch.Tensor:
        """MoBYv2AL's contrastive loss (Sec. 3, before lambda_c) on ``ubs`` rows of the unlabelled subset drawn
        from ``g_cpu`` (+ the labelled batch's rows ``lrows`` with contrast_labeled), two ``CONTRASTIVE``
        views drawn from ``gen``; with low_contrastive the subset is re-ranked first when due (Sec. 4.2)."""
        run, cfg, rt, state = self.run, self.run.cfg, self.run.rt, self.state
        data, unl, pre = run.data, run.unl, run.pre
        assert self.moby is not None
        ranks_due = int(3 * self.budget.progress(state.step, state.seconds))  # 0, 1 at 1/3, 2 at 2/3
        if (cfg.unlabeled_pick == "low_contrastive" and self.subset < len(unl)
                and min(ranks_due, 2) > int(state.extra.get("ranked", 0))):  # Sec. 4.2
            n_cand = min(len(unl), max(self.subset, round(cfg.rank_candidates * self.subset)))
            cand = torch.randperm(len(unl), generator=g_cpu)[:n_cand]
            losses = contrastive_losses(self.moby, data.images[unl[cand]], pre, self.gen, rt)
            self.upool = cand[torch.argsort(losses)[:self.subset]]
            state.extra["ranked"] = min(ranks_due, 2)
        pick = self.upool[torch.randint(0, len(self.upool), (self.ubs,), generator=g_cpu)]
        imgs = data.images[unl[pick]].to(rt.device)
        if cfg.contrast_labeled:
            imgs = torch.cat([data.images[lrows].to(rt.device), imgs])
        v1 = augment(imgs, pre, CONTRASTIVE, self.gen, rt.channels_last)
        v2 = augment(imgs, pre, CONTRASTIVE, self.gen, rt.channels_last)
        self.moby.set_progress(self.budget.progress(state.step, state.seconds))
        return self.moby(v1, v2)

    def after_step(self, lr: float, stop: loop.StopFlag) -> None:
        """The bookkeeping after a step: the prior re-clustered every T steps (AS3L Sec. 3.4, "update"), the
        test accuracy every eval_every steps, the train metrics every 20 steps and at the end, checkpoint.pt
        every checkpoint_minutes and on a signal (then loop.Interrupted: the run is unfinished)."""
        run, cfg, state = self.run, self.run.cfg, self.state
        if self.update and cfg.prior_iters > 0 and state.step % cfg.prior_iters == 0:  # Sec. 3.4: every T
            self.prior_dev = recluster_prior(run.enc, run.data, run.lab, run.unl, run.pre, run.rt,
                                             cfg.seed + state.step).to(run.rt.device)
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            self.evaluate()
        if state.step % 20 == 0 or self.budget.done(state.step, state.seconds):
            run.log.write(kind="train", step=state.step, loss=self.loss_val, lr=lr, mask_rate=self.mask_rate,
                          seconds=state.seconds)
        if stop.stop or time.perf_counter() - self.last_ckpt >= cfg.checkpoint_minutes * 60:
            self.checkpoint()
            self.last_ckpt = time.perf_counter()
            if stop.stop:  # unfinished: no encoder.pt, the caller must not use the run as a result
                raise loop.Interrupted(stop.signal_name, state.step, run.run_dir,
                                       "nothing to export: run the command again to train it to the end "
                                       "(from Python, FinetuneConfig.resume continues it)")

    def finish(self) -> dict[str, Any]:
        """The last evaluation and checkpoint; the evaluated weights into run.enc (eval mode). Returns the
        summary's training part."""
        self.evaluate()
        self.checkpoint()
        enc = self.run.enc
        if self.ema is not None:  # the exported encoder is the evaluated one (the checkpoint keeps both)
            enc.load_state_dict(self.evaluated().state_dict())
        enc.eval()
        state = self.state
        out: dict[str, Any] = {"steps": state.step, "final_loss": self.loss_val, "mask_rate": self.mask_rate,
                               "images_per_s": state.images / max(state.seconds, 1e-9)}
        if self.evals:
            out.update(eval=self.evals, test_accuracy=self.evals[-1][1],
                       best_test_accuracy=max(a for _, a in self.evals))
        return out


StepLoss = Callable[[_Loop, torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _labelled_loss(lp: _Loop, xl: torch.Tensor, yl: torch.Tensor, lrows: torch.Tensor,
                   g_cpu: torch.Generator) -> torch.Tensor:
    """Cross-entropy on the labelled batch (xl: Bx3xHxW weak view of the rows ``lrows``, yl: B): a step's loss
    without unlabelled rows to train on."""
    return F.cross_entropy(_logits(lp.run.enc, xl).float(), yl)


def as3l_step_loss(lp: _Loop, xl: torch.Tensor, yl: torch.Tensor, lrows: torch.Tensor,
                    g_cpu: torch.Generator) -> torch.Tensor:
    return lp._as3l_loss(xl, yl, g_cpu)


def moby_al_step_loss(lp: _Loop, xl: torch.Tensor, yl: torch.Tensor, lrows: torch.Tensor,
                       g_cpu: torch.Generator) -> torch.Tensor:
    return _labelled_loss(lp, xl, yl, lrows, g_cpu) + lp.run.cfg.lambda_c * lp._moby_loss(lrows, g_cpu)


def unlabelled_loss_of(mode: FinetuneMode) -> StepLoss:
    """A step's loss with unlabelled rows (the mode's ``unlabelled_loss``, training.modes.MODES): as3l's Eq. 2,
    moby_al's cross-entropy + lambda_c x MoBY; the random draws as _Loop.train_step says."""
    return cast(StepLoss, pkgutil.resolve_name(mode.unlabelled_loss))


def _step_budget(cfg: FinetuneConfig, n_labeled: int, n_unlabeled: int,
                 semi: bool) -> tuple[int, int, int, loop.Budget]:
    """(labelled batch, unlabelled batch (0 without ``semi``), unlabelled rows trained on, step budget). An
    epoch is a pass over the unlabelled rows trained on (``semi``), else over the labelled rows; ``steps``
    counts optimiser steps."""
    bs = min(cfg.batch_size, n_labeled)
    # moby_al with unlabeled_ratio: the unlabelled rows trained on are a subset (_Loop.upool, indices into unl)
    subset = n_unlabeled if cfg.unlabeled_ratio is None else max(1, min(n_unlabeled, round(cfg.unlabeled_ratio *
                                                                                         n_labeled)))
    ubs = min(cfg.mu * cfg.batch_size, subset) if semi else 0
    epoch_rows = subset if semi else n_labeled
    steps_per_epoch = max(1, epoch_rows // (ubs if semi else bs))
    if cfg.steps is not None:
        budget = loop.Budget(1, epochs=cfg.steps)
    else:
        budget = loop.Budget(steps_per_epoch, cfg.epochs, cfg.minutes)
    return bs, ubs, subset, budget


def _prepare_loop(run: _Run, priors: torch.Tensor | None) -> _Loop:
    """The optimiser (SGD, Nesterov momentum 0.9: FixMatch's), the step budget, the generators, and, with
    ``resume``, the checkpoint's state. ``priors``: UxC (as3l) or None."""
    cfg, enc, lab, unl, rt = run.cfg, run.enc, run.lab, run.unl, run.rt
    mode: FinetuneMode = MODES[cfg.mode]
    semi = mode.unlabelled and len(unl) > 0
    moby = MoBY(enc).to(rt.device) if mode.contrastive else None
    model: nn.Module = moby if moby is not None else enc
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=0.9,
                          nesterov=True, weight_decay=cfg.weight_decay)
    bs, ubs, subset, budget = _step_budget(cfg, len(lab), len(unl), semi)
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed)
    state = loop.TrainState()
    modules: dict[str, Any] = {"model": model, "optimizer": opt}
    # The weights that are evaluated and exported: an EMA of enc's (FlexMatch's evaluation), or enc itself.
    ema = AveragedModel(enc, avg_fn=ema_avg_fn(cfg.ema), use_buffers=False) if cfg.ema > 0 else None
    if ema is not None:
        modules["ema"] = ema
    if cfg.resume:
        state = loop.load_checkpoint(run.run_dir, modules, gen)
    learned = torch.full((len(unl),), -1, dtype=torch.long)  # FlexMatch: confident class per unlabelled row
    if "learned" in state.extra:
        learned = torch.tensor(state.extra["learned"], dtype=torch.long)
    prior_dev = priors.to(rt.device).float() if priors is not None else None
    update = cfg.prior_after == "update" and prior_dev is not None
    if update and state.step >= cfg.prior_iters:  # resumed after an update: re-cluster from where it is
        prior_dev = recluster_prior(enc, run.data, lab, unl, run.pre, rt, cfg.seed + state.step).to(rt.device)
    evals: list[list[float]] = [list(e) for e in state.extra.get("eval", [])]
    # moby_al's unlabelled subset (indices into unl): all of them, or a random ``subset`` to start with
    upool = torch.arange(len(unl)) if subset >= len(unl) else \
        torch.randperm(len(unl), generator=torch.Generator().manual_seed(cfg.seed + 7))[:subset]
    if "upool" in state.extra:
        upool = torch.tensor(state.extra["upool"], dtype=torch.long)
    return _Loop(run=run, model=model, moby=moby, opt=opt, ema=ema, modules=modules, gen=gen, budget=budget,
                 state=state, semi=semi, bs=bs, ubs=ubs, subset=subset, update=update, learned=learned,
                 prior_dev=prior_dev, upool=upool, evals=evals, lr_at=LR_SCHEDULES[mode.lr_schedule],
                 step_loss=unlabelled_loss_of(mode) if semi else _labelled_loss)


def _train_loop(run: _Run, priors: torch.Tensor | None) -> dict[str, Any]:
    """Train run.enc (full, as3l, moby_al) until the budget is spent, checkpointing on the way; at the end
    run.enc holds the evaluated weights. ``priors``: UxC (as3l) or None. Returns the summary's training part
    (steps, final_loss, mask_rate, images_per_s; eval, test_accuracy, best_test_accuracy with eval_data)."""
    lp = _prepare_loop(run, priors)
    lp.last_ckpt = time.perf_counter()
    if run.cfg.eval_every and lp.state.step == 0:
        lp.evaluate()  # the starting point (the probe's accuracy with head_init="probe", chance with a random head)
    lp.model.train()
    with loop.StopFlag() as stop:
        while not lp.budget.done(lp.state.step, lp.state.seconds):
            lr = lp.train_step()
            lp.after_step(lr, stop)
    return lp.finish()
