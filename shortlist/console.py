"""What the CLI's commands share in how they talk to a person: the Rich console they make, the exit status
of a command stopped by Ctrl-C (agent, training and models commands)."""

from __future__ import annotations

import sys

from rich.console import Console

# Exit status of a command stopped by Ctrl-C / SIGTERM (the shell's 128 + SIGINT): what it did is said, and
# training runs are checkpointed, unfinished.
INTERRUPTED_EXIT = 130


def make_console(stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr) that keeps each message one line when that stream is not a terminal
    (a file, a pipe, a service manager's journal): Rich would wrap it at 80 columns there, and a log line cut in
    pieces is hard to grep (journald even stores each piece as a record of its own). Tables still fit the width."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=not stream.isatty())
