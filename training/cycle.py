"""One retraining cycle against a running agent: pull samples, train, export, publish, reload, report.

    (options checked first, without the agent: _check_options)
    before = GetStatus; refused (CycleRefused) when ``models`` does not hold the version the agent serves (it
             serves from another registry), and a fine-tuning mode without labels of 2 classes (ListLabels)
    lock    = an exclusive flock (shortlist.locks.PidLock) on ``models``/.cycle.lock until the cycle ends (another
              cycle there: refused)
    samples = ListSamples(include_payload, labelled only unless the mode uses unlabelled data): the labels are
              one snapshot at its label revision, recorded in the run folder (labels.csv, pull.json)
    priors  = PriorLabels(method) for the unlabelled samples      (as3l only)
    train   = finetune(mode) or pretrain(method) on those samples, starting from ``init`` if given
    version = exporters.export.export_run(run, models, real_images=16 pulled images)   (verified, atomic)
    after   = ReloadModel; why the agent has not taken the version up, if so: CycleResult.not_taken_up (the CLI
              exits 1 with it)
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from agent.client import PICKUP_WAIT_S, ClientConfig  # the wait for the agent to take a version up
from shortlist.atomic import atomic_file, write_atomic
from shortlist.locks import Locked, PidLock
from shortlist.manifest import Preprocess, highest_published, newest_complete, read_complete, version_number
from shortlist.v1 import agent_pb2
from training import loop
from training.backbones import build_backbone
from training.configs import CycleConfig as CycleConfig
from training.data import TensorData, from_samples
from training.finetune import FinetuneConfig, finetune
from training.methods import METHODS, check_method_options
from training.modes import FINETUNE_MODES, MODES, frozen_mode, or_list
from training.pretrain import PretrainConfig, load_encoder, preprocess_by_name, pretrain

CYCLE_MODES = (*FINETUNE_MODES, *METHODS)
PRIOR_MODES = tuple(m for m in FINETUNE_MODES if MODES[m].priors)  # the modes that take --prior-method
DEFAULT_PRIOR_METHOD = "knn"  # their --prior-method when none is given
# In the registry: held (flock) by a cycle from before its pull until it ends; holds that cycle's pid, start time
# and run folder while held. In the registry, not the run folder: two cycles into one registry with different
# --out folders are what duplicated a version (each trained on the same labels and published).
CYCLE_LOCK_NAME = ".cycle.lock"
# In the run folder: the (id, label) of every labelled sample the cycle trained on, and where they came from
LABELS_FILE = "labels.csv"
PULL_FILE = "pull.json"
# Real images the export verifies the published model on (as `shortlist export` does with the run's data set)
REAL_IMAGES = 16


def _unlabelled(mode: str) -> bool:
    """Whether ``mode`` (of CYCLE_MODES) trains on the unlabelled samples too: a pretraining method, as3l, moby_al."""
    return mode in METHODS or MODES[mode].unlabelled


@dataclass
class CycleResult:
    """What changed: model versions, pool counts, and the training run."""

    version_before: str
    version_after: str
    published: str
    samples: int
    labeled: int
    classes: list[str]
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    serving: str = ""  # what the agent serves after the reload, and what it embeds to swap to ("" when none)
    pending: str = ""
    label_events: int | None = None  # the agent's label revision (Status.label_events) the pulled labels are at
    not_taken_up: str = ""  # why the agent has not taken ``published`` up ("" when it serves or embeds it)

    @property
    def taken_up(self) -> bool:
        return self.published in (self.serving, self.pending)

    def as_json(self, mode: str) -> dict[str, Any]:
        """``shortlist cycle --json``'s line: the versions, whether the agent took the new one up, the pool
        counts and where the run is."""
        return {"published": self.published, "model_before": self.version_before, "serving": self.serving,
                "pending": self.pending, "taken_up": self.taken_up, "not_taken_up": self.not_taken_up,
                "mode": mode, "samples": self.samples, "labeled": self.labeled, "classes": self.classes,
                "label_events": self.label_events, "labels": str(self.run_dir / LABELS_FILE),
                "steps": self.summary.get("steps"), "run": str(self.run_dir)}


def fetch_priors(stub: Any, data: TensorData, method: str) -> torch.Tensor:
    """PriorLabels(method) for the unlabelled rows of ``data`` -> UxC float32 probabilities in
    ``data.classes`` order (uniform where the agent returned nothing for a sample)."""
    unl_ids = [data.ids[i] for i in torch.nonzero(data.labels < 0).flatten().tolist()]
    c = len(data.classes)
    probs = np.full((len(unl_ids), c), 1.0 / c, np.float32)
    if not unl_ids:
        return torch.from_numpy(probs)
    row = {sid: i for i, sid in enumerate(unl_ids)}
    col = {name: j for j, name in enumerate(data.classes)}
    for p in stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method, ids=unl_ids)):
        if p.id in row and p.probs:
            vec = np.zeros(c, np.float32)
            for name, v in p.probs.items():
                if name in col:
                    vec[col[name]] = v
            if vec.sum() > 0:
                probs[row[p.id]] = vec / vec.sum()
    return torch.from_numpy(probs)


class CycleRefused(RuntimeError):
    """The agent's pool cannot train the mode asked for yet (no samples, no labels, labels of one class only);
    nothing was trained or published, and the message says what to do first. The CLI exits 1: the options
    are right, the agent's samples are not there yet (docs/agent.md, "Exit status")."""


