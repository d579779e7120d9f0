"""Which model version the agent serves, and moving to a newer one without stopping.

A background thread polls the registry (and wakes on ReloadModel). When a newer complete version
appears it loads it, re-embeds every stored sample from the blob store into a new ``VersionIndex``
(embeddings stored durably in SQLite as it goes), catches up with samples ingested meanwhile, and
then swaps ``ModelManager.current`` (one reference assignment) while holding the write lock that
Ingest also holds, so no sample is embedded by one version and missed by the other. Until the swap,
every query uses the previous version.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from agent.blobs import BlobStore
from agent.config import AgentConfig
from agent.embedder import Embedder
from agent.index import VersionIndex
from agent.state import EmbeddingRows, State
from shortlist.images import decode_stored
from shortlist.manifest import Manifest, newest_complete, read_complete, version_number

log = logging.getLogger(__name__)

SERVING_KEY = "serving_version"


@dataclass
class Serving:
    """One loaded model version: its manifest, onnxruntime session and index."""

    version: str
    manifest: Manifest
    embedder: Embedder
    index: VersionIndex


class ModelManager:
    """Loads, re-embeds and swaps model versions from ``registry`` for one agent's ``state``."""

    def __init__(self, config: AgentConfig, state: State, blobs: BlobStore | None,
                 on_classes: Callable[[Manifest], None] | None = None) -> None:
        self.registry = config.models
        self.state = state
        self.blobs = blobs
        self.index_dir = config.data_dir / "index"
        self.poll_s = config.poll_s
        self.batch_size = config.batch_size
        self.use_cuda = config.use_cuda
        self.snapshot_s = config.snapshot_s
        self.max_pixels = config.limits.max_pixels
        self.on_classes = on_classes
        self.current: Serving | None = None
        self.pending_version = ""
        self.pending: VersionIndex | None = None
        self.failed: dict[str, str] = {}  # version -> why it could not be served
        self.warning = ""  # e.g. samples that cannot be embedded because blobs are off
        # Held by Ingest while it commits and adds to the serving index (via ``writing``), by SubmitLabels,
        # and by the swap. Only this class takes it.
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_rows = 0
        self._saved_at = time.monotonic()

    @contextmanager
    def writing(self) -> Iterator[Serving | None]:
        """Hold the write lock: the serving version (yielded; None before the first model) cannot change,
        and no other writer runs, until the block ends. Ingest commits its samples, embeddings and index
        rows under it, so no sample is embedded by one version and missed by the next."""
        with self._write_lock:
            yield self.current

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        """Load the version served before a restart (or else the newest), then start polling."""
        last = self.state.get_meta(SERVING_KEY)
        manifest = read_complete(self.registry / last) if last else None
        if last and manifest is not None:
            self.current = self._load(last, manifest)
            self._saved_rows = self.current.index.loaded_from_snapshot
        else:
            self._adopt_newest()
        if background:
            self._thread = threading.Thread(target=self._loop, name="model-manager", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.save_snapshot()

    def reload(self) -> None:
        """Look at the registry now (ReloadModel); the work happens in the background thread."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # keep serving the current version whatever goes wrong
                log.exception("model check failed")
            if time.monotonic() - self._saved_at > self.snapshot_s:
                self.save_snapshot()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # ---- loading ---------------------------------------------------------------------------------
    def _embedder(self, version: str, manifest: Manifest) -> Embedder:
        return Embedder(self.registry / version, manifest, self.batch_size, self.use_cuda)

    def _load(self, version: str, manifest: Manifest) -> Serving:
        """A version with its stored embeddings and persisted index (no re-embedding)."""
        emb = self._embedder(version, manifest)
        stored = self.state.load_embeddings(version, emb.dim, len(emb.classes))
        if emb.rotation and stored.pretext is None and len(stored.seqs):
            stored.pretext = np.zeros(len(stored.seqs), np.float32)
        if emb.rotation and len(stored.seqs) == 0:
            stored.pretext = np.zeros(0, np.float32)
        if emb.classes and stored.logits is None:
            stored.logits = np.zeros((len(stored.seqs), len(emb.classes)), np.float32)
        idx = VersionIndex.restore(version, stored, self.index_dir / version)
        log.info("loaded %s: %d rows (%d from the index snapshot)", version, idx.n, idx.loaded_from_snapshot)
        if self.on_classes is not None:
            self.on_classes(manifest)
        return Serving(version, manifest, emb, idx)

    def _adopt_first(self, version: str, manifest: Manifest) -> None:
        """The first model: serve it at once; samples stored before it are embedded by ``check``."""
        serving = self._load(version, manifest)
        with self._write_lock:
            self.current = serving
        self._saved_rows = serving.index.loaded_from_snapshot
        self.state.set_meta(SERVING_KEY, version)
        self.state.set_model_version(version, "serving", serving.index.n)

    # ---- the background step ---------------------------------------------------------------------
    def _adopt_newest(self) -> None:
        """With no model served yet: serve the newest complete version, if any (and loadable)."""
        found = newest_complete(self.registry, verify_hashes=False)
        if found is None or found[0] in self.failed:
            return
        name = found[0]
        manifest = read_complete(self.registry / name)  # now with hashes
        try:
            if manifest is None:  # published atomically, so a mismatch is corruption, not a partial write
                raise ValueError("a file is missing or its sha256 differs from the manifest")
            self._adopt_first(name, manifest)
        except Exception as e:
            why = f"cannot load {name}: {e}"
            log.error(why)
            self.failed[name] = why
            self.state.set_model_version(name, "failed", 0, why)

    def check(self) -> None:
        """Adopt/embed/swap as needed; called by the polling thread (and directly by tests)."""
        cur = self.current
        if cur is None:
            self._adopt_newest()
        else:
            found = newest_complete(self.registry, verify_hashes=False)
            if found is not None and found[0] not in self.failed and \
                    (version_number(found[0]) or 0) > (version_number(cur.version) or 0):
                name = found[0]
                manifest = read_complete(self.registry / name)  # now with hashes
                if manifest is None:  # published atomically, so a mismatch is corruption, not a partial write
                    why = f"{name} is corrupt (a file is missing or its sha256 differs from the manifest)"
                    log.error(why)
                    self.failed[name] = why
                    self.state.set_model_version(name, "failed", 0, why)
                else:
                    self._switch(name, manifest)
        if self.current is not None:
            self._catch_up(self.current.embedder, self.current.index, hold_lock=True)

    def _missing(self, index: VersionIndex) -> list[int]:
        return [int(q) for q in self.state.all_seqs() if not index.has(int(q))]

    def _catch_up(self, emb: Embedder, index: VersionIndex, hold_lock: bool, limit: int | None = None) -> int:
        """Embed stored samples ``index`` lacks, from their blobs, a batch at a time. With
        ``hold_lock`` each batch's commit+add holds the write lock (the serving index). Returns how
        many samples are still missing (0 when done)."""
        missing = self._missing(index)
        if not missing:
            self.warning = ""
            return 0
        if self.blobs is None:
            self.warning = (f"{len(missing)} samples have no embedding under {index.version} and cannot get "
                            "one: the agent runs with --no-blobs, so their payloads were not kept; "
                            "re-ingest them to embed them")
            return len(missing)
        done = 0
        for start in range(0, len(missing), self.batch_size):
            if self._stop.is_set() or (limit is not None and done >= limit):
                break
            seqs, images = [], []
            for q in missing[start:start + self.batch_size]:
                rec = self.state.record(q)
                try:
                    images.append(decode_stored(rec.kind, self.blobs.get(rec.sha256), emb.manifest.preprocess,
                                                self.max_pixels))
                    seqs.append(q)
                except (OSError, ValueError) as e:
                    log.error("sample %r cannot be re-embedded: %s", rec.id, e)
            if not seqs:
                continue
            out = emb.embed(np.stack(images))
            if hold_lock:
                with self._write_lock:
                    self._commit_rows(index, np.array(seqs, np.int64), out.vecs, out.logits, out.pretext)
            else:
                self._commit_rows(index, np.array(seqs, np.int64), out.vecs, out.logits, out.pretext)
            done += len(seqs)
            if index is self.pending:
                self.state.set_model_version(index.version, "pending", index.n)
        return len(self._missing(index))

    def _commit_rows(self, index: VersionIndex, seqs: np.ndarray, vecs: np.ndarray,
                     logits: np.ndarray | None, pretext: np.ndarray | None) -> None:
        # Ingest may have embedded some of these since ``_missing`` looked (it holds the write lock
        # for commit + add, as the caller does now): keep only rows the index still lacks.
        keep = np.array([not index.has(int(q)) for q in seqs], bool)
        if not keep.all():
            seqs, vecs = seqs[keep], vecs[keep]
            logits = None if logits is None else logits[keep]
            pretext = None if pretext is None else pretext[keep]
        if len(seqs) == 0:
            return
        self.state.add_embeddings(EmbeddingRows(index.version, index.n, vecs, logits, pretext), seqs.tolist())
        index.add(seqs, vecs, logits, pretext)

    def _switch(self, version: str, manifest: Manifest) -> None:
        """Re-embed the pool under ``version`` in the background, then swap to it atomically."""
        cur = self.current
        assert cur is not None
        if self.blobs is None and self.state.count() > 0:
            why = (f"cannot move to {version}: the pool must be re-embedded from stored payloads, but the "
                   "agent runs with --no-blobs; restart without --no-blobs (and re-ingest) to use it")
            log.error(why)
            self.failed[version] = why
            self.state.set_model_version(version, "failed", 0, why)
            return
        try:
            new = self._load(version, manifest)
        except Exception as e:
            why = f"cannot load {version}: {e}"
            log.exception(why)
            self.failed[version] = why
            self.state.set_model_version(version, "failed", 0, why)
            return
        self.pending_version, self.pending = version, new.index
        self.state.set_model_version(version, "pending", new.index.n)
        try:
            # Bulk of the work without the lock: ingestion keeps going into the current version.
            remaining = self._catch_up(new.embedder, new.index, hold_lock=False)
            while remaining > self.batch_size and not self._stop.is_set():
                remaining = self._catch_up(new.embedder, new.index, hold_lock=False)
            if self._stop.is_set():
                return
            with self._write_lock:  # the few samples ingested since, then the swap
                self._catch_up(new.embedder, new.index, hold_lock=False)
                old = self.current
                self.current = new
                self.state.set_meta(SERVING_KEY, version)
                self.state.set_model_version(version, "serving", new.index.n)
            self._saved_rows = -1
            self.save_snapshot()
            if old is not None:
                self.state.set_model_version(old.version, "retired", old.index.n)
                self.state.drop_embeddings(old.version)
                shutil.rmtree(self.index_dir / old.version, ignore_errors=True)
            log.info("now serving %s (%d rows)", version, new.index.n)
        finally:
            self.pending_version, self.pending = "", None

    def save_snapshot(self) -> None:
        """Persist the serving index if rows were added since the last snapshot."""
        cur = self.current
        self._saved_at = time.monotonic()
        if cur is None or cur.index.n == self._saved_rows:
            return
        rows = cur.index.n
        cur.index.save(self.index_dir / cur.version)
        self._saved_rows = rows
        self.state.set_model_version(cur.version, "serving", rows)
