"""The agent's commands: ``shortlist serve | ingest | select | label | prior | status | export-labels | backup |
restore | check`` and
``shortlist bench agent``. No torch: these run with onnxruntime alone."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from agent import client, exports
from agent.cli_options import (
    INT32_MAX,
    INT64_MAX,
    UINT64_MAX,
    AgentTarget,
    WebAllowedHostsOpt,
    WebMaxBodyMbOpt,
    agent_options,
    host_list,
    labelstudio_options,
    limits_options,
    work_options,
)
from agent.client import calibration_dict, calibration_line, ranked
from agent.config import AUDIT_MIN_LABELS, AgentConfig, WorkConfig
from agent.errors import code_name, quoted
from agent.labels_csv import LabelFileError, Provenance, read_labels_csv
from agent.limits import MIB, Limits, annotator_name, class_name_problem
from agent.progress import LabelTally, audit_dict
from agent.web.config import LabelStudioConfig
from shortlist.console import INTERRUPTED_EXIT, make_console
from shortlist.datasets import sources_said
from shortlist.options import finite
from shortlist.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:  # annotations only: the commands import these where they use them, so the others start without
    from agent.backup import BackupSummary
    from agent.service import Agent
    from agent.web.config import WebConfig
    from agent.web.server import LocalSocket, WebServer

SERVE = AgentConfig(Path(), Path())  # serve's defaults (--host, --port, ...), defined once: AgentConfig's

JsonOpt = typer.Option(False, "--json", help="machine-readable output on stdout")
AnnotatorOpt = typer.Option(os.environ.get("USER", "cli"), "--annotator")  # label and retract-labels
# The deadline of the CLI's heavy calls (Select, PriorLabels): the agent's admission refuses at once, with its
# estimate, a call it expects not to finish in time (docs/agent.md, "Heavy work"); without a deadline every call
# is admitted and may run for many minutes with no word. The web app's value (WebConfig.select_timeout_s): the
# longest heavy call measured on the largest pool tried still fits it with the agent's margin, and a call
# expected to take longer is refused at once with its estimate and "--timeout N" instead of leaving its user
# waiting (docs/agent.md, the paragraph on `--timeout` under "The agent: service, API and CLI", has the
# figures and the machine).
HEAVY_TIMEOUT_S = 600.0
# `shortlist prior`'s table shows this many rows by default (the rest counted): a table of a 300,000-sample
# pool is read by no one, and building it took minutes and much memory (docs/agent.md, the paragraph on
# `shortlist prior` reading the reply as it streams).
PRIOR_TABLE_ROWS = 50
# The largest --timeout: gRPC turns a call's timeout into an absolute deadline in nanoseconds since 1970 held
# in an int64, so a deadline past 2**63 ns (the year 2262) overflows and the call fails at once with
# DEADLINE_EXCEEDED (measured with grpcio 1.85: a timeout of 7.4e9 s worked in 2026, 7.5e9 s failed). 1e9 s
# (31 years) stays far below that; a larger value or inf is a usage error (as nan: typer's range check refuses
# it), and 0 is "no deadline".
MAX_TIMEOUT_S = 1e9
TimeoutOpt = typer.Option(HEAVY_TIMEOUT_S, "--timeout", envvar="SHORTLIST_TIMEOUT", min=0.0, max=MAX_TIMEOUT_S,
                          help="seconds the agent has to answer this heavy call; a call it expects to take longer "
                               "is refused at once with its estimate; 0 = no deadline (wait as long as it takes)")


def _source_opt(how: str) -> Any:
    """``label``'s and ``retract-labels``' --source, its help starting with ``how`` (the command's examples)."""
    return typer.Option("manual", "--source", help=f"{how} (lower-case letters, digits, ':_.-')")


console = make_console(stderr=True)


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # serve's and web's logging.basicConfig
_LOG_FORMATTER = logging.Formatter(_LOG_FORMAT)


def _say(message: str, level: int = logging.INFO) -> None:
    """One of ``serve``'s and ``web``'s status lines (where it listens, its security, warnings, "cannot start",
    "stopping (SIGTERM)"): on a terminal as the console writes it (Rich markup; a warning or an error prefixed
    with its word); else (a log file, a service manager's journal) through logging, with the timestamp and
    level of every other line of the log (formatted as they are), the markup removed."""
    if console.is_terminal:
        word = {logging.WARNING: "[yellow]warning[/yellow]: ", logging.ERROR: "[red]cannot start[/red]: "}
        console.print(word.get(level, "") + message, highlight=False)
    else:  # formatted as the log's other lines (_LOG_FORMAT), on the same stream as on a terminal
        from rich.text import Text

        text = ("cannot start: " if level == logging.ERROR else "") + Text.from_markup(message).plain
        record = logging.LogRecord("agent.cli", level, __file__, 0, text, None, None)
        console.print(_LOG_FORMATTER.format(record), markup=False, highlight=False, soft_wrap=True)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {quoted(it)} must look like key=value")
        out[key] = value
    return out


def _progress() -> Progress:
    """A progress bar on stderr while it is a terminal; none into a file or a pipe, where Rich draws nothing
    but would still end with a blank line (`shortlist ingest data 2> log` got one)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)




@contextlib.contextmanager
def _ctrl_c_stops(stop: threading.Event, doing: str, done: threading.Event | None = None,
                  done_says: str = "") -> Iterator[None]:
    """Within the block, the first Ctrl-C (SIGINT) sets ``stop`` and says ``doing`` (what the command still
    does before it stops) instead of raising KeyboardInterrupt, so a command made of durable requests stops
    between two of them and can say what was stored (client.Interrupted); a second Ctrl-C raises
    KeyboardInterrupt at once. Once ``done`` is set (everything was sent: nothing is left to stop, the
    command ends as if no Ctrl-C came) the first Ctrl-C says ``done_says`` instead. Outside the main thread,
    where no handler can be set, Ctrl-C is left alone."""

    def handler(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if done is not None and done.is_set():
            console.print(f"Ctrl-C: {done_says}; Ctrl-C again to quit at once", highlight=False)
            return
        console.print(f"stopping (Ctrl-C): {doing}; Ctrl-C again to quit at once", highlight=False)

    previous: Any = None
    installed = False
    with contextlib.suppress(ValueError):  # not the main thread
        previous = signal.signal(signal.SIGINT, handler)
        installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


def _unconfirmed_note(e: client.Interrupted, what: str) -> str:
    """The part of an interruption's message about items sent without an answer ("" when there are none)."""
    if not e.unconfirmed:
        return ""
    return (f"; {e.unconfirmed} {what} were sent without an answer (the agent may have stored them: it keeps "
            "every request it committed)")


# Codes after which the same call may work when made again (the agent was away, busy or interrupted).
TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL",
                       "UNKNOWN"})


def _heavy_note(timeout: float | None) -> Callable[[str, str], str]:
    """What to add to the message of a heavy call (``--timeout`` ``timeout``, None: none) that failed for its
    deadline: how to give it more time, with the deadline the agent said it needs when it said one."""
    def note(name: str, detail: str) -> str:
        if timeout is None:
            return ""
        if name == "DEADLINE_EXCEEDED":
            return f" (the call had --timeout {timeout:g} s: give it a longer --timeout, or 0 for no deadline)"
        needed = re.search(r"needs a deadline of at least ([0-9]+) s", detail)
        if name == "RESOURCE_EXHAUSTED" and needed:
            return (f" (the call had --timeout {timeout:g} s: rerun with --timeout {needed.group(1)} or more, "
                    "or 0 for no deadline)")
        return ""
    return note


def _timeout(seconds: float) -> float | None:
    return seconds if seconds > 0 else None


