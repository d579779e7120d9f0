"""Evaluation: the cumulative Select -> label -> prior -> evaluate loop for one strategy and seed, the
records it writes (``Point``, ``Run``), the AS3L semi-supervised point, and the embedding files of
``bench embeddings``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import typer

from agent import client
from bench.cifar10.data import images_at_model_size, load_pool_and_test
from bench.cifar10.encoder import embed_images, publish_encoder
from bench.cifar10.profiles import hash_ids
from bench.metrics import class_coverage, linear_probe_scores, prior_scores, write_json
from shortlist.atomic import NotWholeJson, atomic_file, read_json
from shortlist.images import preprocess_array
from shortlist.manifest import read_complete
from shortlist.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def save_embeddings(folder: Path, pool_x: np.ndarray, pool_y: np.ndarray, test_x: np.ndarray,
                    test_y: np.ndarray) -> None:
    """pool_x.npy (NxD float32), pool_y.npy (N int), test_x.npy, test_y.npy: `bench strategies`' inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("pool_x", pool_x), ("pool_y", pool_y), ("test_x", test_x), ("test_y", test_y)):
        with atomic_file(folder / f"{name}.npy") as f:  # never a torn .npy after a crash
            np.save(f, arr)


def write_embeddings(data: Path, encoder: Path, out: Path, pool_size: int | None = None,
                     test_size: int | None = None) -> dict[str, Any]:
    """``shortlist bench embeddings``: publish ``encoder`` into ``out/models`` and write the embeddings of a
    class-balanced pool of the training split (all of it by default) and of the test split into ``out``,
    with the agent's own Embedder (what Select and PriorLabels see). Returns what it wrote (meta.json)."""
    train, pool_idx, test_set, test_idx = load_pool_and_test(data, pool_size, test_size)
    version, provenance = publish_encoder(encoder, out / "models")
    t = time.perf_counter()
    version_dir = out / "models" / version
    pool_images, test_images = images_at_model_size(data, version_dir, train, test_set, pool_idx, test_idx)
    pool_x, test_x = embed_images(version_dir, pool_images), embed_images(version_dir, test_images)
    save_embeddings(out, pool_x, train.labels[pool_idx], test_x, test_set.labels)
    meta = {"data": str(data), "encoder": provenance, "model_version": version, "classes": train.classes,
            "pool_size": len(pool_idx), "test_size": len(test_idx), "dim": int(pool_x.shape[1]),
            "pool_ids_sha256": hash_ids([train.ids[i] for i in pool_idx]), "embed_seconds": time.perf_counter() - t}
    write_json(out / "meta.json", meta)
    return meta


@dataclass
class Point:
    strategy: str
    seed: int
    budget: int
    prior_method: str
    coverage: int
    linear_accuracy: float
    prior_accuracy: float
    ece: float
    n_labeled: int
    model_version: str
    select_seconds: float
    prior_seconds: float
    first_round: str  # the strategy that picked the first labels ("random" for ones that need labels)
    semi_supervised_accuracy: float | None = None  # AS3L stage (prior-guided FlexMatch) test accuracy
    # Mean max probability of the priors: above prior_accuracy = over-confident, below = under-confident
    # (ECE alone does not say which).
    mean_confidence: float | None = None
    # Audit labels among the n_labeled (``Profile.audit``; the linear probe is fitted on the strategy's
    # labels only) and what the priors' temperature was fitted on (PriorLabels' Calibration.source:
    # "audit", "labelled" or "default").
    audit_labels: int = 0
    calibration: str | None = None
    # Mean per-class recall of the priors (on the unlabelled pool) and of the linear probe (on the test set):
    # on an imbalanced pool plain accuracy is mostly the large classes' recall.
    prior_balanced_accuracy: float | None = None
    linear_balanced_accuracy: float | None = None


@dataclass
class Run:
    profile: str
    data: str
    seeds: list[int]
    budgets: list[int]
    strategies: list[str]
    prior_methods: list[str]
    pool_size: int
    test_size: int
    model_version: str
    encoder: dict[str, Any]
    git_commit: str
    wall_seconds: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False  # False while running (results.json is rewritten after each strategy and seed)
    # What the records depend on besides the fields above (``inputs_fingerprint``): a rerun into the same
    # --out reuses the (strategy, seed) runs of a results.json with the same fingerprint and settings.
    fingerprint: str = ""
    # The source the records were measured with (bench.cifar10.encoder.code_fingerprint): git_commit
    # alone would miss uncommitted changes and restart a run after a docs-only commit.
    code: str = ""
    audit: int = 0  # audit labels drawn after the first budget's picks (Profile.audit)
    classes: list[str] = field(default_factory=list)  # the data set's classes, in index order (the report shows
    # the published CIFAR-10 references only beside CIFAR-10's: bench.report.is_cifar10)
    class_counts: list[int] = field(default_factory=list)  # pool rows per class (index order): the report says
    # them, and plots balanced accuracy when they are imbalanced (bench.checks.is_imbalanced)


