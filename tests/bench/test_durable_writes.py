"""The benchmarks' result and marker files are written crash-safely (temp file fsynced, renamed, folder
fsynced), and a torn bench-ingested.json means "ingest again", never a traceback."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from bench import metrics
from bench.cifar10 import evaluation, ingest
from bench.recipes import loop


@pytest.fixture
def events(fsync_events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every fsync and os.replace, in order (tests/conftest.py ``fsync_events``)."""
    return fsync_events


def durable(seen: list[tuple[str, str]], path: Path) -> bool:
    """A temp file beside ``path`` was fsynced, renamed onto it, and the folder fsynced after."""
    if ("replace", str(path)) not in seen:
        return False
    i = seen.index(("replace", str(path)))
    synced_before = [Path(p) for kind, p in seen[:i] if kind == "fsync"]
    return any(p.parent == path.parent and path.name in p.name for p in synced_before) and \
        ("fsync", str(path.parent)) in seen[i + 1:]


def _results(d: Path) -> Path:
    metrics.write_json(d / "results.json", {"a": 1.0})
    return d / "results.json"


def _cell(d: Path) -> Path:
    loop._write_json(d / loop.CELL, {"rounds": []})
    return d / loop.CELL


def _embeddings(d: Path) -> Path:
    x = np.zeros((2, 3), np.float32)
    evaluation.save_embeddings(d, x, x, x, x)
    return d / "test_y.npy"


WRITES: dict[str, Callable[[Path], Path]] = {"metrics.write_json": _results, "recipes cell.json": _cell,
                                             "save_embeddings": _embeddings}


@pytest.mark.parametrize("what", list(WRITES))
def test_bench_writes_are_durable(tmp_path: Path, events: list[tuple[str, str]], what: str) -> None:
    path = WRITES[what](tmp_path)
    assert durable(events, path), events
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_save_embeddings_files_load(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    evaluation.save_embeddings(tmp_path, x, np.array([0, 1]), x, np.array([1, 0]))
    assert np.array_equal(np.load(tmp_path / "pool_x.npy"), x) and sorted(os.listdir(tmp_path)) == [
        "pool_x.npy", "pool_y.npy", "test_x.npy", "test_y.npy"]


class Ingesting(Exception):
    pass


@pytest.mark.parametrize("torn", ["", '{"model_version": "v0001", "ids": 3', "\xff"])
def test_a_torn_ingest_marker_means_ingest_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 events: list[tuple[str, str]], torn: str) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "bench-ingested.json").write_bytes(torn.encode("latin-1"))
    monkeypatch.setattr(ingest, "iter_images", lambda data, split: [])

    def agent_process(*a: Any, **k: Any) -> Any:
        raise Ingesting

    monkeypatch.setattr(ingest, "agent_process", agent_process)
    with pytest.raises(Ingesting):  # not a JSONDecodeError: the base is made again
        ingest.ingest_pool(tmp_path, ["a", "b", "c"], "v0001", tmp_path / "models", base, tmp_path / "log",
                           Console(quiet=True))
    assert not base.exists()  # the torn base was removed before ingesting anew


def test_the_ingest_marker_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              events: list[tuple[str, str]]) -> None:
    from contextlib import contextmanager

    @contextmanager
    def agent_process(data_dir: Path, *a: Any, **k: Any) -> Any:
        data_dir.mkdir()  # what `shortlist serve` makes
        yield "localhost:1"

    monkeypatch.setattr(ingest, "iter_images", lambda data, split: [])
    monkeypatch.setattr(ingest, "agent_process", agent_process)
    monkeypatch.setattr(ingest.client, "connect", lambda address: None)
    monkeypatch.setattr(ingest, "ingest_items", lambda *a, **k: None)
    monkeypatch.setattr(ingest, "wait_embedded", lambda *a, **k: None)
    base = tmp_path / "base"
    base.mkdir()
    ingest.ingest_pool(tmp_path, ["a"], "v0001", tmp_path / "models", base, tmp_path / "log", Console(quiet=True))
    assert durable(events, base / "bench-ingested.json")
    assert json.loads((base / "bench-ingested.json").read_text())["ids"] == 1
