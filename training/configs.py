"""The settings of the training commands, one frozen dataclass each, without importing torch: training/cli.py
takes its options' defaults from them (``shortlist --help`` must start without loading torch).

``PretrainConfig``: training.pretrain.pretrain; ``FinetuneConfig``: training.finetune.finetune; ``CycleConfig``:
training.cycle.run_cycle (each re-exported there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run depends on (saved as config.json; the CLI maps its flags here)."""

    data: str
    out: str
    method: str = "simsiam"
    arch: str = "resnet18_w32"
    epochs: int | None = None
    minutes: float | None = None
    batch_size: int | None = None  # global batch (all ranks); None: the method's default
    lr: float | None = None  # base lr per 256 images; None: the method's default
    weight_decay: float | None = None
    warmup: float = 0.02  # fraction of the budget spent warming the lr up linearly
    limit: int | None = None  # only the first N samples of the source (smoke runs)
    subset: list[int] | None = None  # or only these rows of the train split (benchmarks' pools)
    preprocess: str = "cifar10"  # a PREPROCESS name: size / mean / std of the exported model
    test_data: str | None = None  # held-out labelled source for kNN; None: the data's "test" split
    knn_every: int = 5  # epochs between kNN evaluations (0: only at the end)
    knn_k: int = 200
    knn_bank: int = 10_000  # train rows used as the kNN bank in periodic evaluations (final: all)
    knn_test: int = 2_000  # test rows in periodic evaluations (final: all)
    final_knn: bool = True  # evaluate kNN at the end (benchmarks that measure otherwise can skip it)
    final_knn_full: bool = True  # final evaluation on all labelled train rows and all test rows
    checkpoint_minutes: float = 10.0
    resume: bool = False
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    threads: int | None = None  # CPU threads; None: pick 1 or all cores by measured speed (ThreadTuner)
    crop_min: float = 0.2  # smallest crop area fraction (RandomResizedCrop scale lower bound)
    # Progressive resizing (as FFCV's ResNet recipes do): views start at ``min_res`` pixels and grow
    # linearly (in steps of 4) to the model's size at ``res_ramp_end`` of the budget; None = full size.
    # Convolution cost scales with pixels, so a CPU run sees ~2x more images; evaluation and export
    # always use the full size.
    min_res: int | None = None
    # Cap on the view size; evaluation and export stay at the model's size. None: the model's size on a
    # GPU; on a CPU, with no min_res either, training.pretrain.CPU_VIEW_FRACTION of it (see there).
    max_res: int | None = None
    res_ramp_end: float = 0.75
    stop_after: int | None = None  # stop as SIGTERM would (checkpointed, resumable) after this many steps
    log_seconds: float = 20.0
    progress: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's constructor keywords

    def resolved(self) -> PretrainConfig:
        """A copy with the method's defaults filled in (what config.json records)."""
        from training.methods import METHODS, check_method_options

        check_method_options(self.method, self.method_options)
        d = METHODS[self.method].defaults
        return dataclasses.replace(
            self, batch_size=self.batch_size or d.batch_size, lr=self.lr if self.lr is not None else d.lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else d.weight_decay)


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run (saved as config.json)."""

    out: str
    mode: str = "full"
    init: str | None = None  # a run folder whose encoder.pt to start from; None = random init of ``arch``
    arch: str = "resnet18_w32"
    data: str | None = None  # a source (labelled folders); or pass TensorData to finetune()
    preprocess: str = "cifar10"
    labels_per_class: int | None = None  # keep only this many labels per class (the rest unlabelled)
    epochs: int | None = None  # epochs over the labelled set (or over the unlabelled set for as3l/moby_al)
    minutes: float | None = None
    steps: int | None = None  # exact number of steps (tests, cycles); overrides epochs/minutes
    batch_size: int = 64  # labelled batch
    mu: int = 7  # unlabelled batch = mu * batch_size (FixMatch's mu)
    lr: float = 0.03  # SGD, FixMatch's default
    weight_decay: float = 5e-4
    threshold: float = 0.95  # FixMatch tau
    lambda_u: float = 1.0
    prior_iters: int = 6900  # AS3L's T (Sec. 4.1): iterations that use normalize(prior + prediction)
    prior_after: str = "remove"  # after T: "remove" the prior or "update" it by re-clustering (Sec. 3.4)
    eval_every: int = 0  # steps between test-set evaluations (finetune's eval_data); 0: at the end only
    flex: bool = True  # FlexMatch class-wise thresholds (else FixMatch's fixed one)
    lambda_c: float = 0.5  # MoBYv2AL contrastive weight
    linear_epochs: int = 100
    svm_c: float = 0.0  # LinearSVC's C (mode svm); 0: chosen by cross-validation on the labelled rows
    contrast_labeled: bool = False  # moby_al: labelled images in the contrastive batch too
    unlabeled_ratio: float | None = None  # moby_al: train on ratio x labelled unlabelled rows (None: all)
    unlabeled_pick: str = "random"  # moby_al with unlabeled_ratio: "random" or "low_contrastive"
    rank_candidates: float = 4.0  # low_contrastive: rank this many x the subset's size random unlabelled rows
    rotation_weight: float = 0.0  # weight of the RotNet loss on the labelled batch (keeps the head matched)
    keep_head: bool = False  # an ``init`` run's classifier is kept when it has as many classes (warm start)
    # "random": a fresh linear head (the paper's recipe); "probe": the linear probe on the frozen features of
    # the labelled rows first (LP-FT, Kumar et al. ICLR 2022), so training starts at the probe's accuracy
    head_init: str = "random"
    # momentum of the weight EMA evaluated and exported (0: off; FlexMatch/USB: 0.999), see finetune.ema_avg_fn
    ema: float = 0.0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    seed: int = 0
    checkpoint_minutes: float = 10.0
    resume: bool = False
    progress: bool = True


@dataclass(frozen=True)
class CycleConfig:
    """The settings of one cycle (``run_cycle``), built once by its caller (``shortlist cycle``, the benchmarks)
    and checked by training.cycle's ``_check_options`` before the agent is asked anything. The defaults are
    `shortlist cycle`'s (which has no option for ``preprocess`` or ``options``)."""

    models: Path  # the registry folder the agent serves from; the trained run is published into it
    out: Path  # the run folder of this cycle's training
    # a fine-tuning mode (training.finetune.FINETUNE_MODES) or a pretraining method (training.methods.METHODS:
    # self-supervised on every sample in the agent)
    mode: str = "full"
    init: str | None = None  # a `shortlist pretrain` run folder to start from (required by linear and svm)
    steps: int | None = None  # budget in optimiser steps (a pretraining method: epochs of the pool)
    minutes: float | None = None  # or in minutes of training
    epochs: int | None = None  # or in epochs
    # the agent's PriorLabels method of a mode that trains on priors (as3l; None: "knn"); refused for the others
    prior_method: str | None = None
    preprocess: str = "cifar10"  # input size / normalisation by name, when neither --init nor the registry says
    arch: str = "resnet18_w32"  # the backbone built when not starting from --init
    # None: the mode's / method's default, at most the pool's size (a method's default larger than the pool is
    # lowered to it, and said); a pretraining method's batch_size larger than the pool is refused
    batch_size: int | None = None
    threads: int | None = None  # CPU threads (None: torch's default)
    device: str = "auto"  # auto | cpu | cuda
    # more FinetuneConfig fields for a fine-tuning mode (e.g. ``seed``, ``svm_c``, ``unlabeled_ratio``)
    options: Mapping[str, Any] = field(default_factory=dict)
    # a pretraining method's constructor keywords (PretrainConfig.method_options; CLI: --method-option)
    method_options: Mapping[str, Any] = field(default_factory=dict)
    # True: ``models`` is deliberately not the agent's registry (the benchmarks' semi-supervised stage scores the
    # published version itself): no check that it holds the served version, no ReloadModel, no "not taken up"
    elsewhere: bool = False

    def __post_init__(self) -> None:  # callers may give the folders as str
        object.__setattr__(self, "models", Path(self.models))
        object.__setattr__(self, "out", Path(self.out))