def inputs_fingerprint(pool_ids: Sequence[str], pool_y: np.ndarray, pool_x: np.ndarray, test_x: np.ndarray,
                       test_y: np.ndarray, semi_supervised: SemiSupervised | None) -> str:
    """sha256 (hex) of what a (strategy, seed) run's records depend on beyond ``Run``'s settings: the pool's
    ids and labels, the served model's embeddings of the pool (NxD) and test set (TxD), byte for byte, and
    the semi-supervised stage's settings. Another encoder, or the same one exported differently, gives
    another fingerprint, so its records are never mixed with these."""
    import hashlib

    h = hashlib.sha256()
    h.update("\n".join(pool_ids).encode())
    for arr in (pool_y, pool_x, test_x, test_y):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    if semi_supervised is not None:
        h.update(repr((semi_supervised.at, semi_supervised.minutes, semi_supervised.steps,
                       str(semi_supervised.init), semi_supervised.prior_method)).encode())
    return h.hexdigest()


# code too: records another version of the code measured are not mixed with this one's
RESUME_FIELDS = ("profile", "data", "budgets", "prior_methods", "pool_size", "test_size", "fingerprint", "code",
                 "audit")


Finished = dict[tuple[str, int], list[dict[str, Any]]]  # (strategy, seed) -> its records, one per budget


def earlier_walls(out: Path, runs: Finished) -> dict[str, float]:
    """The wall seconds the earlier results.json in ``out`` recorded for ``runs`` (their
    ``strategy/NAME/seedN`` entries): a resumed run keeps them, so its report can say what the reused runs
    took besides its own wall time."""
    try:
        walls = read_json(out / "results.json", "").get("wall_seconds", {})
    except (OSError, NotWholeJson):  # finished_runs said so, and reuses nothing
        return {}
    if not isinstance(walls, dict):
        return {}
    keys = {f"strategy/{strategy}/seed{seed}" for strategy, seed in runs}
    return {k: float(v) for k, v in walls.items() if k in keys}


def finished_runs(out: Path, run: Run) -> tuple[Finished, Finished, str]:
    """The (strategy, seed) runs an earlier results.json in ``out`` finished with the same settings
    (``RESUME_FIELDS``) as ``run``: those ``run`` asks for (reused), those it does not (kept: a rerun with
    fewer strategies or seeds must not throw finished hours away), and a line saying what is reused and
    kept or why nothing is ({}, {} and "" when there is no results.json). Skipped runs (an RPC error) are not
    reused: they run again."""
    path = out / "results.json"
    if not path.is_file():
        return {}, {}, ""
    try:
        # not whole JSON (torn by a crash of an older version, or edited by hand): nothing in it can be trusted
        # as finished, so every run is run again, as for a results.json of other settings
        old = read_json(path, "its runs are run again and it will be replaced")
    except NotWholeJson as e:
        return {}, {}, f"not resuming: {e}"
    except OSError as e:
        return {}, {}, f"not resuming: {path} cannot be read ({e}); it will be replaced"
    # a field an older results.json lacks reads as its default (audit: 0)
    diff = [k for k in RESUME_FIELDS if old.get(k, getattr(Run, k, None)) != getattr(run, k)]
    if diff:
        return {}, {}, (f"not resuming: {path} was written with other {', '.join(diff)}; its runs are replaced "
                        "(pass another --out to keep them)")
    runs: Finished = {}
    records = old.get("records")
    for r in records if isinstance(records, list) else []:
        if not (isinstance(r, dict) and {"strategy", "seed", "budget"} <= r.keys()):
            continue  # edited by hand: its run lacks that budget below, so it runs again
        runs.setdefault((r["strategy"], r["seed"]), []).append(r)
    # a (strategy, seed) run is saved whole, so every budget is there; a partial one is not reused
    runs = {k: v for k, v in runs.items() if {r["budget"] for r in v} == set(run.budgets)}
    done = {k: v for k, v in runs.items() if k[0] in run.strategies and k[1] in run.seeds}
    kept = {k: v for k, v in runs.items() if k not in done}
    note = f"resuming: {len(done)} finished (strategy, seed) runs reused from {path}"
    if kept:
        names = ", ".join(dict.fromkeys(f"{s} seed {seed}" for s, seed in kept))
        note += (f"; kept {len(kept)} finished runs this command does not ask for ({names}): the report shows "
                 "them too (pass another --out for a report without them)")
    return done, kept, note


def _save(run: Run, out: Path) -> None:
    """Write results.json atomically (a reader never sees half a file)."""
    write_json(out / "results.json", asdict(run))  # NaN -> null: strict JSON


