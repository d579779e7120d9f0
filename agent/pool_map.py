"""A 2-D map of the pool's embeddings under the serving model version (GetMap; the web app's Map page).

How the coordinates are made:
    1. **Fit** on at most ``MapConfig.max_fit`` embedded samples (all of them below the cap, else a
       uniform random subsample, seeded): PCA to ``pca_dims`` dimensions (scikit-learn), then t-SNE to 2-D
       with openTSNE (FFT-accelerated interpolation t-SNE, Linderman et al. 2019, "Fast interpolation-based
       t-SNE for improved visualization of single-cell RNA-seq data", Nat. Methods 16; openTSNE: Poličar
       et al. 2024, J. Stat. Softw. 109(3)). openTSNE's callbacks give the progress shown in GetMap and
       stop a fit whose model version is no longer served.
    2. **Place** every other embedded sample (beyond the cap, or ingested after the fit) at the
       coordinate-wise median of its ``neighbours`` nearest fitted samples (cosine, in the model's
       embedding space; a small hnswlib index over the fitted rows): the "median" initialisation openTSNE
       uses for new points (``TSNEEmbedding.prepare_partial``, Poličar et al. 2024, Sec. 4.3), without
       its optimisation step, so a new sample appears within seconds, inside the cluster of its
       neighbours. A small deterministic jitter (a tenth of the neighbours' spread) keeps samples with
       the same neighbours apart.
    3. **Refit** when the embedded pool has grown to ``refit_growth`` times the fitted count while the fit
       is below the cap (a map made from the first 40 samples is redone once there are 80, ...; with
       the default cap of 10,000 the last refit happens at 20,000 samples). The old map is served, with
       new samples placed on it, until the new fit is done (``MapChunk.recomputing``).
    4. **A new model version** needs a map of its own (its embeddings differ). Until that map is ready,
       the previous version's map is served as it was (``MapChunk.shown_version``; samples embedded
       since are not on it, labels are current), so a viewer keeps a map while the new one computes;
       after a restart in that window it is read back from its file, which is removed only once the
       new map is saved.

Cost and priority: one daemon thread (``pool-map``) per agent, at nice +19 (Linux niceness is per
thread), outside the admission lanes so it never holds a slot that a Select or PriorLabels waits for;
the fit itself (PCA + openTSNE with ``n_jobs=1``) runs in a child process at nice 19 (agent/map_fit.py,
``MapConfig.child_process``), so its memory is returned to the system when it ends instead of staying
with the agent (a 10,000-sample fit's time and memory: docs/agent.md, "The pool map (GetMap)" and
"Backup and restore"); placement (in the agent) costs one hnswlib query per sample. A model swap kills a
running fit (in the map thread: stops it at openTSNE's next callback, every ``CALLBACK_EVERY`` iterations)
and starts the new version's map.

Durability: ``D/map/<version>.npz`` holds the covered index rows' sample seqs, coordinates, the fitted
mask and the method, written atomically and owner-only (``shortlist.atomic.atomic_file``: temporary
file created 0600, fsync, rename, fsync of the folder) after each
fit and, at most every ``save_every_s``, after placements; a restart loads it (when its seqs are a
prefix of the version's index rows) instead of recomputing. Maps of other versions are removed once
the serving version's map is saved.

Points are the serving index's rows in row order (row r = the r-th sample embedded by that version),
so "what is new" is a row range and GetMap pages by offset without scanning the pool.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from agent.errors import RepeatedWarning
from agent.index import IndexView
from agent.map_fit import MIN_TSNE, ChildFailed, FitStopped, Projection, fit_in_child, project
from agent.security import OWNER_DIR, OWNER_FILE
from shortlist.atomic import atomic_file

log = logging.getLogger(__name__)

PLACE_BATCH = 2048  # samples placed per hnswlib query (the map lock is not held while querying)
NONE, COMPUTING, READY, FAILED = "none", "computing", "ready", "failed"


@dataclass(frozen=True)
class MapConfig:
    """The pool map (agent/pool_map.py): how it is fitted, placed and refreshed."""

    max_fit: int = 10_000  # samples the t-SNE is fitted on; the others are placed by their neighbours
    pca_dims: int = 50  # PCA dimensions before t-SNE
    perplexity: float = 30.0  # t-SNE perplexity (lowered to (n - 1) / 3 for small fits)
    early_iterations: int = 250  # t-SNE early-exaggeration iterations (openTSNE's default)
    iterations: int = 500  # t-SNE iterations after that (openTSNE's default)
    neighbours: int = 10  # fitted neighbours whose median places a sample not fitted
    refit_growth: float = 2.0  # refit when the pool reaches this multiple of the fitted count (below max_fit)
    poll_s: float = 2.0  # seconds between looks at the serving version and new samples
    save_every_s: float = 30.0  # at most this often, placements are saved
    nice: int = 19  # niceness of the map thread (Linux: per thread) and of the fit's child process
    # How long stop() waits for the map thread. At nice 19 on a saturated machine the thread gets a
    # fraction of a percent of a core, so even a short step can take tens of seconds of wall time to
    # reach its next stop check; the map is a cache (placements are recomputed after a restart), so a
    # shutdown does not wait for it: stop() saves the newest map itself and leaves the (daemon) thread.
    stop_wait_s: float = 0.5
    # Fit the t-SNE in a child process (agent/map_fit.py): its memory never stays with the agent and a
    # cancelled fit is killed. False: in the map thread (tests; a platform without subprocesses).
    child_process: bool = True
    # A failed fit is tried again after retry_s seconds, then after twice as long each time it fails
    # again, up to retry_max_s (a fault the operator fixes, such as a stray module in the working
    # folder or a full disk, heals without a restart; a fault that stays costs one fit per retry_max_s).
    retry_s: float = 60.0
    retry_max_s: float = 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_fit < 2 or self.pca_dims < 2 or self.neighbours < 1 or self.refit_growth <= 1:
            raise ValueError("map: max_fit >= 2, pca_dims >= 2, neighbours >= 1 and refit_growth > 1 are needed")
        if not 0 < self.retry_s <= self.retry_max_s:
            raise ValueError("map: 0 < retry_s <= retry_max_s is needed")


@dataclass
class PoolMapData:
    """The map of one model version: index rows 0..n-1 (their sample ``seqs``), coordinates ``xy`` (Nx2
    float32) and which rows the projection was ``fitted`` on (N bool)."""

    version: str
    seqs: np.ndarray
    xy: np.ndarray
    fitted: np.ndarray
    method: str

    @property
    def n(self) -> int:
        return len(self.seqs)


@dataclass
class MapStatus:
    """What GetMap's header says."""

    version: str
    state: str
    progress: float
    method: str
    total: int
    fitted: int
    pending: int
    recomputing: bool
    message: str
    shown: str = ""  # the version whose map the points are: ``version`` when ready, else the previous one's


