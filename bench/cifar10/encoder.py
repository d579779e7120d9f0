"""The encoder a benchmark serves: published from ``--encoder``, or pretrained here (resumable) and exported;
and the embeddings the agent's own Embedder computes with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from bench.cifar10.profiles import Profile
from shortlist.atomic import read_json
from shortlist.datasets import ImageArray
from shortlist.manifest import newest_complete, read_complete

if TYPE_CHECKING:
    from rich.console import Console


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# The source a benchmark's records depend on (not docs/, tests/, scripts/ or the README), and its files.
CODE_DIRS = ("agent", "bench", "exporters", "protos", "shortlist", "training")
CODE_SUFFIXES = (".py", ".proto")


def code_fingerprint(root: Path | None = None) -> str:
    """sha256 (hex) of the benchmark's source as it is on disk: the path and content of every .py and
    .proto file under CODE_DIRS of ``root`` (default: the folder holding this package, a checkout or an
    installed copy alike). Commits elsewhere (docs) keep it; any change to the code, committed or not,
    changes it, so a resumed run never mixes records of two versions of the code."""
    import hashlib

    root = root or Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for path in sorted((root / d).rglob("*")):
            if path.suffix in CODE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _copy_version_into(registry: Path, version_dir: Path) -> str:
    """Publish a copy of an already exported version folder into ``registry``."""
    from shortlist.manifest import publish

    registry.mkdir(parents=True, exist_ok=True)
    staging = registry / f".tmp-copy-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(version_dir, staging)
    return publish(registry, staging)


def _exported_from(manifest: Any, run_dir: Path) -> bool:
    """Whether a published version was exported from ``run_dir``'s current encoder.pt: its manifest names
    that run and was created after encoder.pt was last written (a retrained encoder is exported again)."""
    from datetime import datetime

    if not manifest.source_run or Path(manifest.source_run).resolve() != run_dir.resolve():
        return False
    try:
        created = datetime.fromisoformat(manifest.created).timestamp()
    except ValueError:
        return False
    return created > (run_dir / "encoder.pt").stat().st_mtime


def _servable(version_dir: Path) -> None:
    """typer.BadParameter (a usage error, no traceback) with the agent's own refusal when an agent would refuse
    ``version_dir`` (its manifest and files, then agent.embedder.load_check), before anything is copied."""
    from agent.embedder import load_check
    from shortlist.manifest import ManifestError, check_version

    try:
        load_check(version_dir, check_version(version_dir, verify_hashes=True))
    except ManifestError as e:  # ModelRefused is one
        raise typer.BadParameter(f"{version_dir}: the agent refuses this model version: {e}",
                                 param_hint="'--encoder'") from None


def publish_encoder(encoder: Path, registry: Path) -> tuple[str, dict[str, Any]]:
    """Put ``encoder`` (a model version folder, a registry: its newest version, or a training run folder:
    exported first) into ``registry`` as its newest version; returns (version, provenance). A training run
    that ``registry``'s newest version was already exported from (a rerun into the same --out) is served as
    that version, not exported again: ONNX export is not byte-for-byte repeatable, and the same embeddings
    are what lets the rerun reuse the finished runs."""
    encoder = encoder.expanduser()
    own = newest_complete(registry) if encoder.resolve() == registry.resolve() else None
    if own is not None:  # this run's own registry (a rerun): serve what it holds, no copy
        return own[0], {"encoder": str(registry / own[0]), "kind": "registry"}
    if read_complete(encoder, verify_hashes=True) is not None or (encoder / "manifest.json").is_file():
        _servable(encoder)
        version = _copy_version_into(registry, encoder)
        return version, {"encoder": str(encoder), "kind": "model version folder"}
    newest = newest_complete(encoder)
    if newest is not None:
        _servable(encoder / newest[0])
        version = _copy_version_into(registry, encoder / newest[0])
        return version, {"encoder": f"{encoder}/{newest[0]}", "kind": "registry"}
    if not (encoder / "encoder.pt").is_file():
        raise typer.BadParameter(f"{encoder} is neither a model version folder, a registry nor a training run "
                                 "folder (with encoder.pt)")
    mine = newest_complete(registry) if registry.exists() else None
    if mine is not None and _exported_from(mine[1], encoder):  # a rerun: the same export, so resumable
        return mine[0], {"encoder": str(encoder), "kind": "training run", "exported_as": mine[0]}
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
    encoder made for another benchmark; ``NotWholeJson`` when its config.json is not whole JSON.
    """
    from training import loop

    if not (run_dir / loop.CHECKPOINT).exists():
        return "none"
    # not whole JSON: whether the run was made with these settings is unknown, and it may hold hours of
    # pretraining; the user decides (NotWholeJson: the command's one error: line, exit 2)
    try:
        saved = read_json(run_dir / loop.CONFIG, f"it records the settings of the pretraining run in {run_dir}: "
                          "restore it, or remove that folder to pretrain again, or pass another --out")
    except OSError:  # none (a run killed before it wrote one): every setting reads "(not recorded)" below
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


@dataclass(frozen=True, eq=False)
class PoolSplits:
    """What a benchmark's encoder is pretrained on: the source (``--data``), the pool's rows of its train split,
    and the ``train`` / ``test`` splits the benchmark already decoded (None: pretraining decodes the source)."""

    data: Path
    pool_idx: np.ndarray
    train: ImageArray | None = None
    test: ImageArray | None = None


