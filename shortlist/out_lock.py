"""``OutLock``: a CLI command's lock on its --out folder (shortlist.locks.FolderLock), with its refusals said
the same way by every command that holds one (the bench commands' ``bench.lock``, the training runs'
``run.lock``): one ``error:`` line on stderr and exit 2, a usage error (give the command another --out)."""

from __future__ import annotations

from pathlib import Path

import typer

from shortlist.locks import FolderLock, Locked

USAGE_EXIT = 2  # --out in use, a file, or not writable: the command's input is what to change


class OutLock:
    """The lock on ``<out>/<lock_name>`` while ``command`` (e.g. "bench cifar10", "shortlist pretrain") writes
    ``out``: a second run into the same folder would mix its files with the first's. Refused, in one line and
    exit 2, when another process holds it (naming the holder's pid and ``holder_kind``, e.g. "training run"),
    when ``out`` is a file (or lies under one), and when ``out`` cannot be made or written. ``release`` (or
    leaving the ``with``) removes the lock file, and the folder when the lock made it and nothing was written
    into it (the command refused its input): bad input leaves nothing behind."""

    def __init__(self, out: Path, lock_name: str, command: str, holder_kind: str) -> None:
        try:
            self._lock = FolderLock(out, lock_name)
        except Locked as e:
            _refuse(f"{out} is in use by another {holder_kind}{e.who}; wait for it to finish, or give this "
                    f"`{command}` its own --out")
        except (FileExistsError, NotADirectoryError):
            _refuse(f"--out {out} is a file (or lies under one): give `{command}` a folder to write its results into")
        except OSError as e:  # a folder that cannot be made or written (no such parent, read-only, permissions)
            _refuse(f"cannot use --out {out}: {e.strerror or e}; give `{command}` a folder it can write")

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> OutLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refuse(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USAGE_EXIT) from None
