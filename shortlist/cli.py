"""The one ``shortlist`` command. Each part of the system registers its own commands here:

- agent/cli.py: serve, ingest, select, label, prior, status, models, bench agent (no torch imported)
- training/cli.py: pretrain, finetune, export, cycle (torch imported inside the commands)
- bench/cli.py: bench cifar10, bench strategies, bench load, bench report
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import typer

from shortlist.console import JsonErrorsGroup

# gRPC's C core logs each failed TLS handshake (a plaintext client, an untrusted CA) as an "I1206 ..." line
# without the peer's address, on the agent's log and before a client's own one-line explanation: errors
# only, unless the user asks for more (GRPC_VERBOSITY=INFO / DEBUG). Before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False, cls=JsonErrorsGroup,
                  help="Shortlist: which images to label next, and what the rest probably are.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: commands that print figures.")
app.add_typer(bench_app, name="bench")


def _print_version(value: bool) -> None:
    if not value:
        return
    from shortlist.version import version_text

    try:  # the data folder schema this agent reads and writes (agent/state.py), when the agent is installed
        from agent.state import SCHEMA_VERSION

        schema: int | None = SCHEMA_VERSION
    except ModuleNotFoundError:
        schema = None
    typer.echo(version_text(schema))
    raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="print the version (and git commit, schema version) and exit")) -> None:
    pass


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@bench_app.callback()
def _bench() -> None:
    # SIGTERM (`timeout`, `kill`, a scheduler's stop) ends a benchmark as Ctrl-C does: its cleanup runs (the
    # agent it started is stopped, finished cells are kept and said). Python's default for SIGTERM ends the
    # process without running any `finally`, which left the benchmark's `shortlist serve` running, holding its
    # data folder. A training loop inside a benchmark installs its own handler (checkpoint, then stop) and
    # puts this one back after.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def _register() -> None:
    import importlib

    for module in ("agent.cli", "training.cli", "bench.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a part not written yet; torch missing: main() says so
            if e.name != module:
                raise
            continue
        mod.register(app, bench_app)


_register()


def _json_errors_everywhere(typer_app: typer.Typer) -> None:
    """Every command with --json (its ``as_json`` parameter), in ``typer_app`` and its groups, wrapped by
    ``json_errors``: one rule for what --json prints when a command fails, kept in one place."""
    import inspect

    from shortlist.console import json_errors

    for info in typer_app.registered_commands:
        if info.callback is not None and "as_json" in inspect.signature(info.callback).parameters:
            info.callback = json_errors(info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _json_errors_everywhere(group.typer_instance)


_json_errors_everywhere(app)

# What the training commands import and an agent-only install (requirements.txt alone) lacks.
TRAINING_MODULES = frozenset({"torch", "torchvision", "onnxscript"})


def main() -> None:
    """The ``shortlist`` executable: ``app``, and a command that needs the training dependencies where they
    are not installed says so in one line (exit 2) instead of a traceback."""
    import sys

    try:
        app()
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        command = " ".join(a for a in sys.argv[1:3] if not a.startswith("-"))
        typer.echo(f"error: `shortlist {command}` needs {e.name}, which this installation lacks (an agent-only "
                   "install from requirements.txt): install the training requirements (pip install -r "
                   "requirements-train.txt) or run it where they are installed", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