def _rpc(fn: Any, after: str = "", after_codes: frozenset[str] | None = None,
         note: Callable[[str, str], str] | None = None, interrupted: str = "") -> Any:
    """Run an RPC; print the agent's message (and ``after``, what the user should know then, when the error's
    code is in ``after_codes``, default any) and exit 1 on a gRPC error instead of a traceback. Ctrl-C: one
    line, "interrupted" and ``interrupted`` (a write's: what the agent may have done), exit 130; a
    client.Interrupted (a call made of durable requests, which knows what was stored) goes to the caller."""
    try:
        return fn()
    except client.Interrupted:
        raise
    except KeyboardInterrupt:
        console.print(f"[red]interrupted[/red] (Ctrl-C){interrupted}", highlight=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except grpc.RpcError as e:
        name, detail = e.code().name, e.details() or ""
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            detail = _older_agent(detail)
        elif e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in detail:
            # gRPC's own message-size check (the agent's limits say in their message what to do)
            detail = (f"{detail} (send smaller requests: lower --batch-mb below the agent's limit, or start "
                      "the agent with a larger `shortlist serve --max-message-mb`)")
        else:  # a busy refusal also says the agent's retry hint and how long the client retried
            detail = client.detail(e) or ""
    except client.AgentUnavailable as e:
        name, detail = "UNAVAILABLE", str(e)
    if note is not None:
        detail += note(name, detail)
    # one line (soft_wrap): a script's log keeps it whole, and the estimate and the flag to change stay together
    console.print(f"[red]{name}[/red]: {escape(detail)}", highlight=False, soft_wrap=True)
    if after and (after_codes is None or name in after_codes):
        console.print(after, highlight=False)
    raise typer.Exit(1) from None


def _older_agent(detail: str, what: str = "") -> str:
    """UNIMPLEMENTED's message: gRPC's "Method not found!" from an agent older than this client, said as such,
    with the RPC it lacks and the agent's version when its GetStatus reports one. ``what``: a part of an RPC
    it lacks instead (``detail``: how that showed)."""
    from shortlist.version import package_version

    call = client.last_call()
    method, ch = call if call is not None else ("this call", None)
    version = ""
    if ch is not None:
        try:
            s = agent_pb2_grpc.AgentStub(ch).GetStatus(agent_pb2.GetStatusRequest(), timeout=10)
            version = (f" (the agent is shortlist {s.agent_version}, this client {package_version()})"
                       if s.agent_version else " (it does not report its version: older than version reporting)")
        except grpc.RpcError:
            pass
    lacks = f"{what} ({detail})" if what else f"{method} (gRPC: {detail})"
    return (f"the agent does not offer {lacks}: it is older than this client{version}; "
            "upgrade the agent (docs/agent.md, \"Upgrading\")")


class RegistryHelp(TyperCommand):
    """A command whose ``--help`` lists the names of a registry for each option that takes them (``lists``:
    (option's parameter name, "module:NAME") pairs). The registries are imported only when help is shown
    (importing the strategies pulls scikit-learn: seconds). The names go below the options, across the whole
    width, not in the option's help column: that column is a third of the width, and rich cut a name longer
    than it with an ellipsis (``farthest_from_labelled_…``); here a line breaks only between names."""

    lists: tuple[tuple[str, str], ...] = ()

    def format_help(self, ctx: Any, formatter: Any) -> None:
        import importlib

        said = []
        for option, registry in self.lists:
            module, name = registry.split(":")
            names = ", ".join(sorted(getattr(importlib.import_module(module), name)))
            for param in self.params:
                if param.name == option and hasattr(param, "help"):
                    flag = max(getattr(param, "opts", [option]), key=len)
                    base = (param.help or "").split(" (names below)")[0]
                    param.help = f"{base} (names below)"
                    said.append(f"{flag}: one of: {names} (see docs/strategies.md)")
        self.epilog = "\n\n".join(said)  # (typer: a blank line is a line break, and it adds no markup)
        super().format_help(ctx, formatter)


class _StrategyHelp(RegistryHelp):
    lists = (("strategy", "agent.strategies:STRATEGIES"),)


class _PriorHelp(RegistryHelp):
    lists = (("method", "agent.priors:PRIOR_METHODS"),)


def _status_dict(s: agent_pb2.Status) -> dict[str, Any]:
    return {"samples": s.samples, "labeled": s.labeled, "embedded": s.embedded, "model_version": s.model_version,
            "pending_model_version": s.pending_model_version, "pending_embedded": s.pending_embedded,
            "pending_embed_rate": round(s.pending_embed_rate, 1),
            "classes": list(s.classes), "classes_open": s.classes_open, "strategies": list(s.strategies),
            "prior_methods": list(s.prior_methods), "warnings": list(s.warnings), "audit": audit_dict(s.audit),
            "agent_version": s.agent_version, "agent_commit": s.agent_commit, "schema_version": s.schema_version,
            "label_events": s.label_events, "samples_deleted": s.samples_deleted}


def pending_line(s: agent_pb2.Status) -> str:
    """How far the pending version's embedding is: rows of the pool, and at its rate how long it has left (on
    a large pool a model swap takes minutes, and the count alone said nothing of when it would end;
    docs/agent.md, GetStatus's ``pending_embed_rate``)."""
    line = f"{s.pending_embedded:,} of {s.samples:,} samples"
    if s.pending_embed_rate > 0:
        left = max(0, s.samples - s.pending_embedded) / s.pending_embed_rate
        when = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
        line += f" ({s.pending_embed_rate:,.0f}/s, about {when} left)"
    return line


def schema_line(found: int) -> str:
    """``check``'s line on the folder's schema version against this shortlist's (docs/agent.md, "Upgrading")."""
    from agent.state import SCHEMA_VERSION

    if found == SCHEMA_VERSION:
        return f"schema version {found} (this shortlist's)"
    if found < SCHEMA_VERSION:
        return (f"schema version {found}: this shortlist's agent migrates it to {SCHEMA_VERSION} at its first start "
                "on it, for good (an older agent then refuses the folder): back it up first (shortlist backup; "
                "docs/agent.md, \"Upgrading\")")
    return (f"schema version {found}: written by a newer shortlist (this one reads up to {SCHEMA_VERSION}); "
            "upgrade shortlist to serve it")


def version_line(s: agent_pb2.Status) -> str:
    """``shortlist status``'s line on which agent answers (an agent older than version reporting leaves it empty)."""
    if not s.agent_version:
        return "agent: version not reported (an agent older than version reporting; `shortlist --version` on its " \
               "machine says which)"
    commit = f" (commit {s.agent_commit})" if s.agent_commit else ""
    return f"agent: shortlist {s.agent_version}{commit}, data folder schema version {s.schema_version}"


def json_line(obj: Any) -> str:
    """``obj`` as one line of strict JSON (``client.finite``: e.g. the score +inf of a strategy's first pick,
    chosen before any distance exists, prints as null)."""
    return json.dumps(client.finite(obj), allow_nan=False)


def audit_lines(a: agent_pb2.PriorAudit) -> list[str]:
    """GetStatus's audit for people: one line per prior method, accuracy with its interval."""
    if a.drawn == 0:
        # the two numbers a team meets: AUDIT_MIN_LABELS audit labels for the temperature (the calibration
        # warning's), 50 for an accuracy interval of about +-14 points (95% Wilson, p = 0.5)
        return ["audit: none drawn (`shortlist select --strategy audit --budget 50`, then label those samples: "
                f"{AUDIT_MIN_LABELS} calibrate the priors' confidences, 50 measure their accuracy to about ±14 "
                "points)"]
    head = f"audit: {a.labelled} of {a.drawn} drawn samples labelled"
    if a.left_out:  # PriorAudit.left_out: scored, an accepted prior would measure the prior against itself
        head += (f" and scored, {a.left_out} more labelled by accepting a prior (source prior:*, left out: a prior "
                 "is not scored against its own answer)")
    if a.model_version:
        head += f", priors under {a.model_version}"
    if not a.current and a.labelled:
        # "the last estimate" only when there is one: the first computation has none to show
        head += " (recomputing; showing the last estimate)" if a.methods else " (computing; no estimate yet)"
    out = [head]
    if a.error:
        out.append(f"  {a.error}")
    level = f"{a.confidence_level:.0%} {a.interval_method}"
    for m in a.methods:
        if m.error or not m.HasField("overall"):
            out.append(f"  {m.method}: {m.error}")
            continue
        o = m.overall
        out.append(f"  {m.method}: {o.accuracy:.1%} right ({o.correct}/{o.total}; {level} interval {o.low:.1%}-"
                   f"{o.high:.1%}; mean confidence {m.mean_confidence:.1%})")
        for c in m.per_class:
            ca = c.accuracy
            out.append(f"    {c.class_name}: {ca.accuracy:.1%} ({ca.correct}/{ca.total}; {ca.low:.1%}-{ca.high:.1%})")
    return out


@labelstudio_options
@limits_options
@work_options
def serve(labelstudio: LabelStudioConfig, *,
          data_dir: Path = typer.Option(..., "--data-dir", help="agent state folder (created if missing)"),
          models: Path = typer.Option(..., "--models", help="model registry folder (vNNNN/ versions)"),
          host: str = typer.Option(SERVE.host, "--host", help="address to listen on (0.0.0.0: every interface; "
                                   "anything but loopback needs TLS and tokens, or --insecure)"),
          port: int = typer.Option(SERVE.port, "--port", min=0, max=65535, help="gRPC port (0: any free port, "
                                   "printed at start)"),
          classes: str = typer.Option("", "--classes", help="closed class list a,b,c (default: open)"),
          no_blobs: bool = typer.Option(False, "--no-blobs", help="do not keep payloads (no re-embedding, "
                                        "no ListSamples payloads)"),
          poll: float = typer.Option(SERVE.poll_s, "--poll", min=0.05, callback=finite,
                                     help="seconds between registry checks"),
          batch_size: int = typer.Option(SERVE.batch_size, "--batch-size", min=1, help="images per onnxruntime call"),
          limits: Limits,
          min_free_mb: float = typer.Option(SERVE.min_free_bytes / MIB, "--min-free-mb", min=0, callback=finite,
                                            help="GetStatus warns when the data folder has less free space"),
          cpu: bool = typer.Option(False, "--cpu", help="never try CUDAExecutionProvider"),
          state_check: str = typer.Option(SERVE.state_check, "--state-check",
                                          help="what is verified of state.sqlite before serving it: full (SQLite's "
                                               "integrity_check; its cost: docs/agent.md), quick "
                                               "(quick_check: misses rows missing from an index, the usual damage of "
                                               "a plain copy of a live folder) or none"),
          tls_cert: Path | None = typer.Option(None, "--tls-cert", dir_okay=False,
                                               help="serve TLS with this certificate (PEM; with --tls-key)"),
          tls_key: Path | None = typer.Option(None, "--tls-key", dir_okay=False, help="the private key of --tls-cert"),
          tls_client_ca: Path | None = typer.Option(None, "--tls-client-ca", dir_okay=False,
                                                    help="mutual TLS: require client certificates signed by this CA"),
          tokens: Path | None = typer.Option(None, "--tokens", dir_okay=False,
                                             help="require bearer tokens: a file of `role:token` lines, role read "
                                                  "or write (re-read when it changes)"),
          insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback --host without TLS and "
                                        "tokens: anyone who reaches the port can read and change the data"),
          work: WorkConfig,
          web_port: int | None = typer.Option(None, "--web-port", min=0, max=65535, show_default=False,
                                              help="also serve the labelling web app on this port (docs/app.md)"),
          web_host: str = typer.Option("127.0.0.1", "--web-host", help="address of the web app (anything but "
                                       "loopback needs --tls-cert/--tls-key and --tokens, or --insecure)"),
          web_allowed_hosts: str = WebAllowedHostsOpt, web_max_body_mb: float = WebMaxBodyMbOpt) -> None:
    """Run the agent until SIGTERM/SIGINT/SIGHUP (then finish in-flight calls, snapshot the index, exit)."""
    from agent.core import DataFolderError, start_disk_full
    from agent.security import ServerSecurity
    from agent.service import create_server, stop_server
    from agent.state import ClassListError, SchemaVersionError, StateCorruptError, corrupt_message, is_corruption

    _prepare_process()
    closed = _checked_classes(state_check, classes)
    try:
        security = ServerSecurity(tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, tokens=tokens,
                                  insecure=insecure)
        config = AgentConfig(data_dir, models, host=host, port=port, classes=closed, blobs=not no_blobs,
                             poll_s=poll, batch_size=batch_size, use_cuda=not cpu, limits=limits, security=security,
                             min_free_bytes=int(min_free_mb * MIB), state_check=state_check, work=work)
        web_config = None if web_port is None else _web_config(config, labelstudio, web_host, web_port,
                                                               web_allowed_hosts, web_max_body_mb)
        if web_port is None and labelstudio != LabelStudioConfig():
            _say("the --labelstudio-* options (or SHORTLIST_LABELSTUDIO_* variables) set here have no effect "
                 "without --web-port: the Label Studio backend is part of the web app", logging.WARNING)
        _probe_ports(config, web_config)
        local = None
        if web_config is not None:
            from agent.web.server import LocalSocket

            local = LocalSocket()
        # Installed before the server starts and armed just before it answers (on_listening): a signal from then
        # on stops it gracefully; one while it is still starting ends the start as before.
        signals = _Signals(armed=False)
        server, bound, agent = create_server(config, local_socket=None if local is None else local.path,
                                             on_listening=signals.arm)
    except (ClassListError, SchemaVersionError, StateCorruptError, OSError,
            ValueError) as e:  # SecurityError is a ValueError
        full = None if isinstance(e, DataFolderError) else start_disk_full(data_dir, e, int(min_free_mb * MIB))
        _say(escape(full or str(e)), logging.ERROR)
        raise typer.Exit(2) from None
    except sqlite3.DatabaseError as e:  # damage found past State's own reads (e.g. with --state-check none)
        why = (corrupt_message(data_dir / "state.sqlite", str(e)) if is_corruption(e)
               else start_disk_full(data_dir, e, int(min_free_mb * MIB))
               or f"{data_dir / 'state.sqlite'} cannot be used (SQLite: {e})")
        _say(escape(why), logging.ERROR)
        raise typer.Exit(2) from None
    web = None
    if web_config is not None and local is not None:
        web = _start_web(web_config, local, f"{host}:{bound}", lambda: stop_server(server, agent))
    _print_banner(config, agent, bound, web)
    _serve_until_signal(signals, lambda: stop_server(server, agent), web, local)


def _prepare_process() -> None:
    """``shortlist serve``'s process-wide settings, before any thread of the agent starts."""
    from agent.fds import raise_open_files_limit, throttle_accept_failures
    from agent.memory import tune_malloc
    from agent.threads import one_blas_thread_per_call

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    throttle_accept_failures()  # asyncio's (the web app's) line per failed accept: one every 10 s
    raise_open_files_limit()  # connections and files share it (agent/fds.py); logged
    os.umask(0o077)  # whatever the agent or a library creates is readable by its user only
    tune_malloc()  # before the gRPC threads start: two malloc arenas, large blocks returned when freed
    one_blas_thread_per_call()  # the agent's parallelism is across requests (agent/threads.py)


def _checked_classes(state_check: str, classes: str) -> tuple[str, ...] | None:
    """``--classes`` as a closed class list (None: open), after checking it and ``--state-check``; a usage
    error (typer.BadParameter, exit 2) names the option at fault."""
    from agent.config import class_list
    from agent.state import STATE_CHECKS

    if state_check not in STATE_CHECKS:
        raise typer.BadParameter(f"{quoted(state_check)} is not one of {', '.join(STATE_CHECKS)}",
                                 param_hint="'--state-check'")
    closed = class_list(classes)
    for i, name in enumerate(closed or ()):
        if problem := class_name_problem(name, "class", (closed or ())[:i]):
            raise typer.BadParameter(problem, param_hint="'--classes'")
    return closed


def _web_config(config: AgentConfig, labelstudio: LabelStudioConfig, web_host: str, web_port: int,
                web_allowed_hosts: str, web_max_body_mb: float) -> WebConfig:
    """The web app's settings for ``serve --web-port`` (its TLS files and ``--insecure`` are the agent's,
    ``config.security``), after checking they can work together; its warnings are printed. ValueError
    (SecurityError is one) when they cannot."""
    from agent.security import SecurityError
    from agent.web.config import WebConfig
    from agent.web.server import check_listen

    sec = config.security
    if sec.tls_client_ca is not None and sec.tokens is None:
        raise SecurityError("--web-port with --tls-client-ca needs --tokens too: browsers have no client "
                            "certificate, so the web app lets people in by token (they sign in with one)")
    web_config = WebConfig(host=web_host, port=web_port, agent=f"{config.host}:{config.port}",
                           https_cert=sec.tls_cert, https_key=sec.tls_key, insecure=sec.insecure,
                           labelstudio=labelstudio, allowed_hosts=host_list(web_allowed_hosts),
                           max_body_bytes=round(web_max_body_mb * MIB), tokens_required=sec.tokens is not None)
    from agent.priors import PRIOR_METHODS
    from agent.strategies import STRATEGIES

    problem = labelstudio.problem(STRATEGIES, PRIOR_METHODS)
    if problem:
        raise ValueError(problem)
    for w in check_listen(web_config, sec.tokens is not None, "--tls-cert FILE --tls-key FILE",
                          "tokens (--tokens FILE)", host_flag="--web-host"):
        _say(f"web app: {escape(w)}", logging.WARNING)
    return web_config


def _probe_ports(config: AgentConfig, web_config: WebConfig | None) -> None:
    """OSError when the agent's port (or the web app's) cannot be listened on. Checked before the data folder
    is opened: a refused start leaves nothing behind (a new folder was created and set up) and gRPC logs no
    error line of its own. A probe: the servers bind again."""
    from agent.security import listen_socket

    listen_socket(config.host, config.port, "the agent", "--port or --host").close()
    if web_config is not None:
        listen_socket(web_config.host, web_config.port, "the web app", "--web-port or --web-host").close()


def _start_web(web_config: WebConfig, local: LocalSocket, agent_address: str,
               stop_agent: Callable[[], None]) -> WebServer:
    """The started web app, talking to the agent through ``local`` (and naming it ``agent_address``, the
    port it bound); when it cannot start, the agent is stopped, the socket folder removed, and the command
    exits 2."""
    from dataclasses import replace

    from agent.web.app import create_app
    from agent.web.server import WebServer

    web_config = replace(web_config, agent=agent_address)
    try:
        return WebServer(create_app(web_config, local.factory()), web_config).start()
    except OSError as e:
        _say(escape(str(e)), logging.ERROR)
        stop_agent()
        local.cleanup()
        raise typer.Exit(2) from None


def _print_banner(config: AgentConfig, agent: Agent, bound: int, web: WebServer | None) -> None:
    """What ``serve`` says once it serves: where, what it holds, how it is secured, its warnings."""
    from agent.security import is_loopback

    st = agent.status()
    provider = agent.manager.current.embedder.provider if agent.manager.current else "none"
    _say(escape(f"agent on {config.host}:{bound}: {st.samples} samples, model "
                f"{st.model_version or '(none yet)'} ({provider}), registry {config.models}"))
    sec = config.security
    mode = ("mutual TLS" if sec.tls_client_ca else "TLS" if sec.tls_cert else "plaintext") + \
        (", tokens required" if sec.tokens else ", no tokens")
    _say(f"security: {mode}")
    if sec.insecure and not is_loopback(config.host):
        _say(f"--insecure: anyone who reaches {config.host}:{bound} can read and change this agent's data",
             logging.WARNING)
    if agent.registry_warning():
        _say(escape(agent.registry_warning()), logging.WARNING)
    if web is not None:
        _say(escape(f"web app on {web.url}"))


