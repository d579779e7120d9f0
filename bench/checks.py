"""Checks and notes every bench command shares: at least two classes, whether a pool's classes are
imbalanced (then balanced accuracy is the figure to judge by), and a lock on an output folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from shortlist.balance import IMBALANCE_RATIO, is_imbalanced
from shortlist.out_lock import OutLock as SharedOutLock

LOCK_FILE = "bench.lock"


def require_two_classes(classes: int, where: str) -> None:
    """Exit 2 with one ``error:`` line when ``where`` (a data set or labels file, as said) has fewer than 2
    classes: every accuracy would be 100% and every strategy equal, a benchmark that measures nothing."""
    if classes < 2:
        typer.echo(f"error: {where} has {classes} class{'es' if classes != 1 else ''}; a benchmark needs at least "
                   "2 (every accuracy would be 100%)", err=True)
        raise typer.Exit(2)


# The most numbers a generated bench pool may hold (rows x dimensions): 2**28 float32 values are 1 GiB, and the
# generators hold a few such arrays at once. The defaults are far below it (select-scale's 1,000,000 x 128 is half).
MAX_VALUES = 2**28
MAX_ROWS = MAX_VALUES  # typer max= of a rows option (--n): a number too large for numpy is exit 2, not OverflowError
MAX_DIM = 2**16  # typer max= of a --dim option


def training_stopped(signal_name: str, step: int, run_dir: Path, command: str) -> typer.Exit:
    """Exit 130 after one line saying that a signal (SIGINT, SIGTERM) stopped the training inside ``command``
    (``bench as3l``, ``bench recipe``) at ``step`` with a checkpoint in ``run_dir``, and that the same command
    resumes it (the training loop's own hint names `shortlist pretrain --resume`, which is not this command)."""
    typer.echo(f"interrupted: {signal_name}: training stopped at step {step}, checkpointed in {run_dir}; run the "
               f"same `shortlist {command}` command again to resume (what finished is reused)", err=True)
    return typer.Exit(130)


def require_fits(rows: int, dim: int, rows_flag: str = "--n", dim_flag: str = "--dim") -> None:
    """Exit 2 with one ``error:`` line when a generated ``rows`` x ``dim`` pool would hold more than MAX_VALUES
    numbers (it would fill the memory of a shared machine before the benchmark began)."""
    if rows * dim > MAX_VALUES:
        typer.echo(f"error: {rows_flag} {rows:,} x {dim_flag} {dim:,} is {rows * dim:,} numbers, more than the "
                   f"{MAX_VALUES:,} (1 GiB of float32) a bench pool may hold: give a smaller {rows_flag} or "
                   f"{dim_flag}", err=True)
        raise typer.Exit(2)


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


class OutLock(SharedOutLock):
    """The lock on ``<out>/bench.lock`` (shortlist.out_lock.OutLock, as training runs hold theirs) while a bench
    command (``command``, e.g. "bench cifar10") writes ``out``: a second run into the same folder would
    overwrite the first's cells, or (bench cifar10) start a second agent on its data folder. Exit 2 with one
    ``error:`` line naming the holder's pid when another process holds it (the holder may be another bench
    command, a `bench report` into a folder `bench cifar10` is writing, so the line names none), when ``out``
    is a file, or when it cannot be made or written."""

    def __init__(self, out: Path, command: str) -> None:
        super().__init__(out, LOCK_FILE, command, "`shortlist bench` run")
