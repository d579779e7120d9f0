"""Self-supervised pretraining: ``pretrain(PretrainConfig(...)) -> run_dir``.

The run folder holds config.json, metrics.jsonl (one JSON object per log interval / evaluation),
checkpoint.pt (everything needed by ``resume=True``), and once the budget has run out encoder.pt (what
exporters/ exports; see ``save_encoder``) and summary.json (final kNN accuracy, images/s, wall time). A run
stopped by a signal has neither: it is unfinished (``loop.unfinished_run``), nothing may publish it.

Data are decoded once into a uint8 tensor; each step gathers a batch, builds the views with
training.augment on the device, and runs the method under bf16 autocast (CPU) / AMP (CUDA) with
channels_last. Under torchrun every rank takes a stride of each epoch's permutation and gradients are
averaged by DDP (BatchNorm synchronised on CUDA).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from shortlist.atomic import read_json
from shortlist.manifest import ONNX_EXPORT_HINT, PREPROCESS_PRESETS, Preprocess
from training import loop
from training.augment import AugmentConfig
from training.backbones import build_backbone, min_input_side
from training.configs import PretrainConfig as PretrainConfig
from training.data import TensorData, load, report_skipped
from training.knn import KnnScore, embed, knn_scores
from training.methods import METHODS, SSLMethod, build_method
from training.methods import Encoder as Encoder

PREPROCESS: dict[str, Preprocess] = PREPROCESS_PRESETS

# Each method's constructor keywords (``method_options``; CLI: --method-option, --proj-dim, --pred-dim) and published
# defaults (base lr scaled by batch/256, weight decay, batch) are declared on its class in training.methods.


# On a CPU, training views default to half the model's side (16 px for CIFAR's 32): a quarter of the pixels
# per view. Measured on CIFAR-10 on the CPU, half-side views trained much faster and reached the same or better
# kNN accuracy than larger views, with no loss from evaluating at full size (the figures, model and machine:
# docs/training.md, "CPU defaults and why").
CPU_VIEW_FRACTION = 0.5


def cpu_view_res(cfg: PretrainConfig, pre: Preprocess, device: torch.device) -> int | None:
    """The view-size cap a run uses: ``cfg.max_res`` when given (or when progressive resizing is on, or
    on a GPU), else CPU_VIEW_FRACTION of the model's side on a CPU, a multiple of 4 and at least what the
    backbone accepts (8 px; 32 for torchvision's ImageNet models: VGG-16 fails on 16 px views)."""
    if cfg.max_res is not None or cfg.min_res is not None or device.type != "cpu":
        return cfg.max_res
    res = max(min_input_side(cfg.arch), round(pre.size[0] * CPU_VIEW_FRACTION / 4) * 4)
    return res if res < pre.size[0] else cfg.max_res  # no smaller view the backbone accepts: full size


def preprocess_by_name(name: str) -> Preprocess:
    """A PREPROCESS entry by name; ``NAME@S`` gives its mean/std at S x S pixels (e.g. ``cifar10@16``)."""
    base, _, side = name.partition("@")
    if base not in PREPROCESS or (side and not side.isdigit()):
        raise ValueError(f"unknown preprocess {name!r}; valid: {', '.join(PREPROCESS)} (optionally @SIZE)")
    pre = PREPROCESS[base]
    return dataclasses.replace(pre, size=(int(side), int(side))) if side else pre


def save_encoder(run_dir: Path, encoder: Encoder, *, arch: str, method: str, pre: Preprocess,
                 classes: list[str] | None, config: dict[str, Any], dataset: str,
                 metrics: dict[str, Any] | None = None) -> None:
    """run_dir/encoder.pt: the exportable encoder (state dict + how to rebuild it), written atomically.
    ``dataset``: the source it was trained on, kept absolute when it is a local path (export reads a few of
    its images to verify on, from whatever folder it runs in)."""
    if dataset and Path(dataset).exists():
        dataset = str(Path(dataset).resolve())
    loop.save_atomic({"arch": arch, "method": method, "preprocess": pre.to_dict(),
                      "num_classes": encoder.classifier.out_features if encoder.classifier is not None else 0,
                      "rotation_head": encoder.rotation is not None, "classes": classes,
                      "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
                      "config": config, "dataset": dataset, "metrics": metrics or {}},
                     run_dir / loop.ENCODER)


# What ``save_encoder`` writes into encoder.pt that ``load_encoder`` needs.
ENCODER_KEYS = ("arch", "method", "preprocess", "num_classes", "rotation_head", "state_dict")
_BRING_YOUR_OWN = ("; to serve a model Shortlist did not train, export it to ONNX with a dynamic batch axis, "
                   f"e.g. {ONNX_EXPORT_HINT}, then publish it with `shortlist models import encoder.onnx --models "
                   "REGISTRY --preprocess imagenet` (or --size H W --mean R G B --std R G B); docs/training.md, "
                   "\"Bring your own encoder\"")


def load_encoder(run_dir: Path) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild the encoder saved by ``save_encoder`` (eval mode, CPU) and its metadata. ValueError for an
    unfinished run (``loop.unfinished_run``: stopped by a signal), FileNotFoundError for a folder without
    encoder.pt."""
    if Path(run_dir).is_file():
        raise ValueError(f"{run_dir} is a file, not a training run folder{_BRING_YOUR_OWN}")
    if (problem := loop.unfinished_run(Path(run_dir))) is not None:
        raise ValueError(problem)
    path = Path(run_dir) / loop.ENCODER
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished training run folder?")
    try:  # weights_only: tensors and plain data only (what save_encoder writes); a pickle that names a class
        meta = torch.load(path, map_location="cpu", weights_only=True)  # or a function could run code
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = (f"a pickled {named.group(1).rpartition('.')[2]} object ({named.group(1)})" if named else
                "a pickle of something other than tensors and plain data")
        raise ValueError(f"{path} is not a Shortlist training run's encoder: it is {what}, which is not loaded "
                         "(encoder.pt is read as tensors and plain data only: unpickling anything else could run "
                         f"code), and `shortlist export` publishes only what pretrain or finetune saved"
                         f"{_BRING_YOUR_OWN}") from None
    except Exception as e:  # not a torch file, or a pickled class that cannot be imported here
        raise ValueError(f"{path} cannot be read as a Shortlist training run's encoder ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}){_BRING_YOUR_OWN}") from None
    missing = [k for k in ENCODER_KEYS if k not in meta] if isinstance(meta, dict) else list(ENCODER_KEYS)
    if missing:
        what = (f"a pickled {type(meta).__name__} object" if not isinstance(meta, dict) else
                "a plain state dict (weights without the architecture)" if all(torch.is_tensor(v) for v in
                                                                              meta.values()) else
                f"a dict without {', '.join(repr(k) for k in missing)}")
        raise ValueError(f"{path} is not a Shortlist training run's encoder: it is {what}, and `shortlist export` "
                         f"publishes only what pretrain or finetune saved{_BRING_YOUR_OWN}")
    try:
        enc = Encoder(build_backbone(meta["arch"]), num_classes=int(meta["num_classes"]),
                      rotation_head=bool(meta["rotation_head"]))
        enc.load_state_dict(meta.pop("state_dict"))
    except (RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}'s weights do not fit its architecture {meta['arch']!r} ({str(e).splitlines()[0]})"
                         f"{_BRING_YOUR_OWN}") from None
    return enc.eval(), meta


def _load_test(cfg: PretrainConfig, pre: Preprocess, classes: list[str], console: Console,
               say: bool = True) -> TensorData | None:
    """The held-out split for the kNN evaluation, or None (said when ``say``: one process of a run says it)."""
    try:
        return load(cfg.test_data or cfg.data, "test" if cfg.test_data is None else "train", pre.size,
                    classes=classes)
    except (FileNotFoundError, ValueError) as e:
        if say:
            console.print(f"[yellow]no held-out kNN evaluation:[/] {escape(str(e))}{_limit_note(cfg, classes)}",
                          highlight=False)
        return None


def _limit_note(cfg: PretrainConfig, classes: list[str]) -> str:
    """What ``--limit`` did, when it is given: its first N images in the source's order (a source sorted by class,
    such as the CIFAR tars, gives the first class or two), holding ``classes``; "" without --limit."""
    if cfg.limit is None:
        return ""
    return (f" (--limit {cfg.limit} took the first {cfg.limit} images in the source's order, which hold "
            f"{len(classes)} class{'es' if len(classes) != 1 else ''}: {', '.join(classes) or 'none'}; on a source "
            "sorted by class give a larger --limit, or a folder with a sample of every class)")


def knn_precision(rt: loop.Runtime, fp32: bool) -> str:
    """What ``evaluate_knn`` computes features in: "fp32", or the autocast dtype's name (e.g. "bf16")."""
    if fp32 or rt.amp_dtype is None:
        return "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(rt.amp_dtype, str(rt.amp_dtype))


