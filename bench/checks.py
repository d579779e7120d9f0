"""Checks and notes every bench command shares: at least two classes, whether a pool's classes are
imbalanced (then balanced accuracy is the figure to judge by), and a lock on an output folder."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

import typer

# A pool whose largest class has more than this many times the rows of its smallest is "imbalanced": its
# plots show balanced accuracy (mean per-class recall), since plain accuracy there is mostly the largest
# class's recall and can rank strategies backwards (docs/benchmarks.md, "Imbalanced pools").
IMBALANCE_RATIO = 1.5
LOCK_FILE = "bench.lock"


def require_two_classes(classes: int, where: str) -> None:
    """Exit 2 with one ``error:`` line when ``where`` (a data set or labels file, as said) has fewer than 2
    classes: every accuracy would be 100% and every strategy equal, a benchmark that measures nothing."""
    if classes < 2:
        typer.echo(f"error: {where} has {classes} class{'es' if classes != 1 else ''}; a benchmark needs at least "
                   "2 (every accuracy would be 100%)", err=True)
        raise typer.Exit(2)


def is_imbalanced(counts: Sequence[int]) -> bool:
    """Whether per-class row ``counts`` are imbalanced: largest / smallest above ``IMBALANCE_RATIO`` (a class
    with 0 rows counts as imbalanced)."""
    present = [int(c) for c in counts]
    if len(present) < 2:
        return False
    return min(present) == 0 or max(present) / min(present) > IMBALANCE_RATIO


def class_counts_said(counts: Sequence[int], names: Sequence[str] | None = None) -> str:
    """"per class: cat 240, frog 10, ship 48" and, when imbalanced, the sentence saying which figure to
    judge by ("" when ``counts`` is empty, as in a results.json written before they were recorded)."""
    if not len(counts):
        return ""
    names = list(names) if names and len(names) == len(counts) else [str(i) for i in range(len(counts))]
    said = "pool per class: " + ", ".join(f"{n} {int(c)}" for n, c in zip(names, counts, strict=True))
    if is_imbalanced(counts):
        said += (f"; imbalanced (largest / smallest class {max(counts) / max(min(counts), 1):.1f}, above "
                 f"{IMBALANCE_RATIO}): judge by balanced accuracy (the plots show it), not plain accuracy, "
                 "which is mostly the largest class's recall")
    return said


class OutLock:
    """An exclusive ``flock`` on ``<out>/bench.lock`` while a bench command writes ``out`` (as the agent's
    DataDirLock holds its data folder): a second run into the same folder would overwrite the first's cells.
    The kernel drops it when the process ends in any way, so it is never stale. Exit 2 with one ``error:``
    line naming the holder's pid when another process holds it."""

    def __init__(self, out: Path, command: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f" (pid {holder})" if holder.isdigit() else ""
            typer.echo(f"error: {out} is in use by another `{command}` run{who}; wait for it to finish, or give "
                       "this run its own --out", err=True)
            raise typer.Exit(2) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> OutLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