def _labelled_classes_problem(labels: list[str], mode: str) -> str | None:
    """Why ``labels`` (the current label of each labelled sample) cannot train ``mode``'s classifier, or None:
    a fine-tuning mode needs labels of 2 classes or more (with one, the classifier's softmax is 1 for every
    image, and the uncertainty strategies would rank the pool on all-zero scores)."""
    if mode in METHODS:  # self-supervised: no labels needed
        return None
    found = sorted(set(labels))
    if len(found) >= 2:
        return None
    if not found:
        return None  # said by the caller, which knows whether there are samples at all
    return (f"the {len(labels)} labelled samples are all of one class ({found[0]!r}): --mode {mode} trains a "
            "classifier, which needs labels of at least 2 classes. Label at least one sample of another class "
            "(`shortlist select` says which to label, `shortlist label FILE.csv` or the web app takes the labels), "
            "then run the cycle again")


def prior_method_of(cfg: CycleConfig) -> str:
    """The PriorLabels method a mode that trains on priors asks the agent for: ``cfg.prior_method`` or the
    default, DEFAULT_PRIOR_METHOD."""
    return cfg.prior_method if cfg.prior_method is not None else DEFAULT_PRIOR_METHOD


def _check_options(cfg: CycleConfig) -> Preprocess | None:
    """Every option of ``cfg`` that can be checked without the agent, before connecting to it and long before
    training (a --models typo found at publishing cost the whole training budget). Raises ValueError
    (FileNotFoundError for a missing --init) saying what to give instead. Returns --init's preprocessing (its
    input size), or None without --init."""
    from exporters.export import registry_problem

    mode, init, out = cfg.mode, cfg.init, cfg.out
    if mode not in CYCLE_MODES:
        raise ValueError(f"unknown cycle mode {mode!r}; valid: {', '.join(CYCLE_MODES)}")
    if cfg.steps is None and cfg.minutes is None and cfg.epochs is None and not frozen_mode(mode):
        raise ValueError("give one of --steps, --minutes or --epochs")
    if init is None and frozen_mode(mode):
        raise ValueError(f"--mode {mode} fits a head on a pretrained encoder's frozen features (a random encoder's "
                         "mean nothing): give --init RUN (a `shortlist pretrain` run folder), or pretrain in the "
                         f"cycle with --mode {or_list(METHODS)}")
    if init is not None and mode in METHODS:
        raise ValueError(f"--mode {mode} pretrains an encoder from random weights and does not use --init: leave "
                         "--init out, or fine-tune the --init run with --mode full, as3l, moby_al, linear or svm")
    if cfg.prior_method is not None and (mode in METHODS or not MODES[mode].priors):
        # given to a mode that would ignore it (even a misspelt name ran the whole cycle with exit 0)
        raise ValueError(f"--prior-method sets where the unlabelled samples' priors come from, which only "
                         f"--mode {or_list(PRIOR_MODES)} trains on; --mode {mode} uses none: leave it out")
    if cfg.method_options:
        if mode not in METHODS:
            raise ValueError(f"--method-option sets the options of a pretraining method ({or_list(METHODS)}); "
                             f"--mode {mode} has none: leave it out")
        check_method_options(mode, cfg.method_options)
    registry_problem(cfg.models)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for this cycle's training run")
    if init is not None and out.resolve() == Path(init).resolve():
        raise ValueError(f"--out {out} is the --init run: its encoder would be overwritten; give another --out")
    if mode in METHODS and (out / loop.CHECKPOINT).exists():  # pretrain() would refuse it after the pull
        raise ValueError(f"--out {out} already holds a training run: give another --out (or remove that folder)")
    preprocess_by_name(cfg.preprocess)
    loop.check_device(cfg.device)
    init_pre = None
    if init is not None:  # a finished training run (load_encoder says why not); the images go through its encoder
        init_pre = Preprocess.from_dict(load_encoder(Path(init))[1]["preprocess"])
    if init is None or mode in METHODS:  # the arch is built: an unknown name is said now, not after the pull
        build_backbone(cfg.arch)
    return init_pre