def evaluate_knn(encoder: nn.Module, train: TensorData, test: TensorData, pre: Preprocess, rt: loop.Runtime,
                 k: int, bank: int | None = None, test_rows: int | None = None, seed: int = 0,
                 fp32: bool = False) -> float:
    """Weighted kNN (k, T=0.1) top-1 accuracy of ``encoder`` features (``evaluate_knn_scores``' accuracy)."""
    return evaluate_knn_scores(encoder, train, test, pre, rt, k, bank, test_rows, seed, fp32).accuracy


def evaluate_knn_scores(encoder: nn.Module, train: TensorData, test: TensorData, pre: Preprocess, rt: loop.Runtime,
                        k: int, bank: int | None = None, test_rows: int | None = None, seed: int = 0,
                        fp32: bool = False) -> KnnScore:
    """Weighted kNN (k, T=0.1) top-1 accuracy and balanced accuracy of ``encoder`` features; bank = labelled
    train rows. Features under the run's autocast (``rt.amp_dtype``: fast, for the periodic checks) unless
    ``fp32``: the exported and served model is fp32, and bf16 features moved a SimSiam run's figure by 1.4
    points."""
    amp_dtype = None if fp32 else rt.amp_dtype
    g = torch.Generator().manual_seed(seed)
    rows = train.labeled_rows
    if bank is not None and len(rows) > bank:
        rows = rows[torch.randperm(len(rows), generator=g)[:bank]]
    trows = torch.nonzero(test.labels >= 0).flatten()
    if test_rows is not None and len(trows) > test_rows:
        trows = trows[torch.randperm(len(trows), generator=g)[:test_rows]]
    ftrain = embed(encoder, train.images[rows], pre, device=rt.device, amp_dtype=amp_dtype,
                   channels_last=rt.channels_last)
    ftest = embed(encoder, test.images[trows], pre, device=rt.device, amp_dtype=amp_dtype,
                  channels_last=rt.channels_last)
    dev = ftrain.device
    return knn_scores(ftrain, train.labels[rows].to(dev), ftest, test.labels[trows].to(dev),
                      len(train.classes), k=k)