@dataclass(frozen=True)
class SemiSupervised:
    """Where and how long to run AS3L's semi-supervised stage inside the loop (the ``gpu`` profile)."""

    at: tuple[int, ...]
    minutes: float | None
    steps: int | None
    init: Path | None  # the pretraining run to start from (needs its torch checkpoint)
    prior_method: str
    out: Path


@dataclass(frozen=True)
class EvalData:
    """What every (strategy, seed) loop of one run is scored on, the same for all of them: the simulated
    annotator's answers, the served model's embeddings of the pool and test set, and the test images (for
    the semi-supervised stage's classifier)."""

    truth: dict[str, int]  # pool id -> index into classes
    classes: list[str]
    pool_emb: dict[str, np.ndarray]  # pool id -> embedding
    test_emb: np.ndarray  # TxD
    test_y: np.ndarray  # T, indexes classes
    test_images: np.ndarray | None = None  # TxHxWx3 uint8; None: no semi-supervised point


@dataclass(frozen=True)
class LoopSettings:
    """The run-wide settings of every (strategy, seed) loop: the cumulative label budgets, the prior methods
    scored at each, the audit labels drawn after the first budget's picks (``Profile.audit``) and where the
    semi-supervised stage runs (None: nowhere)."""

    budgets: tuple[int, ...]
    prior_methods: tuple[str, ...]
    audit: int = 0
    ssl: SemiSupervised | None = None


def semi_supervised_accuracy(address: str, ssl: SemiSupervised, strategy: str, seed: int, budget: int,
                             data: EvalData) -> float | None:
    """Run training's AS3L stage through ``shortlist cycle`` machinery against the agent (priors from its
    PriorLabels), publish into a registry the agent does not serve, and score the classifier's ``logits``
    on ``data``'s test images with onnxruntime. Returns test accuracy in [0, 1], or None (said on stdout) when
    the labels cannot train a classifier (fewer than 2 classes: ``CycleRefused``)."""
    from training.cycle import CycleConfig, CycleRefused, run_cycle

    assert data.test_images is not None
    run_dir = ssl.out / f"{strategy}-seed{seed}-{budget}"
    registry = ssl.out / "models"
    try:
        cycle = CycleConfig(models=registry, out=run_dir, mode="as3l", init=str(ssl.init) if ssl.init else None,
                            steps=ssl.steps, minutes=None if ssl.steps else ssl.minutes, prior_method=ssl.prior_method,
                            elsewhere=True)
        version = run_cycle(address, cycle).published
    except CycleRefused as e:
        typer.echo(f"warning: no semi-supervised run for {strategy} seed {seed} at {budget} labels: {e}")
        return None
    return classifier_accuracy(registry / version, data.test_images, data.test_y, data.classes)


def classifier_accuracy(version_dir: Path, test_images: np.ndarray, test_y: np.ndarray, classes: list[str]) -> float:
    """Test accuracy in [0, 1] of a published model version's classifier (its ``logits`` output, run by the
    agent's own Embedder with onnxruntime, as the agent serves it) on TxHxWx3 uint8 images (brought to the
    model's input as the manifest's preprocess says, when needed); ``test_y`` indexes ``classes``, matched to the
    manifest's classes by name."""
    from agent.embedder import Embedder

    manifest = read_complete(version_dir, verify_hashes=False)
    assert manifest is not None and manifest.classes, f"{version_dir} has no classifier"
    if test_images.shape[1:3] != manifest.preprocess.size or manifest.preprocess.resize != "squash":
        # as the agent brings them to the model's input (a crop model crops even an image already H x W)
        test_images = np.stack([preprocess_array(im, manifest.preprocess) for im in test_images])
    logits = Embedder(version_dir, manifest, batch_size=512, use_cuda=False, pretext=False).embed(test_images).logits
    assert logits is not None
    pred = np.asarray(manifest.classes)[logits.argmax(axis=1)]
    correct = int(np.sum(pred == np.asarray(classes)[test_y]))
    return correct / max(1, len(test_images))


def _select(stub: agent_pb2_grpc.AgentStub, strategy: str, want: int, seed: int,
            labeled: list[str]) -> tuple[agent_pb2.SelectReply, str, float]:
    """Select ``want`` new samples with ``strategy``; returns the reply, the strategy that picked them and
    the seconds it took. Uncertainty strategies need labels to start from: with none yet, the first labels
    are drawn at random, as in the papers' active-learning protocols."""
    t0 = time.perf_counter()
    name = strategy
    try:
        reply = stub.Select(agent_pb2.SelectRequest(budget=want, strategy=name, seed=seed), timeout=3600)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION or labeled:
            raise
        name = "random"
        reply = stub.Select(agent_pb2.SelectRequest(budget=want, strategy=name, seed=seed), timeout=3600)
    select_s = time.perf_counter() - t0
    picked = [s.id for s in reply.selected]
    if len(picked) != want or set(picked) & set(labeled) or len(set(picked)) != len(picked):
        raise RuntimeError(f"{strategy}: asked {want} new samples, got {len(picked)} "
                           f"({len(set(picked) & set(labeled))} already labelled)")
    return reply, name, select_s


