"""The ``shortlist`` executable's entry point (pyproject.toml ``[project.scripts]``), kept apart from
shortlist/cli.py so that it imports nothing heavy: importing the app (typer, rich, grpc, numpy, every
command's module) takes seconds, and a Ctrl-C in them printed a KeyboardInterrupt traceback through whatever
module was loading. Here it is one line and the shell's status for Ctrl-C. ``python -m shortlist.cli`` runs
the same app without this guard."""

from __future__ import annotations

import sys

INTERRUPTED_EXIT = 130  # shortlist.console's, not imported from there: that imports rich


def main() -> None:
    try:
        from shortlist.cli import main as run
    except KeyboardInterrupt:  # Ctrl-C while Python imports the commands: nothing has been done yet
        sys.stderr.write("interrupted\n")
        raise SystemExit(INTERRUPTED_EXIT) from None
    run()