def check_settings(config: PretrainConfig) -> PretrainConfig:
    """``config`` resolved (the method's defaults filled in), or ValueError naming the flag of the first setting
    that cannot train: called once before any work (no data decoded, no run folder made), and by ``--procs``
    before it starts the ranks."""
    cfg = config.resolved()
    assert cfg.batch_size is not None and cfg.lr is not None and cfg.weight_decay is not None

    def need(ok: bool, flag: str, value: object, what: str) -> None:
        if not ok:
            raise ValueError(f"{flag} {value}: {what}")

    need(cfg.batch_size >= 1, "--batch-size", cfg.batch_size, "give at least 1")
    need(cfg.lr >= 0, "--lr", cfg.lr, "give a learning rate of 0 or more (per 256 images)")
    need(cfg.weight_decay >= 0, "--weight-decay", cfg.weight_decay, "give 0 or more")
    need(cfg.threads is None or cfg.threads >= 1, "--threads", cfg.threads, "give at least 1 (or leave it out)")
    need(0 < cfg.crop_min <= 1, "--crop-min", cfg.crop_min, "an area fraction: give more than 0 and at most 1")
    need(cfg.epochs is None or cfg.epochs >= 1, "--epochs", cfg.epochs, "give at least 1")
    need(cfg.minutes is None or cfg.minutes > 0, "--minutes", cfg.minutes, "give more than 0")
    need(cfg.limit is None or cfg.limit >= 1, "--limit", cfg.limit, "give at least 1")
    need(cfg.knn_k >= 1, "--knn-k", cfg.knn_k, "give at least 1")
    need(cfg.knn_every >= 0, "--knn-every", cfg.knn_every, "give 0 (only at the end) or more")
    side = min_input_side(cfg.arch)
    for flag, res in (("--min-res", cfg.min_res), ("--max-res", cfg.max_res)):
        need(res is None or res >= side, flag, res, f"{cfg.arch} takes views of at least {side} px")
    for key, value in cfg.method_options.items():
        if key.endswith("_dim"):
            need(isinstance(value, int) and value >= 1, f"--{key.replace('_', '-')}", value,
                 "a layer width: give at least 1")
    return cfg


def check_before_launch(config: PretrainConfig, world: int) -> None:
    """The cheap checks of ``_prepare`` that need no model and no decoded image, for ``--procs`` to make once
    before it starts ``world`` ranks (each imports torch and decodes the data: a bad --out or a batch larger
    than the data used to be found only then, by every rank). FileExistsError: --out holds a run (no
    --resume); ValueError: the batch is smaller than ``world`` or larger than the source's image count
    (files listed, none decoded: an unreadable one is found later, by the ranks); FileNotFoundError: no such
    source or split."""
    from shortlist.datasets import MissingSplit, resolve_source, source_paths
    from training.data import SPLIT_HINTS

    cfg = check_settings(config)
    assert cfg.batch_size is not None
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: give at least one image for each of "
                         f"the {world} processes")
    run_dir = Path(cfg.out)
    if run_dir.exists() and (run_dir / loop.CHECKPOINT).exists() and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or another --out")
    if cfg.resume:
        _check_resumable(run_dir)
    try:
        count = len(source_paths(resolve_source(cfg.data, "train")))
    except MissingSplit as e:
        raise FileNotFoundError(e.said(SPLIT_HINTS["train"])) from None
    if cfg.limit is not None:
        count = min(count, cfg.limit)
    if cfg.subset is not None:
        count = min(count, len(cfg.subset))
    if count // cfg.batch_size == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {count} training images of "
                         f"{cfg.data}: give --batch-size {max(1, count // 2)} or less, or more data")


