"""``shortlist bench as3l``: AS3L's claim measured (Wen, Pizarro & Williams, Neurocomputing 2024; the arms
of its Tables 1 and 3, the prior metrics of Tables 4-6), through a real agent the way ``bench cifar10``
runs it.

From one self-supervised encoder (``--encoder``: a training run folder with encoder.pt, or a model version
folder / registry whose ``source_run`` still holds it; without it the profile pretrains its own), for
each label budget and seed:

1. labels: on a fresh copy of an agent that has the pool ingested, ``Select(budget, strategy, seed)``
   from zero labels (single shot, Sec. 3.2) with strategy ``random`` and ``as3l``, the simulated
   annotator's ``SubmitLabels``, then ``PriorLabels(as3l)`` for the whole pool (Sec. 3.3). Recorded:
   class coverage, prior accuracy / ECE / mean confidence on the unlabelled pool (Tables 4-6), and the
   linear probe on the frozen embeddings of the same labels (Table 1's "Linear evaluation").
2. arms, all at the same number of training iterations, starting from the encoder's weights
   (Sec. 4.1), test accuracy evaluated at evenly spaced points along training:

   - ``random+flexmatch``: random labels, FlexMatch (Table 3 "Random"),
   - ``as3l+flexmatch``: AS3L labels, FlexMatch (Table 3 "Active"),
   - ``random+prior+remove``: random labels, prior for T iterations then removed,
   - ``as3l+prior+remove``: AS3L labels, prior then removed (Table 1 "Proposed" at 40 labels),
   - ``as3l+prior+update``: AS3L labels, prior re-clustered on the semi-supervised features (Table 1
     "Proposed" at 10 labels).

Every finished cell (labels of (strategy, budget, seed); result of (arm, budget, seed)) is saved as it
finishes under ``out/cells`` and skipped by a rerun into the same ``--out``; an interrupted training run
resumes from its checkpoint. results.json, results.md and plots are rewritten after each cell.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.markup import escape  # paths and class names may hold "[" (rich would read markup)

from bench import cifar10
from bench.checks import OutLock, training_stopped
from bench.cifar10.encoder import torch_run_candidates
from bench.cifar10.run import Walls
from bench.metrics import class_coverage, expected_calibration_error, linear_probe_scores, prior_scores, write_json
from shortlist.atomic import NotWholeJson, read_json
from shortlist.datasets import ImageArray, load_array, split_sources_said
from shortlist.manifest import read_complete

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Profile:
    """One configuration of the benchmark. ``steps`` maps a label budget to the training iterations of
    every arm at that budget (equal across arms); ``size`` is the side in pixels the semi-supervised stage
    trains and tests at (None: the encoder's input size)."""

    name: str
    pool_size: int | None  # class-balanced subset of the training split (None: all of it)
    test_size: int | None
    budgets: tuple[int, ...]
    seeds: int
    steps: dict[int, int]
    evals: int  # test evaluations along training (evenly spaced; the last at the end)
    prior_iters: int  # T
    batch_size: int
    mu: int
    lr: float
    size: int | None
    threads: int | None
    device: str
    pretrain: cifar10.Profile  # the encoder it pretrains when --encoder is not given
    description: str = ""
    # FinetuneConfig.head_init / .ema of every arm: "random" is the paper's fresh classifier ("probe", LP-FT, did
    # not stop the short runs' collapse: docs/benchmarks.md, "Why the FlexMatch arms fall below the probe")
    head_init: str = "random"
    ema: float = 0.999  # FlexMatch's evaluation EMA (its code's ema_m), warmed up (training.finetune.ema_avg_fn)

    def steps_at(self, budget: int) -> int:
        return self.steps.get(budget, max(self.steps.values()))


@dataclass(frozen=True)
class Arm:
    name: str
    strategy: str  # who picked the labels: "random" or "as3l"
    prior_after: str | None  # None: no prior (FlexMatch); "remove" or "update" (AS3L Sec. 3.4)


ARMS = (
    Arm("random+flexmatch", "random", None),
    Arm("as3l+flexmatch", "as3l", None),
    Arm("random+prior+remove", "random", "remove"),
    Arm("as3l+prior+remove", "as3l", "remove"),
    Arm("as3l+prior+update", "as3l", "update"),
)
LABEL_STRATEGIES = ("random", "as3l")

# The paper's figures for CIFAR-10 (mean, std over 3 runs; test accuracy in %, ECE as a fraction).
# Table 3 (10 labels, early stop = 112 x 1024 iterations); Table 1 (40 labels: "Proposed" = active + prior +
# remove, Random early-stop FlexMatch; Linear evaluation with random labels); Table 3 (40 labels).
PAPER_ARMS: dict[tuple[str, int], tuple[float, float | None]] = {
    ("random+flexmatch", 10): (58.17, 13.01),
    ("as3l+flexmatch", 10): (76.65, 5.29),
    ("random+prior+remove", 10): (68.01, 15.96),
    ("as3l+prior+remove", 10): (82.95, 5.45),
    ("as3l+prior+update", 10): (84.43, 5.19),
    ("random+flexmatch", 40): (82.81, None),
    ("as3l+prior+remove", 40): (94.25, 0.43),
    ("as3l+prior+update", 40): (90.51, 0.99),
}
PAPER_STANDARD_FLEXMATCH = {10: 66.07, 40: 95.03}  # Table 1, random labels, 1024 x 1024 iterations
# Table 1 "Linear evaluation" (random labels); Tables 4-6: prior accuracy (%) / class coverage / ECE of the
# proposed selection + propagation (K = 10..60) and of random labels + the proposed propagation (Table 5).
PAPER_LINEAR = {("random", 10): 42.26, ("random", 40): 64.01}
PAPER_PRIOR = {("as3l", 10): 71.41, ("as3l", 40): 74.08, ("random", 10): 52.12, ("random", 40): 69.40}
PAPER_COVERAGE = {("as3l", 10): 9.4, ("as3l", 40): 10.0}
PAPER_ECE = {("as3l", 10): 0.237, ("as3l", 40): 0.069}

# Pretraining for the cpu profile's own encoder: the quick profile's MoBY at 16 px views.
_CPU_PRETRAIN = replace(cifar10.PROFILES["quick"], name="as3l-cpu", pool_size=5000, test_size=2000,
                        pretrain_minutes=15.0)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", pool_size=None, test_size=None, budgets=(10, 40), seeds=1, steps={10: 4, 40: 4}, evals=2,
        prior_iters=2, batch_size=4, mu=2, lr=0.03, size=8, threads=1, device="cpu",
        pretrain=replace(_CPU_PRETRAIN, name="as3l-smoke", pool_size=None, test_size=None, pretrain_minutes=0.02,
                         pretrain_options={"batch_size": 8, "threads": 1, "progress": False}),
        description="seconds: the test's profile (tiny data, a few steps)"),
    "cpu": Profile(
        name="cpu", pool_size=5000, test_size=2000, budgets=(10, 40), seeds=3, steps={10: 80, 40: 80}, evals=4,
        prior_iters=27, batch_size=16, mu=7, lr=0.03, size=16, threads=None, device="cpu",
        pretrain=_CPU_PRETRAIN,
        description="2-core CPU in about an hour: 5,000-image pool, 2,000 test images, 16 px, batch 16 + 7 x 16, "
                    "80 iterations per arm (T = 27, a third), 3 seeds; measured 51 min on a shared machine, "
                    "0.37 CPU-seconds per iteration (docs/benchmarks.md)"),
    "gpu-lease": Profile(
        name="gpu-lease", pool_size=10000, test_size=5000, budgets=(10, 40), seeds=3, steps={10: 300, 40: 300},
        evals=3, prior_iters=100, batch_size=64, mu=7, lr=0.03, size=None, threads=None, device="auto",
        pretrain=replace(cifar10.PROFILES["gpu"], pretrain_minutes=0.0),
        description="a few minutes on one GPU (a short device lease): 10,000-image pool, 5,000 test images, the "
                    "encoder's resolution, the paper's batch 64 + 7 x 64 and lr, 300 iterations per arm (T = 100, "
                    "a third), 3 seeds; pass --encoder RUN_FOLDER"),
    "gpu": Profile(
        name="gpu", pool_size=None, test_size=None, budgets=(10, 40), seeds=3, steps={10: 112 * 1024, 40: 112 * 2304},
        evals=16, prior_iters=6900, batch_size=64, mu=7, lr=0.03, size=None, threads=None, device="auto",
        pretrain=replace(cifar10.PROFILES["gpu"], pretrain_minutes=0.0),
        description="the paper's recipe (Sec. 4.1): full pool and test set, batch 64 + 7 x 64, lr 0.03, T = 6900, "
                    "112 x 1024 iterations at 10 labels and 112 x 2304 at 40; pass --encoder (SimSiam WRN-28-2)"),
}


