"""``shortlist backup``: a consistent copy of an agent's data folder, made while the agent serves it.

A plain ``cp`` of a live folder copies ``state.sqlite`` and its WAL at different moments, and such copies taken
during labelling can be damaged (docs/agent.md, "Backup and restore"). Here:

1. ``state.sqlite`` through SQLite's online backup API (``sqlite3.Connection.backup``, all pages in one step,
   so in one read transaction): the copy is the database as of one commit, every label and sample acknowledged
   before the call included. The agent goes on writing meanwhile (a WAL reader blocks no writer).
2. The blobs that copy refers to (``samples.sha256``), and only those: a blob written after step 1 belongs to
   no sample of the copy. Hard links when the backup is on the blobs' file system (a blob file is never changed
   in place: agent/blobs.py writes a new file and renames it), else copies, each checked against its sha256.
   Deletions wait meanwhile before removing payload files (agent/blobs.py ``removal_lock``), so a deletion
   committed after the copy cannot take the files of samples the copy still holds.
3. ``PRAGMA integrity_check`` of the copy, every file and folder fsynced, and the temporary folder
   (``.DEST.partial-PID`` beside DEST) renamed to DEST: DEST appears complete or not at all; an interrupted
   backup leaves at most the partial folder, removed when the backup fails with an error. That folder holds
   ``UNFINISHED-COPY.txt`` (agent.state.UNFINISHED_MARKER) from its creation until just before the rename, so a
   copy of it is refused by ``serve``, ``check`` and ``restore``; a killed backup's folder (its PID gone) is
   removed by the next backup into the same DEST, which names it (it may hold data deleted since).

Not copied: the index snapshot (``D/index``) and the pool map (``D/map``): caches the agent rebuilds at start,
the graph from the embeddings stored in state.sqlite (agent/index.py, ``VersionIndex.restore``: nothing is
re-embedded) and the map in the background; ``agent.lock``, the WAL and its index (the copy is one file).
A backup folder is a data folder: ``shortlist serve --data-dir DEST`` serves it (docs/agent.md, "Backup and
restore"). Nothing in a data folder names an absolute path, so it can be moved or copied anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.blobs import removal_lock
from agent.errors import storage_problem
from agent.security import LOCK_FILE, OWNER_DIR, OWNER_FILE, DataDirLock, DataDirLocked, owner_only_file
from agent.state import (
    LABEL_EVENTS_SQL,
    RETRACTED,
    SERVING_KEY,
    UNFINISHED_MARKER,
    check_database,
    journal_message,
    unfinished_copy,
)
from shortlist.manifest import fsync_path, pid_alive

STATE_FILE = "state.sqlite"
BLOBS = "blobs"
_THREADS = 8  # blobs linked or copied (and fsynced) at once: fsync waits on the disk, not the CPU


class BackupUsageError(ValueError):
    """The backup cannot start: DEST exists, the source is no data folder, ... (``shortlist backup`` exits 2)."""


class BackupError(RuntimeError):
    """The backup could not be made (a damaged source, a full disk, ...); nothing was left at DEST (exit 1)."""


@dataclass
class BackupSummary:
    """What a backup holds (``shortlist backup --json``)."""

    source: str
    out: str
    snapshot_time: float  # Unix time of the state copy: everything acknowledged before it is in the backup
    seconds: float
    schema_version: int
    samples: int
    labelled: int  # samples with a current label
    # GetStatus' label_events (LABEL_EVENTS_SQL): label rows (labels, changes, retractions), and the rows
    # deletions removed plus one per deletion
    label_events: int
    serving_version: str
    versions: dict[str, str]  # model version -> status (serving, pending, retired, superseded, failed)
    integrity: str  # "ok": PRAGMA integrity_check of the copy
    blobs: int = 0  # blob files in the backup
    blobs_linked: int = 0
    blobs_copied: int = 0
    blob_bytes: int = 0
    blobs_kept: bool = True  # False: the folder keeps no payloads (serve --no-blobs)
    removed_stale: list[str] = field(default_factory=list)  # folders of killed backups/restores removed (paths)
    kept_stale: list[str] = field(default_factory=list)  # such folders left in place (paths), see restore()
    missing_blobs: list[str] = field(default_factory=list)  # referenced, absent from the source (sha256)
    damaged_blobs: list[str] = field(default_factory=list)  # referenced, content not matching its sha256

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


def open_source(path: Path) -> sqlite3.Connection:
    """A connection to the live database that changes nothing in it (``query_only``). Read-write mode (without
    create) so that, when no agent has it open, closing it removes the -wal and -shm files it opened, as the
    agent's own close does; read-only where the folder cannot be written."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=30)
    except sqlite3.OperationalError:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    db.execute("PRAGMA query_only=1")
    return db