def build_optimizer(model: SSLMethod, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (momentum 0.9). The method's ``fixed_lr_params`` (SimSiam's predictor: Chen & He 2021, Sec. 4.2
    "Predictor": a constant lr for h, without decay, works better) form a group marked ``fixed_lr``; the rest
    follow the schedule."""
    fixed_ids = {id(p) for p in model.fixed_lr_params()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": [p for p in params if id(p) not in fixed_ids], "fixed_lr": False}]
    if fixed_ids:
        groups.append({"params": [p for p in params if id(p) in fixed_ids], "fixed_lr": True})
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def view_size(cfg: PretrainConfig, pre: Preprocess, progress: float) -> Preprocess:
    """The preprocess (size) of training views at ``progress`` in [0, 1] (see PretrainConfig.min_res)."""
    top = min(cfg.max_res or pre.size[0], pre.size[0])
    low = min(cfg.min_res or top, top)
    if low == top == pre.size[0]:
        return pre
    frac = min(1.0, progress / max(cfg.res_ramp_end, 1e-8))
    side = min(top, round((low + (top - low) * frac) / 4) * 4)
    width = round(side * pre.size[1] / pre.size[0])
    return dataclasses.replace(pre, size=(side, width))


def set_lr(opt: torch.optim.Optimizer, base: float, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = base if group.get("fixed_lr") else lr


# Fields that decide the model's shape: a checkpoint built with other ones does not load (``pretrain``'s hint).
MODEL_FIELDS = ("method", "arch", "preprocess", "method_options")
# PretrainConfig fields a resumed run may change: where and how fast it runs, not what it trains (config.json keeps
# the first run's). Every other field must equal config.json's, or the run would not be the one it records.
RUNTIME_FIELDS = ("out", "resume", "device", "threads", "compile", "channels_last", "checkpoint_minutes",
                  "log_seconds", "progress", "stop_after")


# PretrainConfig fields that `shortlist pretrain` has no flag for (set by the benchmarks and cycles in Python)
NO_FLAG_FIELDS = ("warmup", "subset", "test_data", "knn_bank", "knn_test", "final_knn", "final_knn_full",
                  "res_ramp_end", "stop_after", "log_seconds", "progress")


def setting_flag(field_name: str) -> str:
    """The `shortlist pretrain` flag of a PretrainConfig field (e.g. ``batch_size`` -> ``--batch-size``), or the
    field's name when the command has none."""
    if field_name == "method_options":
        return "--method-option/--proj-dim/--pred-dim"
    return field_name if field_name in NO_FLAG_FIELDS else "--" + field_name.replace("_", "-")


def _same_setting(k: str, saved: Any, given: Any) -> bool:
    if k in ("data", "test_data") and isinstance(saved, str) and isinstance(given, str) and saved != given:
        try:  # the same folder named from another working directory
            return Path(saved).exists() and Path(saved).resolve() == Path(given).resolve()
        except OSError:
            return False
    if k == "method_options" and not saved:
        return True  # runs from before the options were recorded saved {}: the checkpoint is then the check
    return bool(json.loads(json.dumps(saved)) == json.loads(json.dumps(given)))  # tuples vs JSON lists


def _check_resume_matches(saved: dict[str, Any], cfg: PretrainConfig) -> None:
    """ValueError naming each setting (flag, the run's value, the given one) that differs from the saved run's
    config.json: a resume replays the run config.json records, so only RUNTIME_FIELDS may change.

    ``cfg`` must be resolved as config.json was (the method's defaults, every method option, the CPU view
    size). A saved empty ``method_options`` is not compared: runs from before the options were recorded
    saved ``{}`` whatever their head widths were; loading their checkpoint is then the check (in ``pretrain``).
    """
    given = dataclasses.asdict(cfg)
    diff = [f"{setting_flag(k)}: the run's {saved[k]!r}, given {given[k]!r}" for k in given
            if k not in RUNTIME_FIELDS and k in saved and not _same_setting(k, saved[k], given[k])]
    if diff:
        raise ValueError(f"--resume: {cfg.out} was started with other settings ({'; '.join(diff)}); a resumed run "
                         "replays the run its config.json records: drop those flags to keep the run's values, or "
                         "start a new run with another --out")