# ---------------------------------------------------------------------------------------------------
# Cells (resumable units)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)  # NaN -> null: strict JSON


def torch_run_of(provenance: dict[str, Any], version_dir: Path) -> Path:
    """The training run folder (with encoder.pt) behind the benchmark's encoder (``cifar10.torch_run_of``):
    the semi-supervised stage trains the network itself, so an ONNX export alone is not enough."""
    run = cifar10.torch_run_of(provenance, version_dir)
    if run is not None:
        return run
    candidates = torch_run_candidates(provenance, version_dir)
    raise typer.BadParameter(f"the encoder {provenance['encoder']} has no training run with encoder.pt (looked in "
                             f"{', '.join(map(str, candidates))}): the semi-supervised stage trains the network, so "
                             "pass --encoder RUN_FOLDER (a `shortlist pretrain` output)")


def init_preprocess(init: Path) -> str:
    """The preprocess name (without its ``@size``) of the training run ``init`` (its config.json; cifar10 when it
    has none), which the arms train with."""
    path = init / "config.json"
    saved = (read_json(path, "it records the encoder's training settings (its preprocess, which the arms train "
                       "with): restore it, or pass another --encoder") if path.is_file() else {})
    return str(saved.get("preprocess", "cifar10")).partition("@")[0]


def prepare_encoder(encoder: Path | None, profile: Profile, splits: cifar10.PoolSplits, out: Path,
                    console: Console) -> tuple[str, dict[str, Any]]:
    """bench cifar10's prepare_encoder, except that a training run folder this --out already exported is
    served as that version again (a rerun resumes instead of publishing a new version of the same weights)."""
    from shortlist.manifest import list_versions

    registry = out / "models"
    if encoder is not None and (encoder / "encoder.pt").is_file() and registry.is_dir():
        source = str(encoder.expanduser().resolve())
        for version in list_versions(registry):
            manifest = read_complete(registry / version, verify_hashes=False)
            if manifest is not None and manifest.source_run == source:
                return version, {"encoder": str(encoder), "kind": "training run (exported by an earlier run)"}
    return cifar10.prepare_encoder(encoder, profile.pretrain, splits, out, console)