def _stopping(signal_name: str, doing: str, what: str) -> str:
    """``serve``'s and ``web``'s line on a stop signal; for SIGHUP, why it came and how to avoid it."""
    hup = (f" (SIGHUP: the terminal that started {what} closed, or a reload was asked; run it under systemd or "
           "nohup to keep it serving after a logout)") if signal_name == "SIGHUP" else ""
    return f"stopping ({signal_name}): {doing}{hup}"


def _serve_until_signal(signals: _Signals, stop_agent: Callable[[], None], web: _Stoppable | None,
                        local: _Removable | None) -> NoReturn:
    """Serve until SIGTERM, SIGINT or SIGHUP (``signals``), then stop (``_stop_serving``) and end the process
    (``_exit_without_teardown``) with its status."""
    name = signals.wait()
    signalled = time.monotonic()
    _say(_stopping(name, "finishing in-flight calls", "the agent"))
    code = _stop_serving(stop_agent, web, local)
    logging.getLogger("agent.cli").info("stopped %.2f s after the signal; exiting with status %d",
                                        time.monotonic() - signalled, code)
    _exit_without_teardown(code)


class _Signals:
    """SIGTERM, SIGINT and SIGHUP caught from the moment it is made: ``wait`` returns the first one's name
    (at once when one came before). `shortlist serve` and `shortlist web` make it unarmed before their server
    starts and ``arm`` it just before the port answers, so that a SIGTERM sent once it answers (an
    orchestrator, a test) stops it gracefully: with the handlers installed only after the banner, one in
    between took the default action, killed without a snapshot or a graceful end of in-flight calls (seen in
    CI: exit -15). SIGHUP stops it as SIGTERM does: its default action killed it without a word."""

    def __init__(self, armed: bool = True) -> None:
        self.stop = threading.Event()
        self.got: list[str] = []
        self.armed = armed
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handler)

    def arm(self) -> None:
        """From now on a signal stops the server gracefully (``wait``). Made unarmed before the server starts
        and armed just before it answers: there was a moment between ``server.start()`` and these handlers
        when a SIGTERM sent once the port answered still killed the agent (CI, exit -15, once more)."""
        self.armed = True

    def _handler(self, number: int, frame: Any) -> None:
        if not self.armed:  # still starting: Ctrl-C interrupts the start, SIGTERM and SIGHUP end it
            if number == signal.SIGINT:
                signal.default_int_handler(number, frame)
            raise SystemExit(128 + number)
        self.got.append(signal.Signals(number).name)
        self.stop.set()

    def wait(self) -> str:
        self.stop.wait()
        return self.got[0]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class _Removable(Protocol):
    def cleanup(self) -> None: ...


def _stop_serving(stop_agent: Callable[[], None], web: _Stoppable | None, local: _Removable | None) -> int:
    """``shortlist serve``'s shutdown after the signal: the web app (if any), then ``stop_agent``
    (``stop_server``), then the web app's socket folder (whatever happened before). The exit status: 0, or 1
    when a step raised (logged with its traceback): the agent is still stopped when the web app's stop
    failed, and a failing stop never exits 0. No exception escapes, so the process still ends through
    ``_exit_without_teardown``: a normal exit would join the lane threads of computations abandoned at
    shutdown (a long step without a checkpoint could hold the exit for minutes)."""
    code = 0
    try:
        try:
            if web is not None:
                web.stop()
        finally:
            stop_agent()
    except Exception:
        logging.getLogger("agent.cli").exception("shutdown failed")
        code = 1
    finally:
        if local is not None:
            try:
                local.cleanup()
            except Exception:
                logging.getLogger("agent.cli").exception("could not remove the web app's socket folder")
                code = 1
    return code