def torch_run_candidates(provenance: dict[str, Any], version_dir: Path) -> list[Path]:
    """Where the training run (encoder.pt) behind a published encoder may be: the --encoder or pretraining
    folder its provenance names, then the run its manifest was exported from."""
    candidates = [Path(provenance["encoder"])]
    manifest = read_complete(version_dir, verify_hashes=False)
    if manifest is not None and manifest.source_run:
        candidates.append(Path(manifest.source_run))
    return candidates


def torch_run_of(provenance: dict[str, Any], version_dir: Path) -> Path | None:
    """The training run folder (encoder.pt) behind the served encoder, or None (an ONNX-only --encoder)."""
    return next((c for c in torch_run_candidates(provenance, version_dir) if (c / "encoder.pt").is_file()), None)


def prepare_encoder(encoder: Path | None, profile: Profile, splits: PoolSplits, out: Path,
                    console: Console) -> tuple[str, dict[str, Any]]:
    """Publish the benchmark's encoder into ``out/models``; returns (version, provenance).

    ``splits.train`` / ``splits.test`` are the splits the benchmark already decoded: when they are at the
    model's input size, pretraining takes the pool's rows (and the test rows for its kNN check) from them
    instead of decoding the source again."""
    data, pool_idx, train, test = splits.data, splits.pool_idx, splits.train, splits.test
    registry = out / "models"
    if encoder is not None:
        return publish_encoder(encoder, registry)
    by_epochs = profile.pretrain_options.get("epochs") is not None  # e.g. a paper's 800 epochs (gpu profiles)
    if profile.pretrain_minutes <= 0 and not by_epochs:
        raise typer.BadParameter(f"profile {profile.name} trains no encoder itself; pass --encoder RUN_OR_MODEL")
    from rich.markup import escape  # (paths below are printed through rich markup: "[x]" in one is no tag)

    from exporters.export import export_run
    from training.pretrain import PretrainConfig, preprocess_by_name, pretrain

    run_dir = out / "pretrain"
    config = PretrainConfig(data=str(data), method=profile.method, arch=profile.arch,
                            minutes=None if by_epochs else profile.pretrain_minutes, out=str(run_dir),
                            subset=pool_idx.tolist(),
                            **profile.pretrain_options)
    batch = config.resolved().batch_size or 0
    if len(pool_idx) < batch:
        # caught here, not deep in the training loop, so the message names the flag a bench user has
        raise typer.BadParameter(f"the pool ({len(pool_idx)} images) is smaller than one pretraining batch of "
                                 f"profile {profile.name} ({batch}); give --data of {batch} images or more "
                                 f"(bench recipe: --pool {batch} or more), or pass --encoder")
    earlier = earlier_pretraining(run_dir, config, profile.pretrain_options)
    provenance = {"encoder": str(run_dir), "kind": "pretrained here", "minutes": profile.pretrain_minutes}
    if earlier == "finished":
        # A rerun (the README's quickstart run twice, or after an interruption later on): the encoder is
        # the one this benchmark made before with the same settings; retraining it would only cost time.
        own = newest_complete(registry) if registry.exists() else None
        source = str(run_dir.resolve())
        console.print(f"[bold]reusing[/] the encoder pretrained in {escape(str(run_dir))} by an earlier run of this "
                      "benchmark (remove that folder to pretrain again)")
        provenance["kind"] = "pretrained here by an earlier run"
        if own is not None and own[1].source_run == source:
            return own[0], provenance
        return export_run(run_dir, registry), provenance
    if earlier == "unfinished":
        console.print(f"[bold]resuming[/] the interrupted pretraining run in {escape(str(run_dir))}")
        config = replace(config, resume=True)
    else:
        length = f"{config.epochs} epochs" if by_epochs else f"{profile.pretrain_minutes:g} min"
        console.print(f"[bold]pretraining[/] {profile.method} {profile.arch} for {length} "
                      f"on {len(pool_idx)} pool images -> {escape(str(run_dir))}")
    size = preprocess_by_name(config.preprocess).size
    if train is not None and test is not None and train.images.shape[1:3] == size == test.images.shape[1:3]:
        from training.data import from_hwc

        # the whole split: pretrain() takes config.subset itself, and config.json records it
        # knn_k_flag None: bench cifar10 has no --knn-k, so the kNN check's note on a small bank names none
        pretrain(config, train_data=from_hwc(train.images, train.labels, train.classes, train.ids),
                 test_data=from_hwc(test.images, test.labels, test.classes, test.ids), knn_k_flag=None)
    else:
        pretrain(config, knn_k_flag=None)
    return export_run(run_dir, registry), provenance


def embed_images(version_dir: Path, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """NxHxWx3 uint8 (at the manifest's size) -> NxD float32 L2-normalised embeddings, computed by the
    agent's own Embedder so the probe sees exactly what the agent indexes."""
    from agent.embedder import Embedder

    manifest = read_complete(version_dir, verify_hashes=False)
    assert manifest is not None, f"{version_dir} is not a complete model version"
    return Embedder(version_dir, manifest, batch_size=batch, use_cuda=False, pretext=False).embed(images).vecs