def choose_labels(address: str, strategy: str, budget: int, seed: int, truth: dict[str, int],
                  classes: list[str]) -> tuple[list[str], list[str], np.ndarray, np.ndarray, str]:
    """Single-shot Select + SubmitLabels + PriorLabels(as3l) against a fresh agent: (picked ids, the
    ids PriorLabels answered for, their probs RxC uncalibrated and calibrated, model version)."""
    from agent import client
    from shortlist.v1 import agent_pb2

    stub = client.connect(address)
    reply = stub.Select(agent_pb2.SelectRequest(budget=budget, strategy=strategy, seed=seed), timeout=3600)
    picked = [s.id for s in reply.selected]
    if len(picked) != budget or len(set(picked)) != budget:
        raise RuntimeError(f"{strategy}: asked {budget} samples, got {len(set(picked))} distinct")
    lab = client.submit_labels(stub, [(i, classes[truth[i]]) for i in picked], annotator="simulated")
    if lab.rejected:
        raise RuntimeError(f"labels rejected: {lab.rejected[0].id}: {lab.rejected[0].reason}")
    out = []
    # The paper's y_prior (Sec. 3.3: normalised votes) trains the arms; the calibrated one (the agent's
    # default) is reported beside it.
    for calibrate in ("false", "true"):
        ids, probs = [], []
        req = agent_pb2.PriorLabelsRequest(method="as3l", params={"calibrate": calibrate})
        for p in stub.PriorLabels(req, timeout=3600):
            ids.append(p.id)
            probs.append([p.probs.get(c, 0.0) for c in classes])
        out.append((ids, np.asarray(probs, np.float64).reshape(len(ids), len(classes))))
    return picked, out[0][0], out[0][1], out[1][1], reply.model_version