def _exit_without_teardown(code: int = 0) -> NoReturn:
    """End ``shortlist serve`` with exit status ``code`` once ``stop_server`` has returned or failed
    (``_stop_serving``), skipping the interpreter's own exit work: nothing of it concerns what the agent
    acknowledged.

    By then everything acknowledged is durable and nothing can still write it: the state database is closed
    under its write lock (``State.close`` waits for a commit in progress; any later write fails), and the
    index snapshot and pool map are saved. (After a failed stop, status 1, every commit is still durable:
    SQLite's WAL at synchronous=FULL; the snapshot and the map are caches the next start rebuilds.) A normal
    exit would go on to (1) join every ThreadPoolExecutor worker (concurrent.futures' exit hook), among them
    a lane thread still inside a strategy or prior computation abandoned at shutdown (``Admission.run``): it
    writes nothing, but runs at +10 niceness until its next checkpoint; and (2) tear down the modules
    (scikit-learn, scipy: agent/lazy.py) and collect their objects: little CPU time, but at niceness 10 on a
    busy machine most of the time from SIGTERM to exit (figures: docs/reliability.md, Shutdown).
    The lanes' priority cannot be raised back at shutdown instead (lowering a niceness needs CAP_SYS_NICE).
    So: flush the logs and the console, then ``os._exit``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing more can be said there
            stream.flush()
    os._exit(code)


@agent_options
@labelstudio_options
def web(agent: AgentTarget, labelstudio: LabelStudioConfig,
        port: int = typer.Option(8080, "--port", min=0, max=65535, help="port of the web app"),
        host: str = typer.Option("127.0.0.1", "--host", help="address of the web app (anything but loopback needs "
                                 "--https-cert/--https-key and an agent that requires tokens, or --insecure)"),
        https_cert: Path | None = typer.Option(None, "--https-cert", dir_okay=False,
                                               help="serve HTTPS with this certificate (PEM; with --https-key)"),
        https_key: Path | None = typer.Option(None, "--https-key", dir_okay=False,
                                              help="the private key of --https-cert"),
        insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback --host without HTTPS and "
                                      "authentication"),
        web_allowed_hosts: str = WebAllowedHostsOpt, web_max_body_mb: float = WebMaxBodyMbOpt) -> None:
    """Serve the labelling web app (docs/app.md) for a running agent, until SIGTERM/SIGINT/SIGHUP. Browsers sign in
    with their own token; --token (or SHORTLIST_TOKEN), when given, is used for browsers that bring none."""
    from agent.security import SecurityError, warn_if_out_of_date
    from agent.web.app import create_app
    from agent.web.config import WebConfig
    from agent.web.server import WebServer, check_listen, remote_factory

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    factory = remote_factory(agent.address, agent.config)
    ch = _rpc(factory)
    try:
        requires_tokens = False
        status: agent_pb2.Status | None = None
        try:
            status = agent_pb2_grpc.AgentStub(ch).GetStatus(agent_pb2.GetStatusRequest(),
                                                            timeout=agent.config.connect_timeout)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            requires_tokens = True
        if agent.config.token:
            status = agent_pb2_grpc.AgentStub(ch).GetStatus(
                agent_pb2.GetStatusRequest(), timeout=agent.config.connect_timeout,
                metadata=(("authorization", f"Bearer {agent.config.token}"),))
    except grpc.RpcError as e:
        _say(f"the agent at {agent.address} answered {e.code().name}: {escape(e.details() or '')}", logging.ERROR)
        raise typer.Exit(2) from None
    finally:
        ch.close()
    if status is not None:
        problem = labelstudio.problem(status.strategies, status.prior_methods)
    else:  # an agent that requires tokens, and no --token here to ask it: this installation's registries
        from agent.priors import PRIOR_METHODS
        from agent.strategies import STRATEGIES

        problem = labelstudio.problem(STRATEGIES, PRIOR_METHODS)
        if problem:
            problem += (" (checked against this installation's registries: the agent requires tokens and no "
                        "--token was given to ask it)")
    if problem:
        _say(escape(problem), logging.ERROR)
        raise typer.Exit(2)
    try:
        config = WebConfig(host=host, port=port, agent=agent.address, default_token=agent.config.token,
                           https_cert=https_cert, https_key=https_key, insecure=insecure, labelstudio=labelstudio,
                           allowed_hosts=host_list(web_allowed_hosts), max_body_bytes=round(web_max_body_mb * MIB),
                           tokens_required=requires_tokens)
        for w in check_listen(config, requires_tokens, "--https-cert FILE --https-key FILE",
                              "an agent that requires tokens (its --tokens) and no --token here"):
            _say(escape(w), logging.WARNING)
        if https_cert is not None:  # as serve's --tls-cert: browsers refuse a certificate out of its dates
            warn_if_out_of_date(https_cert, "the HTTPS certificate (--https-cert)")
        # As `shortlist serve`: installed before the server starts and armed just before its port listens, so a
        # signal sent once the port answers stops it gracefully (installed after start(), a SIGTERM in between
        # took the default action: killed without a graceful stop); one before that ends the start.
        signals = _Signals(armed=False)
        server = WebServer(create_app(config, factory), config, on_listening=signals.arm).start()
    except (SecurityError, OSError, ValueError) as e:
        _say(escape(str(e)), logging.ERROR)
        raise typer.Exit(2) from None
    _say(escape(f"web app on {server.url} for the agent at {agent.address}")
         + (" (browsers sign in with their token)" if requires_tokens and not agent.config.token else ""))
    name = signals.wait()
    _say(_stopping(name, "finishing the requests in flight", "it"))
    server.stop()
    logging.getLogger("agent.cli").info("web app stopped")


@dataclass
class _Read:
    """What ``shortlist ingest`` took from its source: images, and how many of them came with a label (a
    class folder's name)."""

    images: int = 0
    labelled: int = 0

    def label_report(self, source: str) -> tuple[dict[str, int], str]:
        """With --with-labels: the JSON fields (``labels_taken``, ``without_label``) and a warning ("" when
        every image had a class folder), so labels silently not taken are said."""
        missing = self.images - self.labelled
        fields = {"labels_taken": self.labelled, "without_label": missing}
        if not missing:
            return fields, ""
        if not self.labelled:
            return fields, (f"--with-labels: no class folders found in {source} (labels are the names of the "
                            f"folders right under it: {source}/<class>/<image>), so no labels were taken and the "
                            f"{missing} samples were stored unlabelled; label them with `shortlist label FILE.csv`")
        return fields, (f"--with-labels: {missing} of the {self.images} images are not in a class folder (they lie "
                        f"at the top of {source}) and were stored unlabelled")


class _ConsoleWarnings(logging.Handler):
    """A library's warnings (shortlist.datasets: a symlink loop skipped) as the command's own warning lines on
    stderr, while the command runs."""

    def emit(self, record: logging.LogRecord) -> None:
        # soft_wrap: paths are long words that rich would otherwise cut in the middle
        console.print(f"[yellow]warning[/yellow]: {escape(record.getMessage())}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _warnings_of(logger: str) -> Iterator[None]:
    handler = _ConsoleWarnings(logging.WARNING)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _source_samples(source: Any, limit: int | None, with_labels: bool, metadata: dict[str, str],
                    id_prefix: str, read: _Read, per_path: Mapping[str, Mapping[str, str]] | None = None,
                    exif: bool = False) -> Iterator[agent_pb2.Sample]:
    """The source's images as Samples. Each one's metadata: its EXIF's (``exif``), then ``metadata`` (--meta),
    then its row of ``per_path`` (--meta-csv: path inside the source -> metadata), a later one winning a key."""
    from shortlist.datasets import iter_images
    from shortlist.images import exif_metadata

    for item in iter_images(source, limit=limit, id_prefix=id_prefix):
        read.images += 1
        read.labelled += item.label is not None
        label = item.label or "" if with_labels else ""
        row = per_path.get(item.id[len(id_prefix):]) if per_path else None
        if exif and item.encoded is not None:
            metadata_of = {**exif_metadata(item.encoded), **metadata, **(row or {})}
        else:
            metadata_of = {**metadata, **row} if row else metadata
        if item.encoded is not None or item.pixels is not None:
            yield client.item_sample(item, label=label, metadata=metadata_of)


def _ingest_out(reply: agent_pb2.IngestReply) -> dict[str, Any]:
    out = {"accepted": reply.accepted, "duplicates": reply.duplicates, "labels_added": reply.labels_added,
           "rejected": [{"id": r.id, "code": code_name(r.code), "reason": r.reason} for r in reply.rejected],
           "same_payload": reply.same_payload,
           "same_payload_examples": [{"id": x.id, "other_id": x.other_id} for x in reply.same_payload_examples],
           "duplicates_other_uri": reply.duplicates_other_uri,
           "other_uri_example": ({"id": reply.other_uri_example.id, "stored_uri": reply.other_uri_example.stored_uri,
                                  "sent_uri": reply.other_uri_example.sent_uri}
                                 if reply.HasField("other_uri_example") else None),
           "twin_conflicts": reply.twin_conflicts,
           "twin_conflict_examples": [{"id": t.id, "twin_id": t.twin_id, "twin_label": t.twin_label}
                                      for t in reply.twin_conflict_examples]}
    return {**out, **_counts(out, {"rejected": client.rejected_count(reply)})}


def _print_ingest(reply: agent_pb2.IngestReply) -> None:
    """An IngestReply for people: the counts and the first 10 rejections on stdout (the result, as ``select``
    and ``status`` print theirs: `shortlist ingest data > log` keeps it), notes and hints on stderr."""
    result = Console(soft_wrap=True)  # whole lines: a log file gets one line per rejection
    rejected = client.rejected_count(reply)
    # a resend that gave stored unlabelled samples their label: counted as duplicates, and said (only then)
    added = f" ({reply.labels_added} of them given their label by this resend)" if reply.labels_added else ""
    result.print(f"accepted {reply.accepted}, duplicates {reply.duplicates}{added}, rejected {rejected}",
                 highlight=False)
    for r in reply.rejected[:10]:  # ids are file names: escaped, so one cannot colour the terminal or split a line
        result.print(printable(f"  {r.id}: {r.reason}"), markup=False, highlight=False)
    if rejected > 10:
        result.print(_more(rejected, len(reply.rejected)), highlight=False)
    if reply.duplicates_other_uri:
        ex = reply.other_uri_example
        console.print(f"note: {reply.duplicates_other_uri} of the duplicates were read from another place than when "
                      f"they were stored (e.g. {escape(printable(quoted(ex.id)))}: stored from "
                      f"{escape(printable(quoted(ex.stored_uri)))}, now {escape(printable(quoted(ex.sent_uri)))}); "
                      "the same id and bytes, so nothing changed and the stored uri is kept", highlight=False,
                      soft_wrap=True)
    if reply.same_payload:
        shown = ", ".join(f"{x.id} = {x.other_id}" for x in reply.same_payload_examples[:3])
        console.print(f"[yellow]same image under another id[/yellow]: {reply.same_payload} accepted samples have the "
                      f"exact bytes of a sample already stored under another id (e.g. {escape(printable(shown))}); "
                      "both are kept", highlight=False)
    if reply.twin_conflicts:
        shown = ", ".join(f"{t.id} = {t.twin_id} {quoted(t.twin_label)}" for t in reply.twin_conflict_examples[:3])
        console.print(f"[yellow]warning[/yellow]: {reply.twin_conflicts} samples were stored with another label than "
                      f"a sample with the exact same bytes under another id (e.g. {escape(printable(shown))}; a "
                      "file moved to another class folder?): both labels are kept; correct one with `shortlist "
                      "label`, or remove the stale id with `shortlist delete-samples`", highlight=False,
                      soft_wrap=True)
    # An id stored with other bytes: from another uri (ID_TAKEN), another source used the id (a new
    # --id-prefix is the way); from the same uri (FILE_CHANGED), either the file was replaced in place (a new
    # prefix would store the whole source again: delete and ingest again) or another source's file has the
    # same path (two folders ingested from different working directories: a prefix is the way). The agent
    # cannot tell those apart, so the hint says both. ID_TAKEN in a reply whose other duplicates came from another
    # place (a rerun of this source from another directory) is a changed file of this source, not another
    # source. The reason's words serve an agent older than Rejection.code (UNSPECIFIED).
    taken = [r for r in reply.rejected if r.code == agent_pb2.REJECTION_CODE_ID_TAKEN
             or "already in the pool with a different payload" in r.reason]
    changed = [r for r in reply.rejected if r.code == agent_pb2.REJECTION_CODE_FILE_CHANGED]
    if changed:
        console.print(f"hint: {len(changed)} of the rejected files now hold other bytes than when they were "
                      f"ingested from the same path (e.g. {escape(printable(quoted(changed[0].id)))}): if they were "
                      "replaced in place, delete the stored samples (`shortlist delete-samples ID ...`, or --file "
                      "with the ids) and ingest again, or keep the stored ones; if they are another source's files "
                      "with the same paths, give each source its own --id-prefix, e.g. --id-prefix site2/",
                      highlight=False, soft_wrap=True)
    if taken and reply.duplicates_other_uri:
        # Other files of this source are stored, read from another place: a rerun of the same source from another
        # directory (these files then changed since they were ingested, and a new --id-prefix would store it all
        # again), or another source that shares a few files (a calibration image): which, only the user knows.
        console.print(f"hint: {len(taken)} of the rejected files hold other bytes than the samples stored under "
                      f"their ids (e.g. {escape(printable(quoted(taken[0].id)))}), while {reply.duplicates_other_uri} "
                      "other files of this source are already stored from another place (the note above): if this "
                      "is the same source read from another directory, the rejected files changed since they were "
                      "ingested: delete the stored samples (`shortlist delete-samples ID ...`, or --file with the "
                      "ids) and ingest again, or keep the stored ones; if it is another source, give each source "
                      "its own --id-prefix, e.g. --id-prefix site2/", highlight=False, soft_wrap=True)
    elif taken:
        console.print("hint: another source already used these ids (ids are paths inside the source); give each "
                      "source its own --id-prefix, e.g. --id-prefix site2/")


def _read_meta_csv(path: Path, resolved: Any, source: str, metadata: dict[str, str]) -> dict[str, dict[str, str]]:
    """``ingest --meta-csv``'s rows (path inside the source -> metadata), checked against the source's paths;
    exit 2 with the file's problems, before anything is sent. Rows over the agent's default metadata limits
    get a warning (the agent rejects those samples one by one unless its limits were raised)."""
    from agent.meta_csv import MetaFileError, check_paths, over_limits, read_meta_csv
    from shortlist.datasets import source_paths

    try:
        table = read_meta_csv(path)
        check_paths(table, source_paths(resolved), source)
    except (MetaFileError, OSError) as e:
        console.print(f"[red]--meta-csv[/red]: {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    over = over_limits(table, metadata)
    if over:
        shown = "; ".join(over[:3]) + (f"; and {len(over) - 3} more" if len(over) > 3 else "")
        console.print(f"[yellow]warning[/yellow]: {len(over)} rows of {escape(str(path))} are over the agent's default "
                      f"metadata limits, and an agent serving with them rejects those samples: {escape(shown)}",
                      highlight=False, soft_wrap=True)
    return table.rows


def _zip_refusal(path: str) -> str:
    """Why a zip archive (the usual archive of field photos; no source reads one) is refused, and what to do:
    "" for a path that is not one (by its name or its bytes)."""
    import shlex
    import zipfile

    from shortlist.datasets import TAR_SUFFIXES

    p = Path(path)
    if not p.is_file() or not (p.suffix.lower() == ".zip" or zipfile.is_zipfile(p)):
        return ""
    folder = p.with_suffix("") if p.suffix else Path(f"{p}.d")
    return (f"{p} is a zip archive, which Shortlist does not read: unzip it first (`unzip {shlex.quote(str(p))} -d "
            f"{shlex.quote(str(folder))}`) and ingest that folder, or make a tar of the folder "
            f"({', '.join(TAR_SUFFIXES)})")


@agent_options
def ingest(agent: AgentTarget,
           source: str = typer.Argument(..., help=sources_said()),
           with_labels: bool = typer.Option(False, "--with-labels", help="class folders become labels"),
           split: str = typer.Option("train", "--split", help="which split of a source that has splits"),
           batch: int = typer.Option(256, "--batch", min=1, help="most samples per request (one transaction)"),
           batch_mb: float | None = typer.Option(None, "--batch-mb", min=0.01, callback=finite, show_default=False,
                                                 help=f"most MiB per request (default {client.REQUEST_BYTES >> 20}); "
                                                 "keep it under the agent's --max-message-mb"),
           limit: int | None = typer.Option(None, "--limit", min=1, help="only the first N images in the source's "
                                            "order (a class-sorted folder gives its first classes: not a sample)"),
           id_prefix: str = typer.Option("", "--id-prefix", help="put in front of every sample id (ids are the "
                                         "paths inside the source: give two sources that share file names "
                                         "different prefixes, e.g. site2/)"),
           meta: list[str] = typer.Option([], "--meta", help="metadata k=v on every sample (repeatable; "
                                          "select --where k=v filters on it)"),
           meta_csv: Path | None = typer.Option(None, "--meta-csv", exists=True, dir_okay=False,
                                                help="per-image metadata: a CSV (comma- or tab-separated, UTF-8) "
                                                "with a header path,key1,key2,...; the first column is the image's "
                                                "path inside SOURCE (the sample id before --id-prefix), the others "
                                                "metadata keys; a row's non-empty cells override --meta; images "
                                                "without a row get --meta only. Checked before anything is sent"),
           exif: bool = typer.Option(False, "--exif", help="metadata from each image's EXIF: taken_at "
                                     "(DateTimeOriginal, ISO 8601), camera (Make Model), sequence (ImageNumber); "
                                     "tags a file lacks are absent; --meta and --meta-csv override them"),
           as_json: bool = JsonOpt) -> None:
    """Stream a source's images into the agent (acknowledged once durable). Sample ids are the paths
    inside the source (``cat/0001.jpg``; CIFAR pickles: ``data_batch_1/00000``), after --id-prefix."""
    from shortlist.datasets import IMAGE_EXTENSIONS, readable_name, resolve_source

    metadata = _pairs(meta, "--meta")
    # Each sample's uri is its file's path as typed (relative stays relative), not made absolute: an agent
    # older than duplicates_other_uri rejects a resend whose uri differs from the stored one (every image of
    # a pool filled by an older CLI), and Label Studio's url matching finds a sample by its uri as a URL's
    # tail. The agent counts a rerun from another directory as duplicates (note_other_uri).
    try:  # before the stream: a missing source or split is a clear error, not a broken stream
        resolved = resolve_source(source, split)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        why = _zip_refusal(source) or str(e)
        if isinstance(e, PermissionError) and os.path.isdir(source):
            try:  # the folder itself, not the first file a source kind looked for in it (a CIFAR batches.meta)
                os.listdir(source)
            except PermissionError:
                why = "the folder is not readable (permission denied): give your user read access to it"
        console.print(f"[red]cannot read {escape(source)}[/red]: {escape(why)}", highlight=False)
        raise typer.Exit(2) from None
    per_path = _read_meta_csv(meta_csv, resolved, source, metadata) if meta_csv is not None else None
    stub = _rpc(agent.connect)
    read = _Read()
    samples = _source_samples(resolved, limit, with_labels, metadata, id_prefix, read, per_path, exif)
    stop = threading.Event()
    all_sent = threading.Event()

    def labels_said(warn: bool = True) -> dict[str, int]:
        """With --with-labels: the JSON fields counting the images read with and without a class folder, and
        (``warn``: the whole source was read) a warning when some had none."""
        if not with_labels:
            return {}
        fields, warning = read.label_report(source)
        if warning and warn:
            console.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False, soft_wrap=True)
        return fields

    try:
        with _ctrl_c_stops(stop, "no more images are read; waiting for the agent to acknowledge those sent",
                           all_sent, "every sample was already sent; waiting for the agent's acknowledgement"), \
                _warnings_of("shortlist.datasets"), _progress() as progress:
            task = progress.add_task("ingest", total=limit)
            reply = _rpc(lambda: client.ingest(stub, samples, batch, on_batch=lambda n: progress.advance(task, n),
                                               max_bytes=None if batch_mb is None else int(batch_mb * 2**20),
                                               stop=stop, all_sent=all_sent),
                         after="the samples the agent stored before the stream broke are kept; run the same command "
                               "again when the agent answers (resent samples count as duplicates)",
                         after_codes=TRANSIENT)  # not after a refusal (a read token, a bad request): again fails
    except client.Interrupted as e:
        acknowledged = e.unconfirmed < e.sent or not e.sent  # the agent's reply arrived
        if as_json:
            print(json_line({**_ingest_out(e.reply), **labels_said(warn=False), "interrupted": True, "sent": e.sent,
                              "unconfirmed": e.unconfirmed}))
        elif acknowledged:
            _print_ingest(e.reply)
        stored = ("the agent stored those counted above" if acknowledged else
                  f"the agent's count did not arrive{_unconfirmed_note(e, 'samples')}")
        console.print(f"[red]interrupted[/red] (Ctrl-C) after {e.sent} samples of {escape(source)} were sent: "
                      f"{stored}; rerun the same command to continue: stored samples count as duplicates",
                      highlight=False)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except client.IngestInterrupted as e:
        if as_json:
            print(json_line({**_ingest_out(e.reply), **labels_said(warn=False), "error": str(e)}))
        else:
            _print_ingest(e.reply)
        console.print(f"[red]stopped reading {escape(source)}[/red] after {e.sent} samples: {escape(str(e))}; the "
                      "samples acknowledged above are stored; fix the source and run the same command again "
                      "(resent samples count as duplicates)", highlight=False)
        raise typer.Exit(1) from None
    if read.images == 0:
        split = f" (split '{resolved.split}')" if resolved.of_splits else ""
        console.print(f"[red]no images found in {escape(readable_name(str(resolved.path)))}[/red]{split}; image "
                      f"files end in {', '.join(IMAGE_EXTENSIONS[:11])} or another extension of a format Pillow "
                      "reads", highlight=False)
        raise typer.Exit(2)
    if as_json:
        print(json_line({**_ingest_out(reply), **labels_said()}))
    else:
        _print_ingest(reply)
        labels_said()
    if client.rejected_count(reply) and not reply.accepted and not reply.duplicates:
        raise typer.Exit(1)  # nothing stored: a script must not go on as if it had been


def _group_cap(value: str) -> tuple[str, int]:
    """``select --max-per-group KEY=N`` as (KEY, N); ("", 0) when not given. A malformed value: one line on
    stderr, exit 2 (nothing is sent)."""
    if not value:
        return "", 0
    key, sep, count = value.rpartition("=")
    if sep and key and count.strip().isdigit() and not 1 <= int(count) <= INT32_MAX:
        console.print(f"[red]--max-per-group {escape(quoted(value))}[/red]: N must be from 1 to {INT32_MAX} (a "
                      "request field's range)", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if not sep or not key or not count.strip().isdigit():
        console.print(f"[red]--max-per-group {escape(quoted(value))}[/red]: must look like KEY=N, a metadata key and a "
                      "whole number >= 1 (e.g. event=1)", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    return key, int(count)


@agent_options
def select(agent: AgentTarget,
           budget: int = typer.Option(..., "--budget", min=1, max=INT32_MAX, help="how many samples to select"),
           strategy: str = typer.Option("random", "--strategy", help="selection strategy"),
           param: list[str] = typer.Option([], "--param", help="strategy parameter k=v (repeatable)"),
           where: list[str] = typer.Option([], "--where", help="metadata filter k=v (repeatable)"),
           seed: int = typer.Option(0, "--seed", min=0, max=UINT64_MAX),
           max_per_group: str = typer.Option(
               "", "--max-per-group", metavar="KEY=N",
               help="at most N picks per value of the metadata key KEY (e.g. event=1: one frame per burst)"),
           timeout: float = TimeoutOpt,
           as_json: bool = JsonOpt) -> None:
    """Which samples to label next."""
    group_by, cap = _group_cap(max_per_group)
    stub = _rpc(agent.connect)
    req = agent_pb2.SelectRequest(budget=budget, strategy=strategy, params=_pairs(param, "--param"), seed=seed,
                                  where=_pairs(where, "--where"), group_by=group_by, max_per_group=cap)
    reply = _rpc(lambda: stub.Select(req, timeout=_timeout(timeout)), note=_heavy_note(_timeout(timeout)))
    if as_json:
        print(json_line({"selection_id": reply.selection_id, "model_version": reply.model_version,
                          "strategy": reply.strategy, "details": dict(sorted(reply.details.items())),
                          "selected": [{"id": s.id, "score": s.score} for s in reply.selected]}))
        return
    table = Table(title=f"{reply.strategy} @ {reply.model_version or 'no model'}")
    table.add_column("id")
    table.add_column("score", justify="right")
    for s in reply.selected:
        table.add_row(Text(printable(s.id)), f"{s.score:.4g}")  # Text: an id is no markup
    console = make_console()
    console.print(table)
    # Its own line, never wrapped (a caption wraps at the table's width): it is meant to be copied.
    # An empty id: the agent could not record the selection (a full or read-only disk; details say why).
    console.print(f"selection {reply.selection_id or 'not recorded'}", soft_wrap=True, highlight=False)
    for key, value in sorted(reply.details.items()):  # e.g. the agent's "nothing_selected": why the table is empty
        console.print(f"{key}: {value}", style="yellow" if key in ("warning", "nothing_selected") else None,
                      highlight=False)


@agent_options
def label(agent: AgentTarget,
          file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with columns id,label (header "
                                      "line optional; UTF-8, with or without BOM)"),
          annotator: str = AnnotatorOpt,
          source: str = _source_opt("how the labels were made: manual, prior:METHOD (accepted priors), import, ..."),
          only_unlabelled: bool = typer.Option(False, "--only-unlabelled",
                                               help="never overwrite a label: a row whose sample has a label "
                                                    "(another than the row's) is rejected, naming who gave it"),
          if_current: bool = typer.Option(False, "--if-current",
                                          help="store a row's label only if the sample's label is still the one in "
                                               "the file's column current (empty = unlabelled); else the row is "
                                               "rejected, naming who changed it"),
          file_provenance: bool = typer.Option(True, "--file-provenance/--no-file-provenance",
                                               help="a file whose header has an annotator and/or source column (an "
                                                    "exported labels.csv): each row's label is stored under its "
                                                    "own; --annotator / --source only where a cell is empty"),
          as_json: bool = JsonOpt) -> None:
    """Submit labels from a CSV file: rows id,label, with or without a header line id,label.

    A header with annotator / source columns (export-labels' labels.csv) gives each row's annotator and source
    (--no-file-provenance: --annotator / --source for every row); the times are the agent's. Without
    --only-unlabelled or --if-current the last write wins: a row replaces the sample's label, whoever
    gave it; the output says which labels of other annotators were overwritten."""
    if only_unlabelled and if_current:
        console.print("[red]--only-unlabelled and --if-current exclude each other[/red]: --only-unlabelled is "
                      "--if-current with an empty current column", highlight=False)
        raise typer.Exit(2)
    try:
        labels = read_labels_csv(file, if_current=if_current)
        attributed = _attributed(file, labels.rows, labels.provenance, annotator, source) \
            if file_provenance and labels.provenance.columns else None
    except (LabelFileError, OSError) as e:
        console.print(f"[red]cannot use {escape(str(file))}[/red]: {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    rows = labels.rows
    expected: dict[str, str] | None = labels.current if if_current else None
    if only_unlabelled:
        expected = {sid: "" for _, sid, _ in rows}
    stub = _rpc(agent.connect)
    stop = threading.Event()
    interrupted = None
    try:
        with _ctrl_c_stops(stop, "no more labels are sent; waiting for the agent's answer to those sent"):
            reply = _rpc(lambda: client.submit_labels(stub, [(sid, lab) for _, sid, lab in rows], annotator,
                                                      source=source, if_current=expected, stop=stop)
                         if attributed is None else
                         client.submit_attributed_labels(stub, attributed, if_current=expected, stop=stop))
    except client.Interrupted as e:
        reply, interrupted = e.reply, e
    line_of: dict[str, int] = {}
    for n, sid, _ in rows:
        line_of.setdefault(sid, n)
    rejected = [{"line": line_of.get(r.id, 0), **_rejection(r, "--only-unlabelled" if only_unlabelled else "")}
                for r in reply.rejected]
    new_label = {sid: lab for _, sid, lab in rows}
    overwritten = [{"line": line_of.get(o.id, 0), "id": o.id, "label": o.label, "annotator": o.annotator}
                   for o in reply.overwritten]
    twins = [{"line": line_of.get(t.id, 0), "id": t.id, "twin_id": t.twin_id, "twin_label": t.twin_label}
             for t in reply.twin_conflicts]
    _print_reply(LABEL_WORDING, reply.accepted, rejected, overwritten, as_json, interrupted, len(rows), new_label,
                 twins, _totals(reply))


def _attributed(path: Path, rows: list[tuple[int, str, str]], provenance: Provenance, annotator: str,
                source: str) -> list[tuple[str, str, str, str]]:
    """(id, label, annotator, source) of each row of a labels CSV with annotator / source columns: the file's
    cell, or ``annotator`` / ``source`` where it is empty, or for a source only the agent gives (AGENT_SOURCES:
    ingest, restored, rename). Says on stderr what it took from the file. Raises LabelFileError naming the lines
    whose source the agent would refuse (nothing is sent)."""
    from agent.core import source_problem
    from agent.state import AGENT_SOURCES

    out: list[tuple[str, str, str, str]] = []
    problems: list[str] = []
    reserved = 0
    for n, sid, lab in rows:
        who, how = provenance.rows.get(sid, ("", ""))
        if how in AGENT_SOURCES:  # the agent's own sources: stored as given now
            how, reserved = "", reserved + 1
        why = source_problem(how) if how else None
        if why:
            problems.append(f"line {n}: {why}")
        out.append((sid, lab, who or annotator, how or source))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise LabelFileError(f"{path}: column source: nothing was sent:\n  " + "\n  ".join(problems[:10]) + more)
    names = sorted({a for _, _, a, _ in out})
    shown = ", ".join(quoted(a) for a in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    note = (f"each label stored under the file's {' and '.join(provenance.columns)} column(s) ({len(names)} "
            f"annotator(s): {shown}); --annotator {quoted(annotator)} / --source {quoted(source)} only where a cell "
            "is empty "
            "(--no-file-provenance: for every row); the agent records its own times")
    if reserved:
        note += (f"; {reserved} row(s) with source " + " or ".join(quoted(k) for k in AGENT_SOURCES)
                 + f" (only the agent gives those) stored with source {quoted(source)}")
    console.print(note, markup=False, highlight=False)
    return out


def _totals(reply: agent_pb2.SubmitLabelsReply | agent_pb2.RetractLabelsReply) -> dict[str, int]:
    """How many entries each list of a (summed) SubmitLabels / RetractLabels reply had in all: the agent lists
    the first ones only (agent/service.py ``REPLY_LIST_BYTES``), its ``*_count`` fields count them all."""
    out = {"rejected": client.rejected_count(reply),
           "overwritten": client.counted(reply.overwritten_count, reply.overwritten)}
    if isinstance(reply, agent_pb2.SubmitLabelsReply):
        out["twin_conflicts"] = client.counted(reply.twin_conflicts_count, reply.twin_conflicts)
    return out


def _counts(out: dict[str, Any], totals: dict[str, int]) -> dict[str, int]:
    """``KEY_count`` for each list ``out[KEY]`` of a JSON result that holds fewer entries than ``totals[KEY]``
    (the agent's replies listed the first ones only); none when every list is whole, as before the counts."""
    return {f"{k}_count": totals[k] for k, v in out.items() if isinstance(v, list) and totals.get(k, 0) > len(v)}


def _more(total: int, listed: int, shown: int = 10) -> str:
    """The line after the first ``shown`` of ``total`` entries, ``listed`` of which the agent's replies
    listed (the --json lists)."""
    where = ("--json lists all" if listed >= total
             else f"--json lists the first {listed}; the agent's replies list at most 512 KiB of each kind")
    return f"  ... and {total - shown} more ({where})"


def _rejection(r: agent_pb2.Rejection, only_unlabelled: str = "") -> dict[str, Any]:
    """A SubmitLabels / RetractLabels / DeleteSamples rejection for the output: id, code (the RejectionCode's
    name, ``code_name``), reason and, for a conditional write that found another label, ``now`` (the label now,
    "" = unlabelled, and who gave it). ``only_unlabelled`` (the option's name): the condition was "unlabelled",
    so the reason says the label was kept."""
    out: dict[str, Any] = {"id": r.id, "code": code_name(r.code), "reason": r.reason}
    if r.HasField("now"):
        out["now"] = {"label": r.now.label, "annotator": r.now.annotator}
        if only_unlabelled and r.now.label:
            who = f" by {annotator_name(r.now.annotator)}" if r.now.annotator else ""
            out["reason"] = f"already labelled {quoted(r.now.label)}{who}: kept ({only_unlabelled})"
    return out


def printable(text: str) -> str:
    """``text`` with its control and invisible format characters (newline, ESC, a bidi override; what
    ``agent.limits.name_problem`` refuses in new names) written as escapes (``\\n``, ``\\x1b``,
    ``\\u202e``): names and ids stored before the agent refused them, or by an older agent, cannot forge
    lines or send terminal sequences to whoever reads the output."""
    if all(unicodedata.category(c) not in ("Cc", "Cf") for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in ("Cc", "Cf") else c
                   for c in text)


@dataclass(frozen=True)
class ReplyWording:
    """How ``_print_reply`` words one command's reply (``LABEL_WORDING``, ``RETRACT_WORDING``)."""

    verb: str  # the count line's word for the accepted ones
    items: str  # what the command sends ("labels", "ids"), for the Ctrl-C line
    again: str  # what a rerun after a Ctrl-C makes of what was done
    line: Callable[[dict[str, Any]], str]  # one rejection
    overwrite_head: str  # the line before the overwritten labels, with {n}
    overwrite_line: Callable[[dict[str, Any], dict[str, str]], str]  # one overwritten label; the labels sent by id


LABEL_WORDING = ReplyWording(
    "accepted", "labels", "labels already stored count as accepted again, unchanged",
    lambda r: f"  line {r['line']}: {r['id']}: {r['reason']}",
    "overwrote {n} label(s) given by other annotators (last write wins; --only-unlabelled or --if-current keep them)",
    lambda o, new: f"  line {o['line']}: {o['id']}: {quoted(o['label'])} by {annotator_name(o['annotator']) or '?'} "
                   f"-> {quoted(new.get(o['id'], '?'))}")
RETRACT_WORDING = ReplyWording(
    "unlabelled", "ids", "ids already taken back are rejected as 'not labelled: nothing to retract'",
    lambda r: f"  {r['id']}: {r['reason']}", "took back {n} label(s) given by other annotators",
    lambda o, _: f"  {o['id']}: {quoted(o['label'])} by {annotator_name(o['annotator']) or '?'}")


def _print_reply(wording: ReplyWording, accepted: int, rejected: list[dict[str, Any]],
                 overwritten: list[dict[str, Any]], as_json: bool, interrupted: client.Interrupted | None,
                 total: int, sent: dict[str, str] | None = None,
                 twins: list[dict[str, Any]] | None = None, totals: dict[str, int] | None = None) -> None:
    """A SubmitLabels / RetractLabels reply on stdout, worded by ``wording``: JSON, or a count line and the
    first 10 rejections, then (when there are any) ``wording.overwrite_head`` and the first 10 ``overwritten``
    (labels of other annotators replaced or taken back, with the label ``sent`` for each id; JSON: always
    listed). ``twins`` (SubmitLabels' twin_conflicts: labels stored that differ from a byte-identical sample's;
    JSON key ``twin_conflicts``, when given): a line before the first 10 of them. After a Ctrl-C
    (``interrupted``, of ``total`` items): what was answered, then (stderr) how far it got and that a rerun
    continues, exit 130. ``totals``: how many entries the lists had in all (``_totals``), where the agent listed
    the first ones only; JSON then adds ``rejected_count``, ``overwritten_count``, ``twin_conflicts_count`` for a
    list that is not whole (``_counts``)."""
    verb, items, again = wording.verb, wording.items, wording.again
    n = {"rejected": len(rejected), "overwritten": len(overwritten), "twin_conflicts": len(twins or ()),
         **(totals or {})}
    if as_json:
        out: dict[str, Any] = {"accepted": accepted, "rejected": rejected, "overwritten": overwritten}
        if twins is not None:
            out["twin_conflicts"] = twins
        out.update(_counts(out, n))
        if interrupted is not None:
            out.update(interrupted=True, sent=interrupted.sent, unconfirmed=interrupted.unconfirmed, total=total)
        print(json_line(out))
    else:
        result = Console(soft_wrap=True)  # whole lines: a log file gets one line per rejection
        result.print(f"{verb} {accepted}, rejected {n['rejected']}", highlight=False)
        for r in rejected[:10]:
            result.print(printable(wording.line(r)), markup=False, highlight=False)
        if n["rejected"] > 10:
            result.print(_more(n["rejected"], len(rejected)), highlight=False)
        if n["overwritten"]:
            result.print(wording.overwrite_head.format(n=n["overwritten"]) + ":", highlight=False)
            for o in overwritten[:10]:
                result.print(printable(wording.overwrite_line(o, sent or {})), markup=False, highlight=False)
            if n["overwritten"] > 10:
                result.print(_more(n["overwritten"], len(overwritten)), highlight=False)
        if n["twin_conflicts"]:
            result.print(f"{n['twin_conflicts']} label(s) differ from the label of a sample with the exact same "
                         "bytes (a byte-identical image under another id; stored all the same, last write wins "
                         "per id):",
                         highlight=False)
            for t in (twins or [])[:10]:
                line = f"line {t['line']}: " if t["line"] else ""
                result.print(printable(f"  {line}{t['id']}: {quoted((sent or {}).get(t['id'], '?'))}, but "
                                       f"{t['twin_id']} "
                                       f"(same bytes) is {quoted(t['twin_label'])}"), markup=False, highlight=False)
            if n["twin_conflicts"] > 10:
                result.print(_more(n["twin_conflicts"], len(twins or ())), highlight=False)
    if interrupted is not None:
        answered = interrupted.sent - interrupted.unconfirmed
        console.print(f"[red]interrupted[/red] (Ctrl-C): the agent answered for {answered} of the {total} {items} "
                      f"(counted above; each request is stored on its own){_unconfirmed_note(interrupted, items)}; "
                      f"rerun the same command to continue: {again}", highlight=False)
        raise typer.Exit(INTERRUPTED_EXIT)
    if n["rejected"] and not accepted:
        raise typer.Exit(1)  # nothing done: a script must not go on as if it had been


def read_ids_file(path: Path, expected: dict[str, str] | None = None) -> list[str]:
    """Sample ids from a file: one a line (an optional header line ``id``), or a CSV whose header row has an
    ``id`` column among others (e.g. an exported labels.csv; the other columns are ignored). UTF-8 with or
    without BOM; blank lines skipped; ids stripped. ``expected`` given: the file must be such a CSV with a
    ``current`` or else a ``label`` column (an exported labels.csv), read into it per id: the label each
    sample is expected to have now; an id listed twice with two labels (an export with --history) or a
    row without a label raises LabelFileError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelFileError(f"{path} is not UTF-8 text ({e}); save it as CSV UTF-8") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    first = lines[0]
    delimiter = "," if "," in first or not ({";", "\t"} & set(first)) else (";" if ";" in first else "\t")
    try:
        head = [c.strip().lower() for c in next(csv.reader([first], delimiter=delimiter))]
    except csv.Error as e:  # a field over csv's limit (131,072 characters), a NUL byte: as ``label`` says it
        raise LabelFileError(f"{path} line 1: not readable as CSV ({e})") from None
    label_col = head.index("current") if "current" in head else head.index("label") if "label" in head else -1
    if expected is not None and ("id" not in head or label_col < 0):
        raise LabelFileError(f"{path}: --if-current needs a CSV with a header line naming the columns id and label "
                             "(the label each sample must still have to be taken back: an exported labels.csv) or "
                             "current; nothing was sent")
    if "id" not in head or len(head) == 1:
        return [ln.strip() for ln in lines if ln.strip().lower() != "id"]  # one id a line (commas and all)
    col = head.index("id")
    try:
        rows = [[exports.csv_unescape(c.strip()) for c in cells]
                for cells in csv.reader(lines[1:], delimiter=delimiter)]
    except csv.Error as e:  # a NUL byte, an unterminated quote at the end, a huge field
        raise LabelFileError(f"{path}: not readable as CSV ({e})") from None
    ids = [r[col] for r in rows if len(r) > col and r[col]]
    if expected is not None:
        problems: list[str] = []
        for r in rows:
            if len(r) <= col or not r[col]:
                continue
            lab = r[label_col] if len(r) > label_col else ""
            if not lab:
                problems.append(f"{quoted(r[col])}: no label (a retraction in an export with --history?)")
            elif expected.setdefault(r[col], lab) != lab:
                problems.append(f"{quoted(r[col])}: listed with {quoted(expected[r[col]])} and {quoted(lab)} (an "
                                "export with --history? export the current labels)")
        if problems:
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise LabelFileError(f"{path}: --if-current needs one label per id; nothing was sent:\n  "
                                 + "\n  ".join(problems[:10]) + more)
    return ids


@agent_options
def retract_labels(agent: AgentTarget,
                   ids: list[str] = typer.Argument(None, help="sample ids whose labels to take back"),
                   file: Path | None = typer.Option(None, "--file", exists=True, dir_okay=False,
                                                    help="more ids: one a line, or a CSV with an id column "
                                                         "(e.g. an exported labels.csv)"),
                   annotator: str = AnnotatorOpt, source: str = _source_opt("how: manual, review, ..."),
                   if_current: bool = typer.Option(False, "--if-current",
                                                   help="take a label back only if it is still the one in --file's "
                                                        "label column (an exported labels.csv; or a column "
                                                        "current); else the id is rejected, naming who changed it"),
                   restore_previous: bool = typer.Option(
                       False, "--restore-previous",
                       help="undo each sample's latest label instead: the label it had before comes back, in "
                            "the name of whoever gave it (unlabelled if it had none); counted as taken back"),
                   as_json: bool = JsonOpt) -> None:
    """Take labels back: the samples become unlabelled again (the history keeps the labels and the retraction).

    Without --if-current a label is taken back whoever gave it and whatever it is now; the output says which
    labels of other annotators were taken back. With --restore-previous the label before the latest one comes
    back (an undo of the last change; the history keeps the retraction and the label put back)."""
    todo = list(ids or [])
    expected: dict[str, str] | None = {} if if_current else None
    if if_current and (todo or file is None):
        console.print("[red]--if-current reads the labels the samples must still have from --file[/red] (an "
                      "exported labels.csv): give the ids there, not as arguments", highlight=False)
        raise typer.Exit(2)
    todo = _ids_given(todo, file, expected)
    stub = _rpc(agent.connect)
    stop = threading.Event()
    interrupted = None
    try:
        with _ctrl_c_stops(stop, "no more ids are sent; waiting for the agent's answer to those sent"):
            reply = _rpc(lambda: client.retract_labels(stub, todo, annotator, source=source, if_current=expected,
                                                       stop=stop, restore_previous=restore_previous))
    except client.Interrupted as e:
        reply, interrupted = e.reply, e
    rejected = [_rejection(r) for r in reply.rejected]
    overwritten = [{"id": o.id, "label": o.label, "annotator": o.annotator} for o in reply.overwritten]
    _unknown_id_hints(reply.rejected, list(ids or []), file)
    _print_reply(RETRACT_WORDING, reply.accepted, rejected, overwritten, as_json, interrupted, len(todo),
                 totals=_totals(reply))


def _unknown_id_hints(rejected: Iterable[agent_pb2.Rejection], args: list[str], file: Path | None) -> None:
    """Hints on stderr for ids the agent does not know that look like a mistake of the command line: an
    argument that is a file here (``--file`` forgotten), and ids of ``file`` holding a comma (a labels CSV's
    ``id,label`` rows without a header line: each line was read as one id, commas and all)."""
    unknown = [r.id for r in rejected if r.code == agent_pb2.REJECTION_CODE_UNKNOWN_ID]
    given = set(args)
    for sid in [u for u in unknown if u in given and os.path.isfile(u)][:3]:
        console.print(f"hint: {escape(printable(quoted(sid)))} is a file here: did you mean --file "
                      f"{escape(printable(sid))}?", highlight=False, soft_wrap=True)
    if file is not None:
        with_comma = [u for u in unknown if u not in given and "," in u]
        if with_comma:
            console.print(f"hint: {len(with_comma)} unknown id(s) of {escape(str(file))} hold a comma (e.g. "
                          f"{escape(printable(quoted(with_comma[0])))}): a file without a header line is read as "
                          "one id a line, commas and all; for a CSV of rows id,label (the labels file `shortlist "
                          "label` takes) add the header line id,label and its id column is read",
                          highlight=False, soft_wrap=True)


def _ids_given(ids: list[str], file: Path | None, expected: dict[str, str] | None) -> list[str]:
    """The sample ids of a command: ``ids`` and those of ``file`` (one a line, or a CSV with an id column;
    ``expected`` gets its label column when given); a usage error (exit 2) when the file cannot be used or
    there are none."""
    if file is not None:
        try:
            ids = ids + read_ids_file(file, expected)
        except (LabelFileError, OSError) as e:
            console.print(f"[red]cannot use {escape(str(file))}[/red]: {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
    if not ids:
        console.print("[red]no ids[/red]: give sample ids as arguments or --file FILE", highlight=False)
        raise typer.Exit(2)
    return ids


@agent_options
def delete_samples(agent: AgentTarget,
                   ids: list[str] = typer.Argument(None, help="ids of the samples to delete"),
                   file: Path | None = typer.Option(None, "--file", exists=True, dir_okay=False,
                                                    help="more ids: one a line, or a CSV with an id column"),
                   reason: str = typer.Option("", "--reason", help="why (kept with who and when; no ids are kept)"),
                   annotator: str = typer.Option(os.environ.get("USER", "cli"), "--annotator",
                                                 help="who deletes: kept in the deletion's record (the tombstone) "
                                                      "with --reason and the time"),
                   yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
                   as_json: bool = JsonOpt) -> None:
    """Delete samples for good: each sample, its payload file (unless another sample has the same bytes), its
    metadata, labels and label history, embeddings and queue places. Irreversible; backups made before still
    hold the samples (docs/agent.md, "Deleting samples")."""
    todo = _ids_given(list(ids or []), file, None)
    if not yes and not typer.confirm(f"Delete {len(todo)} sample(s) for good, with their payloads, labels and "
                                     "label history? This cannot be undone", err=True):
        console.print("nothing deleted", highlight=False)
        raise typer.Exit(1)
    stub = _rpc(agent.connect)
    interrupted = None
    try:
        reply = _rpc(lambda: client.delete_samples(stub, todo, annotator, reason))
    except client.Interrupted as e:
        reply, interrupted = e.reply, e
    rejected = [_rejection(r) for r in reply.rejected]
    _unknown_id_hints(reply.rejected, list(ids or []), file)
    if as_json:
        out = {"deleted": reply.accepted, "payloads_removed": reply.payloads_removed, "rejected": rejected,
               "rejected_count": reply.rejected_count}
        if interrupted is not None:
            out.update(interrupted=True, sent=interrupted.sent, unconfirmed=interrupted.unconfirmed, total=len(todo))
        print(json_line(out))
    else:
        result = Console(soft_wrap=True)
        result.print(f"deleted {reply.accepted}, rejected {reply.rejected_count} ({reply.payloads_removed} payload "
                     "file(s) removed)", highlight=False)
        for r in rejected[:10]:
            result.print(printable(f"  {r['id']}: {r['reason']}"), markup=False, highlight=False)
        if reply.rejected_count > 10:
            result.print(_more(reply.rejected_count, len(rejected)), highlight=False)
    if interrupted is not None:
        answered = interrupted.sent - interrupted.unconfirmed
        console.print(f"[red]interrupted[/red] (Ctrl-C): the agent answered for {answered} of the {len(todo)} ids "
                      f"(counted above); {interrupted.unconfirmed} ids were sent without an answer: the agent may "
                      "have deleted them (each request is one transaction: all of its ids or none); check with "
                      "`shortlist status` (samples_deleted) or `shortlist list-labels`, or rerun the same command "
                      "to delete the rest (ids deleted already are rejected as not stored samples)",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED_EXIT)
    if reply.rejected_count and not reply.accepted:
        # nothing deleted, as label and retract-labels: a script must not go on as if it had been. A resend
        # whose first send was applied also gets here (every id "not a stored sample": the agent keeps no id
        # of a deleted sample to tell); its reasons say so (docs/agent.md, "Exit status")
        raise typer.Exit(1)


@agent_options
def list_labels(agent: AgentTarget,
                history: bool = typer.Option(False, "--history",
                                             help="every label, change, retraction and restored label, not only "
                                                  "each sample's current label"),
                after_seq: int = typer.Option(0, "--after-seq", min=0, max=INT64_MAX,
                                              help="only records after this seq: the last seq a sync received "
                                                   "(0: from the first)"),
                limit: int = typer.Option(0, "--limit", min=0, max=INT64_MAX,
                                          help="at most this many records (0: all)"),
                as_json: bool = JsonOpt) -> None:
    """List the labels (ListLabels), oldest first: one line per record, seq first. A label sync keeps the last
    seq it printed and passes it as --after-seq next time: it gets exactly the records stored since (with
    --history, retractions too). The last line, on stderr, says the seq to resume from."""
    stub = _rpc(agent.connect)
    last = [after_seq, 0]  # [the last seq printed, records printed]

    def stream() -> None:
        for r in client.list_labels(stub, history=history, after_seq=after_seq, limit=limit):
            if r.seq == 0:  # every row of an agent that numbers them has seq >= 1
                # An agent older than the cursor (LabelRecord.seq, ListLabelsRequest.after_seq and limit): it
                # sends every record, unnumbered; a sync would take "--after-seq 0" and read everything again.
                console.print("[red]UNIMPLEMENTED[/red]: " + escape(_older_agent(
                    "its records carry no seq, and it ignores --after-seq and --limit", "ListLabels' cursor")),
                    highlight=False, soft_wrap=True)
                raise typer.Exit(1)
            if as_json:
                print(json_line({"seq": r.seq, "id": r.id, "label": r.label, "annotator": r.annotator,
                                 "time": exports.iso_time(r.time), "source": r.source,
                                 "model_version": r.model_version, "audit": r.audit, "current": r.current,
                                 "retracted": r.retracted}), flush=True)
            else:
                what = "(retracted)" if r.retracted else r.label
                fields = (str(r.seq), r.id, what, r.annotator, r.source, exports.iso_time(r.time))
                print("\t".join(printable(f) for f in fields), flush=True)  # (a tab in a field is escaped)
            last[0], last[1] = r.seq, last[1] + 1

    _rpc(stream)
    print(f"{last[1]} record(s); next sync: --after-seq {last[0]}", file=sys.stderr)


@agent_options
def rename_class(agent: AgentTarget,
                 old: str = typer.Argument(..., metavar="OLD", help="the class to rename (it is retired)"),
                 new: str = typer.Argument(..., metavar="NEW", help="its new name, or a class to merge it into"),
                 annotator: str = AnnotatorOpt, as_json: bool = JsonOpt) -> None:
    """Rename a class, or merge it into another: every label OLD becomes NEW in one transaction (the history
    keeps who gave each label; the move is recorded as --annotator's, source rename), and OLD is retired: a
    label OLD is refused from then on, naming NEW. Works on an open and a closed class list."""
    stub = _rpc(agent.connect)
    reply = _rpc(lambda: stub.RenameClass(agent_pb2.RenameClassRequest(from_class=old, to_class=new,
                                                                       annotator=annotator)),
                 interrupted=": the agent may have made the rename (one transaction: all of it or nothing); check "
                             "with `shortlist status` (its classes)")
    if as_json:
        print(json_line({"from": old, "to": new, "moved": reply.moved, "merged": reply.merged,
                         "classes": list(reply.classes)}))
        return
    how = "merged into" if reply.merged else "renamed to"
    # the result on stdout (docs/agent.md: a command's result goes there; `2>/dev/null` kept nothing)
    make_console().print(f"{escape(quoted(old))} {how} {escape(quoted(new))}: {reply.moved} label"
                  f"{'' if reply.moved == 1 else 's'} moved; classes: {escape(', '.join(reply.classes))}",
                  highlight=False)


@agent_options
def prior(agent: AgentTarget,
          method: str = typer.Option("knn", "--method", help="prior method"),
          ids: list[str] = typer.Option([], "--id", help="sample id (repeatable; default: every unlabelled)"),
          param: list[str] = typer.Option([], "--param", help="method parameter k=v (repeatable)"),
          timeout: float = TimeoutOpt,
          limit: int = typer.Option(PRIOR_TABLE_ROWS, "--limit", min=0,
                                    help="table rows to show (the rest are counted, not kept); 0 = every row, "
                                         "printed as it arrives; --json always prints every row"),
          as_json: bool = JsonOpt) -> None:
    """Prior pseudo-labels (class probabilities) for unlabelled samples."""
    stub = _rpc(agent.connect)
    req = agent_pb2.PriorLabelsRequest(method=method, ids=ids, params=_pairs(param, "--param"))
    # The reply is read as it streams, never kept whole: on a large pool a list of it and one rich Table of
    # every row took much memory in the client and printed nothing for minutes (docs/agent.md, the paragraph
    # on `shortlist prior` reading the reply as it streams, has the figure).
    rows = _rpc(lambda: stub.PriorLabels(req, timeout=_timeout(timeout)), note=_heavy_note(_timeout(timeout)))
    out = make_console()
    shown: list[tuple[str, str, str]] = []
    state: dict[str, Any] = {"n": 0, "cal": None, "version": "none"}

    def read() -> None:
        for p in rows:
            if state["n"] == 0:
                state["cal"] = p.calibration if p.HasField("calibration") else None
                state["version"] = p.model_version
                state["behind"] = p.not_embedded
            state["n"] += 1
            if as_json:
                row = {"id": p.id, "label": p.label, "confidence": p.confidence, "probs": ranked(p.probs),
                       "model_version": p.model_version}
                if state["n"] == 1 and state["cal"] is not None:  # as in the reply: on the first row only
                    row["calibration"] = calibration_dict(state["cal"])
                print(json_line(row))
            elif limit == 0:  # every row, as it arrives: a plain aligned line each
                if state["n"] == 1:
                    print(f"{method} priors ({p.model_version})\n{'id':<24} {'label':<16} confidence", flush=True)
                print(f"{printable(p.id):<24} {printable(p.label):<16} {p.confidence:.3f}")
            elif len(shown) < limit:
                shown.append((printable(p.id), printable(p.label), f"{p.confidence:.3f}"))

    _rpc(read, note=_heavy_note(_timeout(timeout)))
    cal = state["cal"]
    behind = (f"{state['behind']:,} stored samples are not embedded yet by {state['version']} (the pool is being "
              "embedded in the background): these priors cover the embedded samples only; run it again when "
              "`shortlist status` shows every sample embedded") if state.get("behind") else ""
    if as_json:
        for line in (behind, cal.warning if cal is not None else ""):  # stdout stays JSON lines
            if line:
                typer.echo(line, err=True)
        return
    if limit > 0:
        table = Table(title=f"{method} priors ({state['version']})")
        for col in ("id", "label", "confidence"):
            table.add_column(col)
        for row in shown:
            table.add_row(*(Text(cell) for cell in row))
        out.print(table)
        if state["n"] > len(shown):
            out.print(f"showing the first {len(shown):,} of {state['n']:,} rows: --limit 0 prints every row, --json "
                      "one JSON line per sample", highlight=False, soft_wrap=True)
    if cal is not None:
        out.print(calibration_line(cal), markup=False, highlight=False, soft_wrap=True)
    if behind:
        out.print(behind, style="yellow", markup=False, highlight=False, soft_wrap=True)


def label_tally(records: Iterable[agent_pb2.LabelRecord]) -> LabelTally:
    """ListLabels(history=True) counted as it streams (agent/progress.py ``LabelTally``: the Progress page's
    rule): one (label, annotator) per labelled sample is held, never the rows."""
    tally = LabelTally()
    for r in records:
        tally.add(r)
    return tally


LABELS_WORDS = ("labels given ({labels_new:,} to unlabelled samples, {labels_repeated:,} the same class again, "
                "{labels_changed:,} changed to another class)")


def deleted_events(tally: LabelTally, label_events: int | None) -> int | None:
    """What ``label_events`` (GetStatus, read before and after the history with the same value; None when it
    changed meanwhile) counts beyond the history's rows: the label rows of deleted samples plus one per
    DeleteSamples (agent/state.py keeps counting them, so the revision never goes back). None when unknown."""
    if label_events is None:
        return None
    t = tally.total.as_dict()
    rest = label_events - (t["labels_given"] + t["retracted"] + tally.renames + tally.restores)
    return rest if rest >= 0 else None


def tally_lines(tally: LabelTally, label_events: int | None = None) -> tuple[str, Table]:
    """``status --by-annotator``'s totals line and its table, one row per annotator (most labels given first).
    ``label_events``: GetStatus's, when it did not change while the history was read (``deleted_events``)."""
    t = tally.total.as_dict()
    deleted = deleted_events(tally, label_events)
    line = (f"label history: {t['labels_given']:,} " + LABELS_WORDS.format(**t) + f", {t['retracted']:,} taken "
            f"back, {tally.renames:,} moved by a class rename, {tally.restores:,} put back by an undo")
    if deleted == 0:
        line += " (label_events counts all four)"
    elif deleted is not None:
        line += (f", {deleted:,} for deletions (label rows of deleted samples, and one per DeleteSamples; "
                 "label_events counts all five)")
    else:  # labels changed while the history was read: no exact figure for the deletions
        line += (" (label_events counts all four, plus the label rows of deleted samples and one per DeleteSamples; "
                 "labels changed while the history was read: run it again for that figure)")
    table = Table(title="per annotator", caption="given = new (to an unlabelled sample) + same (the class it had "
                  "already; agreeing: another person's) + changed (to another class); held: current labels; taken "
                  "back: retractions", caption_justify="left")
    table.add_column("annotator", overflow="fold", min_width=9)
    for col in ("given", "new", "same", "agreeing", "changed", "held", "taken back"):
        table.add_column(col, justify="right")
    for name, c in sorted(tally.annotators.items(), key=lambda kv: (-kv[1].given, kv[0])):
        table.add_row(escape(name), *(f"{n:,}" for n in (c.given, c.new, c.repeated, c.agreeing, c.changed,
                                                         c.current, c.retracted)))
    return line, table


@agent_options
def status(agent: AgentTarget, as_json: bool = JsonOpt,
           by_annotator: bool = typer.Option(
               False, "--by-annotator",
               help="also count the label history per annotator (ListLabels with history, streamed): labels "
                    "given (to unlabelled samples, the same class again, changed to another class), current "
                    "labels held, labels taken back")) -> None:
    """The agent's pool, labels, serving model and available strategies."""
    stub = _rpc(agent.connect)
    s = _rpc(lambda: stub.GetStatus(agent_pb2.GetStatusRequest()))
    d = _status_dict(s)
    tally = _rpc(lambda: label_tally(client.list_labels(stub, history=True))) if by_annotator else None
    # The same label_events after the history as before: the listing saw exactly what it counts.
    events = None if tally is None or _rpc(lambda: stub.GetStatus(agent_pb2.GetStatusRequest())).label_events != \
        s.label_events else int(s.label_events)
    if as_json:
        if tally is not None:
            d |= tally.total.as_dict() | {"renamed": tally.renames, "restored": tally.restores,
                                          "deleted": deleted_events(tally, events), "annotators": [
                {"name": name, **c.as_dict()}
                for name, c in sorted(tally.annotators.items(), key=lambda kv: (-kv[1].given, kv[0]))]}
            del d["current"]  # the samples labelled: "labeled"
        print(json_line(d))
        return
    out = make_console()
    out.print(version_line(s), markup=False, highlight=False)
    for k, v in d.items():
        if k in ("agent_version", "agent_commit", "schema_version"):
            continue
        if k == "warnings":  # one a line: each is a sentence (a version refused, a calibration warning, ...)
            out.print("warnings:" if v else "warnings: none", markup=False, highlight=False)
            for w in v:
                out.print(f"  - {w}", markup=False, highlight=False, soft_wrap=True, style="yellow")
        elif k == "pending_embed_rate":
            continue  # in the pending_embedded line
        elif k == "pending_embedded" and s.pending_model_version:
            out.print(f"pending_embedded: {pending_line(s)}", markup=False, highlight=False, soft_wrap=True)
        elif k == "classes_open":
            out.print("class list: " + ("open (a new label name adds a class; `serve --classes a,b,c` closes it)"
                                        if v else "closed"), markup=False, highlight=False)
        elif k == "label_events":  # not "labels given": retractions and class renames count too
            out.print(f"label_events: {v:,} (label rows stored: labels given, taken back, moved by a class rename; "
                      "those of deleted samples too, and one per deletion; --by-annotator tells them apart)"
                      if tally is None
                      else f"label_events: {v:,}",
                      markup=False, highlight=False, soft_wrap=True)
        elif k == "samples_deleted":
            if v:  # (none deleted, the usual case: no line)
                out.print(f"samples_deleted: {v:,} (DeleteSamples, ever; `shortlist check --data-dir D` lists each "
                          "deletion: when, who, why)", markup=False, highlight=False, soft_wrap=True)
        elif k != "audit":
            out.print(f"{k}: {', '.join(v) if isinstance(v, list) else v}", markup=False, highlight=False)
    for line in audit_lines(s.audit):
        out.print(line, markup=False, highlight=False)
    if tally is not None:
        line, table = tally_lines(tally, events)
        out.print(line, markup=False, highlight=False, soft_wrap=True)
        out.print(table)


@agent_options
def export_labels(agent: AgentTarget,
                  out: Path = typer.Option(..., "--out", help="folder to create (must not exist, or be empty)"),
                  formats: str = typer.Option("csv,jsonl,imagefolder,fiftyone", "--format",
                                              help="comma-separated: csv, jsonl (labels and priors), imagefolder "
                                                   "(class folders of the labelled images), fiftyone "
                                                   "(FiftyOneImageClassificationDataset)"),
                  prior_method: str = typer.Option("knn", "--prior-method",
                                                   help="prior method for the unlabelled samples ('' = no priors)"),
                  history: bool = typer.Option(False, "--history",
                                               help="every label ever given, not only each sample's current one"),
                  follow_umask: bool = typer.Option(False, "--follow-umask",
                                                    help="files as readable as the umask lets them be (e.g. by a "
                                                         "group); by default the export is readable by its owner "
                                                         "only (folders 0700, files 0600), as the data folder"),
                  as_json: bool = JsonOpt) -> None:
    """Export labels and priors (CSV, JSON Lines), and the labelled images (ImageFolder, FiftyOne).

    Exit code 3: exported, but the images of some labelled samples are left out (their stored payload cannot be
    read); problems.csv lists them and the message says how to repair them."""
    try:
        config = exports.ExportConfig(formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
                                      prior_method=prior_method, history=history, owner_only=not follow_umask)
    except exports.ExportError as e:
        console.print(f"[red]cannot export[/red]: {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    stub = _rpc(agent.connect)
    try:
        summary = _rpc(lambda: exports.export_labels(stub, out, config))
    except (exports.ExportError, OSError) as e:
        console.print(f"[red]cannot export to {escape(str(out))}[/red]: {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # export_labels writes aside and moves the folder into place once complete
        done = out.is_dir() and any(out.iterdir())
        if as_json:
            print(json_line({"out": str(out), "interrupted": True, "complete": done}))
        console.print("[red]interrupted[/red] (Ctrl-C): " + (
            f"the export in {escape(str(out))} was complete already" if done else
            f"nothing was written to {escape(str(out))} (an export is moved into place only once complete); run "
            "the same command again"), highlight=False)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if as_json:
        print(json_line({"out": str(out), "labels": summary.labels, "priors": summary.priors,
                          "images": summary.images, "files": summary.files, "notes": summary.notes,
                          "calibration": summary.calibration, "left_out": summary.left_out}))
    else:
        make_console().print(f"exported {summary.labels} labels, {summary.priors} priors, {summary.images} images "
                             f"to {out}: {', '.join(summary.files)}", markup=False, highlight=False)  # stdout
        for note in summary.notes:
            console.print(note, markup=False, highlight=False, style="yellow")
    if summary.left_out:
        raise typer.Exit(EXPORT_LEFT_OUT_EXIT)


EXPORT_LEFT_OUT_EXIT = 3  # export-labels wrote the export, without the images of some samples (problems.csv)


# ---- shortlist backup ---------------------------------------------------------------------------------
def backup(data_dir: Path = typer.Option(..., "--data-dir", help="the agent's data folder (served or not)"),
           out: Path = typer.Option(..., "--out", help="the backup folder to create (must not exist)"),
           copy_blobs: bool = typer.Option(False, "--copy-blobs",
                                           help="copy the blobs even when --out is on their file system (by "
                                                "default they are hard-linked there: no space used, but no "
                                                "protection from a failure of that disk)"),
           as_json: bool = JsonOpt) -> None:
    """Back up a data folder while the agent serves it: a consistent copy of state.sqlite (SQLite's backup API)
    and the blobs it refers to, checked and renamed into place at the end. Restore: `shortlist restore OUT D`, or
    `shortlist serve --data-dir OUT` (docs/agent.md, "Backup and restore")."""
    from agent.backup import backup as make_backup

    summary = _copy_folder(lambda progress: make_backup(data_dir, out, link=not copy_blobs, progress=progress),
                           "back up", "backup")
    _print_copy_summary(summary, data_dir, out, as_json, "backed up")


def _copy_folder(run: Callable[[Callable[[int, int], None]], BackupSummary], verb: str,
                 noun: str) -> BackupSummary:
    """``backup``'s and ``restore``'s copy, ``run(progress)``, under a progress bar of the blobs; a refusal
    (BackupUsageError) is "cannot VERB", exit 2, a failure "NOUN failed", exit 1."""
    from agent.backup import BackupError, BackupUsageError

    try:
        with _progress() as bar:
            task = bar.add_task("blobs", total=None)
            return run(lambda done, total: bar.update(task, completed=done, total=total))
    except BackupUsageError as e:
        console.print(f"[red]cannot {verb}[/red]: {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except BackupError as e:
        console.print(f"[red]{noun} failed[/red]: {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None


def _print_copy_summary(summary: BackupSummary, data_dir: Path, out: Path, as_json: bool, did: str) -> None:
    """What ``backup`` and ``restore`` made: the summary on stdout, warnings on stderr."""
    if as_json:
        print(json_line(summary.as_dict()))
        return
    versions = ", ".join(f"{name} {status}" for name, status in summary.versions.items()) or "none"
    if not summary.blobs_kept:
        blobs = "no blobs (the folder keeps no payloads: serve --no-blobs)"
    else:
        how = ", ".join(f"{n} {what}" for n, what in ((summary.blobs_linked, "hard-linked"),
                                                     (summary.blobs_copied, "copied")) if n) or "none"
        blobs = f"{summary.blobs} blobs ({how}; {summary.blob_bytes / MIB:.1f} MiB)"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.snapshot_time))
    lines = [f"{did} {data_dir} to {out} in {summary.seconds:.1f} s: {summary.samples} samples, "
             f"{summary.labelled} labelled, label_events {summary.label_events} (as `shortlist status` counts: "
             f"deletions' rows too), {blobs}; model versions: "
             f"{versions}; schema version {summary.schema_version}; integrity_check {summary.integrity}",
             f"everything acknowledged before {when} is in it; restore: shortlist restore {out} D (or serve it: "
             f"shortlist serve --data-dir {out} --models M; the index is rebuilt from it at start)"
             if did == "backed up" else
             f"serve it: shortlist serve --data-dir {out} --models M (the index is rebuilt at start)"]
    result = Console(soft_wrap=True)  # the result on stdout, as ingest's counts: `shortlist backup ... > log` keeps it
    for line in lines:
        result.print(line, markup=False, highlight=False)
    for path in summary.removed_stale:
        console.print(f"removed {path}: left by an earlier {'backup' if did == 'backed up' else 'restore'} that was "
                      "killed (its process is gone)", style="yellow", markup=False, highlight=False)
    for path in summary.kept_stale:
        console.print(f"warning: kept {path}: the old {out} a killed `restore --force` moved aside, the only copy of "
                      "that folder's data; remove it once you know you do not need it", style="yellow",
                      markup=False, highlight=False)
    for what, digests in (("missing from", summary.missing_blobs), ("damaged in", summary.damaged_blobs)):
        if digests:
            console.print(f"warning: {len(digests)} blob(s) of its samples are {what} {data_dir / 'blobs'} (e.g. "
                          f"{digests[0]}); they are not in the {'backup' if did == 'backed up' else 'restored folder'}"
                          " either, and the agent reports those samples as not embeddable; re-ingesting the same "
                          "payloads repairs them (shortlist check --data-dir lists them)", style="yellow",
                          markup=False, highlight=False)


# ---- shortlist restore --------------------------------------------------------------------------------
def restore(backup_dir: Path = typer.Argument(..., metavar="BACKUP", help="the backup folder (made by shortlist "
                                                                          "backup)"),
            data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="the data folder to restore it as"),
            force: bool = typer.Option(False, "--force", help="replace DATA_DIR when it holds anything (its "
                                       "contents are removed once the restored folder is in place)"),
            copy_blobs: bool = typer.Option(False, "--copy-blobs", help="copy the blobs even on the backup's file "
                                            "system (by default they are hard-linked there)"),
            as_json: bool = JsonOpt) -> None:
    """Restore a backup as a data folder, safely: into a new folder beside DATA_DIR (the backup's state copied
    and checked as backup does, and the blobs it names), renamed into place, so no state.sqlite-wal of an old
    folder is replayed onto it. Refused while an agent serves DATA_DIR (stop it first) and, without --force,
    when DATA_DIR holds anything (docs/agent.md, "Backup and restore")."""
    from agent.backup import restore as do_restore

    summary = _copy_folder(lambda progress: do_restore(backup_dir, data_dir, force=force, link=not copy_blobs,
                                                       progress=progress), "restore", "restore")
    _print_copy_summary(summary, backup_dir, data_dir, as_json, "restored")


# ---- shortlist check ----------------------------------------------------------------------------------
def check(data_dir: Path = typer.Option(..., "--data-dir", help="the agent's data folder (served or not)"),
          no_blobs: bool = typer.Option(False, "--no-blobs", help="the agent runs with --no-blobs (keeps no "
                                        "payloads): do not look for payload files"),
          as_json: bool = JsonOpt) -> None:
    """Verify a data folder without changing it (served or not): state.sqlite's integrity_check, every sample's
    payload file present and hashing to its sha256; list the deletions made in it (who, when, why, how many:
    the tombstones, which hold no ids). Exit 1 when it finds a problem, each said with what to do."""
    from agent.backup import BackupUsageError
    from agent.check import check as run_check

    try:
        report = run_check(data_dir, no_blobs=no_blobs)
    except BackupUsageError as e:
        console.print(f"[red]cannot check[/red]: {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json_line(report.as_dict()))
    elif report.unfinished:  # no data folder: neither its integrity nor its schema version means anything
        for problem in report.problems:
            console.print(f"problem: {problem}", style="red", markup=False, highlight=False)
    else:
        out = Console(soft_wrap=True)
        state = "integrity_check " + ("ok" if not report.integrity else "FAILED")
        if report.integrity:
            payloads = "samples and payloads not checked (restore the folder first)"
        elif report.blobs_kept:
            bad = len(report.missing) + len(report.damaged)
            payloads = f"{report.payloads} payload file(s), " + (f"{bad} missing or damaged" if bad else
                                                                 "all present and matching their sha256")
        else:
            payloads = "no payloads kept (serve --no-blobs)"
        samples = "" if report.integrity else f"{report.samples} samples; "
        out.print(f"checked {data_dir}: state.sqlite {state}; {samples}{payloads}"
                  + (f"; {report.orphans} blob file(s) no sample names (the agent removes them at its next start)"
                     if report.orphans else ""), markup=False, highlight=False)
        out.print(schema_line(report.schema_version), markup=False, highlight=False)
        out.print(f"deletions: {len(report.deletions) or 'none'}", markup=False, highlight=False)
        for d in report.deletions:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.time))
            out.print(f"  {when}  by {quoted(d.annotator)}: {d.samples} sample(s), {d.label_rows} label row(s); reason "
                      f"{quoted(d.reason)}", markup=False, highlight=False)
        for problem in report.problems:
            console.print(f"problem: {problem}", style="red", markup=False, highlight=False)
    if not as_json:
        for left in report.leftovers:
            console.print(f"note: left beside it by an interrupted backup or restore: {left}; remove it once you "
                          "know you do not need it (a later `shortlist restore` into this folder removes the "
                          "restore's leftovers whose process is gone)", style="yellow", markup=False,
                          highlight=False)
    if report.problems:
        raise typer.Exit(1)


# ---- shortlist bench agent ---------------------------------------------------------------------------
BENCH_AGENT_MAX_IMAGES = 1_000_000  # `bench agent --n`: every image is made (or read) and held in memory first


def bench_agent(models: Path | None = typer.Option(None, "--models", help="registry to take the newest "
                                                   "version from (default: a ~0.2 GMAC CNN built here)"),
                n: int = typer.Option(3072, "--n", min=1, max=BENCH_AGENT_MAX_IMAGES,
                                      help="images to ingest, over all rounds (held in memory)"),
                batch: int | None = typer.Option(None, "--batch", min=1, max=BENCH_AGENT_MAX_IMAGES,
                                                 show_default="256, or --n when fewer",
                                                 help="images per IngestRequest and per onnxruntime call; at most "
                                                 "--n"),
                rounds: int = typer.Option(3, "--rounds", min=1, max=BENCH_AGENT_MAX_IMAGES,
                                           help="alternating raw/ingest rounds"),
                source: str | None = typer.Option(None, "--source", help="image source (default: synthetic JPEGs)"),
                cpu: bool = typer.Option(False, "--cpu", help="never try CUDAExecutionProvider"),
                as_json: bool = JsonOpt) -> None:
    """Images/s of (a) raw onnxruntime on preprocessed batches and (b) the same model through gRPC
    Ingest end to end (JPEG decode, blobs flushed, SQLite commit, index add), and their ratio."""
    from agent.bench import bench_ingest
    from shortlist.datasets import resolve_source

    # a round is at least one batch (agent.bench): a batch above --n would make and time that many images
    if batch is None:
        batch = min(256, n)
    elif batch > n:
        raise typer.BadParameter(f"{batch} is more than the {n} images of --n: give --batch {n} or less, or a "
                                 "larger --n", param_hint="--batch")
    if source is not None:
        try:
            resolve_source(source)  # before the model is loaded and the agent started: said at once
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="--source") from None
    try:
        with _warnings_of("shortlist.datasets"), _warnings_of("agent.bench"):  # files of --source left out
            r = bench_ingest(models, n=n, batch=batch, rounds=rounds, source=source, use_cuda=not cpu)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if as_json:
        print(json_line(r))
        return
    out = make_console()
    out.print(f"model {r['model']} on {r['provider']}, input {r['input'][0]}x{r['input'][1]}, "
              f"{r['rounds']} rounds of {r['images_per_round']} images, batch {r['batch']}")
    fmt = ", ".join
    out.print(f"(a) raw onnxruntime:         {r['raw_median']:9.1f} images/s  "
              f"(rounds: {fmt(f'{v:.1f}' for v in r['raw_images_per_s'])})")
    out.print(f"(b) gRPC Ingest end to end:  {r['ingest_median']:9.1f} images/s  "
              f"(rounds: {fmt(f'{v:.1f}' for v in r['ingest_images_per_s'])})")
    out.print(f"ratio (b)/(a), median:       {r['ratio_median']:9.3f}  "
              f"(rounds: {fmt(f'{v:.3f}' for v in r['ratios'])}; goal >= 0.9)")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("ingest")(ingest)
    app.command("select", cls=_StrategyHelp)(select)
    app.command("label")(label)
    app.command("retract-labels")(retract_labels)
    app.command("delete-samples")(delete_samples)
    app.command("rename-class")(rename_class)
    app.command("list-labels")(list_labels)
    app.command("prior", cls=_PriorHelp)(prior)
    app.command("status")(status)
    app.command("export-labels")(export_labels)
    app.command("backup")(backup)
    app.command("restore")(restore)
    app.command("check")(check)
    app.command("web")(web)
    bench_app.command("agent")(bench_agent)
    from agent.models_cli import models_app
    from agent.models_import import import_command

    models_app.command("import")(import_command)

    app.add_typer(models_app, name="models")
