"""Content-addressed payload store: ``<root>/ab/cdef...`` named by the sha256 of the bytes.

A blob is written to a temporary file in its final folder, fsynced, then renamed into place, so a
reader never sees a partial blob and a crash leaves at most an orphan temporary file (removed on
open). Blobs are immutable; writing the same bytes twice is a no-op. Orphan blobs (written, then the
SQLite transaction that referenced them never committed: an agent killed during an Ingest) are removed
when the agent next opens the folder (``sweep``), before it serves.

Removal and backups (``removal_lock``): ``shortlist backup`` (another process) copies ``state.sqlite`` and then
links the blobs that copy names; a deletion committed between the two must not remove those files before they
are linked. ``<root>/.lock`` is ``flock``ed shared by a backup from before its state copy until its blobs are
linked, and exclusive by a deletion around its removal, which so waits for such a backup (and a backup that
starts meanwhile waits for the removal, then copies the state after the deletion).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.security import OWNER_DIR, OWNER_FILE, owner_only_dir
from shortlist.manifest import fsync_path

# Shared by every BlobStore of the process; fsync releases the GIL, so these threads overlap.
_FSYNC_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fsync")
_OPEN_FILES = 128  # files written and fsynced at a time
LOCK_NAME = ".lock"  # in the blob root: removal_lock's file (a dot name: sweep never takes it for a blob)

log = logging.getLogger(__name__)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def removal_lock(root: Path, shared: bool, create: bool = True) -> Iterator[None]:
    """Hold ``<root>/.lock``: ``shared`` by a backup (from before its state copy until its blobs are linked),
    exclusive by a blob removal (see the module's docstring). Waits for the other kind; the kernel drops the
    lock when its process ends in any way. No lock when the file cannot be opened (a read-only folder: then no
    agent removes anything from it either), or, without ``create``, when there is none (``shortlist restore``
    reads a backup folder, which it must not write to; a served folder's deletions make the file)."""
    path = root / LOCK_NAME
    if not create and not path.exists():
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, OWNER_FILE)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            log.info("%s: waiting for %s", root, "a payload removal (a deletion) to finish" if shared
                     else "a backup (shortlist backup) to link the payloads its state copy names")
            fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


class BlobStore:
    """Payload bytes by sha256 hex digest, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # digest -> why: payloads found missing (``sweep``) or unreadable (``get``) since the folder was opened,
        # until written again; GetStatus warns about those a sample still names (agent/core.py). Found as a side
        # effect of work done anyway: nothing is hashed for it (``shortlist check`` hashes every file).
        self._unreadable: dict[str, str] = {}
        self._unreadable_lock = threading.Lock()
        owner_only_dir(root)
        for tmp in root.glob("*/.tmp-*"):  # left by a crash between write and rename
            tmp.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        """Durably store every (digest, data) pair: files written under temporary names and fsynced,
        renamed into place, then their folders fsynced, all before returning (so before the caller's
        commit). The fsyncs run in parallel threads: the file system then commits its journal once
        for many of them, where one fsync after another pays a journal commit per file (docs/agent.md,
        "How it works", Blobs, has the per-file cost).
        (``syncfs`` would be one call, but would also wait for every other process's dirty data.)"""
        pending: dict[str, bytes] = {}
        for digest, data in items:
            if digest not in pending and not self.path(digest).is_file():
                pending[digest] = data
        placed: list[Path] = []
        digests = list(pending)
        for start in range(0, len(digests), _OPEN_FILES):  # bounded number of open descriptors
            todo: list[tuple[Path, Path, int]] = []
            try:
                for digest in digests[start:start + _OPEN_FILES]:
                    final = self.path(digest)
                    final.parent.mkdir(mode=OWNER_DIR, exist_ok=True)
                    tmp = final.parent / f".tmp-{digest[2:]}-{os.getpid()}-{threading.get_ident()}"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_FILE)
                    todo.append((tmp, final, fd))
                    view = memoryview(pending[digest])
                    while view:
                        view = view[os.write(fd, view):]
                list(_FSYNC_POOL.map(os.fsync, [fd for _, _, fd in todo]))
            finally:
                for _, _, fd in todo:
                    os.close(fd)
            for tmp, final, _ in todo:
                os.replace(tmp, final)
                placed.append(final)
        list(_FSYNC_POOL.map(fsync_path, {final.parent for final in placed}))
        with self._unreadable_lock:
            for digest in digests:
                self._unreadable.pop(digest, None)

    def unreadable(self) -> dict[str, str]:
        """digest -> why, of the payloads found missing at open or unreadable since (and not written again)."""
        with self._unreadable_lock:
            return dict(self._unreadable)

    def is_unreadable(self, digest: str) -> bool:
        """Whether ``digest`` is among ``unreadable``."""
        with self._unreadable_lock:
            return digest in self._unreadable

    def _note_unreadable(self, digest: str, why: str) -> None:
        with self._unreadable_lock:
            self._unreadable[digest] = why

    def sweep(self, keep: Collection[str]) -> int:
        """Remove every blob whose digest is not in ``keep`` (the payloads the samples table names); returns
        how many. Only while nothing writes blobs (the agent at open, before it serves): an Ingest writes its
        blobs before the commit that names them, so a sweep beside one could remove a blob about to be used."""
        orphans: list[str] = []
        present: set[str] = set()
        for folder in self.root.iterdir():
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            with os.scandir(folder) as entries:
                found = [folder.name + e.name for e in entries if not e.name.startswith(".")]
            present.update(found)
            orphans += [d for d in found if d not in keep]
        for digest in keep:
            if digest not in present:  # the listing is made anyway: a missing payload costs nothing to notice
                self._note_unreadable(digest, "payload file missing")
        return self._remove(orphans)  # no removal_lock: no state copy a backup makes names an orphan

    def remove(self, digests: Collection[str]) -> int:
        """Remove the blobs ``digests`` (deleted samples' payloads that no sample names), durably (their
        folders fsynced), once no backup is between its state copy and its blob links (``removal_lock``);
        returns how many were there."""
        with self.removing():
            return self._remove(digests)

    def removing(self) -> contextlib.AbstractContextManager[None]:
        """The removal lock, held around a whole deletion (``remove_held`` inside it): the agent takes it before
        its write lock, so a deletion waiting for a backup holds up no other write (it held the write lock
        while it waited: labels and Ingest stalled for as long as a backup linked its blobs)."""
        return removal_lock(self.root, shared=False)

    def remove_held(self, digests: Collection[str]) -> int:
        """``remove`` for a caller inside ``removing()``."""
        return self._remove(digests)

    def _remove(self, digests: Collection[str]) -> int:
        removed = 0
        touched: set[Path] = set()
        for digest in digests:
            path = self.path(digest)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            touched.add(path.parent)
        list(_FSYNC_POOL.map(fsync_path, touched))
        return removed

    def damaged(self, digest: str) -> bool:
        """Whether the blob is missing or its content does not hash to ``digest``."""
        try:
            self.get(digest)
        except OSError:
            return True
        return False

    def repair(self, digest: str, data: bytes) -> None:
        """Replace a missing or corrupt blob with ``data`` (which must hash to ``digest``)."""
        if sha256_hex(data) != digest:
            raise ValueError("repair data does not match the digest")
        self.path(digest).unlink(missing_ok=True)
        self.put_many([(digest, data)])

    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; FileNotFoundError if absent, OSError if corrupt (either noted for
        ``unreadable``)."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            self._note_unreadable(digest, "payload file missing")
            raise
        except OSError as e:
            self._note_unreadable(digest, f"payload file unreadable: {e.strerror or e}")
            raise
        if sha256_hex(data) != digest:
            self._note_unreadable(digest, "payload file damaged (its content hash differs)")
            raise OSError(f"blob {digest} is corrupt (its content hash differs)")
        return data
