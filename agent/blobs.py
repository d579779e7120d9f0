"""Content-addressed payload store: ``<root>/ab/cdef...`` named by the sha256 of the bytes.

A blob is written to a temporary file in its final folder, fsynced, then renamed into place, so a
reader never sees a partial blob and a crash leaves at most an orphan temporary file (removed on
open). Blobs are immutable; writing the same bytes twice is a no-op. Orphan blobs (written, then the
SQLite transaction that referenced them never committed) are harmless: the same content re-ingested
reuses them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Payload bytes by sha256 hex digest, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for tmp in root.glob("*/.tmp-*"):  # left by a crash between write and rename
            tmp.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        """Durably store every (digest, data) pair: each file fsynced, renamed, then each touched
        folder fsynced once (so the renames survive a power cut before the caller commits)."""
        dirs: set[Path] = set()
        for digest, data in items:
            final = self.path(digest)
            if final.is_file():
                continue
            final.parent.mkdir(exist_ok=True)
            tmp = final.parent / f".tmp-{digest[2:]}-{os.getpid()}-{id(data)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            dirs.add(final.parent)
        for d in dirs:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; FileNotFoundError if absent."""
        return self.path(digest).read_bytes()