def run_cycle(agent: str, config: CycleConfig, *, console: Console | None = None,
              client_config: ClientConfig | None = None) -> CycleResult:
    """One cycle (see module docstring) with the settings of ``config`` against the agent at ``agent``
    (host:port). ``client_config``: TLS and token to reach the agent (agent.client.ClientConfig).

    Raises, before any training: ValueError / FileNotFoundError for a bad option (``_check_options``),
    agent.client.AgentUnavailable when the agent cannot be reached, CycleRefused when its pool cannot train
    ``config.mode`` yet, when ``config.models`` does not hold the version the agent serves (another registry) or
    when another cycle holds the registry's cycle lock; loop.Interrupted when a signal stopped the training
    (nothing published). A published version the agent has not taken up is said in ``not_taken_up``."""
    from agent import client

    console = console or Console()
    models, run_dir, mode = config.models, config.out, config.mode
    init_pre = _check_options(config)
    stub = client.connect(agent, config=client_config)
    before = stub.GetStatus(agent_pb2.GetStatusRequest())
    if before.samples == 0:
        raise CycleRefused(f"the agent at {agent} holds no samples: ingest images first (`shortlist ingest FOLDER`)")
    if not config.elsewhere and (problem := _registry_mismatch(agent, before, models)):
        raise CycleRefused(problem)
    if mode not in METHODS:
        if before.labeled == 0:
            raise CycleRefused(
                f"none of the agent's {before.samples} samples is labelled, and --mode {mode} trains a classifier on "
                "labels: label some first (`shortlist select --budget N` says which, `shortlist label FILE.csv` or "
                f"the web app takes the labels), or pretrain without labels with --mode {or_list(METHODS)}")
        # the labels alone (no payloads): a one-class pool is refused before pulling every image
        if problem := _labelled_classes_problem([r.label for r in client.list_labels(stub)], mode):
            raise CycleRefused(problem)
        prior_method = prior_method_of(config)
        if MODES[mode].priors and before.prior_methods and prior_method not in before.prior_methods:
            raise ValueError(f"--prior-method {prior_method!r} is not one of the agent's prior methods: "
                             f"{', '.join(before.prior_methods)}")
    with cycle_lock(models, agent, run_dir):
        return _pull_train_publish(agent, config, stub, before, init_pre, console)


