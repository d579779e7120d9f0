"""Crash-safe writes of whole files (the project's rule 2: nothing is lost, no torn state).

``atomic_file``/``write_atomic`` write a temporary file in the final path's folder (same filesystem, so the
rename is atomic), flush and fsync it, ``os.replace`` it onto the final path and fsync the folder (so the
rename itself survives a power loss). At every instant the final path holds the old content or the new one,
never part of either. A temporary file is removed when the write fails; one left by a process that died
mid-write (``.NAME.tmp-PID-*``, PID no longer running) is removed by the next successful write of that path.

``read_json`` reads such a file back: one that is not a whole JSON object anyway (written by an older
version without fsync and torn by a crash, or edited by hand) is a ``NotWholeJson`` error naming the file
and what to do, never a bare ``JSONDecodeError`` traceback.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_INFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries, so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path, threads: int = 16) -> int:
    """fsync every file under ``folder``, then every folder, deepest first (their entries: the files' names),
    ``folder`` last; before renaming a folder written in full into place. The files' fsyncs run on ``threads``
    threads (fsync releases the GIL, and concurrent ones share the filesystem's journal commits). Returns the
    number of files. Costs: docs/agent.md (Export)."""
    files: list[str] = []
    folders: list[str] = []
    for root, _, names in os.walk(folder):
        folders.append(root)
        files.extend(os.path.join(root, n) for n in names)
    if len(files) > 1 and threads > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(files)), thread_name_prefix="fsync") as pool:
            list(pool.map(fsync_path, files))
    else:
        for name in files:
            fsync_path(Path(name))
    for root in reversed(folders):  # os.walk lists a folder before its subfolders
        fsync_path(Path(root))
    return len(files)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a process this process can see (signal 0). Only a hint: a process in another pid
    namespace is invisible, and a dead process's pid may be reused. Also agent.web.server's local socket
    folders and agent.backup's leftovers."""
    if pid <= 0:  # 0 and negatives name process groups: kill() would answer for the group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError, OSError):  # no pid at all (beyond a C pid_t), or another refusal
        return False
    return True


def temp_name(path: Path) -> Path:
    """A fresh temporary path beside ``path``: ``.NAME.tmp-PID-HEX`` (hidden, and naming its writer)."""
    return path.with_name(f".{path.name}{TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _sweep_dead(path: Path) -> None:
    """Remove the temporary files of ``path`` left by writers that died mid-write (their pid is gone); those
    of live processes may be being written now and are left alone."""
    prefix = f".{path.name}{TMP_INFIX}"
    try:
        entries = list(path.parent.glob(f"{prefix}*"))
    except OSError:
        return
    for tmp in entries:
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path, text: bool = False, encoding: str = "utf-8",
                newline: str | None = None, mode: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (binary, or text with ``encoding``/``newline``);
    when the ``with`` block ends without an exception it is fsynced and renamed onto ``path`` and the folder
    fsynced. On an exception (in the block, the fsync or the rename) the temporary file is removed and
    ``path`` keeps its old content (or stays absent).

    ``mode`` (permission bits, e.g. 0o600 for an owner-only file): the temporary file is created with it and
    then set to exactly it (the umask only narrows at creation; ``chmod`` makes the result what was asked),
    both before anything is written or renamed, so ``path`` never exists with wider permissions. None: the
    usual 0o666 less the umask."""
    tmp = temp_name(path)

    def opener(name: str, flags: int) -> int:
        fd = os.open(name, flags, 0o666 if mode is None else mode)
        if mode is not None:
            os.fchmod(fd, mode)
        return fd

    try:
        with (open(tmp, "w", encoding=encoding, newline=newline, opener=opener) if text
              else open(tmp, "wb", opener=opener)) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    _sweep_dead(path)


def write_atomic(path: Path, data: bytes | str, encoding: str = "utf-8", mode: int | None = None) -> None:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` crash-safely (``atomic_file``, ``mode``
    its permission bits)."""
    with atomic_file(path, mode=mode) as f:
        f.write(data.encode(encoding) if isinstance(data, str) else data)


class NotWholeJson(ValueError):
    """A file that should hold a whole JSON object and does not; the message names it and says what to do."""


def read_json_value(path: Path, fix: str) -> Any:
    """The JSON value in ``path`` (UTF-8), of any type. Not valid JSON: ``NotWholeJson`` whose message names
    ``path`` and ends with ``fix``. A missing or unreadable file raises the usual OSError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        where = f"line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise NotWholeJson(f"{path} is not valid JSON ({where}: torn by a crash, or edited by hand?); "
                           f"{fix}") from None


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``read_json_value``). Not valid JSON, or valid but not an object:
    ``NotWholeJson`` whose message names ``path`` and ends with ``fix`` (what the user should do, e.g. "delete
    it to re-run that cell"). A missing or unreadable file raises the usual OSError."""
    obj = read_json_value(path, fix)
    if not isinstance(obj, dict):
        kind = ("an array" if isinstance(obj, list) else "a string" if isinstance(obj, str)
                else "null" if obj is None else json.dumps(obj))  # numbers, true / false: the value itself
        raise NotWholeJson(f"{path} holds {kind}, not a JSON object (edited by hand?); {fix}")
    return obj