def _check_resumable(run_dir: Path) -> None:
    """``--resume`` of a folder that holds a finished run is refused (it would train on past its budget, and a
    signal then would remove its encoder.pt and summary.json); so is one without a checkpoint. Finished: by
    ``loop.read_summary``, the reader ``export`` and ``bench`` use (``loop.unfinished_run``), so a torn summary.json,
    which they call unfinished and send here, is resumed (the checkpoint's budget ran out: it writes both again)."""
    if loop.read_summary(run_dir) is not None and (run_dir / loop.ENCODER).is_file():
        raise ValueError(f"--resume: the run is finished: {run_dir} holds its {loop.ENCODER} and {loop.SUMMARY} "
                         "(its budget ran out); export it, or start a new run with another --out")
    if not (run_dir / loop.CHECKPOINT).is_file():
        raise FileNotFoundError(f"--resume: {run_dir / loop.CHECKPOINT} does not exist (start without --resume)")


@dataclass
class _Run:
    """One pretraining run, set up: what the step loop and the summary share (``_prepare``)."""

    cfg: PretrainConfig  # resolved, with the method's options and the CPU view size filled in
    rt: loop.Runtime
    run_dir: Path
    pre: Preprocess
    encoder: Encoder
    model: SSLMethod
    train_model: nn.Module  # ``model``, wrapped by DDP and/or torch.compile when asked
    opt: torch.optim.Optimizer
    gen: torch.Generator
    state: loop.TrainState
    train: TensorData
    test: TensorData | None
    config_dict: dict[str, Any]
    base_lr: float  # lr scaled by batch / 256
    per_rank: int  # images per step on this rank
    skipped: int = 0  # files of the source left out as unreadable (listed in skipped.txt)
    knn_k_flag: str | None = "--knn-k"  # the option that sets k in the running command (``pretrain``'s)

    def checkpoint(self) -> None:
        """checkpoint.pt, written atomically by the main rank. Not encoder.pt: that is the finished run's
        (``_summarise``), so that export never publishes a run stopped half way."""
        if self.rt.is_main:
            loop.save_checkpoint(self.run_dir, self.state, {"model": self.model, "optimizer": self.opt}, self.gen,
                                 self.config_dict)

    def save_encoder(self, metrics: dict[str, Any] | None = None) -> None:
        save_encoder(self.run_dir, self.encoder, arch=self.cfg.arch, method=self.cfg.method, pre=self.pre,
                     classes=self.train.classes or None, config=self.config_dict, dataset=self.cfg.data,
                     metrics=metrics)