def check_settings(cells: Path, settings: dict[str, Any]) -> None:
    """Record what the cells under ``cells`` are made with; a rerun with other settings is refused (its
    finished cells would otherwise be mixed with new ones). Seeds, budgets and arms may change: they name
    the cells. A budget's steps may differ only for budgets not yet run."""
    path = cells / "settings.json"
    if path.is_file():
        saved = read_json(path, f"it records the settings the cells in {cells} were made with: restore it, or "
                          f"delete {cells} to run every cell again, or pass another --out")
        steps = {**saved.get("steps", {}), **settings["steps"]}
        clash = {b for b in saved.get("steps", {}) if b in settings["steps"] and saved["steps"][b] !=
                 settings["steps"][b]}
        diff = [f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in settings.items()
                if k != "steps" and saved.get(k) != v] + [f"steps at {b} labels {saved['steps'][b]} there, "
                                                          f"{settings['steps'][b]} now" for b in sorted(clash)]
        if diff:
            raise typer.BadParameter(f"{cells.parent} holds results made with other settings ({'; '.join(diff)}): "
                                     "pass another --out, or remove that folder to start over")
        settings = {**settings, "steps": steps}
    _write_json(path, settings)


@dataclass(frozen=True)
class Folders(cifar10.Folders):
    """bench cifar10's folders under ``out``, and the finished cells."""

    @property
    def cells(self) -> Path:
        return self.out / "cells"


@dataclass(frozen=True)
class LabelData:
    """What every label cell is scored on: the pool (its ids, true classes and the served model's NxD
    embeddings, in pool order) and the test set's embeddings and classes."""

    pool_ids: list[str]
    truth: dict[str, int]  # pool id -> index into classes
    classes: list[str]
    pool_emb: np.ndarray
    test_emb: np.ndarray
    test_y: np.ndarray


def label_cell(folders: Folders, strategy: str, budget: int, seed: int, data: LabelData) -> dict[str, Any]:
    """The labels and priors of (strategy, budget, seed), from a saved cell or a fresh agent."""
    cells, pool_ids, truth, classes = folders.cells, data.pool_ids, data.truth, data.classes
    folder = cells / "labels" / f"{strategy}-{budget}-seed{seed}"
    if (folder / "cell.json").is_file():
        return read_json(folder / "cell.json", "delete it to re-run that cell")
    work = folders.work
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(folders.base, work)  # every cell starts from the same pool and zero labels
    t0 = time.perf_counter()
    try:
        with cifar10.agent_process(work, folders.registry, folders.log) as address:
            picked, ids, probs, calibrated, version = choose_labels(address, strategy, budget, seed, truth, classes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = {sid: i for i, sid in enumerate(pool_ids)}
    prior = np.full((len(pool_ids), len(classes)), 1.0 / len(classes))
    prior[[row[i] for i in ids]] = probs
    cal = prior.copy()
    cal[[row[i] for i in ids]] = calibrated
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "prior.npy", prior.astype(np.float32))  # pool order; labelled rows one-hot
    picked_set = set(picked)
    unl = [row[i] for i in pool_ids if i not in picked_set]
    y = np.asarray([truth[pool_ids[r]] for r in unl])
    lab_rows = [row[i] for i in picked]
    lab_y = np.asarray([truth[i] for i in picked])
    probe = linear_probe_scores(data.pool_emb[lab_rows], lab_y, data.test_emb, data.test_y, seed)
    cell = {"strategy": strategy, "budget": budget, "seed": seed, "labeled": picked, "model_version": version,
            "coverage": class_coverage(lab_y, len(classes)),
            "linear_accuracy": probe.accuracy, "linear_balanced_accuracy": probe.balanced_accuracy,
            **prior_scores(prior[unl], y),
            "ece_calibrated": expected_calibration_error(cal[unl], y),
            "mean_confidence_calibrated": float(cal[unl].max(axis=1).mean()), "seconds": time.perf_counter() - t0}
    _write_json(folder / "cell.json", cell)
    return cell


