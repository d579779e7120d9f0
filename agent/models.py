"""Which model version the agent serves, and moving to a newer one without stopping.

A background thread polls the registry (and wakes on ReloadModel). When a newer version appears it
checks it (shortlist.manifest.check_version: manifest, paths, hashes; then the ONNX graph against the
manifest) and, when it is good, loads it, re-embeds every stored sample from the blob store into a new ``VersionIndex``
(embeddings stored durably in SQLite as it goes), catches up with samples ingested meanwhile, and
then swaps ``ModelManager.current`` (one reference assignment) while holding the write lock that
Ingest also holds, so no sample is embedded by one version and missed by the other. Until the swap,
every query uses the previous version. Between re-embedding batches the registry is looked at again (at once
after ReloadModel): a newer good version preempts the pending one, which is abandoned (never served, its
embeddings dropped, status ``superseded``), because embedding a version that a rollback or a fix has
already replaced can take hours at field scale while the replacement waits.

Faults: a version that fails the checks is *refused*: the reason is stored (model_versions, status
``failed``) and shown in GetStatus warnings while it is newer than the serving version, and the folder is
looked at again only when its contents change (a half-copied folder is accepted once complete). The
newest *good* version is adopted, so a broken newest version never hides a good one published before it.
A sample whose stored payload cannot be read or decoded is left out of a version's index and reported
(``unembeddable``) instead of holding a swap back; re-ingesting the same payload repairs it.

One name, one model: embeddings are stored under a version's name, and a name can come to hold another
model (its folder removed, then another put there: a copy by hand, or a publish by an older shortlist, which
reused the numbers of removed versions). So the model fingerprint (shortlist.manifest.model_fingerprint) is
recorded with a version's row when it is first embedded or served, and stored embeddings are used only by the
model that made them (``_made_by``): a folder that holds another model now has them dropped and the pool
embedded again with it (at start, or when a pending version resumes). Rows without a fingerprint (written
before it was recorded) are checked by embedding a few stored samples again. While the agent runs it serves
the model it loaded (onnxruntime holds it in memory) with that model's embeddings; ``_watch_served`` warns
when the served folder is removed or comes to hold another model, which a restart would then re-embed with.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from agent.blobs import BlobStore
from agent.config import AgentConfig
from agent.embedder import PROBE_BATCH, Embedder, ModelFailed, judge_probe
from agent.errors import RepeatedWarning, quoted, storage_problem
from agent.index import VersionIndex
from agent.state import SERVING_KEY, EmbeddingRows, SampleRecord, State, StoredEmbeddings
from shortlist.images import decode_stored
from shortlist.manifest import (
    MANIFEST_NAME,
    MODEL_FINGERPRINT_PREFIX,
    READER_ID,
    Manifest,
    ManifestError,
    check_version,
    list_versions,
    model_fingerprint,
    same_model,
    same_number,
    short_fingerprint,
    version_number,
)

log = logging.getLogger(__name__)

# In every reason ``_folder_left`` gives (a version's folder removed or changed while the pool was embedded with
# it): how ``start`` tells such a refusal, stored by an agent older than the "|folder" tag, from a reader's.
FOLDER_CHANGED = "while the pool was being embedded with it"
T = TypeVar("T")


@dataclass
class Newer:
    """A complete, loadable version newer than the one being embedded (it preempts that one)."""

    version: str
    manifest: Manifest
    embedder: Embedder


# Every warning about the served version's folder (``_watch_served``) names it so; ``models list --agent``
# repeats those warnings beside the row the agent serves.
SERVED_FOLDER = "the folder of the version this agent serves"
# In the refusal of a version whose model failed on the stored samples: a copy of it fails again (models rollback)
FAILED_ON_SAMPLES = "it failed while embedding the stored samples"
PROBE_ROWS = 8  # stored embeddings re-computed to tell whether an unfingerprinted version's folder made them
PROBE_DISTANCE = 0.02  # the largest L2 distance between a stored and a re-computed (unit) vector of one model


@dataclass
class Serving:
    """One loaded model version: its manifest, onnxruntime session and index; ``folder`` is its registry
    folder's ``_fingerprint`` (names, sizes, mtimes) when it was loaded, to notice it change or go."""

    version: str
    manifest: Manifest
    embedder: Embedder
    index: VersionIndex
    folder: str = ""