@dataclass(frozen=True)
class FitFailure:
    """Why the fit of a version failed (one line), how many times in a row, and when (time.monotonic())
    it is tried again."""

    reason: str
    failures: int
    retry_at: float

    def said(self, version: str) -> str:
        """One line for GetMap's message and GetStatus's warnings."""
        wait = max(0, round(self.retry_at - time.monotonic()))
        again = "" if self.failures == 1 else f" ({self.failures} times in a row)"
        return (f"the pool map of {version} could not be computed{again}: {self.reason}; it is tried again in "
                f"about {wait} s (the agent's log has the details)")


class FitCancelled(Exception):
    """The model version changed (or the agent stops) during a fit."""


class _Placer:
    """Nearest fitted neighbours (hnswlib, cosine) of the map's fitted rows, for placing the others."""

    def __init__(self, vecs: np.ndarray, xy: np.ndarray) -> None:
        self.xy = xy
        self.index = hnswlib.Index(space="cosine", dim=vecs.shape[1])
        self.index.init_index(max_elements=max(len(vecs), 1), ef_construction=100, M=16, random_seed=100)
        self.index.set_num_threads(1)
        self.index.add_items(np.ascontiguousarray(vecs, np.float32), np.arange(len(vecs)))
        self.index.set_ef(64)

    def place(self, vecs: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
        """QxD embeddings of the pool rows ``rows`` (Q ints) -> Qx2 float32 map coordinates: the median of
        their ``k`` nearest fitted points, jittered by 0.1 of those points' spread (seeded per row)."""
        k = min(k, len(self.xy))
        nn, _ = self.index.knn_query(np.ascontiguousarray(vecs, np.float32), k=k)
        coords = self.xy[nn]  # Q x k x 2
        out = np.median(coords, axis=1)
        spread = coords.std(axis=1)
        # Deterministic per row: the same sample lands at the same spot after a restart.
        jitter = np.stack([np.random.default_rng([seed, int(r)]).standard_normal(2) for r in rows]) if len(rows) \
            else np.zeros((0, 2))
        return (out + 0.1 * spread * jitter).astype(np.float32)


class PoolMap:
    """Keeps the serving version's map up to date in a background thread; ``status`` and ``snapshot``
    answer GetMap from memory."""

    def __init__(self, config: MapConfig, folder: Path, current: Callable[[], tuple[str, IndexView] | None]) -> None:
        """``current()`` gives the serving version and a view of its index (None before any model)."""
        self.config = config
        self.folder = folder
        self.current = current
        self._lock = threading.Lock()
        self._map: PoolMapData | None = None
        self._previous: PoolMapData | None = None  # an older version's map, served until ``_map`` is ready
        self._placer: _Placer | None = None
        self._fitting: str = ""  # version being fitted ("" when none)
        self._progress = 1.0
        self._failed: dict[str, FitFailure] = {}  # version -> why its last fit failed, when to retry
        self._saved_n = 0
        self._saved_at = 0.0
        self._saved_version = ""
        self._save_warning = RepeatedWarning(log)  # a full disk fails every save: logged once per 10 min
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._save_lock = threading.Lock()  # one writer of the map files: the thread, or stop() after its wait
        # Set by stop() once it has saved: the thread, still running after stop() gave up waiting for it, writes
        # nothing more. The agent's folder lock is released after stop(), so a late write could land in a data
        # folder another agent has opened since, or in a folder being removed (bench agent's temporary one).
        self._closed = False

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pool-map", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waiting at most ``stop_wait_s`` for it) and save the newest map if unsaved."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.stop_wait_s)
            if self._thread.is_alive():
                log.info("pool map: the thread has not reached a stop check within %.1f s (it runs at nice %d); "
                         "not waiting for it", self.config.stop_wait_s, self.config.nice)
        with self._lock:
            m = self._map
        if m is not None and m.n != self._saved_n:
            try:
                self._save(m)
            except OSError as e:  # disk full or read-only: placements are recomputed at the next start
                log.warning("could not save the pool map at shutdown: %s", e)
        with self._save_lock:
            self._closed = True

    def wake(self) -> None:
        """Look for new samples now (GetMap calls it so a sample ingested a moment ago is placed soon)."""
        self._wake.set()

    def _loop(self) -> None:
        try:  # lowest priority for this thread only (Linux niceness is per thread); best effort elsewhere
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.config.nice)
        except (OSError, AttributeError) as e:
            log.info("pool map thread keeps its priority: %s", e)
        while not self._stop.is_set():
            try:
                self.step()
            except FitCancelled:
                continue  # a new version is served: start on it at once
            except Exception:  # keep the thread alive whatever goes wrong; the state says "failed"
                log.exception("pool map step failed")
            self._wake.wait(self.config.poll_s)
            self._wake.clear()

    # ---- answers ---------------------------------------------------------------------------------
    def status(self) -> MapStatus:
        cur = self.current()
        with self._lock:
            m = self._map
            prev = self._previous
            fitting, progress = self._fitting, self._progress
            failed = dict(self._failed)
        if cur is None:
            return MapStatus("", NONE, 1.0, "", 0, 0, 0, False, "")
        version, view = cur
        if m is not None and m.version == version:
            return MapStatus(version, READY, progress if fitting == version else 1.0, m.method, m.n,
                             int(m.fitted.sum()), max(0, view.n - m.n), fitting == version, "", version)
        # Not ready: the previous version's map (if any) is what a viewer gets meanwhile (still ``m`` until
        # the thread's next step notices the swap).
        if m is not None:
            prev = m
        shown = (prev.method, prev.n, int(prev.fitted.sum()), prev.version) if prev is not None and \
            prev.version != version else ("", 0, 0, "")
        if version in failed:
            return MapStatus(version, FAILED, 1.0, shown[0], shown[1], shown[2], view.n, False,
                             failed[version].said(version), shown[3])
        return MapStatus(version, COMPUTING, progress if fitting == version else 0.0, shown[0], shown[1], shown[2],
                         view.n, False, "", shown[3])

    def warnings(self) -> list[str]:
        """GetStatus's warning while the serving version's last fit failed (a one-line reason and when it
        is tried again), else nothing."""
        cur = self.current()
        with self._lock:
            failure = None if cur is None else self._failed.get(cur[0])
        return [] if cur is None or failure is None else [failure.said(cur[0])]

    def snapshot(self, version: str) -> PoolMapData | None:
        """The map of ``version`` (the serving one's, or the previous one's while the serving one is not
        ready; arrays never change in place: a new fit or placement makes new ones)."""
        with self._lock:
            maps = (self._map, self._previous)
        return next((m for m in maps if m is not None and m.version == version), None)

    # ---- the background step ---------------------------------------------------------------------
    def step(self) -> None:
        """Load, fit, refit or place as needed for the serving version (the thread calls it; tests too)."""
        cur = self.current()
        if cur is None:
            return
        version, view = cur
        with self._lock:
            m = self._map
        if m is None or m.version != version:
            old = m
            m = self._load(version, view)
            if m is None:
                self._saved_n = -1
            with self._lock:
                if m is not None:
                    self._previous = None
                elif old is not None:  # the map served until now stays visible while the new one computes
                    self._previous = old
                prev_missing = m is None and self._previous is None
                self._map, self._placer = m, None
            if prev_missing:  # a restart while a new version's map computed: its predecessor's file
                found = self._load_previous(version)
                with self._lock:
                    if self._map is None and self._previous is None:
                        self._previous = found
        with self._lock:
            failure = self._failed.get(version)
        waiting = failure is not None and time.monotonic() < failure.retry_at
        if (m is None or self._needs_refit(m, view.n)) and not waiting:
            try:
                new = self._fit(version, view)
            except FitCancelled:
                raise
            except Exception as e:
                self._record_failure(version, e, failure)
                if m is None:
                    return
                new = None  # a refit failed: the version's current map stays and new samples are placed on it
            finally:
                with self._lock:
                    self._fitting, self._progress = "", 1.0
            if new is not None:
                with self._lock:
                    self._map, self._placer, self._previous = new, None, None
                    self._failed.pop(version, None)
                m = new
                self._save_quietly(m)
                self._remove_others(version)
        if m is not None:
            self._place_new(m, version)

    def _record_failure(self, version: str, e: Exception, before: FitFailure | None) -> None:
        """Log a failed fit (with its details) and schedule its retry, the back-off doubling per failure."""
        failures = 1 if before is None else before.failures + 1
        wait = min(self.config.retry_max_s, self.config.retry_s * 2 ** (failures - 1))
        if isinstance(e, ChildFailed):  # its traceback is the child's, in its last words
            reason = e.reason
            log.error("pool map of %s failed (%d time(s) in a row; trying again in %.0f s): %s; the fit "
                      "process's last words:\n%s", version, failures, wait, reason, e.detail)
        else:
            last = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
            reason = f"{type(e).__name__}: {last}" if last else type(e).__name__
            log.error("pool map of %s failed (%d time(s) in a row; trying again in %.0f s)", version, failures,
                      wait, exc_info=e)
        with self._lock:
            self._failed[version] = FitFailure(reason, failures, time.monotonic() + wait)

    def _needs_refit(self, m: PoolMapData, n: int) -> bool:
        fitted = int(m.fitted.sum())
        return fitted < self.config.max_fit and n >= self.config.refit_growth * max(fitted, 1) and n > fitted

    def _check_current(self, version: str) -> None:
        cur = self.current()
        if self._stop.is_set() or cur is None or cur[0] != version:
            raise FitCancelled(version)

    def _fit(self, version: str, view: IndexView) -> PoolMapData:
        cfg = self.config
        n = view.n
        with self._lock:
            self._fitting, self._progress = version, 0.0
        rng = np.random.default_rng(cfg.seed)
        fit_rows = np.arange(n) if n <= cfg.max_fit else np.sort(rng.choice(n, cfg.max_fit, replace=False))
        vecs = np.asarray(view.vecs[fit_rows], np.float32)
        t0 = time.monotonic()
        xy, method = self._project(vecs, version)
        fitted = np.zeros(n, bool)
        fitted[fit_rows] = True
        coords = np.zeros((n, 2), np.float32)
        coords[fit_rows] = xy
        rest = np.flatnonzero(~fitted)
        if len(rest):
            placer = _Placer(vecs, xy)
            for start in range(0, len(rest), PLACE_BATCH):
                self._check_current(version)
                rows = rest[start:start + PLACE_BATCH]
                coords[rows] = placer.place(view.vecs[rows], rows, cfg.neighbours, cfg.seed)
        log.info("pool map of %s: %s on %d of %d samples in %.1f s", version, method, len(fit_rows), n,
                 time.monotonic() - t0)
        return PoolMapData(version, np.array(view.seqs[:n], np.int64), coords, fitted, method)

    def _project(self, vecs: np.ndarray, version: str) -> tuple[np.ndarray, str]:
        """Nx2 coordinates of ``vecs`` and the method's name: in a child process (MapConfig.child_process,
        agent/map_fit.py) for a t-SNE, else here."""
        cfg = self.config

        def progress(fraction: float) -> bool:  # True stops the fit: the version is no longer served
            with self._lock:
                self._progress = max(self._progress, fraction)
            cur = self.current()
            return self._stop.is_set() or cur is None or cur[0] != version

        p = Projection(cfg.pca_dims, cfg.perplexity, cfg.early_iterations, cfg.iterations, cfg.seed, cfg.nice)
        self._check_current(version)
        try:
            if cfg.child_process and len(vecs) >= MIN_TSNE:
                return fit_in_child(vecs, p, progress)
            return project(vecs, p, progress)
        except FitStopped:
            raise FitCancelled(version) from None

    def _place_new(self, m: PoolMapData, version: str) -> None:
        """Place the index rows added since the map was made (or last placed), in batches."""
        while True:
            cur = self.current()
            if cur is None or cur[0] != version or self._stop.is_set():
                return
            view = cur[1]
            with self._lock:
                m = self._map if self._map is not None else m
                placer = self._placer
            if m.version != version or view.n <= m.n:
                break
            if placer is None:
                fitted_rows = np.flatnonzero(m.fitted)
                if len(fitted_rows) == 0:
                    return
                placer = _Placer(np.asarray(view.vecs[fitted_rows], np.float32), m.xy[fitted_rows])
                with self._lock:
                    if self._map is m:
                        self._placer = placer
            stop = min(view.n, m.n + PLACE_BATCH)
            rows = np.arange(m.n, stop)
            xy = placer.place(view.vecs[rows], rows, self.config.neighbours, self.config.seed)
            grown = PoolMapData(version, np.concatenate([m.seqs, view.seqs[m.n:stop]]),
                                np.concatenate([m.xy, xy]), np.concatenate([m.fitted, np.zeros(len(rows), bool)]),
                                m.method)
            with self._lock:
                if self._map is not m:  # a fit finished meanwhile: place on the new map next round
                    continue
                self._map = grown
        with self._lock:
            m = self._map if self._map is not None else m
        if m.n != self._saved_n and time.monotonic() - self._saved_at >= self.config.save_every_s:
            self._save_quietly(m)

    # ---- persistence -----------------------------------------------------------------------------
    def _path(self, version: str) -> Path:
        return self.folder / f"{version}.npz"

    def _save_quietly(self, m: PoolMapData) -> None:
        try:
            self._save(m)
        except OSError as e:  # disk full or read-only: the map is served from memory, recomputed after a restart
            self._saved_at = time.monotonic()  # the next try waits save_every_s, as after a save
            self._save_warning.warning(f"could not save the pool map of {m.version}: {e}", key=e.errno)
        else:
            self._save_warning.clear(f"pool map of {m.version} saved again")

    def _save(self, m: PoolMapData) -> None:
        """Write ``m`` to D/map/<version>.npz atomically and owner-only (``atomic_file``)."""
        with self._save_lock:
            if self._closed or (self._stop.is_set() and m.version == self._saved_version and m.n < self._saved_n):
                return  # the thread, late after stop(): never replace the newer map stop() saved, nor write after
            self._save_unlocked(m)

    def _save_unlocked(self, m: PoolMapData) -> None:
        self.folder.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
        meta = json.dumps({"version": m.version, "method": m.method, "rows": m.n})
        # owner-only from its first byte: the map's points derive from the pool's images
        with atomic_file(self._path(m.version), mode=OWNER_FILE) as f:
            np.savez(f, seqs=m.seqs, xy=m.xy, fitted=m.fitted, meta=np.array(meta))
        self._saved_n, self._saved_at, self._saved_version = m.n, time.monotonic(), m.version

    def _load(self, version: str, view: IndexView) -> PoolMapData | None:
        """The saved map of ``version`` when it matches the index (its seqs a prefix of the index's rows)."""
        path = self._path(version)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                seqs, xy, fitted = z["seqs"].astype(np.int64), z["xy"].astype(np.float32), z["fitted"].astype(bool)
                meta = json.loads(str(z["meta"]))
            n = len(seqs)
            if (meta.get("version") != version or xy.shape != (n, 2) or fitted.shape != (n,) or n > view.n
                    or not np.array_equal(seqs, view.seqs[:n]) or not np.isfinite(xy).all()):
                log.warning("saved pool map %s does not match the index of %s; computing it again", path, version)
                return None
        except (OSError, ValueError, KeyError) as e:
            log.warning("saved pool map %s unusable (%s); computing it again", path, e)
            return None
        self._saved_n, self._saved_at, self._saved_version = n, time.monotonic(), version
        log.info("pool map of %s loaded: %d points", version, n)
        return PoolMapData(version, seqs, xy, fitted, str(meta.get("method", "")))

    def _load_previous(self, version: str) -> PoolMapData | None:
        """The newest saved map of another version (kept until ``version``'s map is saved), or None."""
        if not self.folder.is_dir():
            return None
        paths = sorted((p for p in self.folder.glob("*.npz") if p.name != f"{version}.npz"),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for path in paths:
            try:
                with np.load(path, allow_pickle=False) as z:
                    seqs, xy, fitted = z["seqs"].astype(np.int64), z["xy"].astype(np.float32), z["fitted"].astype(bool)
                    meta = json.loads(str(z["meta"]))
                n = len(seqs)
                if meta.get("version") != path.stem or xy.shape != (n, 2) or fitted.shape != (n,) \
                        or not np.isfinite(xy).all():
                    continue
            except (OSError, ValueError, KeyError) as e:
                log.warning("saved pool map %s unusable (%s)", path, e)
                continue
            log.info("pool map of %s shown until the map of %s is ready", path.stem, version)
            return PoolMapData(path.stem, seqs, xy, fitted, str(meta.get("method", "")))
        return None

    def _remove_others(self, version: str) -> None:
        """Maps of other (retired) versions, and temporary files left by a crash. Not once stop() has saved: the
        released folder may be another agent's by then (its map, its temporary files)."""
        with self._save_lock:
            if self._closed or not self.folder.is_dir():
                return
            for p in self.folder.iterdir():
                if p.name != f"{version}.npz":
                    p.unlink(missing_ok=True)
