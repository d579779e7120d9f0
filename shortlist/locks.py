"""An exclusive, never-stale lock on a folder: one process at a time writes it (the agent's data folder,
a bench command's or a training run's --out).

``flock`` on a file in the folder, taken without waiting and holding the holder's pid: the kernel drops it
when the process ends in any way (SIGKILL included), so a lock is never stale and nothing needs cleaning up."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path


class Locked(OSError):
    """Another open file holds the lock; ``holder`` is the pid it wrote ("" when unreadable)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {f'pid {holder}' if holder else 'another process'}")
        self.holder = holder

    @property
    def who(self) -> str:
        """" (pid N)" for a message, or "" when the holder's pid is unknown."""
        return f" (pid {self.holder})" if self.holder else ""


class PidLock:
    """The exclusive ``flock`` on ``path`` (created with ``mode``) with ``holder`` written in it (by default this
    process's pid and a newline; a caller that says more of itself, such as a training cycle's run folder, reads
    it back itself), held until ``release`` (or the process ends). Locked when another open file holds it; its
    ``holder`` is the pid only when the file holds a bare pid."""

    def __init__(self, path: Path, mode: int = 0o644, holder: str | None = None) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise Locked(path, holder if holder.isdigit() else "") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"{os.getpid()}\n" if holder is None else holder).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def fileno(self) -> int:
        """The locked file's descriptor (ValueError once released)."""
        if self._fd is None:
            raise ValueError("the lock was released")
        return self._fd


class FolderLock:
    """The lock on ``<out>/<name>`` while one command writes the folder ``out`` (made when missing): a
    second run into it would mix its files with the first's. Locked (naming the holder's pid) when another
    process holds it; FileExistsError or NotADirectoryError when ``out`` or a folder above it is a file.

    ``release`` removes the lock file (still locked, so a run that opened it meanwhile is refused) and the
    folder when this lock made it and nothing else was written (the command refused its input): bad input
    leaves nothing behind. A run that opened the file just before it was removed and locked it just after
    holds a file no longer in the folder: it sees that (another inode at the path, or none) and locks afresh."""

    def __init__(self, out: Path, name: str) -> None:
        self._out, self._path = out, out / name
        self._created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        while True:
            lock = PidLock(self._path)
            try:
                same = os.stat(self._path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock = lock
                return
            lock.release()

    def release(self) -> None:
        self._path.unlink(missing_ok=True)
        self._lock.release()
        if self._created:
            with contextlib.suppress(OSError):  # not empty (this run wrote into it) or another run's now: kept
                self._out.rmdir()