class ModelManager:
    """Loads, re-embeds and swaps model versions from ``registry`` for one agent's ``state``."""

    def __init__(self, config: AgentConfig, state: State, blobs: BlobStore | None,
                 on_classes: Callable[[Manifest], None] | None = None) -> None:
        self.registry = config.models
        self.state = state
        self.blobs = blobs
        self.index_dir = config.data_dir / "index"
        self.map_dir = config.data_dir / "map"  # the pool maps (agent/pool_map.py), one per version
        self.poll_s = config.poll_s
        self.batch_size = config.batch_size
        self.use_cuda = config.use_cuda
        self.snapshot_s = config.snapshot_s
        self.max_pixels = config.limits.max_pixels
        self.on_classes = on_classes
        self.current: Serving | None = None
        self.pending_version = ""
        self.pending: VersionIndex | None = None
        self._pending_from = (0.0, 0)  # (time.monotonic(), pending rows) when the pending index was set
        self.failed: dict[str, str] = {}  # version -> why it was refused
        self._fingerprints: dict[str, str] = {}  # version -> its folder's fingerprint when refused
        self.unembeddable: dict[str, dict[int, str]] = {}  # version -> seq -> why its payload cannot be embedded
        self.notices: list[str] = []  # repairs made at start (shown in GetStatus warnings)
        self.warning = ""  # e.g. samples that cannot be embedded because blobs are off
        self._ingest_failure = ("", "")  # (version, why) while the served version fails on Ingest's batches
        self.folder_warning = ""  # the served version's folder is gone or holds another model (``_watch_served``)
        self.folder_warning_version = ""  # the version ``folder_warning`` is about
        self._folder_seen = ("", "")  # (served version, its folder's fingerprint) when ``_watch_served`` last looked
        # Held by Ingest while it commits and adds to the serving index (via ``writing``), by SubmitLabels,
        # and by the swap. Only this class takes it.
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_warning = RepeatedWarning(log)  # a full disk fails every poll: logged once per 10 min
        self._saved_rows = 0
        self._saved_at = time.monotonic()
        # Held while ``current`` and ``pending*`` change together (the swap) and while GetStatus reads them
        # (``progress``), so a status never shows a version as both serving and pending, or as neither.
        self._view_lock = threading.Lock()
        # One ``check`` at a time: the polling thread's and a test's direct call (two at once wrote the same
        # version's index snapshot through one temporary folder, named by the pid, and one removed the other's).
        self._check_lock = threading.Lock()
        self._looked_at = time.monotonic()  # when the re-embedding last looked for a newer version
        # ReloadModel's wait for a look at the registry made after it asked (``reload``): ``_asked`` counts the
        # requests; a look takes the count when it starts (``_ticket``) and, once it has an outcome (a version
        # adopted, one being embedded as pending, one refused, or nothing new), ``_answer`` raises
        # ``_answered`` to it, so a request is answered by a look that started after it was made.
        self._looks = threading.Condition()
        self._asked = 0
        self._answered = 0
        self._ticket = 0

    def progress(self) -> tuple[Serving | None, str, VersionIndex | None]:
        """(serving version, pending version name or "", pending index or None), read as one."""
        with self._view_lock:
            return self.current, self.pending_version, self.pending

    # The pending version's embedding rate is reported once it has run this long (a first batch says little).
    RATE_AFTER_S = 5.0

    def _set_pending(self, version: str, index: VersionIndex | None) -> None:
        with self._view_lock:
            self.pending_version, self.pending = version, index
            self._pending_from = (time.monotonic(), 0 if index is None else index.n)

    def pending_rate(self) -> float:
        """Rows a second the pending version's index has grown by since it was set (0: none pending, or not for
        RATE_AFTER_S yet)."""
        with self._view_lock:
            (t0, n0), pending = self._pending_from, self.pending
        ran = time.monotonic() - t0
        if pending is None or ran < self.RATE_AFTER_S:
            return 0.0
        return max(0, pending.n - n0) / ran

    @contextmanager
    def writing(self) -> Iterator[Serving | None]:
        """Hold the write lock: the serving version (yielded; None before the first model) cannot change,
        and no other writer runs, until the block ends. Ingest commits its samples, embeddings and index
        rows under it, so no sample is embedded by one version and missed by the next."""
        with self._write_lock:
            yield self.current

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        """Load the version served before a restart (or else the newest good one), then start polling."""
        for name, (status, _, error, fingerprint) in self.state.model_versions_full().items():
            if status == "failed":  # warnings survive a restart; the folder is re-checked only if it changed
                # ... or if another manifest reader refused it (``_refuse``): an agent upgraded since (a newer
                # manifest format, a reader that accepts more) looks again; a refusal for the folder alone
                # ("|folder") stands; a record with neither is an older agent's: looked at again, unless its
                # reason is a folder changed while the pool was embedded (``_folder_left``), the folder's alone
                folder, _, made_by = fingerprint.rpartition("|")
                if not folder and FOLDER_CHANGED in error:
                    folder, made_by = fingerprint, "folder"
                self.failed[name], self._fingerprints[name] = error, folder if made_by in (READER_ID, "folder") else ""
        last = self.state.get_meta(SERVING_KEY)
        if last:
            try:
                manifest = check_version(self.registry / last)
                self.current = self._load(last, manifest)
                self._saved_rows = self.current.index.loaded_from_snapshot
                log.info("now serving %s (%d rows), as before the restart", last, self.current.index.n)
            except Exception as e:  # gone or broken since: serve the newest good version instead
                self._refuse(last, f"{last}, served before the restart, cannot be loaded any more: {e}")
        self._cleanup()
        if self.current is None:
            self._adopt_newest()
        if background:
            self._thread = threading.Thread(target=self._loop, name="model-manager", daemon=True)
            self._thread.start()

    def _cleanup(self) -> None:
        """Remove what a crash during a swap can leave: embeddings and index snapshots of retired or
        superseded versions, of pending versions no newer than the serving one (they can never be resumed),
        and snapshot folders being written (``.tmp-*``, ``.old-*``). A pending version newer than the
        serving one is kept: ``check`` resumes it if it is still the newest good version, and drops it
        (``_drop_stale``) when it starts embedding another one."""
        cur = self.current
        cur_no = -1 if cur is None else (version_number(cur.version) or 0)
        resumable = {name for name, (status, _, _, _) in self.state.model_versions_full().items()
                     if status == "pending" and (version_number(name) or 0) > cur_no}
        self._drop_stale(keep=resumable)
        keep = {cur.version} if cur is not None else set()
        if self.index_dir.is_dir():
            for p in self.index_dir.iterdir():
                if p.name.startswith((".tmp-", ".old-")) or (p.is_dir() and keep and p.name not in keep):
                    shutil.rmtree(p, ignore_errors=True)

    def _drop_stale(self, keep: set[str]) -> None:
        """Drop the stored embeddings of every version that is neither served nor in ``keep``: retired and
        superseded ones, and pending ones that will not be resumed (marked superseded, with the reason,
        so a restart does not count on them). Only the served version and the one being embedded need
        theirs; an abandoned re-embedding otherwise stays in state.sqlite for good. (A refused version
        keeps its row and reason; a pending one can be refused at a restart when its folder changed.)"""
        cur = self.current
        keep = keep | ({cur.version} if cur is not None else set())
        for name, (status, _, _, _) in self.state.model_versions_full().items():
            if name in keep or status not in ("retired", "superseded", "pending", "failed"):
                continue
            if status == "pending":
                by = self.pending_version or (cur.version if cur is not None else "another version")
                log.info("dropping the partial embeddings of %s: %s is used instead", name, by)
                self._forget(name, "superseded", f"{name} was not served: {by} was used instead before its "
                             "re-embedding finished")
            else:
                self._forget(name)  # its row keeps its status and reason (a refused version's says why)

    def _forget(self, version: str, status: str | None = None, error: str = "") -> None:
        """Drop ``version``'s stored embeddings, its index snapshot and its unembeddable list; with ``status``
        its model_versions row becomes that (with ``error``) in the same transaction."""
        if status is None:
            self.state.drop_embeddings(version)
        else:
            self.state.drop_version(version, status, error)
        self.unembeddable.pop(version, None)
        shutil.rmtree(self.index_dir / version, ignore_errors=True)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._looks:  # no ReloadModel waits on a thread that is stopping
            self._answered = self._asked
            self._looks.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.save_snapshot()
        except OSError as e:  # disk full or read-only: the next start rebuilds the graph from SQLite
            log.warning("could not save the index snapshot at shutdown: %s", e)

    def reload(self, wait_s: float = 0.0) -> bool:
        """Look at the registry now (ReloadModel); the work happens in the background thread. With ``wait_s``
        (and that thread running), wait at most that long until it has looked once after this request: the
        newest version adopted (no model served yet), a newer one being embedded (``pending_version``), refused
        (a warning), or nothing new; not until a re-embedding ends. Whether it looked in time."""
        with self._looks:
            self._asked += 1
            ticket = self._asked
        self._wake.set()
        if wait_s <= 0 or self._thread is None or self._stop.is_set():
            return False
        with self._looks:
            return self._looks.wait_for(lambda: self._answered >= ticket, timeout=wait_s)

    def _start_look(self) -> None:
        """A look at the registry starts: it answers the ReloadModel requests made so far (``_answer``)."""
        with self._looks:
            self._ticket = self._asked

    def _answer(self) -> None:
        """The look started by ``_start_look`` has its outcome (in ``current``, ``pending_version`` or the
        warnings): the ReloadModel requests it covers get their reply."""
        with self._looks:
            if self._ticket > self._answered:
                self._answered = self._ticket
                self._looks.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as e:  # keep serving the current version whatever goes wrong
                stored = storage_problem(e, request=False)
                if stored is not None:  # full or read-only disk: retried each poll, logged once per 10 min
                    self._check_warning.warning(f"model check: {stored.message}", key=stored.code)
                else:
                    log.exception("model check failed")
            else:
                self._check_warning.clear("model check: the data folder takes writes again")
            finally:
                self._answer()  # (done already unless the check failed before its outcome)
            if time.monotonic() - self._saved_at > self.snapshot_s:
                try:
                    self.save_snapshot()
                except Exception as e:  # e.g. disk full: SQLite holds every row, the snapshot is a cache
                    log.warning("could not save the index snapshot: %s", e)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # ---- warnings --------------------------------------------------------------------------------
    def ingest_failed(self, version: str, why: str) -> None:
        """Ingest's embedding of a batch with ``version`` failed (ModelFailed: ``why``), or, with ``why`` "",
        succeeded: the failure is a GetStatus warning until a batch of that version embeds again."""
        if why or self._ingest_failure[0] == version:
            self._ingest_failure = (version, why)

    def warnings(self) -> list[str]:
        """What an operator should know: refused versions newer than the serving one, samples that
        cannot be embedded, the served model failing on Ingest, repairs made at start."""
        cur = self.current
        cur_no = -1 if cur is None else (version_number(cur.version) or 0)
        folder = self.folder_warning if cur is not None and self.folder_warning_version == cur.version else ""
        failing, why = self._ingest_failure
        live = (f"Ingest refuses new samples (FAILED_PRECONDITION) while the served model fails on them; its last "
                f"batch: {why}" if why and cur is not None and failing == cur.version else "")
        out = [w for w in (self.warning, folder, live, *self.notices) if w]
        if cur is not None and self.blobs is not None:  # without blobs ``warning`` says they cannot be embedded
            stored = self.state.count()  # before the index's size: a sample ingested in between is in both
            behind = stored - cur.index.live - len(self._unembeddable_now(cur.version))
            if behind > 0:
                out.append(f"{behind:,} of {stored:,} stored samples are not embedded yet by {cur.version}, the "
                           "version served (they are being embedded in the background): until then Select and "
                           "PriorLabels cover the embedded samples only")
        serving = "no version is served" if cur is None else f"{cur.version} keeps serving"
        out += [f"{why} ({serving}; fix or replace the folder, or publish a new version)"
                for name, why in sorted(self.failed.items()) if (version_number(name) or 0) > cur_no]
        for version in list(self.unembeddable):
            bad = self._unembeddable_now(version)
            if bad and ((cur is not None and version == cur.version) or version == self.pending_version):
                rec, why = next(iter(bad.values()))
                out.append(f"{len(bad)} sample(s) cannot be embedded by {version}: their stored payload is "
                           f"missing or unreadable (e.g. {quoted(rec.id)}: {why}); they are left out of Select and "
                           "PriorLabels; re-ingest the same payload under the same id to repair them")
        return out

    def refused_only(self) -> str:
        """With no version served and every version looked at refused: a sentence naming each with why ("" when
        a version is served or none was refused), for the answers of calls that need a model."""
        present = set(list_versions(self.registry)) if self.current is None else set()
        refused = sorted((name, why) for name, why in self.failed.items() if name in present)
        if not refused:
            return ""
        why = "; ".join(why for _, why in refused)
        return (f"no model is served: the agent refused the version(s) in {self.registry} ({why}); publish a working "
                "encoder as a new version (`shortlist export` or `shortlist models import`, which run the same "
                "check), or fix the refused folder")

    def _unembeddable_now(self, version: str) -> dict[int, tuple[SampleRecord, str]]:
        """``version``'s unembeddable samples that still exist: seq -> (record, why). A DeleteSamples drops its
        seqs from ``unembeddable`` (``drop_samples``), but an embedding batch that read a sample before the
        deletion can still list it after (its payload file gone with it): such a seq names no sample."""
        out: dict[int, tuple[SampleRecord, str]] = {}
        for seq, why in list(self.unembeddable.get(version, {}).items()):
            rec = self.state.lookup_seq(seq)
            if rec is not None:
                out[seq] = (rec, why)
        return out

    def drop_samples(self, seqs: Collection[int]) -> None:
        """Samples ``seqs`` were deleted (DeleteSamples): they are no longer unembeddable by any version."""
        for bad in list(self.unembeddable.values()):
            for q in seqs:
                bad.pop(int(q), None)

    def _drop_deleted(self, index: VersionIndex) -> int:
        """Take out of ``index`` the rows of samples deleted since they were read (a version loaded from its
        stored embeddings, or a background batch, while a DeleteSamples ran): how many. Call with the write
        lock held, before serving ``index``; DeleteSamples holds it too, so none is deleted meanwhile."""
        seqs = index.view().seqs
        alive = self.state.alive_by_seq()
        inside = seqs < len(alive)
        ok = inside & alive[np.where(inside, seqs, 0)]
        dead = seqs[(seqs > 0) & ~ok]
        return index.remove(dead.tolist()) if len(dead) else 0

    def _fingerprint(self, name: str) -> str:
        """Cheap summary of a version folder (names, sizes, mtimes, and the other folders that claim its number):
        a refused version is looked at again only when this changes."""
        folder = self.registry / name
        try:
            entries = sorted((p.name, p.lstat()) for p in folder.iterdir())
        except OSError:
            return "missing"
        # Other folders claiming its number refuse it (check_version): one removed or renamed is a change too.
        clash = "".join(f"|same number:{other}" for other in same_number(folder))
        return ";".join(f"{n}:{st.st_size}:{st.st_mtime_ns}" for n, st in entries) + clash

    def _or_refuse(self, name: str, load: Callable[[], T]) -> T | None:
        """``load()`` (an embedder, a loaded version), or None with ``name`` refused when it raises."""
        try:
            return load()
        except Exception as e:
            self._refuse(name, f"{name} refused: cannot load it: {e}")
            return None

    def _refuse(self, name: str, why: str, fingerprint: str | None = None, for_good: bool = False,
                by_reader: bool = False) -> None:
        """Refuse ``name`` until its folder changes. ``for_good``: the reason lies in the folder alone
        (check_version, or the model failing on the stored samples while the pool was re-embedded with it), so
        a restart need not look again; ``by_reader``: unless the agent now reads manifests another way (the
        refusal is stored with READER_ID: an upgraded agent checks again what an older reader refused; other
        refusals for good are stored with "folder" and stand); otherwise (cannot load it,
        --no-blobs) the next start tries it again (a load check is cheap, a re-embedding is not). The warning
        is stored either way."""
        log.error("model version refused: %s", why)
        fp = self._fingerprint(name) if fingerprint is None else fingerprint
        self.failed[name], self._fingerprints[name] = why, fp
        try:
            # for good: stored with what the refusal depends on, this reader (READER_ID) or the folder (``start``)
            kept = f"{fp}|{READER_ID if by_reader else 'folder'}" if for_good else ""
            self.state.set_model_version(name, "failed", 0, why, fingerprint=kept)
        except Exception as e:  # e.g. disk full: the warning is still shown, just not persisted
            log.warning("could not record that %s was refused: %s", name, e)

    def _checked(self, name: str) -> Manifest | None:
        """``name``'s manifest when its folder passes check_version; None (refused, with a reason) when
        not. A folder refused before is not read again until it changes."""
        fp = self._fingerprint(name)
        if name in self.failed and self._fingerprints.get(name) == fp:
            return None
        try:
            manifest = check_version(self.registry / name)
        except ManifestError as e:
            self._refuse(name, f"{name} refused: {e}", fp, for_good=True, by_reader=True)
            return None
        if name in self.failed:  # repaired (e.g. a copy that has now finished)
            del self.failed[name]
        return manifest

    def _candidates(self) -> list[str]:
        """Versions newer than the serving one (every version when none is served), newest first."""
        cur = self.current
        cur_no = -1 if cur is None else (version_number(cur.version) or 0)
        return [n for n in reversed(list_versions(self.registry)) if (version_number(n) or 0) > cur_no]

    # ---- loading ---------------------------------------------------------------------------------
    def _embedder(self, version: str, manifest: Manifest) -> Embedder:
        """``version``'s model, past the load check: its declared input and blank batch (Embedder), then the
        synthetic images (``judge_probe``): a model whose embeddings are NaN, all zero or one direction whatever
        the image is refused here, before it is served, as a first model too (nothing served yet: there are no
        stored samples to judge it on, and Select would answer one score for every sample)."""
        emb = Embedder(self.registry / version, manifest, self.batch_size, self.use_cuda)
        judge_probe(emb, PROBE_BATCH)
        return emb

    def _load(self, version: str, manifest: Manifest, embedder: Embedder | None = None) -> Serving:
        """A version with its stored embeddings and persisted index (no re-embedding), when its folder holds
        the model that made them (``_made_by``); else without them (they are dropped: never mixed)."""
        folder = self._fingerprint(version)
        emb = self._embedder(version, manifest) if embedder is None else embedder
        fixed = self.state.repair_embeddings(version, emb.dim)
        if fixed:
            note = (f"on start, the stored embeddings of {version} did not agree with the samples table "
                    f"({'; '.join(fixed)}); repaired and the index rebuilt from them")
            log.warning(note)
            self.notices.append(note)
            shutil.rmtree(self.index_dir / version, ignore_errors=True)  # the snapshot's rows are stale
        stored = self.state.load_embeddings(version, emb.dim, len(emb.classes))
        other = self._made_by(version, emb, stored)
        if other:
            # No "until then ...": the note stays for the whole run (a start-up notice), long after the re-embedding
            meanwhile = (" (`shortlist status` shows how many it has embedded; Select and PriorLabels see those "
                         "only)") if self.current is None else ""
            note = (f"{self.registry / version} holds another model ({short_fingerprint(model_fingerprint(manifest))}) "
                    f"than the one that made the {len(stored.seqs)} embeddings stored for {version} ({other}): its "
                    f"files were changed in place since (e.g. its {MANIFEST_NAME} edited), or a removed version's "
                    f"number was used again for another model; they were dropped, never mixed "
                    f"with the folder's model's, and every sample is embedded again by it{meanwhile}")
            log.warning(note)
            self.notices.append(note)
            self._forget(version)
            (self.map_dir / f"{version}.npz").unlink(missing_ok=True)  # a map of the other model's embeddings
            stored = self.state.load_embeddings(version, emb.dim, len(emb.classes))
        self.state.set_fingerprint(version, model_fingerprint(manifest))  # fills rows recorded without one
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
        return Serving(version, manifest, emb, idx, folder)

    def _made_by(self, version: str, emb: Embedder, stored: StoredEmbeddings) -> str:
        """"" when ``version``'s stored embeddings were made by the model its folder holds now (``emb``), or
        there are none; else what made them (for the warning). A version number can name two models: a folder
        removed, then another published under its number (a registry written before numbers were never
        reused, or a copy made by hand). The model fingerprint recorded when the version was first embedded
        says it; a row without one (written before fingerprints were recorded) is checked by embedding up to
        ``PROBE_ROWS`` stored samples, spread over its rows, again: the same model gives the same vectors.
        Without their payloads (--no-blobs) nothing can be compared, and the embeddings are kept, as before."""
        if len(stored.seqs) == 0:
            return ""
        row = self.state.model_versions_full().get(version)
        recorded = "" if row is None else row[3]
        if recorded.startswith(MODEL_FINGERPRINT_PREFIX):
            return "" if recorded == model_fingerprint(emb.manifest) else short_fingerprint(recorded)
        rows = np.unique(np.linspace(0, len(stored.seqs) - 1, min(PROBE_ROWS, len(stored.seqs))).astype(int))
        images, kept = [], []
        blobs = self.blobs
        for r in rows:
            if blobs is None:  # --no-blobs: no payload kept
                break
            rec = self.state.lookup_seq(int(stored.seqs[r]))
            if rec is None:  # deleted since the rows were read: nothing to compare
                continue
            try:
                images.append(decode_stored(rec.kind, blobs.get(rec.sha256), emb.manifest.preprocess,
                                            self.max_pixels))
                kept.append(r)
            except (OSError, ValueError):  # payload missing or unreadable: that row cannot be compared
                continue
        if not kept:
            log.warning("the %d embeddings stored for %s were recorded without the fingerprint of the model that "
                        "made them and no stored payload is left to compare them with; kept as %s's", len(stored.seqs),
                        version, version)
            return ""
        vecs = emb.embed(np.stack(images)).vecs
        distance = float(np.linalg.norm(vecs - stored.vecs[np.array(kept)], axis=1).max())
        if distance <= PROBE_DISTANCE:
            return ""
        log.info("%s: stored embeddings differ from its folder's model's by up to %.3f (L2, unit vectors) on %d "
                 "samples", version, distance, len(kept))
        return f"a model recorded without a fingerprint whose vectors differ by up to {distance:.2f}"

    def _watch_served(self) -> None:
        """Notice the served version's folder going or changing while the agent runs: the agent serves the
        model it loaded (its onnxruntime session is in memory) with that model's embeddings, but a restart
        could not load it again, or would load another model under the same name. One log line and a
        GetStatus warning (``folder_warning``) while it lasts. Cheap when nothing changed (one listing of the
        folder); a changed folder is hashed once per change."""
        cur = self.current
        if cur is None:
            self.folder_warning = ""
            return
        now = self._fingerprint(cur.version)
        if (cur.version, now) == self._folder_seen:
            return
        self._folder_seen = (cur.version, now)
        where = self.registry / cur.version
        warning = ""
        if now == "missing":
            warning = (f"{where}, {SERVED_FOLDER}, is gone from {self.registry} "
                       f"(removed or renamed): {cur.version} keeps serving (its model is loaded), but a restart "
                       "could not load it again and would serve the newest complete version left there, "
                       "re-embedding every sample; put the folder back, or publish a new version (it is served "
                       "as usual)")
        elif now != cur.folder:
            try:
                manifest = check_version(where)
            except ManifestError as e:
                warning = (f"{where}, {SERVED_FOLDER}, changed since it was loaded and "
                           f"cannot be served any more ({e}): {cur.version} keeps serving the model it loaded; a "
                           "restart would refuse it; put the folder back as it was, or publish a new version")
            else:
                theirs, ours = model_fingerprint(manifest), model_fingerprint(cur.manifest)
                if theirs != ours:
                    warning = (f"{where}, {SERVED_FOLDER}, now holds another model ({short_fingerprint(theirs)}) "
                               f"than the {cur.version} this agent loaded ({short_fingerprint(ours)}): its files "
                               f"were changed in place (e.g. its {MANIFEST_NAME} edited: preprocessing, outputs, "
                               f"classes), or the folder was replaced by another under the same number (copied by "
                               f"hand, or published by an older shortlist, which reused the numbers of removed "
                               f"versions); {cur.version} keeps serving the model it loaded, with its embeddings; "
                               f"a restart embeds every sample again with the folder's model; to serve it now, "
                               f"restart the agent; to keep the served model, put its folder back as it was "
                               f"(publish a changed model as a new version instead)")
        if warning and warning != self.folder_warning:
            log.warning(warning)
        elif self.folder_warning and not warning and self.folder_warning_version == cur.version:
            log.info("the folder of %s, the version this agent serves, is as it was loaded again", cur.version)
        self.folder_warning, self.folder_warning_version = warning, cur.version

    def _adopt_first(self, version: str, manifest: Manifest) -> None:
        """The first model: serve it at once; samples stored before it are embedded by ``check``."""
        serving = self._load(version, manifest)
        before = self.state.get_meta(SERVING_KEY)
        with self._write_lock:
            self._drop_deleted(serving.index)  # a DeleteSamples while it loaded (its rows read before)
            self.current = serving
        self._saved_rows = serving.index.loaded_from_snapshot
        self.state.set_meta(SERVING_KEY, version)
        self.state.set_model_version(version, "serving", serving.index.n, fingerprint=model_fingerprint(manifest))
        behind = max(0, self.state.count() - serving.index.n)
        why = (f"instead of {before}, served before, which cannot be loaded any more" if before and before != version
               else "the first model")
        log.info("now serving %s (%d rows; %s: %s)", version, serving.index.n, why,
                 f"the {behind} samples it has not embedded are embedded in the background; until then Select and "
                 "PriorLabels cover the embedded samples only" if behind else "every stored sample is embedded")

    # ---- the background step ---------------------------------------------------------------------
    def _adopt_newest(self) -> None:
        """With no model served yet: serve the newest good version, if any."""
        for name in self._candidates():
            manifest = self._checked(name)
            if manifest is None:
                continue
            try:
                self._adopt_first(name, manifest)
                return
            except Exception as e:
                self._refuse(name, f"{name} refused: cannot load it: {e}")

    def check(self) -> None:
        """Adopt/embed/swap as needed; called by the polling thread (and directly by tests), one at a time."""
        with self._check_lock:
            self._check()

    def _check(self) -> None:
        self._start_look()
        self._watch_served()
        if self.current is None:
            self._adopt_newest()
            self._answer()
        else:
            for name in self._candidates():  # newest first: the newest good one wins
                manifest = self._checked(name)
                if manifest is None:
                    continue
                outcome = self._switch(name, manifest)
                while isinstance(outcome, Newer):  # a newer version appeared mid re-embed: move to it
                    outcome = self._switch(outcome.version, outcome.manifest, outcome.embedder)
                if outcome:
                    break
            self._answer()  # (a version embedded as pending answered when it started: ``_switch``)
        if self.current is not None:
            try:
                # in the background, a ReloadModel (the wake) stops it between batches, after its first (so calls
                # in a row cannot starve it): the loop looks at the registry at once and answers, then goes on
                # embedding (a first model's pool can take minutes)
                asked = [0]

                def woken() -> bool:
                    asked[0] += 1
                    return asked[0] > 1 and self._wake.is_set()

                self._catch_up(self.current.embedder, self.current.index, hold_lock=True,
                               interrupted=woken if self._thread is not None else None)
            except ModelFailed as e:  # the served model fails on stored samples: say so once, not a traceback a poll
                warning = f"{self.current.version} cannot embed the stored samples it lacks: {e}"
                if warning != self.warning:
                    log.error(warning)
                self.warning = warning

    def _newer_than(self, version: str) -> Newer | None:
        """The newest complete version newer than ``version`` whose model loads, or None. Broken ones are
        refused as ``check`` refuses them (a warning, looked at again when the folder changes), so a
        broken newer version never interrupts the one being embedded."""
        floor = version_number(version) or 0
        for name in reversed(list_versions(self.registry)):
            if (version_number(name) or 0) <= floor:
                break
            manifest = self._checked(name)
            if manifest is None:
                continue
            emb = self._or_refuse(name, partial(self._embedder, name, manifest))
            if emb is not None:
                return Newer(name, manifest, emb)
        return None

    def _look_for_newer(self, version: str) -> Newer | None:
        """Between re-embedding batches: look at the registry when woken (ReloadModel) or once a poll
        interval, so a version published mid re-embed (a rollback, a fix) preempts the pending one
        instead of waiting for it to be embedded and served."""
        if not self._wake.is_set() and time.monotonic() - self._looked_at < self.poll_s:
            return None
        self._wake.clear()
        self._start_look()
        self._looked_at = time.monotonic()
        self._watch_served()
        found = self._newer_than(version)
        if found is None:  # else answered once the newer one is pending (``_switch``), or refused (``check``)
            self._answer()
        return found

    def _missing(self, index: VersionIndex) -> list[int]:
        """Stored samples ``index`` lacks, less those known to be unembeddable for it."""
        bad = self.unembeddable.get(index.version, {})
        return [int(q) for q in self.state.all_seqs() if not index.has(int(q)) and int(q) not in bad]

    def forgive(self, seq: int) -> None:
        """``seq``'s payload was stored again (re-ingested): try to embed it again."""
        for bad in self.unembeddable.values():
            bad.pop(seq, None)

    def _catch_up(self, emb: Embedder, index: VersionIndex, hold_lock: bool, limit: int | None = None,
                  interrupted: Callable[[], bool] | None = None) -> int:
        """Embed stored samples ``index`` lacks, from their blobs, a batch at a time. With
        ``hold_lock`` each batch's commit+add holds the write lock (the serving index). ``interrupted``
        is asked before each batch; True stops the work there. Returns how many samples are still
        missing (0 when done)."""
        missing = self._missing(index)
        bad = self.unembeddable.setdefault(index.version, {})
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
            if self._stop.is_set() or (limit is not None and done >= limit) or (interrupted and interrupted()):
                break
            seqs, images = [], []
            for q in missing[start:start + self.batch_size]:
                rec = self.state.lookup_seq(q)
                if rec is None:  # deleted since ``missing`` was listed (DeleteSamples)
                    continue
                try:
                    images.append(decode_stored(rec.kind, self.blobs.get(rec.sha256), emb.manifest.preprocess,
                                                self.max_pixels))
                    seqs.append(q)
                except (OSError, ValueError) as e:  # blob missing or corrupt: report it, do not retry
                    if self.state.lookup_seq(q) is None:  # deleted meanwhile: its payload file went with it
                        continue
                    log.error("sample %r cannot be embedded by %s: %s", rec.id, index.version, e)
                    bad[q] = str(e) if not isinstance(e, FileNotFoundError) else "payload file missing"
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
        # A sample deleted since it was read gets no row either (``_drop_deleted`` takes out one deleted
        # between this check and the add, before the index is served).
        keep = np.array([not index.has(int(q)) and self.state.lookup_seq(int(q)) is not None for q in seqs], bool)
        if not keep.all():
            seqs, vecs = seqs[keep], vecs[keep]
            logits = None if logits is None else logits[keep]
            pretext = None if pretext is None else pretext[keep]
        if len(seqs) == 0:
            return
        self.state.add_embeddings(EmbeddingRows(index.version, index.n, vecs, logits, pretext), seqs.tolist())
        index.add(seqs, vecs, logits, pretext)

    def _switch(self, version: str, manifest: Manifest, embedder: Embedder | None = None) -> bool | Newer:
        """Re-embed the pool under ``version`` in the background, then swap to it atomically. False
        when the version cannot be used (refused, with a warning). A ``Newer`` when a newer good version
        appeared meanwhile: ``version`` is then abandoned (never served, its partial embeddings dropped,
        marked superseded) and the caller moves to the newer one; the serving version answers throughout."""
        cur = self.current
        assert cur is not None
        if same_model(cur.manifest, manifest):  # a copy of the served model: nothing to re-embed
            emb = embedder or self._or_refuse(version, lambda: self._embedder(version, manifest))
            return emb is not None and self._rename(version, manifest, emb)
        if self.blobs is None and self.state.count() > 0:
            self._refuse(version, f"cannot move to {version}: the pool must be re-embedded from stored payloads, "
                         "but the agent runs with --no-blobs; restart without --no-blobs (and re-ingest) to use it")
            return False
        new = self._or_refuse(version, lambda: self._load(version, manifest, embedder))
        if new is None:
            return False
        self._set_pending(version, new.index)
        self.state.set_model_version(version, "pending", new.index.n, fingerprint=model_fingerprint(manifest))
        self._answer()  # a ReloadModel that asked for this look sees the version pending
        self._drop_stale(keep={version})  # e.g. a version abandoned before a restart
        newer: list[Newer] = []

        gone: list[tuple[str, str]] = []  # why ``version``'s folder cannot be served any more, once noticed

        def preempted() -> bool:
            if not newer:
                found = self._look_for_newer(version)
                if found is not None:
                    newer.append(found)
            if not gone and (left := self._folder_left(new)) is not None:
                gone.append(left)
            return bool(newer or gone)

        try:
            # Bulk of the work without the lock: ingestion keeps going into the current version.
            remaining = self._catch_up(new.embedder, new.index, hold_lock=False, interrupted=preempted)
            while remaining > self.batch_size and not self._stop.is_set() and not newer and not gone:
                remaining = self._catch_up(new.embedder, new.index, hold_lock=False, interrupted=preempted)
            if self._stop.is_set():
                return True
            if not gone and (left := self._folder_left(new)) is not None:  # removed since the last look
                gone.append(left)
            if gone:
                self._forget(version)  # its partial embeddings: never served
                # For the folder as it was found changed, and for good: a restart refuses it too while the folder
                # stays so (this run does: ``_checked``), as the reason says; a folder changed again (put back,
                # or still being written then) is looked at again by both.
                why, found = gone[0]
                self._refuse(version, why, found, for_good=True)
                return False
            if newer or preempted():
                self._abandon(version, newer[0].version)
                return newer[0]
            with self._write_lock:  # the few samples ingested since, then the swap
                self._catch_up(new.embedder, new.index, hold_lock=False)
                if dropped := self._drop_deleted(new.index):
                    log.info("%s: %d row(s) of samples deleted while it was embedded taken out", version, dropped)
                old = self.current
                self.state.set_serving(version, new.index.n)
                with self._view_lock:  # GetStatus sees the swap and the end of pending as one change
                    self.current = new
                    self.pending_version, self.pending = "", None
            self._saved_rows = -1
            self.save_snapshot()
            if old is not None:
                self._forget(old.version, "retired")
            log.info("now serving %s (%d rows)", version, new.index.n)
            return True
        except Exception as e:
            if storage_problem(e) is not None or self.current is new:  # a full disk: retried at the next poll
                raise
            # The model failed on the stored samples (e.g. an export that runs at some batch sizes only): refuse
            # it as a load failure is refused, with its partial embeddings dropped, instead of trying it again at
            # every poll while no warning says why.
            log.exception("%s failed while embedding the stored samples", version)
            # A model's fault (ModelFailed: onnxruntime raised, NaN, degenerate) lies in its folder: recorded with
            # the folder's fingerprint as loaded, so a restart does not embed the whole pool with it again to
            # refuse it again; the folder changed (a fixed file), or a fixed model under a new name, is tried.
            self._forget(version)
            self._refuse(version, f"{version} refused: {FAILED_ON_SAMPLES}: {e}",
                         new.folder if isinstance(e, ModelFailed) else None, for_good=isinstance(e, ModelFailed))
            return False
        finally:
            self._set_pending("", None)

    def _folder_left(self, loaded: Serving) -> tuple[str, str] | None:
        """Why ``loaded``, a version being embedded, must not be served any more, with its folder's ``_fingerprint``
        as judged: its registry folder is gone (removed or renamed: a restart could not load it, so serving it would
        strand the pool on a model no one can load again) or holds another model than the one loaded; None while
        it is as it was loaded. Cheap when nothing changed (one listing of the folder)."""
        now = self._fingerprint(loaded.version)
        if now == loaded.folder:
            return None
        where = self.registry / loaded.version
        if now == "missing":
            return (f"{loaded.version} refused: its folder was removed from {self.registry} while the pool was "
                    f"being embedded with it; it was never served (its partial embeddings are dropped); the "
                    f"served version keeps serving; publish it again to use it"), now
        again = (f"; it is not tried again, after a restart too, while the folder stays as it is now: to serve "
                 f"its model as it is now, publish it as a new version (`shortlist models rollback "
                 f"{loaded.version}`), or put the folder back as it was")
        try:
            manifest = check_version(where)
        except ManifestError as e:
            return (f"{loaded.version} refused: its folder {where} changed while the pool was being embedded with "
                    f"it and cannot be served any more ({e}); it was never served{again}"), now
        if model_fingerprint(manifest) != model_fingerprint(loaded.manifest):
            return (f"{loaded.version} refused: {where} holds another model than the one being embedded (its files "
                    f"changed while the pool was being embedded with it); it was never served; publish a new "
                    f"version instead of changing a published one{again}"), now
        loaded.folder = now  # the same model (e.g. a file touched): go on
        return None

    def _rename(self, version: str, manifest: Manifest, emb: Embedder) -> bool:
        """Serve ``version``, the same model as the served one (a republished copy: a rollback to the
        version being served, e.g. while a bad newer one was being embedded), with the served index and
        stored embeddings under the new name, at once: re-embedding the pool with an identical model
        would give the same vectors after hours of work."""
        with self._write_lock:  # no Ingest adds rows under the old name meanwhile
            old = self.current
            assert old is not None
            self.state.rename_version(old.version, version, old.index.n, model_fingerprint(manifest))
            index = old.index
            index.version = version
            with self._view_lock:
                self.current = Serving(version, manifest, emb, index, self._fingerprint(version))
            self.unembeddable[version] = self.unembeddable.pop(old.version, {})
        if self.on_classes is not None:
            self.on_classes(manifest)
        self._saved_rows = -1
        self.save_snapshot()
        shutil.rmtree(self.index_dir / old.version, ignore_errors=True)
        log.info("now serving %s, the same model as %s, with its %d embeddings (nothing re-embedded)",
                 version, old.version, index.n)
        return True

    def _abandon(self, version: str, by: str) -> None:
        """Stop embedding ``version`` for good: ``by`` (newer) replaces it. Its partial embeddings are
        dropped and its row says why, in one transaction, so neither this run nor a restart resumes it."""
        log.warning("%s is abandoned before it was served: %s, newer, was published meanwhile", version, by)
        self._forget(version, "superseded", f"{version} was superseded by {by}, published while {version} was "
                     "being embedded; it was never served")

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