_LEFTOVER_KINDS = ("partial", "restore", "replaced")


def leftovers(folder: Path, kinds: tuple[str, ...] = _LEFTOVER_KINDS) -> list[tuple[Path, str, bool]]:
    """The folders a backup or restore into ``folder`` leaves beside it when killed, as they are named there:
    ``.NAME.partial-PID`` (an unfinished backup to NAME), ``.NAME.restore-PID`` (an unfinished restore into
    NAME), ``.NAME.replaced-PID`` (the old NAME a ``restore --force`` moved aside: a full copy of its data);
    (path, kind, whether process PID still runs), sorted by name."""
    found: list[tuple[Path, str, bool]] = []
    parent = folder.parent
    if not parent.is_dir():
        return found
    for kind in kinds:
        for p in sorted(parent.glob(f".{glob_escape(folder.name)}.{kind}-*")):
            pid = p.name.rsplit("-", 1)[1]
            if pid.isdigit() and p.is_dir() and not p.is_symlink():
                found.append((p, kind, int(pid) != os.getpid() and pid_alive(int(pid))))
    return found


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _refuse_unfinished(folder: Path) -> None:
    """BackupUsageError when ``folder`` is an unfinished copy: it holds UNFINISHED_MARKER, or its state.sqlite a
    rollback journal (a killed backup's copy, made before the marker; opening it would roll it back)."""
    unfinished = unfinished_copy(folder)
    if unfinished is None and (folder / f"{STATE_FILE}-journal").exists():
        unfinished = journal_message(folder / STATE_FILE)
    if unfinished is not None:
        raise BackupUsageError(unfinished)


def _start_copy(tmp: Path) -> None:
    """Create the copy's folder ``tmp`` holding UNFINISHED_MARKER (fsynced: it is there before any data is)."""
    tmp.mkdir(mode=OWNER_DIR)
    marker = tmp / UNFINISHED_MARKER
    marker.write_text("An unfinished shortlist backup or restore: no data folder (docs/agent.md, \"Backup and "
                      "restore\"). Remove this folder.\n")
    fsync_path(marker)
    fsync_path(tmp)


def _finish_copy(tmp: Path) -> None:
    """Remove ``tmp``'s UNFINISHED_MARKER, last before its rename (everything else in it is fsynced)."""
    (tmp / UNFINISHED_MARKER).unlink()
    fsync_path(tmp)


def _summary_of(db: sqlite3.Connection) -> tuple[int, int, int, int, str, dict[str, str]]:
    """(schema version, samples, labelled, label_events (GetStatus'), serving version, versions) of a state
    database."""
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    labelled = one("SELECT COUNT(*) FROM labels WHERE n IN (SELECT MAX(n) FROM labels GROUP BY seq) "
                   f"AND class != {RETRACTED}")
    row = db.execute("SELECT value FROM meta WHERE key=?", (SERVING_KEY,)).fetchone()
    versions = {str(n): str(s) for n, s in db.execute("SELECT name, status FROM model_versions ORDER BY name")}
    # a folder of a release before DeleteSamples (backed up before its upgrade) has no deletions table
    has_deletions = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='deletions'").fetchone()
    return (int(one("PRAGMA user_version")), int(one("SELECT COUNT(*) FROM samples")), int(labelled),
            int(one(LABEL_EVENTS_SQL if has_deletions else "SELECT COUNT(*) FROM labels")),
            "" if row is None else str(row[0]), versions)


