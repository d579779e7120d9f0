"""What the CLI's commands share in how they talk to a person: the Rich console they make, the exit status
of a command stopped by Ctrl-C (agent, training and models commands)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

import typer
from rich.console import Console
from typer.core import TyperGroup

# Exit status of a command stopped by Ctrl-C / SIGTERM (the shell's 128 + SIGINT): what it did is said, and
# training runs are checkpointed, unfinished.
INTERRUPTED_EXIT = 130


def make_console(stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr) that keeps each message one line when that stream is not a terminal
    (a file, a pipe, a service manager's journal): Rich would wrap it at 80 columns there, and a log line cut in
    pieces is hard to grep (journald even stores each piece as a record of its own). Tables still fit the width."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=not stream.isatty())


class _Watched:
    """A text stream (sys.stdout / sys.stderr while a command runs) that passes every write on, noting that
    something was written and (``keep``) what."""

    def __init__(self, stream: TextIO, keep: bool) -> None:
        self.stream = stream
        self.written = False
        self.kept: list[str] | None = [] if keep else None

    def write(self, text: str) -> int:
        self.written = self.written or bool(text)
        if self.kept is not None:
            self.kept.append(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, fileno, ...: the stream's
        return getattr(self.stream, name)


def json_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` (a CLI command with an ``as_json`` parameter) such that with --json a failure still leaves
    a JSON object on stdout: when it ends with a non-zero exit status and has printed nothing on stdout,
    ``{"error": MESSAGE}`` is printed there, MESSAGE being what it said on stderr (its error, after any
    warnings). A usage error (exit 2) is said by ``JsonErrorsGroup``, also when found before the command runs.
    The messages still go to stderr, and the exit status is the
    command's (docs/agent.md, "Exit status"). A command that prints its own JSON on a failure (a reply with
    every item rejected, an interrupted ingest) is left as it is."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("as_json"):
            return command(*args, **kwargs)
        out, err = _Watched(sys.stdout, keep=False), _Watched(sys.stderr, keep=True)
        sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
        code, message = 1, ""
        try:
            result = command(*args, **kwargs)
            code = 0
            return result
        except typer.Exit as e:
            code = e.exit_code
            raise
        except typer.TyperException:  # a usage error raised by the command: JsonErrorsGroup says it
            code = 0
            raise
        except KeyboardInterrupt:
            code, message = INTERRUPTED_EXIT, "interrupted (Ctrl-C)"
            raise
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            raise
        except Exception as e:  # a defect: its traceback follows on stderr
            message = f"{type(e).__name__}: {e}"
            raise
        finally:
            sys.stdout, sys.stderr = out.stream, err.stream
            if code and not out.written:
                said = message or "".join(err.kept or ()).strip() or f"exit status {code}"
                print(json.dumps({"error": said}), flush=True)

    return wrapper


class JsonErrorsGroup(TyperGroup):
    """The ``shortlist`` command group: a usage error (a bad option value, a missing file, an unknown option:
    exit 2) of a command run with --json also prints ``{"error": MESSAGE}`` on stdout (``json_errors``' rule),
    whether typer found it while parsing the options or the command raised it."""

    def invoke(self, ctx: Any) -> Any:
        given = [*getattr(ctx, "protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except typer.TyperException as e:
            if "--json" in given and hasattr(e, "format_message"):
                print(json.dumps({"error": e.format_message()}), flush=True)
            raise
