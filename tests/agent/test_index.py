"""agent/index.py: the hnswlib graph answers nearly what exact kNN answers (recall, as hnswlib's own
tests measure it), leaves out rows added after a caller's view, and serves queries while rows are added."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import index as index_module
from agent.index import VersionIndex
from agent.state import StoredEmbeddings

K = 10
RECALL = 0.95  # recall@10 against brute force (hnswlib's tests ask 0.9 of an index built the same way)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 centres: neighbours that matter, as an encoder's embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    return unit(centres[rng.integers(20, size=n)] + 0.6 * rng.normal(size=(n, dim)))


def exact_knn(vecs: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sim = queries @ vecs.T
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def built(vecs: np.ndarray, batch: int = 500) -> VersionIndex:
    idx = VersionIndex("v0001", vecs.shape[1], 0, False, capacity=64)  # grows (resizes) while adding
    for start in range(0, len(vecs), batch):
        idx.add(np.arange(start, start + len(vecs[start:start + batch])) + 1, vecs[start:start + batch])
    return idx


def test_knn_recall_against_exact_search() -> None:
    vecs = clustered(4000, 32, seed=0)
    idx = built(vecs)
    queries = vecs[::40]
    rows, dists = idx.knn(queries, K)
    assert rows.shape == (100, K) and rows.dtype == np.int64
    assert recall(rows, exact_knn(vecs, queries, K)) >= RECALL
    assert (rows[:, 0] == np.arange(0, 4000, 40)).mean() >= 0.99  # a pool row finds itself first
    np.testing.assert_allclose(dists, 1 - np.einsum("qd,qkd->qk", queries, vecs[rows]), atol=1e-4)
    assert np.all(np.diff(dists, axis=1) >= -1e-6)  # ascending
    big, _ = idx.knn(queries[:5], 300)  # k above EF_SEARCH: hnswlib searches with max(ef, k)
    assert recall(big, exact_knn(vecs, queries[:5], 300)) >= RECALL


@pytest.mark.parametrize("overfetch_max", [index_module.OVERFETCH_MAX, 0])
def test_rows_added_after_a_view_are_left_out(monkeypatch: pytest.MonkeyPatch, overfetch_max: int) -> None:
    # overfetch_max=0 takes hnswlib's filter callback instead of over-fetching: the same answer.
    monkeypatch.setattr(index_module, "OVERFETCH_MAX", overfetch_max)
    vecs = clustered(3000, 32, seed=1)
    idx = built(vecs[:2000])
    view = idx.view()
    idx.add(np.arange(2000, 3000) + 1, vecs[2000:])  # e.g. an Ingest after the Select took its view
    queries = vecs[2000:2100]  # new rows: their nearest rows overall are themselves, not in the view
    rows, dists = idx.knn(queries, K, limit=view.n)
    assert rows.shape == (100, K) and rows.max() < 2000
    assert recall(rows, exact_knn(vecs[:2000], queries, K)) >= RECALL
    assert np.all(np.diff(dists, axis=1) >= -1e-6)
    assert idx.knn(queries, K)[0].max() >= 2000  # without the limit they are found


def test_queries_run_while_rows_are_added() -> None:
    vecs = clustered(6000, 16, seed=2)
    idx = built(vecs[:1000])
    errors: list[BaseException] = []
    done = threading.Event()

    def query() -> None:
        try:
            while not done.is_set():
                view = idx.view()
                rows, _ = idx.knn(vecs[:50], K, limit=view.n)
                assert rows.shape == (50, K) and rows.max() < view.n
                assert recall(rows, exact_knn(vecs[:view.n], vecs[:50], K)) >= RECALL
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=query) for _ in range(3)]
    for r in readers:
        r.start()
    for start in range(1000, 6000, 250):
        idx.add(np.arange(start, start + 250) + 1, vecs[start:start + 250])
    done.set()
    for r in readers:
        r.join(30)
    assert not errors, errors[0]
    assert idx.n == 6000


def _stored(idx: VersionIndex) -> StoredEmbeddings:
    n = idx.n
    return StoredEmbeddings(idx._seqs[:n].copy(), idx._vecs[:n].copy(), None, None)


@pytest.mark.parametrize("crash_at", [1, 2])
def test_snapshot_swap_crash_leaves_a_loadable_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        crash_at: int) -> None:
    """A crash at either rename of the swap (old aside, new in) leaves a snapshot the next start loads (the old
    one or the new one), not a rebuild of the whole graph."""
    folder = tmp_path / "index" / "v0001"
    idx = built(clustered(300, 16, 0), batch=100)
    idx.save(folder)  # the old snapshot, 300 rows
    idx.add(np.arange(301, 351), clustered(50, 16, 1))
    real_rename, calls = os.rename, []

    def rename(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == crash_at:
            raise KeyboardInterrupt("power loss")
        real_rename(src, dst)

    monkeypatch.setattr(index_module.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        idx.save(folder)
    monkeypatch.setattr(index_module.os, "rename", real_rename)
    back = VersionIndex.restore("v0001", _stored(idx), folder)
    assert back.loaded_from_snapshot == 300  # the old snapshot; the 50 rows after it added
    assert back.n == 350 and (folder / "meta.json").is_file()
    idx.save(folder)  # the next snapshot cleans up what the crash left
    assert sorted(p.name for p in folder.parent.iterdir()) == ["v0001"]
    assert VersionIndex.restore("v0001", _stored(idx), folder).loaded_from_snapshot == 350


def test_snapshot_files_and_folders_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of the new snapshot, its folder, and the parent after the renames are fsynced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = tmp_path / "v0001"
    idx = built(clustered(50, 8, 0), batch=50)
    idx.save(folder)
    idx.save(folder)
    assert str(tmp_path) == synced[-1]  # the swap made durable
    assert any(p.endswith("meta.json") for p in synced) and any(p.endswith("hnsw.bin") for p in synced)