def _copy_blob(src: Path, dst: Path, digest: str) -> tuple[int, bool]:
    """Copy one blob, fsynced; (bytes, whether its content matches ``digest``). A damaged blob is not copied."""
    data = src.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        return len(data), False
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data), True


def backup(data_dir: Path, out: Path, link: bool = True,
           progress: Callable[[int, int], None] | None = None) -> BackupSummary:
    """Back up the data folder ``data_dir`` (served or not) into the new folder ``out`` (see the module's
    docstring). ``link``: hard-link blobs when ``out`` is on their file system (else always copy them);
    ``progress(done, total)`` after each blob. BackupUsageError before anything is written, BackupError (with
    nothing left at ``out``) when it fails."""
    source = data_dir / STATE_FILE
    if not source.is_file():
        raise BackupUsageError(f"{data_dir} is not an agent data folder (it has no {STATE_FILE}): give --data-dir "
                               "the folder `shortlist serve --data-dir` uses")
    _refuse_unfinished(data_dir)
    if out.exists() or out.is_symlink():
        raise BackupUsageError(f"{out} exists: give --out a new folder (a backup never overwrites one)")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise BackupUsageError(f"{out} is inside the data folder {data_dir}: put the backup elsewhere")
    parent = out.parent
    try:
        parent.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
    except OSError as e:
        raise BackupUsageError(f"cannot create {parent} for the backup: {e.strerror or e}") from None
    tmp = parent / f".{out.name}.partial-{os.getpid()}"
    t0 = time.monotonic()
    # Killed backups into the same --out (their PID gone; this pid's own number included): each may hold a full
    # copy of the data, deleted samples too, so they are removed, and named in the summary.
    stale = [p for p, _, alive in leftovers(out, ("partial",)) if not alive]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    try:  # a folder it may not write in (or a full disk): the backup cannot start, a usage error as above
        _start_copy(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupUsageError(f"cannot write in {parent} for the backup: {e.strerror or e} (give --out a folder "
                               "you can write in, with free space)") from None
    try:
        summary = _backup_into(data_dir, tmp, link, progress)
        summary.source, summary.out = str(data_dir), str(out)
        summary.removed_stale = [str(p) for p in stale]
        if out.exists() or out.is_symlink():  # made meanwhile: rename() would replace an empty folder
            raise BackupUsageError(f"{out} was created during the backup: give --out a new folder")
        _finish_copy(tmp)
        os.rename(tmp, out)
        fsync_path(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError | sqlite3.Error):
            # a full disk, met copying payloads (ENOSPC) or in SQLite's own words: the agent's one test for it
            problem = storage_problem(e)
            full = problem is not None and problem.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            space = " (free space there, or back up elsewhere)" if full else ""
            what = f"SQLite: {e}" if isinstance(e, sqlite3.Error) else str(e)
            raise BackupError(f"nothing was left at {out}: {what}{space}") from None  # after "backup failed: "
        raise
    summary.seconds = round(time.monotonic() - t0, 3)
    return summary


def restore(backup_dir: Path, data_dir: Path, force: bool = False, link: bool = True,
            progress: Callable[[int, int], None] | None = None) -> BackupSummary:
    """Restore the backup ``backup_dir`` (any data folder) as the data folder ``data_dir``: the same steps as a
    backup (a consistent copy of its state.sqlite, checked, and the blobs it names) into ``.NAME.restore-PID``
    beside ``data_dir``, then renamed into place. A fresh folder, so no ``state.sqlite-wal`` or ``-shm`` of an
    old folder is left to be replayed onto the restored database (what ``cp -a BACKUP/. D/`` over an old folder
    did: a crashed agent's labels merged in, or "corrupt" at start). ``data_dir`` served by an agent: refused
    (the agent's lock is held meanwhile, so none starts on it); holding anything but ``agent.lock``: refused
    unless ``force``, which replaces it (its contents are removed once the restored folder is in place). A
    ``data_dir`` that is a symlink to a folder: that folder is restored (the link is kept).
    BackupUsageError before anything is written, BackupError when the copy fails (``data_dir`` unchanged)."""
    _refuse_unfinished(backup_dir)
    if not (backup_dir / STATE_FILE).is_file():
        raise BackupUsageError(f"{backup_dir} is no backup (it has no {STATE_FILE}): give the folder `shortlist "
                               "backup --out` made")
    src, dst = backup_dir.resolve(), data_dir.resolve()
    if src == dst or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise BackupUsageError(f"{data_dir} and the backup {backup_dir} overlap: restore into another folder")
    given = data_dir
    if data_dir.is_symlink():
        # A symlink to the data folder (`serve --data-dir` through it): the restore replaces the folder it points
        # to, and the link goes on naming it (was refused as "not a folder").
        if not dst.is_dir():
            raise BackupUsageError(f"{data_dir} is a symlink to {dst}, which is not a folder: give the data folder "
                                   "to restore into")
        data_dir = dst
    lock: DataDirLock | None = None
    if data_dir.exists():
        if not data_dir.is_dir():
            raise BackupUsageError(f"{given} is not a folder: give the data folder to restore into")
        try:
            lock = DataDirLock(data_dir)
        except DataDirLocked:
            holder = (data_dir / LOCK_FILE).read_text(errors="replace").strip()
            raise BackupUsageError(
                f"{given} is served by an agent{f' (pid {holder})' if holder.isdigit() else ''}: stop that agent, "
                "then restore (a restore never replaces a folder an agent has open)") from None
        except OSError as e:
            raise BackupUsageError(f"cannot lock {data_dir}: {e.strerror or e}") from None
        held = sorted(p.name for p in data_dir.iterdir() if p.name != LOCK_FILE)
        if held and not force:
            lock.release()
            raise BackupUsageError(f"{data_dir} is not empty (it holds {', '.join(held[:4])}"
                                   f"{' ...' if len(held) > 4 else ''}): give --force to replace it (its contents "
                                   "are removed), or restore into a new folder")
    try:
        parent = data_dir.parent
        parent.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
        tmp = parent / f".{data_dir.name}.restore-{os.getpid()}"
        t0 = time.monotonic()
        # Killed restores into the same folder (their PID gone): an unfinished copy is removed; the old folder a
        # killed `restore --force` moved aside, too, once data_dir exists again (the --force asked for its
        # removal); without data_dir (killed between its two renames) it is the only copy of the old folder: kept.
        removed, kept = [], []
        for p, kind, alive in leftovers(data_dir, ("restore", "replaced")):
            if alive:
                continue
            if kind == "replaced" and not data_dir.exists():
                kept.append(str(p))
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
        try:
            _start_copy(tmp)
            summary = _backup_into(backup_dir, tmp, link, progress, restoring=True)
            _finish_copy(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError | sqlite3.Error):
                raise BackupError(f"the restore failed and {data_dir} was left as it was: {e}") from None
            raise
        summary.source, summary.out = str(backup_dir), str(given)
        summary.removed_stale, summary.kept_stale = removed, kept
        if lock is None:
            os.rename(tmp, data_dir)
        else:
            old = parent / f".{data_dir.name}.replaced-{os.getpid()}"
            try:
                os.rename(data_dir, old)
            except OSError as e:  # a mount point, a folder not ours to rename
                shutil.rmtree(tmp, ignore_errors=True)
                raise BackupError(f"cannot move {data_dir} aside ({e.strerror or e}): restore into a new folder "
                                  "and serve that") from None
            os.rename(tmp, data_dir)
            fsync_path(parent)
            shutil.rmtree(old)
        fsync_path(parent)
        summary.seconds = round(time.monotonic() - t0, 3)
        return summary
    finally:
        if lock is not None:
            lock.release()


def _backup_into(data_dir: Path, tmp: Path, link: bool,
                 progress: Callable[[int, int], None] | None, restoring: bool = False) -> BackupSummary:
    """Steps 1-3 of the module's docstring into the (new, empty) folder ``tmp``, before its rename. From before
    the state copy until the blobs are linked, no deletion removes a payload (``removal_lock``, shared): else
    one committed after the copy could remove the files of samples the copy still holds."""
    blobs = data_dir / BLOBS
    # (``restoring``: the source is a backup, which a restore must not write to: no lock file made in it)
    with removal_lock(blobs, shared=True, create=not restoring) if blobs.is_dir() else contextlib.nullcontext():
        return _backup_locked(data_dir, tmp, link, progress)


def _backup_locked(data_dir: Path, tmp: Path, link: bool,
                   progress: Callable[[int, int], None] | None) -> BackupSummary:
    state = tmp / STATE_FILE
    owner_only_file(state)
    src = open_source(data_dir / STATE_FILE)
    dst = sqlite3.connect(state, isolation_level=None)
    dst.execute("PRAGMA secure_delete=ON")  # the journal-mode change below frees nothing, but keep it zeroing
    try:
        snapshot_time = time.time()
        src.backup(dst)  # pages=-1: every page in one step, so in one read transaction of the source
        src.close()
        problems = check_database(dst, "full")
        if problems:
            raise BackupError(f"the copy of {data_dir / STATE_FILE} fails SQLite's integrity check ("
                              f"{' '.join('; '.join(problems[:3]).split())}): the data folder itself is damaged "
                              "(shortlist serve refuses it too); restore it from an earlier backup")
        schema, samples, labelled, events, serving, versions = _summary_of(dst)
        digests = [str(d) for (d,) in dst.execute("SELECT DISTINCT sha256 FROM samples ORDER BY sha256")]
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (the agent turns WAL on at start)
    finally:
        src.close()
        dst.close()
    summary = BackupSummary("", "", snapshot_time, 0.0, schema, samples, labelled, events, serving, versions, "ok")
    blobs = data_dir / BLOBS
    if not blobs.is_dir():
        summary.blobs_kept = False
    else:
        _copy_blobs(blobs, tmp / BLOBS, digests, link, summary, progress)
    fsync_path(state)
    fsync_path(tmp)
    return summary


def _copy_blobs(src: Path, dst: Path, digests: list[str], link: bool, summary: BackupSummary,
                progress: Callable[[int, int], None] | None) -> None:
    """Link or copy the blobs ``digests`` from ``src`` into ``dst`` (``agent.blobs.BlobStore``'s layout),
    counting what was done in ``summary``; every folder fsynced."""
    dst.mkdir(mode=OWNER_DIR)
    for prefix in sorted({d[:2] for d in digests}):
        (dst / prefix).mkdir(mode=OWNER_DIR)
    same_fs = link and os.stat(src).st_dev == os.stat(dst).st_dev

    def one(digest: str) -> tuple[str, str, int]:
        """(digest, what happened: linked, copied, missing or damaged, bytes)."""
        a, b = src / digest[:2] / digest[2:], dst / digest[:2] / digest[2:]
        try:
            if same_fs:
                try:
                    os.link(a, b)
                    return digest, "linked", os.stat(b).st_size
                except OSError as e:  # a file system without hard links, too many links: copy it
                    if e.errno == errno.ENOENT:
                        raise
            size, ok = _copy_blob(a, b, digest)
            return digest, "copied" if ok else "damaged", size
        except FileNotFoundError:
            return digest, "missing", 0

    done = 0
    pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="backup")
    try:
        for digest, what, size in pool.map(one, digests):
            if what == "linked":
                summary.blobs_linked += 1
            elif what == "copied":
                summary.blobs_copied += 1
            elif what == "missing":
                summary.missing_blobs.append(digest)
            else:
                summary.damaged_blobs.append(digest)
            summary.blob_bytes += size if what in ("linked", "copied") else 0
            done += 1
            if progress is not None:
                progress(done, len(digests))
    finally:  # on a failure (a full disk) the blobs not started yet are not tried: the backup is abandoned
        pool.shutdown(wait=True, cancel_futures=True)
    summary.blobs = summary.blobs_linked + summary.blobs_copied
    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="backup") as syncs:
        list(syncs.map(fsync_path, [p for p in dst.iterdir() if p.is_dir()]))
    fsync_path(dst)