def _prepare(config: PretrainConfig, console: Console, train_data: TensorData | None,
             test_data: TensorData | None) -> _Run:
    """Resolve the settings, build the model (before decoding the data, so that a ``--resume`` with other
    settings is refused at once), load the data, and restore the checkpoint when resuming."""
    cfg = check_settings(config)
    rt = loop.setup_runtime(cfg.device, cfg.amp, cfg.channels_last, cfg.threads)
    run_dir = Path(cfg.out)
    assert cfg.batch_size is not None
    if cfg.batch_size < rt.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: give at least one image for each of "
                         f"the {rt.world} processes")
    if run_dir.exists() and (run_dir / loop.CHECKPOINT).exists() and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or another --out")
    if cfg.resume:
        _check_resumable(run_dir)
    pre = preprocess_by_name(cfg.preprocess)
    if (res := cpu_view_res(cfg, pre, rt.device)) != cfg.max_res:
        cfg = dataclasses.replace(cfg, max_res=res)
        if rt.is_main:
            console.print(f"CPU: training views at {res} px, evaluation and export at {pre.size[0]} px "
                          f"(--max-res {pre.size[0]} for full-size views)")
    torch.manual_seed(cfg.seed + rt.rank)
    encoder = Encoder(build_backbone(cfg.arch), rotation_head=METHODS[cfg.method].rotation_head)
    model = build_method(cfg.method, encoder, **cfg.method_options)
    # record every option, defaults included, so that a later change of a default cannot break --resume
    cfg = dataclasses.replace(cfg, method_options=dict(cast(dict[str, Any], model.options)))
    assert cfg.batch_size is not None and cfg.lr is not None and cfg.weight_decay is not None
    if cfg.resume and (run_dir / loop.CONFIG).exists():
        # not whole JSON: NotWholeJson (a ValueError: `shortlist pretrain` exits 2 with it) naming the file
        _check_resume_matches(read_json(run_dir / loop.CONFIG, "it records the run's settings, which --resume "
                                        "checks: restore it, or start a new run with another --out"), cfg)

    t_load = time.perf_counter()
    train = train_data if train_data is not None else load(cfg.data, "train", pre.size, cfg.limit)
    if cfg.subset is not None:
        train = train.subset(cfg.subset)
    if len(train) // cfg.batch_size == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images of "
                         f"{cfg.data}: give --batch-size {max(1, len(train) // 2)} or less, or more data")
    present = train.labels[train.labeled_rows].unique().tolist()
    # SSL needs no labels, but one class is seldom what was meant. The labels say what the data is only when
    # every image has one (class folders, a --limit that took one): cycle's pool pulled from an agent is mostly
    # unlabelled, and every image of it is learnt from, whatever the few labelled ones are.
    if len(present) == 1 and len(train.labeled_rows) == len(train) and rt.is_main:
        console.print(f"[yellow]warning:[/] the training data has one class ({escape(train.classes[present[0]])})"
                      f"{escape(_limit_note(cfg, [train.classes[present[0]]]))}: the encoder learns from that class "
                      "alone", highlight=False)
    test = test_data
    if test is None and train_data is None and len(train.labeled_rows):
        test = _load_test(cfg, pre, train.classes, console, say=rt.is_main)
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no folder behind
    skipped = 0
    if rt.is_main:
        console.print(f"decoded {len(train)} training images{f' and {len(test)} test images' if test else ''} "
                      f"in {time.perf_counter() - t_load:.1f} s ({rt.device}, amp={rt.amp_dtype}, world={rt.world})")
        skipped = report_skipped(run_dir, console, train, *([test] if test is not None else []))

    if rt.device.type == "cuda" and rt.world > 1:
        model = cast(SSLMethod, nn.SyncBatchNorm.convert_sync_batchnorm(model))  # converts in place
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_lr = cfg.lr * cfg.batch_size / 256
    opt = build_optimizer(model, base_lr, cfg.weight_decay)
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed * 7919 + rt.rank)
    config_dict = dataclasses.asdict(cfg)
    state = loop.TrainState()
    if cfg.resume:
        try:
            state = loop.load_checkpoint(run_dir, {"model": model, "optimizer": opt}, gen)
        except RuntimeError as e:  # torch's state-dict mismatch: say which settings to pass
            raise ValueError(
                f"--resume: {run_dir / loop.CHECKPOINT} does not fit the model these settings build "
                f"({cfg.method}, {cfg.arch}, options {cfg.method_options}); pass the first run's flags"
                f"{f' ({model.resume_hint})' if model.resume_hint else ''}. torch: {str(e).splitlines()[0]}") from e
        if rt.is_main:
            console.print(f"resumed {run_dir} at step {state.step} (epoch {state.epoch}, {state.seconds:.0f} s)")
    elif rt.is_main:
        loop.write_json(run_dir / loop.CONFIG, config_dict)

    train_model: nn.Module = model
    if rt.world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda"
                                                          else None)
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return _Run(cfg=cfg, rt=rt, run_dir=run_dir, pre=pre, encoder=encoder, model=model, train_model=train_model,
                opt=opt, gen=gen, state=state, train=train, test=test, config_dict=config_dict, base_lr=base_lr,
                per_rank=cfg.batch_size // rt.world, skipped=skipped)


def _step(run: _Run, rows: torch.Tensor, frac: float, aug: AugmentConfig) -> tuple[float, Preprocess]:
    """One optimisation step on the batch ``rows`` at training progress ``frac`` in [0, 1]: the method's
    views, the scheduled lr, its loss under autocast, backward, SGD; returns (loss, the views' preprocess)."""
    model = run.model
    imgs = run.train.images[rows].to(run.rt.device, non_blocking=True)
    vpre = view_size(run.cfg, run.pre, frac)
    views = model.make_views(imgs, vpre, aug, run.gen, run.rt.channels_last)
    set_lr(run.opt, run.base_lr, loop.cosine_lr(run.base_lr, frac, run.cfg.warmup))
    model.before_step(frac)
    with run.rt.autocast():
        loss = run.train_model(*views)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {run.state.step}: lower --lr or turn off --amp")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    model.after_step(frac)
    return float(loss.detach()), vpre


def _epoch_knn(run: _Run, log: loop.MetricsLog, console: Console) -> None:
    """The periodic kNN evaluation (every ``knn_every`` epochs, main rank), logged and printed."""
    cfg, state, test = run.cfg, run.state, run.test
    assert test is not None
    score = evaluate_knn_scores(run.model.knn_encoder(), run.train, test, run.pre, run.rt, cfg.knn_k, cfg.knn_bank,
                                cfg.knn_test)
    bank, ntest = min(cfg.knn_bank, len(run.train)), min(cfg.knn_test, len(test))
    precision = knn_precision(run.rt, fp32=False)
    log.write(kind="knn", step=state.step, epoch=state.epoch, knn_acc=score.accuracy,
              knn_balanced_acc=score.balanced_accuracy, k=cfg.knn_k, bank=bank, test=ntest, precision=precision)
    console.print(f"epoch {state.epoch}: kNN(k={cfg.knn_k}) accuracy {score.accuracy:.4f}{score.said()} "
                  f"({precision}, bank {bank}, test {ntest})"
                  f"{knn_k_note(cfg.knn_k, bank_smallest_class(run.train, bank), run.knn_k_flag)}")


def bank_smallest_class(train: TensorData, bank: int) -> int:
    """Images of the smallest class (among those with labels) in a kNN bank of ``bank`` labelled rows drawn
    at random from ``train``: that class's labelled count scaled by the bank's share of the labelled rows
    (exact for a bank of them all). The mean per class would hide it on an imbalanced set."""
    labels = train.labels[train.labeled_rows]
    counts = torch.bincount(labels)
    counts = counts[counts > 0]
    if len(counts) == 0:
        return 0
    return int(counts.min().item()) * min(bank, len(labels)) // len(labels)


def knn_k_note(k: int, smallest: int, flag: str | None = "--knn-k") -> str:
    """A note when k exceeds the images of the bank's smallest class (``bank_smallest_class``): the vote then
    reaches into other classes and the figure understates the encoder (k = 200 is the protocol for CIFAR-sized
    banks); "" otherwise. ``flag``: the option that sets k in the command running (``shortlist pretrain``'s
    --knn-k); None where the command has none (``bench cifar10``): the note then suggests no option."""
    if k <= smallest:
        return ""
    fit = max(1, smallest // 2)
    advice = f"; {flag} {fit} suits a bank this small" if flag else ""
    return (f" [yellow](k={k} is more than the {smallest} images of the bank's smallest class, so this "
            f"understates the encoder{advice})[/]")


def _train(run: _Run, console: Console, log: loop.MetricsLog) -> str:
    """The step loop, until the budget is spent or a signal / ``stop_after`` stops it; checkpoints every
    ``checkpoint_minutes`` and at the end. Returns why it stopped early ("" when the budget ran out)."""
    cfg, rt, state = run.cfg, run.rt, run.state
    aug = AugmentConfig(crop_scale=(cfg.crop_min, 1.0))
    budget = loop.Budget(len(run.train) // rt.world // run.per_rank, cfg.epochs, cfg.minutes)
    tuner = (loop.ThreadTuner([1, torch.get_num_threads()]) if rt.device.type == "cpu" and cfg.threads is None
             else None)
    last_ckpt = last_log = time.perf_counter()
    loss_sum, loss_n, img_window, t_window = 0.0, 0, 0, 0.0
    total = cfg.epochs * budget.steps_per_epoch if cfg.epochs is not None else (cfg.minutes or 0) * 60
    progress = loop.make_progress(console, cfg.progress and rt.is_main)
    stopped = ""
    with loop.StopFlag() as stop, progress:
        task = progress.add_task(f"{cfg.method} {cfg.arch}", total=total, info="")
        run.model.train()
        while not budget.done(state.step, state.seconds) and not stopped:
            order = loop.epoch_order(len(run.train), state.epoch, cfg.seed, rt.rank, rt.world)
            for b, rows in loop.batches(order, run.per_rank, state.batch_in_epoch, budget.steps_per_epoch):
                t0 = time.perf_counter()
                loss_val, vpre = _step(run, rows, budget.progress(state.step, state.seconds), aug)
                dt = time.perf_counter() - t0
                state.step += 1
                state.batch_in_epoch = b + 1
                state.seconds += dt
                state.images += len(rows)
                loss_sum, loss_n = loss_sum + loss_val, loss_n + 1
                if tuner is not None and (msg := tuner.observe(len(rows), dt)):
                    log.write(kind="threads", step=state.step, threads=tuner.current, message=msg)
                img_window, t_window = img_window + len(rows) * rt.world, t_window + dt
                progress.update(task, completed=state.step if cfg.epochs is not None else state.seconds,
                                info=f"epoch {state.epoch} {vpre.size[0]}px loss {loss_val:.4f} "
                                     f"{img_window / t_window:.0f} img/s")
                now = time.perf_counter()
                if now - last_log >= cfg.log_seconds:
                    log.write(kind="train", step=state.step, epoch=state.epoch, loss=loss_sum / loss_n,
                              res=vpre.size[0], threads=torch.get_num_threads(), lr=run.opt.param_groups[0]["lr"],
                              images_per_s=img_window / t_window, seconds=state.seconds)
                    loss_sum, loss_n, img_window, t_window, last_log = 0.0, 0, 0, 0.0, now
                if rt.world > 1:
                    state.seconds, peer_stop = loop.sync_max([state.seconds, float(stop.stop)], rt.device)
                    stop.stop = stop.stop or peer_stop > 0
                if stop.stop or (cfg.stop_after is not None and state.step >= cfg.stop_after):
                    stopped = stop.signal_name or ("a peer rank's signal" if stop.stop
                                                   else f"stop_after={cfg.stop_after}")
                    break
                if now - last_ckpt >= cfg.checkpoint_minutes * 60:
                    run.checkpoint()
                    last_ckpt = time.perf_counter()
                if budget.done(state.step, state.seconds):
                    break
            else:  # the epoch ran to its end
                state.epoch += 1
                state.batch_in_epoch = 0
                if run.test is not None and cfg.knn_every and state.epoch % cfg.knn_every == 0 \
                        and not budget.done(state.step, state.seconds) and rt.is_main:
                    _epoch_knn(run, log, progress.console)
        run.checkpoint()
    return stopped


def _summarise(run: _Run, console: Console, log: loop.MetricsLog, wall0: float) -> None:
    """summary.json and the final encoder.pt: steps, throughput and, with a test split, the final kNN
    accuracy (on the whole bank and test split with ``final_knn_full``)."""
    cfg, rt, state, train, test = run.cfg, run.rt, run.state, run.train, run.test
    summary: dict[str, Any] = {"method": cfg.method, "arch": cfg.arch, "steps": state.step, "epochs": state.epoch,
                               "train_seconds": state.seconds, "wall_seconds_this_process": time.perf_counter() - wall0,
                               "images_per_s": state.images * rt.world / max(state.seconds, 1e-9),
                               "train_images": len(train), "skipped_images": run.skipped, "device": str(rt.device),
                               "world": rt.world}
    if test is not None and rt.is_main and cfg.final_knn:
        t0 = time.perf_counter()
        bank = None if cfg.final_knn_full else cfg.knn_bank
        ntest = None if cfg.final_knn_full else cfg.knn_test
        # in fp32, as the exported model runs (the periodic checks use the training's autocast)
        score = evaluate_knn_scores(run.model.knn_encoder(), train, test, run.pre, rt, cfg.knn_k, bank, ntest,
                                    fp32=True)
        nbank, ntest = min(bank or len(train), len(train.labeled_rows)), min(ntest or len(test), len(test))
        # the balanced figure always recorded; printed where the evaluation set is imbalanced (score.said)
        summary.update(knn_acc=score.accuracy, knn_balanced_acc=score.balanced_accuracy,
                       knn_test_class_counts=score.class_counts, knn_k=cfg.knn_k, knn_bank=nbank, knn_test=ntest,
                       knn_precision="fp32", knn_seconds=time.perf_counter() - t0)
        log.write(kind="knn", step=state.step, epoch=state.epoch, knn_acc=score.accuracy,
                  knn_balanced_acc=score.balanced_accuracy, k=cfg.knn_k, final=True, bank=nbank, test=ntest,
                  precision="fp32")
        console.print(f"final kNN(k={cfg.knn_k}) accuracy {score.accuracy:.4f}{score.said()} (fp32) on {ntest} "
                      "held-out images "
                      f"(bank {nbank}){knn_k_note(cfg.knn_k, bank_smallest_class(train, nbank), run.knn_k_flag)}")
    if rt.is_main:
        run.save_encoder(metrics=summary)
        loop.write_json(run.run_dir / loop.SUMMARY, summary)
        console.print(f"{state.step} steps, {summary['images_per_s']:.0f} img/s, {state.seconds / 60:.1f} min "
                      f"training -> {run.run_dir}")


def pretrain(config: PretrainConfig, console: Console | None = None, train_data: TensorData | None = None,
             test_data: TensorData | None = None, knn_k_flag: str | None = "--knn-k") -> Path:
    """Run (or, with ``resume``, continue) a pretraining run; returns its folder.

    ``train_data`` / ``test_data`` (e.g. samples pulled from an agent) replace loading ``config.data``.
    The method is whatever ``config.method`` names: its views, step hooks, kNN encoder and rotation head
    come from its class (training.methods), so nothing here special-cases one. ``knn_k_flag``: the option of
    the running command that sets the kNN check's k, which its note on a small bank suggests (None: a command
    without one, e.g. ``bench cifar10``).
    """
    console = console or Console()
    run = _prepare(config, console, train_data, test_data)
    run.knn_k_flag = knn_k_flag
    wall0 = time.perf_counter()  # the summary's wall time is of the training, not of decoding the data
    log = loop.MetricsLog(run.run_dir, run.rt.is_main)
    stopped = _train(run, console, log)
    if stopped:
        log.write(kind="stopped", signal=stopped, step=run.state.step)
        if stopped.startswith("stop_after="):
            return run.run_dir  # the tests' stop, not a signal
        if run.rt.is_main:  # a resumed run stopped again is unfinished again: an earlier result is not this state's
            loop.discard_result(run.run_dir)
        raise loop.Interrupted(stopped, run.state.step, run.run_dir,
                               "continue with the same command and --resume (nothing to export until it finishes)")
    _summarise(run, console, log, wall0)
    return run.run_dir
