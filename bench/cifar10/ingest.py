"""Ingest reuse: a base agent data folder holding the pool, streamed through Ingest once per (pool, model)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import client
from bench.cifar10.process import agent_process, declarable, wait_embedded
from bench.cifar10.profiles import hash_ids
from shortlist.atomic import write_atomic
from shortlist.datasets import ImageItem, iter_images
from shortlist.v1 import agent_pb2_grpc

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def ingest_items(stub: agent_pb2_grpc.AgentStub, items: Sequence[ImageItem], batch: int = 256,
                 progress: Progress | None = None, task: TaskID | None = None) -> int:
    """Stream ``items`` (no labels: the annotator gives them later) through Ingest; returns accepted."""
    samples = (client.item_sample(it, metadata={"split": "train"}) for it in items)  # pixels for torchvision's CIFAR
    on_batch = (lambda n: progress.advance(task, n)) if progress is not None and task is not None else None
    reply = client.ingest(stub, samples, batch=batch, on_batch=on_batch, timeout=3600)
    if reply.rejected:
        first = reply.rejected[0]
        raise RuntimeError(f"agent rejected {client.rejected_count(reply)} samples, e.g. {first.id}: {first.reason}")
    return int(reply.accepted + reply.duplicates)


def _read_marker(marker: Path) -> object:
    """What ``bench-ingested.json`` says the base holds, or None when there is none or it is not whole JSON
    (torn by a crash of a version that wrote it in place): the pool is then ingested again, no traceback."""
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ingest_pool(data: Path, pool_ids: Sequence[str], version: str, registry: Path, base: Path, log: Path,
                console: Console, progress: Progress | None = None, classes: Sequence[str] = ()) -> None:
    """Make ``base`` an agent data folder holding the pool's samples (the original encoded files of
    ``data``'s train split, streamed through Ingest the way a field pipeline would) embedded under
    ``version``. A rerun with the same pool, model and classes finds base/bench-ingested.json and skips
    Ingest. ``classes``: the data set's class list, declared to the agent (``shortlist serve --classes``)
    so that every copy of ``base`` knows the classes no label covers yet, as a team that knows its
    classes would declare them: the calibrated priors then give those classes their share (step 2 of
    agent/priors/calibration.py). Names the option cannot carry leave the list open, with a note. Paths and
    names are printed with rich markup escaped (a folder named ``out[x]`` is printed as it is)."""
    from rich.markup import escape

    if classes and not declarable(classes):
        console.print(f"[yellow]class list left open:[/] {escape(str(list(classes)))} cannot be passed to --classes")
        classes = ()
    wanted = set(pool_ids)
    items = [it for it in iter_images(data, "train") if it.id in wanted]
    marker = base / "bench-ingested.json"  # what the base holds: a rerun with the same pool skips Ingest
    want = {"model_version": version, "ids": len(pool_ids), "digest": hash_ids(list(pool_ids)),
            "classes": list(classes)}
    reuse = _read_marker(marker) == want
    if base.exists() and not reuse:
        shutil.rmtree(base)
    task = progress.add_task("ingest", total=len(items)) if progress is not None else None
    if reuse:
        console.print(f"reusing the ingested pool in {escape(str(base))}")
        if progress is not None and task is not None:
            progress.update(task, completed=len(items), description="ingest (reused)")
        return
    with agent_process(base, registry, log, classes=classes) as address:
        stub = client.connect(address)
        ingest_items(stub, items, progress=progress, task=task)
        wait_embedded(stub, len(items), version)
    write_atomic(marker, json.dumps(want))
