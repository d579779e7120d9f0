"""``shortlist bench cifar10``: the CIFAR-10 low-budget active-learning benchmark, run the way a user's
pipeline runs Shortlist: a real agent process over gRPC, a simulated annotator answering with the
true labels.

Per profile: get an encoder (pretrain one with training/ or take ``--encoder``), export and publish it
into a registry, start an agent on a free loopback port, stream the training pool through Ingest once,
then for each strategy and seed, on a fresh copy of that agent's data folder (so every strategy starts
from zero labels), run the cumulative loop over the budgets::

    Select(budget_i - budget_{i-1}) -> SubmitLabels(true labels) -> PriorLabels(each method) -> evaluate

Evaluation per point: linear probe (logistic regression) on the frozen embeddings of the labelled
samples, scored on the test set; class coverage of the labelled set; prior-label accuracy and ECE on
the unlabelled pool, per prior method.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import typer

from agent import client
from bench.metrics import class_coverage, expected_calibration_error, linear_probe_accuracy, prior_accuracy
from shortlist.datasets import ImageArray, ImageItem, iter_images, load_array, resolve_source
from shortlist.images import resize_array
from shortlist.manifest import newest_complete, read_complete
from shortlist.v1 import agent_pb2, agent_pb2_grpc


@dataclass(frozen=True)
class Profile:
    """One benchmark configuration. Budgets are label counts; strings like "1%" are fractions of the pool."""

    name: str
    pool_size: int | None  # None: the whole training split
    test_size: int | None  # None: the whole test split
    pretrain_minutes: float
    arch: str
    method: str
    seeds: int
    budgets: tuple[str, ...]
    strategies: tuple[str, ...]
    prior_methods: tuple[str, ...]
    semi_supervised_at: tuple[int, ...] = ()  # label counts at which the AS3L semi-supervised stage runs
    semi_supervised_minutes: float = 60.0  # training time per semi-supervised point
    # PretrainConfig fields for the profile's own pretraining (e.g. view resolution, batch size)
    pretrain_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""


LOW_BUDGET_STRATEGIES = ("random", "entropy", "coreset", "kmedoids", "typiclust", "probcover", "as3l")
PAPER_BUDGETS = ("10", "20", "40", "1%", "2%", "10%")

# The CPU profiles pretrain with MoBY: on this project's 2-core machine it learns faster early on than
# SimSiam (15 minutes, 16 px views: kNN 45.4% vs 34.6% with the paper's heads; with the current 256 / 64
# heads, 46.8% vs 37.4% after 4 epochs of the 45-minute runs, which end level: 58.70% vs 58.74%;
# docs/training.md). The quick profile's budget is minutes, where the early lead is what counts.
CPU_PRETRAIN = {"batch_size": 128}

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick", pool_size=5000, test_size=2000, pretrain_minutes=3.0, arch="resnet18_w32", method="moby",
        seeds=1, budgets=("10", "20", "40", "2%"), strategies=LOW_BUDGET_STRATEGIES,
        prior_methods=("knn", "as3l", "llgc"), pretrain_options=CPU_PRETRAIN,
        description="5,000-image pool, 3-minute MoBY pretraining, 1 seed, budgets 10/20/40/100: the README's "
                    "smoke run"),
    "cpu": Profile(
        name="cpu", pool_size=None, test_size=None, pretrain_minutes=45.0, arch="resnet18_w32", method="moby",
        seeds=3, budgets=PAPER_BUDGETS, strategies=LOW_BUDGET_STRATEGIES, prior_methods=("knn", "as3l", "llgc"),
        pretrain_options=CPU_PRETRAIN,
        description="full 50,000-image pool, 45-minute MoBY pretraining on the CPU, 3 seeds"),
    "gpu": Profile(
        name="gpu", pool_size=None, test_size=None, pretrain_minutes=0.0, arch="resnet18", method="simsiam",
        seeds=3, budgets=PAPER_BUDGETS, strategies=LOW_BUDGET_STRATEGIES, prior_methods=("knn", "as3l", "llgc"),
        semi_supervised_at=(10, 40),
        description="the papers' recipe: SimSiam 800 epochs (pass --encoder), AS3L semi-supervised stage at 10 and 40"),
}


def resolve_budgets(budgets: Sequence[str], pool: int) -> list[int]:
    """Label counts, ascending and unique, from "10" / "1%" style entries (percentages of ``pool``)."""
    out: set[int] = set()
    for b in budgets:
        b = b.strip()
        try:
            n = round(pool * float(b[:-1]) / 100) if b.endswith("%") else int(b)
        except ValueError:
            raise typer.BadParameter(f"budget {b!r} is neither a count nor a percentage like 1%") from None
        if n <= 0:
            raise typer.BadParameter(f"budget {b!r} gives {n} labels; budgets must be positive")
        out.add(min(n, pool))
    return sorted(out)


def hash_ids(ids: Sequence[str]) -> str:
    """A short digest of a list of sample ids (identifies a pool)."""
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Row indices of a class-balanced random subset of ``size`` rows (all rows when None), sorted."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = size // len(classes)
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(per, int(np.sum(labels == c))), replace=False)
             for c in classes]
    chosen = np.concatenate(picks)
    if len(chosen) < size:  # remainder from the rest, uniformly
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=size - len(chosen), replace=False)])
    return np.sort(chosen)


# ---------------------------------------------------------------------------------------------------
# Encoder: pretrain + export, or take one given


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _copy_version_into(registry: Path, version_dir: Path) -> str:
    """Publish a copy of an already exported version folder into ``registry``."""
    from shortlist.manifest import publish

    registry.mkdir(parents=True, exist_ok=True)
    staging = registry / f".tmp-copy-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(version_dir, staging)
    return publish(registry, staging)


def publish_encoder(encoder: Path, registry: Path) -> tuple[str, dict[str, Any]]:
    """Put ``encoder`` (a model version folder, a registry: its newest version, or a training run folder:
    exported first) into ``registry`` as its newest version; returns (version, provenance)."""
    encoder = encoder.expanduser()
    own = newest_complete(registry) if encoder.resolve() == registry.resolve() else None
    if own is not None:  # this run's own registry (a rerun): serve what it holds, no copy
        return own[0], {"encoder": str(registry / own[0]), "kind": "registry"}
    if read_complete(encoder, verify_hashes=True) is not None or (encoder / "manifest.json").is_file():
        version = _copy_version_into(registry, encoder)
        return version, {"encoder": str(encoder), "kind": "model version folder"}
    newest = newest_complete(encoder)
    if newest is not None:
        version = _copy_version_into(registry, encoder / newest[0])
        return version, {"encoder": f"{encoder}/{newest[0]}", "kind": "registry"}
    if not (encoder / "encoder.pt").is_file():
        raise typer.BadParameter(f"{encoder} is neither a model version folder, a registry nor a training run "
                                 "folder (with encoder.pt)")
    from exporters.export import export_run  # torch: only when a training run must be exported

    version = export_run(encoder, registry)
    return version, {"encoder": str(encoder), "kind": "training run"}


def _shown(value: Any) -> str:
    """A config value for a message: long lists (a pool's rows) as their length."""
    return f"{len(value)} rows" if isinstance(value, list) and len(value) > 8 else repr(value)


def earlier_pretraining(run_dir: Path, config: Any, options: dict[str, Any]) -> str:
    """What ``run_dir`` holds from an earlier run of this benchmark: "none", "finished" (encoder.pt and
    summary.json written) or "unfinished" (checkpointed, e.g. interrupted). Raises typer.BadParameter when
    it holds a run whose benchmark-set settings (data, method, arch, minutes, pool rows, seed and the
    profile's ``options``) differ from ``config``'s (a PretrainConfig), so a rerun never mixes in an
    encoder made for another benchmark.
    """
    from training import loop

    if not (run_dir / loop.CHECKPOINT).exists():
        return "none"
    try:
        saved = json.loads((run_dir / loop.CONFIG).read_text())
    except (OSError, ValueError):
        saved = {}
    now = asdict(config)
    keys = ["data", "method", "arch", "minutes", "subset", "seed", *sorted(options)]
    diff = [f"{k} {_shown(saved.get(k, '(not recorded)'))} there, {_shown(now[k])} now" for k in keys
            if saved.get(k) != now[k]]
    if diff:
        raise typer.BadParameter(f"{run_dir} holds a pretraining run with other settings ({'; '.join(diff)}): "
                                 "remove that folder to pretrain again, or pass another --out")
    finished = (run_dir / loop.ENCODER).is_file() and (run_dir / loop.SUMMARY).is_file()
    return "finished" if finished else "unfinished"


def prepare_encoder(encoder: Path | None, profile: Profile, data: Path, pool_idx: np.ndarray, out: Path,
                    console: Any, train: ImageArray | None = None,
                    test: ImageArray | None = None) -> tuple[str, dict[str, Any]]:
    """Publish the benchmark's encoder into ``out/models``; returns (version, provenance).

    ``train`` / ``test`` are the splits the benchmark already decoded: when they are at the model's input
    size, pretraining takes the pool's rows (and the test rows for its kNN check) from them instead of
    decoding the source again."""
    registry = out / "models"
    if encoder is not None:
        return publish_encoder(encoder, registry)
    if profile.pretrain_minutes <= 0:
        raise typer.BadParameter(f"profile {profile.name} trains no encoder itself; pass --encoder RUN_OR_MODEL")
    from exporters.export import export_run
    from training.pretrain import PretrainConfig, preprocess_by_name, pretrain

    run_dir = out / "pretrain"
    config = PretrainConfig(data=str(data), method=profile.method, arch=profile.arch,
                            minutes=profile.pretrain_minutes, out=str(run_dir), subset=pool_idx.tolist(),
                            **profile.pretrain_options)
    earlier = earlier_pretraining(run_dir, config, profile.pretrain_options)
    provenance = {"encoder": str(run_dir), "kind": "pretrained here", "minutes": profile.pretrain_minutes}
    if earlier == "finished":
        # A rerun (the README's quickstart run twice, or after an interruption later on): the encoder is
        # the one this benchmark made before with the same settings; retraining it would only cost time.
        own = newest_complete(registry) if registry.exists() else None
        source = str(run_dir.resolve())
        console.print(f"[bold]reusing[/] the encoder pretrained in {run_dir} by an earlier run of this benchmark "
                      "(remove that folder to pretrain again)")
        provenance["kind"] = "pretrained here by an earlier run"
        if own is not None and own[1].source_run == source:
            return own[0], provenance
        return export_run(run_dir, registry), provenance
    if earlier == "unfinished":
        console.print(f"[bold]resuming[/] the interrupted pretraining run in {run_dir}")
        config = replace(config, resume=True)
    else:
        console.print(f"[bold]pretraining[/] {profile.method} {profile.arch} for {profile.pretrain_minutes:g} min "
                      f"on {len(pool_idx)} pool images -> {run_dir}")
    size = preprocess_by_name(config.preprocess).size
    if train is not None and test is not None and train.images.shape[1:3] == size == test.images.shape[1:3]:
        from training.data import from_hwc

        # the whole split: pretrain() takes config.subset itself, and config.json records it
        pretrain(config, train_data=from_hwc(train.images, train.labels, train.classes, train.ids),
                 test_data=from_hwc(test.images, test.labels, test.classes, test.ids))
    else:
        pretrain(config)
    return export_run(run_dir, registry), provenance


def embed_images(version_dir: Path, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """NxHxWx3 uint8 (at the manifest's size) -> NxD float32 L2-normalised embeddings, computed by the
    agent's own Embedder so the probe sees exactly what the agent indexes."""
    from agent.embedder import Embedder

    manifest = read_complete(version_dir, verify_hashes=False)
    assert manifest is not None, f"{version_dir} is not a complete model version"
    return Embedder(version_dir, manifest, batch_size=batch, use_cuda=False, pretext=False).embed(images).vecs


def load_pool_and_test(data: Path, pool_size: int | None,
                       test_size: int | None) -> tuple[ImageArray, np.ndarray, ImageArray, np.ndarray]:
    """Decode both splits at the source's size and take class-balanced subsets (seed 0; None: all rows):
    (train split, pool row indices, the test subset, its row indices in the test split). BadParameter
    when a split has unlabelled rows."""
    train = load_array(data, "train", size=None)
    test = load_array(data, "test", size=(train.images.shape[1], train.images.shape[2]), classes=train.classes)
    pool_idx = stratified_subset(train.labels, pool_size, seed=0)
    test_idx = stratified_subset(test.labels, test_size, seed=0)
    if np.any(train.labels[pool_idx] < 0) or np.any(test.labels[test_idx] < 0):
        raise typer.BadParameter(f"{data}: the benchmark needs labelled train and test splits (class folders)")
    test_set = ImageArray(test.images[test_idx], test.labels[test_idx], test.classes, [test.ids[i] for i in test_idx])
    return train, pool_idx, test_set, test_idx


def images_at_model_size(data: Path, version_dir: Path, train: ImageArray, test_set: ImageArray,
                         pool_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pool rows of ``train`` and ``test_set`` (the ``test_idx`` rows of the test split) as PxHxWx3 and
    TxHxWx3 uint8 at the model version's input size; splits decoded at another size are decoded again."""
    manifest = read_complete(version_dir, verify_hashes=False)
    assert manifest is not None, f"{version_dir} is not a complete model version"
    size = manifest.preprocess.size
    pool_images = train.images[pool_idx] if train.images.shape[1:3] == size else \
        load_array(data, "train", size=size).images[pool_idx]
    test_images = test_set.images if test_set.images.shape[1:3] == size else \
        load_array(data, "test", size=size, classes=train.classes).images[test_idx]
    return pool_images, test_images


def save_embeddings(folder: Path, pool_x: np.ndarray, pool_y: np.ndarray, test_x: np.ndarray,
                    test_y: np.ndarray) -> None:
    """pool_x.npy (NxD float32), pool_y.npy (N int), test_x.npy, test_y.npy: `bench strategies`' inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("pool_x", pool_x), ("pool_y", pool_y), ("test_x", test_x), ("test_y", test_y)):
        np.save(folder / f"{name}.npy", arr)


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
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------------------------------------------
# The agent process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def agent_process(data_dir: Path, models: Path, log: Path, timeout: float = 60.0) -> Iterator[str]:
    """Start ``shortlist serve`` as a separate process on a free loopback port; yields its address."""
    port = free_port()
    cmd = [sys.executable, "-m", "shortlist.cli", "serve", "--data-dir", str(data_dir), "--models", str(models),
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {proc.returncode}; see {log}")
            try:
                with grpc.insecure_channel(address) as ch:
                    agent_pb2_grpc.AgentStub(ch).GetStatus(agent_pb2.GetStatusRequest(), timeout=2)
                break
            except grpc.RpcError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer from the agent on {address} in {timeout:.0f} s; see {log}") from e
                time.sleep(0.3)
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_embedded(stub: agent_pb2_grpc.AgentStub, n: int, version: str, timeout: float = 1800.0) -> None:
    """Block until the agent serves ``version`` with ``n`` samples embedded."""
    deadline = time.monotonic() + timeout
    while True:
        s = stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=30)
        if s.model_version == version and s.embedded >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent has {s.embedded}/{n} embedded under {s.model_version!r} (want {version})")
        time.sleep(0.5)


def ingest_items(stub: agent_pb2_grpc.AgentStub, items: Sequence[ImageItem], batch: int = 256,
                 progress: Any = None, task: Any = None) -> int:
    """Stream ``items`` (no labels: the annotator gives them later) through Ingest; returns accepted."""
    samples = (client.image_sample(it.id, it.encoded or b"", uri=it.uri, metadata={"split": "train"}) for it in items)
    on_batch = (lambda n: progress.advance(task, n)) if progress is not None else None
    reply = client.ingest(stub, samples, batch=batch, on_batch=on_batch, timeout=3600)
    if reply.rejected:
        first = reply.rejected[0]
        raise RuntimeError(f"agent rejected {len(reply.rejected)} samples, e.g. {first.id}: {first.reason}")
    return int(reply.accepted + reply.duplicates)


def ingest_pool(data: Path, pool_ids: Sequence[str], version: str, registry: Path, base: Path, log: Path,
                console: Any, progress: Any = None) -> None:
    """Make ``base`` an agent data folder holding the pool's samples (the original encoded files of
    ``data``'s train split, streamed through Ingest the way a field pipeline would) embedded under
    ``version``. A rerun with the same pool and model finds base/bench-ingested.json and skips Ingest."""
    wanted = set(pool_ids)
    items = [it for it in iter_images(data, "train") if it.id in wanted]
    marker = base / "bench-ingested.json"  # what the base holds: a rerun with the same pool skips Ingest
    want = {"model_version": version, "ids": len(pool_ids), "digest": hash_ids(list(pool_ids))}
    reuse = marker.is_file() and json.loads(marker.read_text()) == want
    if base.exists() and not reuse:
        shutil.rmtree(base)
    task = progress.add_task("ingest", total=len(items)) if progress is not None else None
    if reuse:
        console.print(f"reusing the ingested pool in {base}")
        if progress is not None:
            progress.update(task, completed=len(items), description="ingest (reused)")
        return
    with agent_process(base, registry, log) as address:
        stub = client.connect(address)
        ingest_items(stub, items, progress=progress, task=task)
        wait_embedded(stub, len(items), version)
    marker.write_text(json.dumps(want))


# ---------------------------------------------------------------------------------------------------
# The loop


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


def _save(run: Run, out: Path) -> None:
    """Write results.json atomically (a reader never sees half a file)."""
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(asdict(run), indent=1))
    os.replace(tmp, out / "results.json")


@dataclass(frozen=True)
class SemiSupervised:
    """Where and how long to run AS3L's semi-supervised stage inside the loop (the ``gpu`` profile)."""

    at: tuple[int, ...]
    minutes: float | None
    steps: int | None
    init: Path | None  # the pretraining run to start from (needs its torch checkpoint)
    prior_method: str
    out: Path


def semi_supervised_accuracy(address: str, ssl: SemiSupervised, strategy: str, seed: int, budget: int,
                             test_images: np.ndarray, test_y: np.ndarray, classes: list[str]) -> float:
    """Run training's AS3L stage through ``shortlist cycle`` machinery against the agent (priors from its
    PriorLabels), publish into a registry the agent does not serve, and score the classifier's ``logits``
    on the test images with onnxruntime. Returns test accuracy in [0, 1]."""
    from training.cycle import run_cycle

    run_dir = ssl.out / f"{strategy}-seed{seed}-{budget}"
    registry = ssl.out / "models"
    version = run_cycle(address, registry, run_dir, mode="as3l", init=str(ssl.init) if ssl.init else None,
                        steps=ssl.steps, minutes=None if ssl.steps else ssl.minutes,
                        prior_method=ssl.prior_method).published
    from agent.embedder import Embedder

    manifest = read_complete(registry / version, verify_hashes=False)
    assert manifest is not None and manifest.classes, f"{registry / version} has no classifier"
    if test_images.shape[1:3] != manifest.preprocess.size:
        test_images = np.stack([resize_array(im, manifest.preprocess.size) for im in test_images])
    logits = Embedder(registry / version, manifest, batch_size=512, use_cuda=False, pretext=False).embed(
        test_images).logits
    assert logits is not None
    pred = np.asarray(manifest.classes)[logits.argmax(axis=1)]
    correct = int(np.sum(pred == np.asarray(classes)[test_y]))
    return correct / max(1, len(test_images))


def run_strategy(stub: agent_pb2_grpc.AgentStub, strategy: str, seed: int, budgets: list[int],
                 prior_methods: Sequence[str], truth: dict[str, int], classes: list[str],
                 pool_emb: dict[str, np.ndarray], test_emb: np.ndarray, test_y: np.ndarray,
                 progress: Any = None, task: Any = None, ssl: SemiSupervised | None = None,
                 address: str = "", test_images: np.ndarray | None = None) -> list[Point]:
    """The cumulative Select -> label -> prior -> evaluate loop for one strategy and seed."""
    labeled: list[str] = []
    points: list[Point] = []
    first_round = strategy
    for budget in budgets:
        if progress is not None:
            progress.update(task, description=f"{strategy} seed {seed} budget {budget}")
        want = budget - len(labeled)
        t0 = time.perf_counter()
        name = strategy
        try:
            reply = stub.Select(agent_pb2.SelectRequest(budget=want, strategy=name, seed=seed), timeout=3600)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION or labeled:
                raise
            # Uncertainty strategies need labels to start from: the first labels are drawn at random,
            # as in the papers' active-learning protocols.
            name = first_round = "random"
            reply = stub.Select(agent_pb2.SelectRequest(budget=want, strategy=name, seed=seed), timeout=3600)
        select_s = time.perf_counter() - t0
        picked = [s.id for s in reply.selected]
        if len(picked) != want or set(picked) & set(labeled) or len(set(picked)) != len(picked):
            raise RuntimeError(f"{strategy}: asked {want} new samples, got {len(picked)} "
                               f"({len(set(picked) & set(labeled))} already labelled)")
        lab = client.submit_labels(stub, [(i, classes[truth[i]]) for i in picked], annotator="simulated")
        if lab.rejected:
            raise RuntimeError(f"labels rejected: {lab.rejected[0].id}: {lab.rejected[0].reason}")
        labeled += picked
        lab_y = np.asarray([truth[i] for i in labeled])
        lab_x = np.stack([pool_emb[i] for i in labeled])
        lin = linear_probe_accuracy(lab_x, lab_y, test_emb, test_y, seed)
        cov = class_coverage(lab_y, len(classes))
        ssl_acc = None
        if ssl is not None and budget in ssl.at and test_images is not None:
            ssl_acc = semi_supervised_accuracy(address, ssl, strategy, seed, budget, test_images, test_y, classes)
        for method in prior_methods:
            t1 = time.perf_counter()
            ids, probs, conf = [], [], []
            for p in stub.PriorLabels(agent_pb2.PriorLabelsRequest(method=method), timeout=3600):
                ids.append(p.id)
                probs.append([p.probs.get(c, 0.0) for c in classes])
                conf.append(p.confidence)
            prior_s = time.perf_counter() - t1
            y = np.asarray([truth[i] for i in ids])
            pr = np.asarray(probs, np.float64).reshape(len(ids), len(classes))
            points.append(Point(strategy=strategy, seed=seed, budget=budget, prior_method=method, coverage=cov,
                                linear_accuracy=lin, prior_accuracy=prior_accuracy(pr, y),
                                ece=expected_calibration_error(pr, y), n_labeled=len(labeled),
                                model_version=reply.model_version, select_seconds=select_s,
                                prior_seconds=prior_s, first_round=first_round,
                                semi_supervised_accuracy=ssl_acc,
                                mean_confidence=float(pr.max(axis=1).mean()) if len(pr) else None))
        if progress is not None:
            progress.advance(task)
            summary = ", ".join(f"{p.prior_method} {p.prior_accuracy:.3f}" for p in points[-len(prior_methods):])
            progress.console.print(f"{strategy:>10} seed {seed} labels {budget:>5}: classes {cov:>2}, "
                                   f"linear {lin:.3f}, priors {summary} (select {select_s:.1f} s)")
    return points


def run_benchmark(data: Path, profile: Profile, out: Path, encoder: Path | None = None,
                  strategies: Sequence[str] | None = None, seeds: int | None = None,
                  budgets: Sequence[str] | None = None, prior_methods: Sequence[str] | None = None,
                  console: Any = None, semi_supervised_at: Sequence[int] | None = None,
                  semi_supervised_steps: int | None = None) -> Run:
    """Run the whole benchmark; writes results.json, results.md and plots into ``out``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bench.report import write_report

    console = console or Console()
    profile = replace(profile, strategies=tuple(strategies or profile.strategies),
                      seeds=seeds or profile.seeds, budgets=tuple(budgets or profile.budgets),
                      prior_methods=tuple(prior_methods or profile.prior_methods),
                      semi_supervised_at=tuple(profile.semi_supervised_at if semi_supervised_at is None
                                               else semi_supervised_at))
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    # The evaluation rows, taken once: pretraining's kNN check, embedding and scoring all use them.
    train, pool_idx, test_set, test_idx = load_pool_and_test(data, profile.pool_size, profile.test_size)
    test_y = test_set.labels
    walls["load_data"] = time.perf_counter() - t
    console.print(f"[bold]data[/] {data}: pool {len(pool_idx)} of {len(train.ids)} train images, "
                  f"test {len(test_idx)}, classes {', '.join(train.classes)}")

    t = time.perf_counter()
    version, provenance = prepare_encoder(encoder, profile, data, pool_idx, out, console, train, test_set)
    walls["encoder"] = time.perf_counter() - t
    registry = out / "models"
    version_dir = registry / version

    t = time.perf_counter()
    pool_ids = [train.ids[i] for i in pool_idx]
    pool_images, test_images = images_at_model_size(data, version_dir, train, test_set, pool_idx, test_idx)
    pool_emb_arr, test_emb = embed_images(version_dir, pool_images), embed_images(version_dir, test_images)
    walls["embed_eval_sets"] = time.perf_counter() - t
    # Kept so `shortlist bench strategies` can compare every strategy on exactly these embeddings.
    save_embeddings(out / "embeddings", pool_emb_arr, train.labels[pool_idx], test_emb, test_y)
    pool_emb = dict(zip(pool_ids, pool_emb_arr, strict=True))
    truth = {i: int(train.labels[r]) for i, r in zip(pool_ids, pool_idx, strict=True)}

    ssl = None
    if profile.semi_supervised_at:
        init = Path(provenance["encoder"]) if (Path(provenance["encoder"]) / "encoder.pt").is_file() else None
        if init is None:
            console.print("[yellow]semi-supervised stage starts from a random init:[/] --encoder is not a training "
                          "run folder with encoder.pt")
        ssl = SemiSupervised(at=profile.semi_supervised_at, minutes=profile.semi_supervised_minutes,
                             steps=semi_supervised_steps, init=init, prior_method="as3l", out=out / "semi-supervised")

    base = out / "agent-base"
    budget_list = resolve_budgets(profile.budgets, len(pool_ids))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    run = Run(profile=profile.name, data=str(data), seeds=list(range(profile.seeds)), budgets=budget_list,
              strategies=list(profile.strategies), prior_methods=list(profile.prior_methods),
              pool_size=len(pool_ids), test_size=len(test_idx), model_version=version, encoder=provenance,
              git_commit=_git_commit())
    with Progress(*columns, console=console, transient=False) as progress:
        t = time.perf_counter()
        ingest_pool(data, pool_ids, version, registry, base, out / "agent.log", console, progress)
        walls["ingest"] = time.perf_counter() - t

        loop = progress.add_task("strategies", total=len(profile.strategies) * profile.seeds * len(budget_list))
        t = time.perf_counter()
        # Seeds outside strategies: an interrupted run still has every strategy at the first seeds, and
        # results.json is rewritten after each (strategy, seed) so nothing finished is lost.
        for seed in range(profile.seeds):
            for strategy in profile.strategies:
                work = out / "agent-work"
                if work.exists():
                    shutil.rmtree(work)
                shutil.copytree(base, work)  # every strategy starts from the same pool and zero labels
                t_s = time.perf_counter()
                try:
                    with agent_process(work, registry, out / "agent.log") as address:
                        points = run_strategy(client.connect(address), strategy, seed, budget_list,
                                              profile.prior_methods, truth, train.classes, pool_emb, test_emb,
                                              test_y, progress, loop, ssl, address, test_images)
                except grpc.RpcError as e:
                    msg = f"{e.code().name}: {e.details()}"
                    console.print(f"[yellow]skipped[/] {strategy} seed {seed}: {msg}")
                    run.skipped.append({"strategy": strategy, "seed": seed, "error": msg})
                    progress.advance(loop, len(budget_list))
                    continue
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                run.records += [asdict(p) for p in points]
                walls[f"strategy/{strategy}/seed{seed}"] = time.perf_counter() - t_s
                walls["total"] = time.perf_counter() - t_all
                run.wall_seconds = walls
                _save(run, out)
        walls["strategies"] = time.perf_counter() - t
    walls["total"] = time.perf_counter() - t_all
    run.wall_seconds = walls
    run.complete = True
    _save(run, out)
    write_report([out], out, console)
    return run


def require_splits(data: Path) -> None:
    """Exit 2 with a message (no traceback) unless ``data`` holds a train and a test split: checked before
    any work, so a wrong ``--data`` fails at once instead of after pretraining has started."""
    try:
        for split in ("train", "test"):
            resolve_source(data, split)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}; pass --data: the folder of train.tar/test.tar, an ImageFolder tree with train/ "
                   "and test/, or torchvision's CIFAR-10 folder", err=True)
        raise typer.Exit(2) from None


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("cifar10")
    def cifar10_command(
        data: Path = typer.Option(Path("../shared/datasets/cifar10"), help="CIFAR-10: the shared folder of tars, "
                                  "an ImageFolder tree with train/ and test/, or torchvision's CIFAR-10 folder"),
        profile: str = typer.Option("quick", help=f"one of {', '.join(PROFILES)}"),
        out: Path = typer.Option(Path("runs/bench-cifar10"), help="output folder"),
        encoder: Path | None = typer.Option(None, help="a training run folder, a model version folder or a "
                                            "registry, instead of pretraining one"),
        strategies: str | None = typer.Option(None, help="comma-separated strategies (default: the profile's)"),
        seeds: int | None = typer.Option(None, min=1, help="number of seeds (default: the profile's)"),
        budgets: str | None = typer.Option(None, help="comma-separated label counts or pool percentages, "
                                           "e.g. 10,20,40,1%"),
        prior_methods: str | None = typer.Option(None, help="comma-separated prior-label methods"),
        semi_supervised_at: str | None = typer.Option(None, help="label counts at which to run the AS3L "
                                                      "semi-supervised stage (default: the profile's; gpu: 10,40)"),
        semi_supervised_steps: int | None = typer.Option(None, min=1, help="training steps per semi-supervised "
                                                         "point (default: the profile's minutes)"),
    ) -> None:
        """CIFAR-10 accuracy against labels per strategy, through a real agent with a simulated annotator."""
        if profile not in PROFILES:
            raise typer.BadParameter(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        require_splits(data)

        def split(s: str | None) -> list[str] | None:
            return [x.strip() for x in s.split(",") if x.strip()] if s else None

        at = [int(x) for x in split(semi_supervised_at) or []] if semi_supervised_at is not None else None
        run_benchmark(data, PROFILES[profile], out, encoder, split(strategies), seeds, split(budgets),
                      split(prior_methods), semi_supervised_at=at, semi_supervised_steps=semi_supervised_steps)

    @bench_app.command("embeddings")
    def embeddings_command(
        encoder: Path = typer.Option(..., help="a training run folder, a model version folder or a registry"),
        data: Path = typer.Option(Path("../shared/datasets/cifar10"), help="labelled train/ and test/ splits: "
                                  "the shared CIFAR-10 tars, an ImageFolder tree or torchvision's CIFAR-10 folder"),
        pool: int | None = typer.Option(None, min=1, help="class-balanced subset of the training split "
                                        "(default: all of it)"),
        test: int | None = typer.Option(None, min=1, help="class-balanced subset of the test split (default: all)"),
        out: Path = typer.Option(..., help="folder for pool_x.npy, pool_y.npy, test_x.npy, test_y.npy, meta.json"),
    ) -> None:
        """Embed a data set with an encoder (as the agent would) for `shortlist bench strategies`."""
        require_splits(data)
        meta = write_embeddings(data, encoder, out, pool, test)
        typer.echo(f"{meta['pool_size']} pool and {meta['test_size']} test embeddings ({meta['dim']}-d, model "
                   f"{meta['model_version']}, {meta['embed_seconds']:.0f} s) -> {out}\nnext: shortlist bench "
                   f"strategies --embeddings {out}/pool_x.npy --labels {out}/pool_y.npy --test-embeddings "
                   f"{out}/test_x.npy --test-labels {out}/test_y.npy --out DIR")

    @bench_app.command("report")
    def report_command(
        runs: list[Path] = typer.Argument(..., help="benchmark output folders (with results.json)"),
        out: Path | None = typer.Option(None, help="where to write the report (default: the first run's folder)"),
    ) -> None:
        """Re-render tables and plots from results.json; several runs go side by side."""
        from bench.report import write_report

        write_report(runs, out or runs[0])
