"""The embeddings of one model version and their hnswlib index (cosine space).

Row r of a ``VersionIndex`` is the r-th sample embedded under that version; hnswlib labels are rows.
The durable record of every row is SQLite (agent/state.py ``embeddings``, written in the same
transaction that acknowledges the sample), so nothing here needs to be fsynced per ingest. The hnswlib
graph is a cache persisted to ``<data>/index/<version>/`` (``hnsw.bin``, the row -> sample id map
``rows.npy`` and ``meta.json``), written to a temporary folder and renamed into place, so a reader
sees the old snapshot or the new one; on start-up the snapshot is loaded and the rows stored after it
are added from SQLite, instead of rebuilding the graph (or re-embedding the pool).

hnswlib's ``knn_query`` may run in many threads at once, but not beside ``add_items`` or a resize, so
``self.lock`` is a readers-writer lock (fasteners.ReaderWriterLock, writer-preferring): queries,
views and snapshots share it, ``add`` holds it alone. A query therefore never waits for another query,
only for an add in progress (one Ingest batch). Rows added after a caller's view are left out of its
answer by asking for that many more neighbours and dropping them in numpy, not by hnswlib's filter
callback (a Python call per visited node, under the GIL).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import fasteners
import hnswlib
import numpy as np

from agent.pool import PoolMemo
from agent.security import OWNER_DIR, OWNER_FILE
from agent.state import StoredEmbeddings
from shortlist.atomic import fsync_path

log = logging.getLogger(__name__)

M = 16  # graph degree (hnswlib's default); with ef below, recall@10 is well above 0.95 at our sizes
EF_CONSTRUCTION = 100
EF_SEARCH = 128  # hnswlib searches with max(ef, k), so a larger k needs no set_ef (a graph-wide setting)
# A query whose view lacks at most this many of the graph's rows (added since the view) over-fetches
# and filters in numpy; beyond, hnswlib's filter callback leaves them out (slower, but exact in count).
OVERFETCH_MAX = 4096
OLD_PREFIX = ".old-"  # a snapshot moved aside while its successor is renamed in (VersionIndex.save)


@dataclass
class IndexView:
    """A consistent snapshot of the first ``n`` rows: seqs N int64, vecs NxD, logits NxC | None,
    pretext N | None (views of arrays whose first n rows never change)."""

    n: int
    seqs: np.ndarray
    vecs: np.ndarray
    logits: np.ndarray | None
    pretext: np.ndarray | None


class VersionIndex:
    """Embeddings (growable arrays) and the hnswlib graph over them for one model version."""

    def __init__(self, version: str, dim: int, num_logits: int, with_pretext: bool, capacity: int = 1024) -> None:
        self.version = version
        self.dim = dim
        self.lock = fasteners.ReaderWriterLock()
        self.n = 0
        cap = max(capacity, 16)
        self._seqs = np.zeros(cap, np.int64)
        self._vecs = np.zeros((cap, dim), np.float32)
        self._logits = np.zeros((cap, num_logits), np.float32) if num_logits else None
        self._pretext = np.zeros(cap, np.float32) if with_pretext else None
        self._graph = hnswlib.Index(space="cosine", dim=dim)
        self._graph.init_index(max_elements=cap, ef_construction=EF_CONSTRUCTION, M=M, random_seed=100)
        self._graph.set_ef(EF_SEARCH)
        self._graph.set_num_threads(1)  # deterministic graph; the agent's parallelism is across requests
        self._seq_set: set[int] = set()
        self.deleted = np.zeros(0, np.int64)  # rows of deleted samples (``remove``), ascending
        self.memo = PoolMemo()  # what strategies derive from these rows and reuse (agent.pool.PoolMemo)

    # ---- growth ----------------------------------------------------------------------------------
    def _ensure_capacity(self, need: int) -> None:
        cap = len(self._seqs)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        # New arrays: old IndexViews keep referring to the old ones, whose first n rows stay valid.
        self._seqs = _grow(self._seqs, new)
        self._vecs = _grow(self._vecs, new)
        self._logits = None if self._logits is None else _grow(self._logits, new)
        self._pretext = None if self._pretext is None else _grow(self._pretext, new)
        self._graph.resize_index(new)

    def add(self, seqs: np.ndarray, vecs: np.ndarray, logits: np.ndarray | None = None,
            pretext: np.ndarray | None = None) -> int:
        """Append K rows (seqs K, vecs KxD unit rows, logits KxC, pretext K); returns the first row."""
        k = len(seqs)
        with self.lock.write_lock():
            start = self.n
            if k == 0:
                return start
            self._ensure_capacity(start + k)
            self._seqs[start:start + k] = seqs
            self._vecs[start:start + k] = vecs
            if self._logits is not None and logits is not None:
                self._logits[start:start + k] = logits
            if self._pretext is not None and pretext is not None:
                self._pretext[start:start + k] = pretext
            self._graph.add_items(vecs, np.arange(start, start + k))
            self.n = start + k
            self._seq_set.update(int(s) for s in seqs)
            return start

    def remove(self, seqs: Collection[int]) -> int:
        """Take the rows of deleted samples ``seqs`` out (DeleteSamples): hnswlib marks them deleted, so no
        query returns them, and in new arrays (views taken before keep theirs) their seq becomes 0 (no sample)
        and their vector, logits and pretext loss zeros. Row numbers stay as they are (rows added later follow
        them); the stored rows are renumbered densely at the next start, which rebuilds the graph. Returns how
        many rows were taken out."""
        with self.lock.write_lock():
            drop = [int(q) for q in seqs if int(q) in self._seq_set]
            if not drop:
                return 0
            n = self.n
            rows = np.flatnonzero(np.isin(self._seqs[:n], drop))
            for r in rows.tolist():
                self._graph.mark_deleted(r)
            self._seqs = self._seqs.copy()
            self._vecs = self._vecs.copy()
            self._seqs[rows] = 0
            self._vecs[rows] = 0.0
            if self._logits is not None:
                self._logits = self._logits.copy()
                self._logits[rows] = 0.0
            if self._pretext is not None:
                self._pretext = self._pretext.copy()
                self._pretext[rows] = 0.0
            self._seq_set.difference_update(drop)
            self.deleted = np.union1d(self.deleted, rows)
            self.memo = PoolMemo()  # its entries were derived from the rows as they were
            return len(rows)

    @property
    def live(self) -> int:
        """Rows of samples not deleted: the samples this version has embedded."""
        return self.n - len(self.deleted)

    def has(self, seq: int) -> bool:
        return seq in self._seq_set

    def view(self) -> IndexView:
        with self.lock.read_lock():
            n = self.n
            return IndexView(n, self._seqs[:n], self._vecs[:n],
                             None if self._logits is None else self._logits[:n],
                             None if self._pretext is None else self._pretext[:n])

    # ---- queries ---------------------------------------------------------------------------------
    def knn(self, queries: np.ndarray, k: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows (< ``limit`` when given: a view's size) of each query (QxD unit rows).
        Returns rows QxK int64 and cosine distances QxK float32, ascending."""
        q = np.ascontiguousarray(queries, np.float32)
        with self.lock.read_lock():
            n = self.n if limit is None else min(limit, self.n)
            # hnswlib raises when asked for more neighbours than it has rows not marked deleted
            gone_before = int(np.searchsorted(self.deleted, n))
            live = self.n - len(self.deleted)
            k = min(k, n - gone_before)
            if k <= 0 or len(q) == 0:
                return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
            extra = self.n - n  # rows added after the caller's view: leave them out
            if extra == 0:
                rows, dists = self._graph.knn_query(q, k=k)
            elif extra <= OVERFETCH_MAX:
                rows, dists = self._graph.knn_query(q, k=min(k + extra, live))
            else:
                rows, dists = self._graph.knn_query(q, k=k, filter=lambda r: r < n)
        rows = rows.astype(np.int64)
        dists = dists.astype(np.float32)
        if rows.shape[1] > k:
            # At most ``extra`` of each query's k + extra neighbours are new rows: keep the first k old
            # ones, in order (a stable sort of "is new" puts them first).
            keep = np.argsort(rows >= n, axis=1, kind="stable")[:, :k]
            rows = np.take_along_axis(rows, keep, axis=1)
            dists = np.take_along_axis(dists, keep, axis=1)
        return rows, dists

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Snapshot the graph and id map to ``folder`` so that a crash at any instant leaves a loadable
        snapshot, the old one or the new one: the new one is written whole into ``.tmp-NAME-PID`` (files and
        folder fsynced); the old one is renamed to ``.old-NAME-PID`` (complete, and ``restore`` takes it back
        when ``folder`` is missing: a crash between the two renames), the new one renamed to ``folder``, the
        parent fsynced, and only then the old one deleted."""
        folder.parent.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=OWNER_DIR)
        with self.lock.read_lock():
            n = self.n
            self._graph.save_index(str(tmp / "hnsw.bin"))
            np.save(tmp / "rows.npy", self._seqs[:n])
        (tmp / "meta.json").write_text(json.dumps({"version": self.version, "dim": self.dim, "rows": n}))
        for name in ("hnsw.bin", "rows.npy", "meta.json"):
            os.chmod(tmp / name, OWNER_FILE)  # hnswlib and numpy create files with the umask's mode
            fsync_path(tmp / name)
        fsync_path(tmp)
        fsync_path(folder.parent)  # the new snapshot's name is durable before the old one is moved aside
        old = folder.parent / f"{OLD_PREFIX}{folder.name}-{os.getpid()}"
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
        os.rename(tmp, folder)
        fsync_path(folder.parent)  # both renames durable before the old snapshot goes
        for leftover in folder.parent.glob(f"{OLD_PREFIX}{folder.name}-*"):  # this save's, and a crashed one's
            shutil.rmtree(leftover, ignore_errors=True)

    @staticmethod
    def recover_snapshot(folder: Path) -> None:
        """When ``folder`` is missing but a complete old snapshot of it is aside (``.old-NAME-PID``: a crash
        between ``save``'s two renames), rename that one back, so the start loads it instead of rebuilding the
        graph (~110 s per 300k rows). A ``.tmp-NAME-PID`` is never taken: it may be half-written."""
        if folder.exists():
            return
        aside = sorted(folder.parent.glob(f"{OLD_PREFIX}{folder.name}-*"), key=lambda p: p.stat().st_mtime)
        for old in reversed(aside):
            if (old / "meta.json").is_file():
                try:
                    os.rename(old, folder)
                    fsync_path(folder.parent)
                except OSError as e:
                    log.warning("index snapshot %s could not be put back as %s (%s)", old, folder, e)
                else:
                    log.info("index snapshot %s put back as %s (a crash during a snapshot swap)", old, folder)
                return

    @staticmethod
    def restore(version: str, stored: StoredEmbeddings, folder: Path | None) -> VersionIndex:
        """Rebuild a version's index from its stored rows, reusing the snapshot in ``folder`` when it
        matches them (same dim, its id map a prefix of the stored rows); rows after it are added."""
        n, dim = stored.vecs.shape
        num_logits = 0 if stored.logits is None else stored.logits.shape[1]
        idx = VersionIndex(version, dim, num_logits, stored.pretext is not None, capacity=max(1024, 2 * n))
        loaded = 0
        if folder is not None:
            VersionIndex.recover_snapshot(folder)
        if folder is not None and (folder / "meta.json").is_file():
            try:
                meta = json.loads((folder / "meta.json").read_text())
                rows = np.load(folder / "rows.npy")
                m = int(meta["rows"])
                if meta["dim"] == dim and m == len(rows) <= n and np.array_equal(rows, stored.seqs[:m]):
                    idx._graph = hnswlib.Index(space="cosine", dim=dim)
                    idx._graph.load_index(str(folder / "hnsw.bin"), max_elements=idx._seqs.shape[0])
                    idx._graph.set_ef(EF_SEARCH)
                    idx._graph.set_num_threads(1)
                    loaded = m
                else:  # the agent's own writes never cause this: damage, or a folder restored from elsewhere
                    log.warning("index snapshot %s (%d rows, dim %s) does not match the %d stored embeddings of "
                                "%s; rebuilding the graph from them", folder, m, meta["dim"], n, version)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                log.warning("index snapshot %s unusable (%s); rebuilding from stored embeddings", folder, e)
                idx = VersionIndex(version, dim, num_logits, stored.pretext is not None, capacity=max(1024, 2 * n))
        # Arrays for every row; the graph only for rows the snapshot lacks.
        idx._seqs[:n] = stored.seqs
        idx._vecs[:n] = stored.vecs
        if idx._logits is not None and stored.logits is not None:
            idx._logits[:n] = stored.logits
        if idx._pretext is not None and stored.pretext is not None:
            idx._pretext[:n] = stored.pretext
        if n > loaded:
            _add_with_progress(idx._graph, stored.vecs, loaded, n, version)
        idx.n = n
        idx._seq_set = {int(s) for s in stored.seqs}
        idx.loaded_from_snapshot = loaded
        return idx

    loaded_from_snapshot: int = 0


# Rows a rebuild at start adds to the graph per hnswlib call, and how often it logs its progress when it takes
# long: a backup restored without its index snapshot rebuilds the whole graph, for minutes on a large pool,
# with the agent unreachable meanwhile, and a silent log reads as a hang (the times: docs/agent.md,
# "Backup and restore"; at 1M rows, docs/strategies.md, "Select on 1,000,000 vectors").
RESTORE_BLOCK = 20_000
RESTORE_LOG_S = 10.0


def _add_with_progress(graph: hnswlib.Index, vecs: np.ndarray, start: int, end: int, version: str) -> None:
    """Add rows ``start:end`` of ``vecs`` to ``graph`` (labels their row numbers), RESTORE_BLOCK at a time, with
    an INFO line every RESTORE_LOG_S saying how far it is, the rate and the time left (same graph: with one
    thread hnswlib inserts in order either way)."""
    t0 = last = time.monotonic()
    for first in range(start, end, RESTORE_BLOCK):
        stop = min(end, first + RESTORE_BLOCK)
        graph.add_items(vecs[first:stop], np.arange(first, stop))
        now = time.monotonic()
        if stop < end and now - last >= RESTORE_LOG_S:
            last = now
            rate = (stop - start) / max(now - t0, 1e-9)
            log.info("index of %s: rebuilding the graph from stored embeddings, %d of %d rows (%.0f rows/s, about "
                     "%.0f s left)", version, stop - start, end - start, rate, (end - stop) / rate)


def _grow(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out