def _label(stub: agent_pb2_grpc.AgentStub, data: EvalData, ids: list[str], what: str) -> None:
    """The simulated annotator: the true labels of ``ids``; a rejection ends the run."""
    lab = client.submit_labels(stub, [(i, data.classes[data.truth[i]]) for i in ids], annotator="simulated")
    if lab.rejected:
        raise RuntimeError(f"{what} rejected: {lab.rejected[0].id}: {lab.rejected[0].reason}")


@dataclass(frozen=True)
class _Priors:
    """One prior method's PriorLabels on the unlabelled pool: probabilities over the classes (NxC), true
    class indices (N), the fitted calibration's source and the seconds the RPC took."""

    probs: np.ndarray
    y: np.ndarray
    calibration: str | None
    seconds: float


def _priors(stub: agent_pb2_grpc.AgentStub, method: str, data: EvalData) -> _Priors:
    t1 = time.perf_counter()
    ids, probs = [], []
    rows = list(stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method), timeout=3600))
    fit = client.first_calibration(rows)
    for p in rows:
        ids.append(p.id)
        probs.append([p.probs.get(c, 0.0) for c in data.classes])
    prior_s = time.perf_counter() - t1
    y = np.asarray([data.truth[i] for i in ids])
    pr = np.asarray(probs, np.float64).reshape(len(ids), len(data.classes))
    return _Priors(pr, y, fit.source if fit else None, prior_s)


def run_strategy(stub: agent_pb2_grpc.AgentStub, strategy: str, seed: int, settings: LoopSettings,
                 data: EvalData, address: str = "", progress: Progress | None = None,
                 task: TaskID | None = None) -> list[Point]:
    """The cumulative Select -> label -> prior -> evaluate loop for one strategy and seed. ``settings.audit``
    > 0: that many audit labels (Select strategy "audit", a uniform random sample of the unlabelled pool) are
    drawn and labelled right after the first budget's picks, as the agent's calibration warning asks a team
    to, and kept; later budgets still count the strategy's picks only. ``address``: the agent's, for the
    semi-supervised stage."""
    labeled: list[str] = []
    audited: list[str] = []
    points: list[Point] = []
    first_round = strategy
    ssl = settings.ssl
    for budget in settings.budgets:
        if progress is not None and task is not None:
            progress.update(task, description=f"{strategy} seed {seed} budget {budget}")
        want = budget - len(labeled)
        reply, name, select_s = _select(stub, strategy, want, seed, labeled)
        if name != strategy:
            first_round = name
        picked = [s.id for s in reply.selected]
        _label(stub, data, picked, "labels")
        labeled += picked
        if settings.audit and not audited:
            drawn = stub.Select(agent_pb2.SelectRequest(budget=settings.audit, strategy="audit", seed=seed),
                                timeout=3600)
            audited = [s.id for s in drawn.selected]
            _label(stub, data, audited, "audit labels")
        lab_y = np.asarray([data.truth[i] for i in labeled])
        lab_x = np.stack([data.pool_emb[i] for i in labeled])
        probe = linear_probe_scores(lab_x, lab_y, data.test_emb, data.test_y, seed)
        lin = probe.accuracy
        cov = class_coverage(lab_y, len(data.classes))
        ssl_acc = None
        if ssl is not None and budget in ssl.at and data.test_images is not None:
            ssl_acc = semi_supervised_accuracy(address, ssl, strategy, seed, budget, data)
        for method in settings.prior_methods:
            pri = _priors(stub, method, data)
            pr = pri.probs
            points.append(Point(strategy=strategy, seed=seed, budget=budget, prior_method=method, coverage=cov,
                                linear_accuracy=lin, **prior_scores(pr, pri.y),
                                n_labeled=len(labeled) + len(audited),
                                model_version=reply.model_version, select_seconds=select_s,
                                prior_seconds=pri.seconds, first_round=first_round,
                                semi_supervised_accuracy=ssl_acc,
                                audit_labels=len(audited), calibration=pri.calibration,
                                linear_balanced_accuracy=probe.balanced_accuracy))
        if progress is not None and task is not None:
            progress.advance(task)
            summary = ", ".join(f"{p.prior_method} {p.prior_accuracy:.3f}"
                                for p in points[-len(settings.prior_methods):])
            progress.console.print(f"{strategy:>10} seed {seed} labels {budget:>5}: classes {cov:>2}, "
                                   f"linear {lin:.3f}, priors {summary} (select {select_s:.1f} s)")
    return points