@dataclass(frozen=True)
class ArmSetup:
    """What every arm cell trains with: the profile's settings, the encoder's training run to start from,
    the preprocess name at the training size, the pool and test splits as tensors (``training.data``), and
    the folder of the cells (an arm reads its labels' prior.npy there)."""

    profile: Profile
    init: Path
    preprocess: str
    pool: Any
    test: Any
    cells: Path


def arm_cell(setup: ArmSetup, arm: Arm, budget: int, seed: int, labels: dict[str, Any],
             console: Console) -> dict[str, Any]:
    """Train one arm (resuming an interrupted run) and return its result; a finished cell is read back."""
    import torch

    from training import loop
    from training.data import TensorData
    from training.finetune import FinetuneConfig, finetune

    cells, profile, pool = setup.cells, setup.profile, setup.pool
    folder = cells / "arms" / f"{arm.name}-{budget}-seed{seed}"
    if (folder / "cell.json").is_file():
        return read_json(folder / "cell.json", "delete it to re-run that cell (its training resumes from its "
                         "checkpoint)")
    row = {sid: i for i, sid in enumerate(pool.ids)}
    y = torch.full((len(pool.ids),), -1, dtype=torch.long)
    for sid in labels["labeled"]:
        y[row[sid]] = pool.labels[row[sid]]
    data = TensorData(pool.images, y, pool.classes, pool.ids)
    priors = None
    if arm.prior_after is not None:
        prior = np.load(cells / "labels" / f"{arm.strategy}-{budget}-seed{seed}" / "prior.npy")
        priors = torch.from_numpy(prior[(y < 0).numpy()])
    steps = profile.steps_at(budget)
    run_dir = folder / "run"
    cfg = FinetuneConfig(out=str(run_dir), mode="as3l", init=str(setup.init), preprocess=setup.preprocess, steps=steps,
                         batch_size=profile.batch_size, mu=profile.mu, lr=profile.lr,
                         prior_iters=profile.prior_iters, prior_after=arm.prior_after or "remove",
                         eval_every=max(1, steps // profile.evals), threads=profile.threads, device=profile.device,
                         head_init=profile.head_init, ema=profile.ema,
                         seed=seed, progress=False, checkpoint_minutes=5.0,
                         resume=(run_dir / loop.CHECKPOINT).is_file())
    t0, c0 = time.perf_counter(), time.process_time()
    finetune(cfg, data, priors, console, eval_data=setup.test)
    # written just now (finetune discards an earlier one first); a rerun resumes the run and writes it again
    summary = read_json(run_dir / loop.SUMMARY, "run the same command again (that cell resumes from its checkpoint)")
    if summary["steps"] < steps:  # stopped by SIGTERM / SIGINT: checkpointed, not finished
        console.print(f"[yellow]{arm.name} {budget} seed {seed} stopped at step {summary['steps']} of {steps}; "
                      "rerun the same command to resume[/]")
        raise typer.Exit(130)
    cell = {"arm": arm.name, "strategy": arm.strategy, "prior_after": arm.prior_after, "budget": budget,
            "seed": seed, "steps": summary["steps"], "eval": summary["eval"],
            "test_accuracy": summary["test_accuracy"], "best_test_accuracy": summary["best_test_accuracy"],
            "seconds": time.perf_counter() - t0, "train_seconds": summary["seconds"],
            # CPU seconds of this process (all threads): the cost on an idle machine, whatever else ran
            "cpu_seconds": time.process_time() - c0}
    for name in (loop.CHECKPOINT, loop.ENCODER):  # the cell is done: keep what it reports, not 2 x 10 MB of weights
        (run_dir / name).unlink(missing_ok=True)
    _write_json(folder / "cell.json", cell)
    return cell


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    profile: str
    data: str
    seeds: list[int]
    budgets: list[int]
    arms: list[str]
    pool_size: int
    test_size: int
    size: list[int]
    steps: dict[str, int]
    prior_iters: int
    batch_size: int
    mu: int
    model_version: str
    encoder: dict[str, Any]
    git_commit: str
    labels: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: dict[str, float] = field(default_factory=dict)
    complete: bool = False


def _tensor_split(arr: ImageArray) -> Any:
    from training.data import from_hwc

    return from_hwc(arr.images, arr.labels, arr.classes, arr.ids)


def _at_size(data: Path, split: str, arr: ImageArray, rows: np.ndarray, side: int, classes: list[str]) -> ImageArray:
    """The ``rows`` of ``arr`` (decoded from ``data``'s ``split``) at side x side pixels."""
    images = arr.images if arr.images.shape[1:3] == (side, side) else \
        load_array(data, split, size=(side, side), classes=classes).images
    return ImageArray(images[rows], arr.labels[rows], arr.classes, [arr.ids[i] for i in rows])


def save_run(run: Run, out: Path) -> None:
    _write_json(out / "results.json", asdict(run))
    from bench.as3l_report import write_report

    write_report(out)


@dataclass(frozen=True)
class Overrides:
    """``bench as3l``'s options over its profile's settings; None keeps the profile's."""

    seeds: int | None = None
    budgets: list[int] | None = None
    arms: list[str] | None = None  # names in ARMS; None: all
    steps: int | None = None  # training iterations per arm at every budget
    prior_iters: int | None = None
    evals: int | None = None

    def apply(self, profile: Profile) -> Profile:
        profile = replace(profile, seeds=self.seeds or profile.seeds, budgets=tuple(self.budgets or profile.budgets))
        if self.steps is not None:
            profile = replace(profile, steps={b: self.steps for b in profile.budgets})
        if self.prior_iters is not None:
            profile = replace(profile, prior_iters=self.prior_iters)
        if self.evals is not None:
            profile = replace(profile, evals=self.evals)
        return profile

    def chosen_arms(self) -> list[Arm]:
        """The arms to run; BadParameter for a name ARMS does not hold."""
        unknown = sorted(set(self.arms or ()) - {a.name for a in ARMS})
        if unknown:
            raise typer.BadParameter(f"unknown arm(s) {', '.join(unknown)}; valid: {', '.join(a.name for a in ARMS)}")
        return [a for a in ARMS if self.arms is None or a.name in self.arms]


@dataclass(frozen=True)
class CellSettings:
    """What an --out's cells are made with (settings.json): the data and the pool and test sizes, the training
    size (``side``), the profile's training settings, the served encoder's version and training run, and the
    classes (the agent is told them: the as3l prior's K and the calibration's step 2 follow them)."""

    data: Path
    profile: Profile
    pool_size: int
    test_size: int
    side: int
    version: str
    init: Path
    classes: list[str]


def _check_cells(folders: Folders, cs: CellSettings) -> None:
    """Before any work: a rerun with other settings is refused at once (``check_settings``)."""
    profile = cs.profile
    check_settings(folders.cells, {"data": str(cs.data), "pool_size": cs.pool_size, "test_size": cs.test_size,
                                   "size": cs.side, "steps": {str(b): profile.steps_at(b) for b in profile.budgets},
                                   "prior_iters": profile.prior_iters, "evals": profile.evals,
                                   "batch_size": profile.batch_size, "mu": profile.mu,
                                   "lr": profile.lr, "model_version": cs.version, "encoder": str(cs.init),
                                   "head_init": profile.head_init, "ema": profile.ema,
                                   # the agent is told the classes: the as3l prior's K and the calibration's
                                   # step 2 follow them
                                   "classes": list(cs.classes)})


def _label_data(data: Path, version_dir: Path, train: ImageArray, pool_idx: np.ndarray, test_set: ImageArray,
                test_idx: np.ndarray) -> LabelData:
    """The served model's embeddings of the pool and test rows, with their true classes."""
    pool_ids = [train.ids[i] for i in pool_idx]
    pool_images, test_images = cifar10.images_at_model_size(data, version_dir, train, test_set, pool_idx, test_idx)
    pool_emb, test_emb = cifar10.embed_images(version_dir, pool_images), cifar10.embed_images(version_dir, test_images)
    truth = {i: int(train.labels[r]) for i, r in zip(pool_ids, pool_idx, strict=True)}
    return LabelData(pool_ids=pool_ids, truth=truth, classes=train.classes, pool_emb=pool_emb, test_emb=test_emb,
                     test_y=test_set.labels)


def _training_splits(data: Path, train: ImageArray, pool_idx: np.ndarray, test_set: ImageArray,
                     test_idx: np.ndarray, side: int) -> tuple[Any, Any]:
    """The pool and test rows at side x side pixels, as the arms' tensors."""
    pool_arr = _at_size(data, "train", train, pool_idx, side, train.classes)
    test_arr = test_set if test_set.images.shape[1:3] == (side, side) else _at_size(
        data, "test", load_array(data, "test", size=(side, side), classes=train.classes), test_idx, side,
        train.classes)
    return _tensor_split(pool_arr), _tensor_split(test_arr)


def _run_cells(run: Run, chosen: list[Arm], folders: Folders, data: LabelData, setup: ArmSetup,
               walls: Walls, console: Console) -> None:
    """Every (seed, budget): the label cells of the strategies the ``chosen`` arms need, then the arms;
    results.json is rewritten after each arm."""
    strategies = [s for s in LABEL_STRATEGIES if any(a.strategy == s for a in chosen)]
    # Seeds outermost: an interrupted run has every arm at the first seeds.
    for seed in run.seeds:
        for budget in run.budgets:
            labels: dict[str, dict[str, Any]] = {}
            for strategy in strategies:
                t = time.perf_counter()
                cell = label_cell(folders, strategy, budget, seed, data)
                labels[strategy] = cell
                if not any(r["strategy"] == strategy and r["budget"] == budget and r["seed"] == seed
                           for r in run.labels):
                    run.labels.append({k: v for k, v in cell.items() if k != "labeled"})
                console.print(f"labels {strategy:>6} {budget:>4} seed {seed}: classes {cell['coverage']}, linear "
                              f"{cell['linear_accuracy']:.3f}, as3l prior {cell['prior_accuracy']:.3f} "
                              f"(ECE {cell['ece']:.3f}) [{time.perf_counter() - t:.0f} s]")
            for arm in chosen:
                t = time.perf_counter()
                res = arm_cell(setup, arm, budget, seed, labels[arm.strategy], console)
                run.results.append(res)
                curve = ", ".join(f"{int(s)}: {a:.3f}" for s, a in res["eval"])
                console.print(f"{arm.name:>20} {budget:>4} seed {seed}: test {res['test_accuracy']:.3f} (best "
                              f"{res['best_test_accuracy']:.3f}; {curve}) [{time.perf_counter() - t:.0f} s]")
                walls.total()
                run.wall_seconds = walls.seconds
                save_run(run, folders.out)


def run_benchmark(data: Path, profile: Profile, out: Path, encoder: Path | None = None,
                  overrides: Overrides | None = None, console: Console | None = None) -> Run:
    """Run (or resume) the whole benchmark (``profile`` with the command's ``overrides``) into ``out``;
    returns the run (also in out/results.json)."""
    from rich.console import Console

    console = console or Console()
    overrides = overrides or Overrides()
    chosen = overrides.chosen_arms()
    profile = overrides.apply(profile)
    folders = Folders(out)
    out.mkdir(parents=True, exist_ok=True)
    walls = Walls()

    train, pool_idx, test_set, test_idx = cifar10.load_pool_and_test(data, profile.pool_size, profile.test_size)
    console.print(f"[bold]data[/] {escape(str(data))}: pool {len(pool_idx)} of {len(train.ids)} train images, "
                  f"test {len(test_idx)}, classes {escape(', '.join(train.classes))}")
    with walls.timed("encoder"):
        version, provenance = prepare_encoder(encoder, profile, cifar10.PoolSplits(data, pool_idx, train, test_set),
                                              out, console)
    version_dir = folders.registry / version
    init = torch_run_of(provenance, version_dir)
    base_pre = init_preprocess(init)
    manifest = read_complete(version_dir, verify_hashes=False)
    assert manifest is not None, f"{version_dir} is not a complete model version"
    side = profile.size or int(manifest.preprocess.size[0])
    _check_cells(folders, CellSettings(data=data, profile=profile, pool_size=len(pool_idx), test_size=len(test_idx),
                                       side=side, version=version, init=init, classes=train.classes))

    with walls.timed("embed"):
        label_data = _label_data(data, version_dir, train, pool_idx, test_set, test_idx)
    pool_t, test_t = _training_splits(data, train, pool_idx, test_set, test_idx, side)
    setup = ArmSetup(profile=profile, init=init, preprocess=f"{base_pre}@{side}", pool=pool_t, test=test_t,
                     cells=folders.cells)

    with walls.timed("ingest"):
        cifar10.ingest_pool(data, label_data.pool_ids, version, folders.registry, folders.base, folders.log, console,
                            classes=train.classes)
    run = Run(profile=profile.name, data=str(data), seeds=list(range(profile.seeds)), budgets=list(profile.budgets),
              arms=[a.name for a in chosen], pool_size=len(label_data.pool_ids), test_size=len(test_idx),
              size=[side, side], steps={str(b): profile.steps_at(b) for b in profile.budgets},
              prior_iters=profile.prior_iters, batch_size=profile.batch_size, mu=profile.mu, model_version=version,
              encoder=provenance, git_commit=cifar10._git_commit())
    _run_cells(run, chosen, folders, label_data, setup, walls, console)
    walls.total()
    run.wall_seconds = walls.seconds
    run.complete = True
    save_run(run, out)
    console.print(f"[bold]report:[/] {escape(str(out / 'results.md'))}")
    return run


_ARM_NAMES = ", ".join(arm.name for arm in ARMS)  # for --arms' help


def as3l_command(
    data: Path = typer.Option(Path("../shared/datasets/cifar10"), help="labelled train and test splits: "
                              f"{split_sources_said()}"),
    profile: str = typer.Option("cpu", help=f"one of {', '.join(PROFILES)}"),
    out: Path = typer.Option(Path("runs/bench-as3l"), help="output folder (a rerun resumes what it holds)"),
    encoder: Path | None = typer.Option(None, help="a training run folder (encoder.pt), or a model version "
                                        "folder / registry whose source run still exists; default: pretrain "
                                        "one (cpu, smoke)"),
    seeds: int | None = typer.Option(None, min=1, help="number of seeds (default: the profile's)"),
    budgets: str | None = typer.Option(None, help="comma-separated label counts (default: 10,40)"),
    arms: str | None = typer.Option(None, help="comma-separated arms (default: all): "
                                    + _ARM_NAMES),
    steps: int | None = typer.Option(None, min=1, help="training iterations per arm at every budget "
                                     "(default: the profile's)"),
    prior_iters: int | None = typer.Option(None, min=1, help="T, the iterations that mix the prior into the "
                                           "pseudo-labels (default: the profile's; the paper's 6900 in gpu)"),
    evals: int | None = typer.Option(None, min=1, help="test evaluations along training, evenly spaced "
                                     "(default: the profile's)"),
) -> None:
    """AS3L against its baselines (Tables 1, 3-6): labels through the agent, prior-guided FlexMatch."""
    if profile not in PROFILES:
        raise typer.BadParameter(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()] if budgets else None
    except ValueError:
        raise typer.BadParameter(f"--budgets {budgets!r}: give label counts like 10,40") from None
    if budget_list is not None and (not budget_list or min(budget_list) <= 0):
        raise typer.BadParameter("--budgets: label counts must be positive")
    arm_list = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
    cifar10.require_splits(data)  # before any work, in the words of a command without --split
    from training.loop import Interrupted

    try:  # two runs into one --out would run the same cells twice and rewrite each other's results.json
        with OutLock(out, "bench as3l"):
            run_benchmark(data, PROFILES[profile], out, encoder,
                          Overrides(seeds=seeds, budgets=budget_list, arms=arm_list, steps=steps,
                                    prior_iters=prior_iters, evals=evals))
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e)) from None
    except NotWholeJson as e:  # a cell's (or the settings') file torn by a crash or edited: one line, what to do
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except Interrupted as e:  # a signal inside the pretraining or a cell's training, after its checkpoint
        raise training_stopped(e.signal_name, e.step, e.run_dir, "bench as3l") from None


def register(bench_app: typer.Typer) -> None:
    bench_app.command("as3l")(as3l_command)