def _pull_train_publish(agent: str, config: CycleConfig, stub: Any, before: agent_pb2.Status,
                        init_pre: Preprocess | None, console: Console) -> CycleResult:
    """run_cycle from the pull on (its checks passed): pull, train, export, publish, reload, report."""
    from agent import client
    from exporters.export import export_run

    models, run_dir, mode = config.models, config.out, config.mode
    newest = newest_complete(models)
    pre = training_preprocess(config, init_pre, newest[1].preprocess if newest is not None else None)
    labeled_only = not _unlabelled(mode)
    label_events, stream = client.list_samples_at(stub, labeled_only=labeled_only, include_payload=True)
    samples = list(stream)
    if problem := _labelled_classes_problem([s.label for s in samples if s.label], mode):
        raise CycleRefused(problem)  # labels taken back since the check above
    classes = _pulled_classes(stub, before, samples, console)
    data = from_samples(samples, pre, classes)
    labeled = int((data.labels >= 0).sum())
    _record_pull(run_dir, data, agent, before, label_events)
    revision = (f"label revision {label_events}" if label_events is not None
                else "label revision unknown (an older agent)")
    console.print(f"pulled {len(data)} samples ({labeled} labelled at the agent's {revision}, listed in "
                  f"{run_dir / LABELS_FILE}; {len(classes)} classes) from {agent}; model "
                  f"{before.model_version or 'none'}", highlight=False)
    try:
        _train(config, agent, data, stub, console, pre)
    except loop.Interrupted as e:  # pretrain's own hint (--resume) is not an option of cycle
        raise loop.Interrupted(e.signal_name, e.step, run_dir, "nothing was published; run `shortlist cycle` "
                               "again (with another --out) to train anew") from None
    version = export_run(run_dir, models, real_images=_real_images(data, run_dir), log=console.print)
    # waits until the agent says what it made of it (a registry it does not serve: nothing to ask)
    after = before if config.elsewhere else client.reload_model(stub, version, PICKUP_WAIT_S)
    summary = loop.read_summary(run_dir) or {}  # a torn summary.json: the run's figures unknown, no traceback
    result = CycleResult(version_before=before.model_version, version_after=after.model_version or
                         after.pending_model_version, published=version, samples=len(data),
                         labeled=labeled, classes=classes, run_dir=run_dir, summary=summary,
                         serving=after.model_version, pending=after.pending_model_version, label_events=label_events)
    pending = f", embedding {after.pending_model_version}" if after.pending_model_version else ""
    console.print(f"model {result.version_before or 'none'} -> published {version} (agent serving "
                  f"{after.model_version or 'none'}{pending}); "
                  f"trained on {result.samples} samples, {result.labeled} labels (label revision "
                  f"{label_events if label_events is not None else 'unknown'}), mode {mode}; run {run_dir}",
                  highlight=False)
    if not result.taken_up and not config.elsewhere:
        result.not_taken_up = (f"the agent has not taken {version} up: "
                               + (client.refusal(after, version)
                                  or f"is {models} the folder it serves (`shortlist serve --models`)?"))
    return result


def _registry_mismatch(agent: str, before: agent_pb2.Status, models: Path) -> str | None:
    """Why ``models`` is not the registry the agent serves from, or None: the agent serves (or embeds to swap to)
    a version that ``models`` does not hold, and that was never published there (a version removed from the
    agent's own registry, e.g. by ``models prune --without-agent``, is under its high-water mark). A version
    published into another registry is never taken up, and was reported only after the whole training."""
    for version, what in ((before.model_version, "serves"), (before.pending_model_version, "is embedding")):
        number = version_number(version)  # None: no name a registry holds (nor a path to look at)
        if number is None or read_complete(models / version, verify_hashes=False) is not None:
            continue
        if models.is_dir() and highest_published(models) >= number:
            continue  # published there, removed since
        held = newest_complete(models, verify_hashes=False)
        has = f"its newest version is {held[0]}" if held else "it holds no version"
        return (f"the agent at {agent} {what} {version}, which --models {models} does not hold ({has}): the agent "
                f"serves from another registry, and a version published into {models} would never be taken up. "
                "Pass the registry the agent serves (the --models of its `shortlist serve`) as --models")
    return None


@contextmanager
def cycle_lock(models: Path, agent: str, run_dir: Path) -> Iterator[None]:
    """Hold ``models``/.cycle.lock (an exclusive flock, released when the cycle ends in any way, the process's
    death included) while one cycle pulls, trains and publishes into ``models``. Another cycle into the same
    registry meanwhile is refused at once (CycleRefused) naming the holder's pid, start time and run folder:
    two cycles on the same labels published the same model twice, and reported a version that was abandoned."""
    path = models / CYCLE_LOCK_NAME
    holder = {"pid": os.getpid(), "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "agent": agent, "run": str(run_dir)}
    try:
        models.mkdir(parents=True, exist_ok=True)
        lock = PidLock(path, holder=json.dumps(holder) + "\n")
    except Locked:
        raise CycleRefused(f"another `shortlist cycle` is publishing into {models}: {_holder(path)}. Wait for it "
                           "to finish (one cycle at a time per registry: both would train on the same labels "
                           "and publish the same model), then run this one again") from None
    except OSError as e:  # before any pull or training: the cycle could never publish its model there
        raise CycleRefused(f"cannot write into the registry {models} ({e.strerror or e}: {e.filename or path}): a "
                           "cycle publishes its model there; run it as a user who can write that folder (the "
                           "agent's registry), or fix its permissions; nothing was pulled or trained") from None
    try:
        yield
    finally:
        os.ftruncate(lock.fileno(), 0)  # still held: nobody reads a finished cycle as the holder
        lock.release()


def _holder(path: Path) -> str:
    """Who holds the cycle lock at ``path``, from what it wrote there."""
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        h = {}
    if not isinstance(h, dict) or "pid" not in h:
        return f"its lock {path} is held (the holder has not said who it is yet)"
    return (f"pid {h['pid']}, started {h.get('started', '?')}, training into {h.get('run', '?')} "
            f"(lock {path})")


def _record_pull(run_dir: Path, data: TensorData, agent: str, before: agent_pb2.Status,
                 label_events: int | None) -> None:
    """Write what the cycle trains on into its run folder: ``labels.csv`` (id,label of every labelled sample,
    in the agent's ingest order) and ``pull.json`` (the agent, its label revision the labels are a snapshot of,
    the counts, the model it served), each crash-safely (shortlist.atomic: temp file, fsync, rename, fsync the
    folder)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [(data.ids[i], data.classes[int(c)]) for i, c in enumerate(data.labels.tolist()) if c >= 0]
    with atomic_file(run_dir / LABELS_FILE, text=True, newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(rows)
    pull = {"agent": agent, "label_events": label_events, "labeled": len(rows), "samples": len(data),
            "classes": data.classes, "model_version": before.model_version,
            "pulled_at": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    write_atomic(run_dir / PULL_FILE, json.dumps(pull, indent=1) + "\n")


def _real_images(data: TensorData, run_dir: Path) -> np.ndarray | None:
    """Up to REAL_IMAGES of the pulled images, evenly spread over the pool (NxHxWx3 uint8 at the trained run's
    input size), for the export's verification on real images (the run's data set is the agent's, which
    ``exporters.export.real_batch`` cannot read back)."""
    if len(data) == 0:
        return None
    from shortlist.images import preprocess_array

    pre = Preprocess.from_dict(load_encoder(run_dir)[1]["preprocess"])  # resized as the agent will feed them
    rows = np.unique(np.linspace(0, len(data) - 1, min(REAL_IMAGES, len(data))).astype(int))
    hwc = data.images[torch.as_tensor(rows)].permute(0, 2, 3, 1).numpy()
    return np.stack([preprocess_array(img, pre) for img in hwc])


def _pulled_classes(stub: Any, before: agent_pb2.Status, samples: list[Any], console: Console) -> list[str]:
    """The class list to train on, from what was pulled: ``before.classes`` (the agent's list at the cycle's start)
    when every pulled label is in it; else the agent's list read again (a class added or renamed while the pool
    was pulled, e.g. an annotator labelling meanwhile), with any pulled label still missing from it appended in
    sorted order. Each class taken in that way is said in one line (was: ValueError from from_samples after the
    whole pull, nothing trained)."""
    pulled = {s.label for s in samples if s.label}
    classes = list(before.classes)
    if not classes:
        return sorted(pulled)
    if pulled <= set(classes):
        return classes
    now = list(stub.GetStatus(agent_pb2.GetStatusRequest()).classes)
    classes = now + sorted(pulled - set(now))
    added = [c for c in classes if c not in before.classes]
    gone = [c for c in before.classes if c not in classes]
    console.print(f"[yellow]the agent's class list changed while the samples were pulled: training "
                  f"{', '.join(map(repr, added))} too"
                  + (f", without {', '.join(map(repr, gone))} (no pulled label uses it)" if gone else "")
                  + "[/]", highlight=False)
    return classes


def training_preprocess(cfg: CycleConfig, init_pre: Preprocess | None, served: Preprocess | None) -> Preprocess:
    """The preprocessing a cycle decodes the pulled samples with (``from_samples``), the one place it is chosen.
    Fine-tuning an --init run: the run's own, whole (its encoder learnt with that size, normalisation, resize and
    interpolation; the fine-tuned model is trained, and published, with it). Otherwise a new encoder's own: the
    --preprocess preset (its mean, std, interpolation and resize: what the export's manifest will say) at the
    served model's input size when one is served (the served 96-px model's size refused a 32-px --init run)."""
    if init_pre is not None and cfg.mode not in METHODS:
        return init_pre
    own = preprocess_by_name(cfg.preprocess)
    return own if served is None else dataclasses.replace(own, size=served.size)


def _train(cfg: CycleConfig, agent: str, data: TensorData, stub: Any, console: Console, pre: Preprocess) -> None:
    """The cycle's training into ``cfg.out``: pretraining for a method of training.methods, else fine-tuning
    (as3l with the agent's PriorLabels for the unlabelled rows); ``pre``: ``training_preprocess``'s, which
    ``data`` was decoded with (an --init run is fine-tuned normalised as it was trained, whatever --preprocess
    says)."""
    mode, init = cfg.mode, cfg.init
    steps, minutes, epochs = cfg.steps, cfg.minutes, cfg.epochs
    if mode in METHODS:
        pcfg = PretrainConfig(data=f"agent:{agent}", out=str(cfg.out), method=mode, arch=cfg.arch, epochs=epochs,
                              minutes=minutes if epochs is None else None,
                              batch_size=_pretrain_batch(mode, cfg.batch_size, len(data), console),
                              preprocess=cfg.preprocess, threads=cfg.threads, device=cfg.device, knn_every=0,
                              method_options=dict(cfg.method_options))
        if steps is not None:  # steps for a pretraining cycle: whole epochs of the pool
            pcfg = dataclasses.replace(pcfg, epochs=max(1, steps), minutes=None)
        pretrain(pcfg, console, train_data=data)
        return
    if init is None:
        console.print(f"[yellow]no --init: --mode {mode} trains the {cfg.arch} encoder from random weights "
                      "(pass a `shortlist pretrain` run to start from self-supervised features)[/]")
    priors = fetch_priors(stub, data, prior_method_of(cfg)) if MODES[mode].priors else None
    fcfg = FinetuneConfig(out=str(cfg.out), mode=mode, init=init, arch=cfg.arch, data=f"agent:{agent}",
                          preprocess=cfg.preprocess, epochs=epochs, minutes=minutes, steps=steps,
                          threads=cfg.threads, device=cfg.device, progress=False)
    if cfg.batch_size:
        fcfg = dataclasses.replace(fcfg, batch_size=cfg.batch_size)
    if cfg.options:
        fcfg = dataclasses.replace(fcfg, **cfg.options)
    if steps is None and epochs is None and minutes is None and not frozen_mode(mode):
        fcfg = dataclasses.replace(fcfg, steps=100)
    # an --init run is fine-tuned with its own preprocessing (``pre``); from random weights with --preprocess's
    finetune(fcfg, data, priors, console, pre=pre if init is not None else None)


def _pretrain_batch(method: str, batch_size: int | None, pool: int, console: Console) -> int | None:
    """The batch of a pretraining cycle on a pool of ``pool`` samples: ``batch_size`` when given (ValueError when
    larger than the pool: not one step would fit), else the method's default, lowered to the pool's size when
    larger (the user of a cycle does not choose the pool's size) with a line saying so."""
    if batch_size is not None:
        if batch_size > pool:
            raise ValueError(f"--batch-size {batch_size} is larger than the agent's pool of {pool} samples: give at "
                             f"most {pool}, or leave --batch-size out (the method's default, at most the pool)")
        return batch_size
    default = METHODS[method].defaults.batch_size
    if default <= pool:
        return None  # the method's default (PretrainConfig.resolved)
    console.print(f"{method}'s default batch of {default} is larger than the agent's pool of {pool} samples: "
                  f"training with batch {pool} (--batch-size sets it)")
    return pool
