"""The options every command that talks to an agent shares, added by one decorator.

    @agent_options
    def status(agent: AgentTarget, as_json: bool = JsonOpt) -> None:
        stub = agent.connect()

``agent_options`` replaces the command's ``agent: AgentTarget`` parameter by ``--agent``, ``--tls-ca``,
``--tls-cert``, ``--tls-key``, ``--tls-server-name``, ``--token``, ``--connect-timeout`` and
``--busy-retry-s`` (each also from its environment variable) and hands the command one ``AgentTarget`` built from them.
Each such group of options is made by ``option_group``: its options and the function that builds the object.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from agent import client
from agent.config import WorkConfig
from agent.limits import MIB, Limits
from shortlist.v1 import agent_pb2_grpc

if TYPE_CHECKING:
    from agent.web.config import LabelStudioConfig

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_ADDRESS = "127.0.0.1:50051"
# The largest values of the protobuf integer types (agent.proto): an option that goes into a request field
# takes its field's maximum as typer's max=, so a larger number is a usage error (exit 2, naming the range)
# rather than protobuf's "ValueError: Value out of range" traceback when the request is built.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class AgentTarget:
    """Where the agent is and how to reach it."""

    address: str
    config: client.ClientConfig

    def connect(self) -> agent_pb2_grpc.AgentStub:
        return client.connect(self.address, config=self.config)


def _option(name: str, annotation: object, option: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


_PARAMS = [
    _option("agent", str, typer.Option(
        DEFAULT_ADDRESS, "--agent", envvar="SHORTLIST_AGENT", help="HOST:PORT of a running agent")),
    _option("tls_ca", Path | None, typer.Option(
        None, "--tls-ca", envvar="SHORTLIST_TLS_CA", dir_okay=False,
        help="use TLS, trusting agent certificates signed by this CA (PEM)")),
    _option("tls_cert", Path | None, typer.Option(
        None, "--tls-cert", envvar="SHORTLIST_TLS_CERT", dir_okay=False,
        help="this client's certificate (PEM), for an agent that requires client certificates (mutual TLS)")),
    _option("tls_key", Path | None, typer.Option(
        None, "--tls-key", envvar="SHORTLIST_TLS_KEY", dir_okay=False, help="the private key of --tls-cert (PEM)")),
    _option("tls_server_name", str, typer.Option(
        "", "--tls-server-name", envvar="SHORTLIST_TLS_SERVER_NAME",
        help="the name to expect in the agent's certificate (default: the host of --agent)")),
    _option("token", str, typer.Option(
        "", "--token", envvar="SHORTLIST_TOKEN", show_default=False,
        help="bearer token for an agent started with --tokens (prefer the environment variable: a command "
             "line is visible to other users)")),
    _option("connect_timeout", float, typer.Option(
        client.CONNECT_TIMEOUT_S, "--connect-timeout", envvar="SHORTLIST_CONNECT_TIMEOUT", min=0.1,
        help="seconds to wait for the agent to answer")),
    _option("busy_retry_s", float, typer.Option(
        client.BusyRetry().max_wait_s, "--busy-retry-s", envvar="SHORTLIST_BUSY_RETRY_S", min=0.0,
        help="when the agent is busy (RESOURCE_EXHAUSTED with a retry hint), retry Select, PriorLabels and "
             "reads after the hinted wait for at most this many seconds of waiting per call; 0 = never")),
]


def option_group(param: str, params: list[inspect.Parameter], build: Callable[[dict[str, Any]], object], *,
                 in_place: bool = False) -> Callable[[F], F]:
    """A decorator that gives a command the options ``params`` in place of its parameter ``param`` and hands
    it ``build(values)``, values by option parameter name (``build`` may raise typer.BadParameter: a usage
    error, exit 2). The options go at the end of the command's own (its ``--help`` order), or where ``param``
    stood with ``in_place``."""
    names = [p.name for p in params]

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        if param not in sig.parameters:
            raise TypeError(f"{fn.__name__} needs a parameter `{param}`")

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return fn(**{param: build(values)}, **kwargs)

        own = [p for p in sig.parameters.values() if p.name != param]
        at = list(sig.parameters).index(param) if in_place else len(own)
        new = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + params + own[at:]]
        wrapper.__signature__ = sig.replace(parameters=new)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new if p.annotation is not inspect.Parameter.empty}
        return wrapper  # type: ignore[return-value]

    return decorate


def _agent_target(values: dict[str, Any]) -> AgentTarget:
    address = str(values["agent"])
    scheme = re.match(r"(?i)(https?|grpcs?)://", address)
    if scheme:  # gRPC would take "http" as a name-resolver scheme it lacks and wait, then say no agent answers
        raise typer.BadParameter(f"--agent takes HOST:PORT without a scheme: drop {scheme.group(0)!r} (got "
                                 f"{address!r}; TLS is --tls-ca)", param_hint="'--agent' / SHORTLIST_AGENT")
    port = address.rpartition(":")[2]
    if not address.startswith("unix:") and not (port.isdigit() and 0 < int(port) < 65536 and address[0] != ":"):
        raise typer.BadParameter(f"--agent takes HOST:PORT, e.g. 127.0.0.1:50051 (got {address!r})",
                                 param_hint="'--agent' / SHORTLIST_AGENT")
    if (problem := client.token_problem(values["token"] or "")) is not None:  # before connecting, not INTERNAL
        raise typer.BadParameter(problem, param_hint="'--token' / SHORTLIST_TOKEN")
    config = client.ClientConfig(tls_ca=values["tls_ca"], tls_cert=values["tls_cert"], tls_key=values["tls_key"],
                                 tls_server_name=values["tls_server_name"], token=values["token"],
                                 connect_timeout=values["connect_timeout"],
                                 busy_retry=client.busy_retry(values["busy_retry_s"]))
    return AgentTarget(values["agent"], config)


# Give a command the shared agent-connection options in place of its ``agent: AgentTarget`` parameter.
agent_options = option_group("agent", _PARAMS, _agent_target)


def optional_agent_options(agent_help: str) -> Callable[[F], F]:
    """``agent_options`` for a command that asks an agent only when --agent is given (``models list``): its
    ``agent: AgentTarget | None`` parameter is None without --agent (no default address, no SHORTLIST_AGENT: a
    set variable must not make it call out); --token, --tls-* and the rest as every agent command has them."""
    agent = _option("agent", str | None, typer.Option(None, "--agent", help=agent_help, show_default=False))
    return option_group("agent", [agent, *_PARAMS[1:]],
                        lambda values: None if values["agent"] is None else _agent_target(values))


# ---- the Label Studio backend's options (``serve --web-port`` and ``web``) ---------------------------
_LS_PARAMS = [
    _option("labelstudio_match", str, typer.Option(
        "url", "--labelstudio-match", envvar="SHORTLIST_LABELSTUDIO_MATCH",
        help="how a Label Studio task finds its sample: `url` (the image URL ends with the sample id), "
             "`field:NAME` (task data field NAME holds the id) or `regex:PATTERN` (on the image URL; group `id`, "
             "else group 1, is the id); docs/app.md, Label Studio")),
    _option("labelstudio_strategy", str, typer.Option(
        "typiclust", "--labelstudio-strategy", envvar="SHORTLIST_LABELSTUDIO_STRATEGY",
        help="the Select strategy whose order Label Studio's prediction scores follow")),
    _option("labelstudio_budget", int, typer.Option(
        100, "--labelstudio-budget", envvar="SHORTLIST_LABELSTUDIO_BUDGET", min=1, max=INT32_MAX,
        help="how many samples that selection ranks first")),
    _option("labelstudio_seed", int, typer.Option(
        0, "--labelstudio-seed", envvar="SHORTLIST_LABELSTUDIO_SEED", min=0, max=UINT64_MAX,
        help="the selection's seed")),
    _option("labelstudio_prior", str, typer.Option(
        "knn", "--labelstudio-prior", envvar="SHORTLIST_LABELSTUDIO_PRIOR",
        help="the prior method of Label Studio's pre-annotations")),
]


def _labelstudio_config(values: dict[str, Any]) -> LabelStudioConfig:
    from agent.web.config import LabelStudioConfig, MatchRule

    try:
        return LabelStudioConfig(match=MatchRule.parse(values["labelstudio_match"]),
                                 strategy=values["labelstudio_strategy"], budget=values["labelstudio_budget"],
                                 seed=values["labelstudio_seed"], prior=values["labelstudio_prior"])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


# Give a command the Label Studio backend's options in place of its ``labelstudio: LabelStudioConfig``
# parameter (a bad --labelstudio-match is a usage error, exit 2).
labelstudio_options = option_group("labelstudio", _LS_PARAMS, _labelstudio_config)


# ---- the agent's input limits and heavy-work lanes (``serve``; agent/limits.py, agent/config.py) ------
# Defaults from the dataclasses (Limits(), WorkConfig()): they are defined there once.
LIMITS = Limits()
WORK = WorkConfig()

_LIMITS_PARAMS = [
    _option("max_message_mb", int, typer.Option(
        LIMITS.max_message_bytes // MIB, "--max-message-mb", min=1, help="largest gRPC message accepted")),
    _option("max_samples_per_request", int, typer.Option(
        LIMITS.max_samples_per_request, "--max-samples-per-request", min=1,
        help="samples in one IngestRequest message")),
    _option("max_image_mb", float, typer.Option(
        LIMITS.max_image_bytes / MIB, "--max-image-mb", min=0.001,
        help="encoded image (or raw tensor) size of one sample")),
    _option("max_pixels", int, typer.Option(
        LIMITS.max_pixels, "--max-pixels", min=1, help="decoded pixels (H x W) of one image, checked from its header")),
    _option("max_id_chars", int, typer.Option(
        LIMITS.max_id_chars, "--max-id-chars", min=1, help="sample id length")),
    _option("max_label_chars", int, typer.Option(
        LIMITS.max_label_chars, "--max-label-chars", min=1, help="label and annotator name length")),
    _option("max_uri_chars", int, typer.Option(LIMITS.max_uri_chars, "--max-uri-chars", min=1, help="uri length")),
    _option("max_metadata_entries", int, typer.Option(
        LIMITS.max_metadata_entries, "--max-metadata-entries", min=1,
        help="metadata entries of one sample (and --where filters)")),
    _option("max_metadata_chars", int, typer.Option(
        LIMITS.max_metadata_chars, "--max-metadata-chars", min=1, help="length of each metadata key and value")),
    _option("max_ids_per_request", int, typer.Option(
        LIMITS.max_ids_per_request, "--max-ids-per-request", min=1,
        help="labels in one SubmitLabels, ids in one PriorLabels")),
    _option("max_budget", int, typer.Option(
        LIMITS.max_select_budget, "--max-budget", min=1, help="largest Select budget")),
    _option("max_ingest_streams", int, typer.Option(
        LIMITS.max_ingest_streams, "--max-ingest-streams", min=1,
        help="Ingest streams served at once (more: RESOURCE_EXHAUSTED)")),
    _option("ingest_idle_timeout", float, typer.Option(
        LIMITS.ingest_idle_timeout_s, "--ingest-idle-timeout", min=1.0,
        help="seconds an Ingest stream may send nothing before the agent ends it (DEADLINE_EXCEEDED) to free its "
             "slot")),
    _option("max_server_streams", int, typer.Option(
        LIMITS.max_server_streams, "--max-server-streams", min=1,
        help="server streams (ListSamples, ListLabels, GetMap, PriorLabels) served at once (more: "
             "RESOURCE_EXHAUSTED)")),
    _option("stream_stall_timeout", float, typer.Option(
        LIMITS.stream_stall_timeout_s, "--stream-stall-timeout", min=0.1,
        help="seconds a server stream may wait for its client to take a message, or a unary call for its request "
             "message, before the agent cancels it")),
    _option("max_connections", int, typer.Option(
        LIMITS.max_connections, "--max-connections", min=1,
        help="TCP connections to the gRPC port at once (more are closed as they come)")),
    _option("handshake_timeout", float, typer.Option(
        LIMITS.handshake_timeout_s, "--handshake-timeout", min=0.1,
        help="seconds a new connection may take for its TLS handshake and HTTP/2 preface before it is closed")),
    _option("connection_idle_timeout", float, typer.Option(
        LIMITS.connection_idle_timeout_s, "--connection-idle-timeout", min=1.0,
        help="seconds a connection with no call in flight stays open")),
]


def _limits(values: dict[str, Any]) -> Limits:
    try:
        return Limits(max_message_bytes=values["max_message_mb"] * MIB,
                      max_samples_per_request=values["max_samples_per_request"],
                      max_image_bytes=round(values["max_image_mb"] * MIB), max_pixels=values["max_pixels"],
                      max_id_chars=values["max_id_chars"], max_label_chars=values["max_label_chars"],
                      max_uri_chars=values["max_uri_chars"], max_metadata_entries=values["max_metadata_entries"],
                      max_metadata_chars=values["max_metadata_chars"],
                      max_ids_per_request=values["max_ids_per_request"], max_select_budget=values["max_budget"],
                      max_ingest_streams=values["max_ingest_streams"],
                      ingest_idle_timeout_s=values["ingest_idle_timeout"],
                      max_server_streams=values["max_server_streams"],
                      stream_stall_timeout_s=values["stream_stall_timeout"],
                      max_connections=values["max_connections"], handshake_timeout_s=values["handshake_timeout"],
                      connection_idle_timeout_s=values["connection_idle_timeout"])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


# Give ``serve`` the input limits' options (LIMIT_FLAGS) where its ``limits: Limits`` parameter stands.
limits_options = option_group("limits", _LIMITS_PARAMS, _limits, in_place=True)

_WORK_PARAMS = [
    _option("max_concurrent_work", int, typer.Option(
        WORK.max_concurrent, "--max-concurrent-work", min=1, help="Selects / PriorLabels computed at once")),
    _option("max_queued_work", int, typer.Option(
        WORK.max_queued, "--max-queued-work", min=0,
        help="Selects / PriorLabels waiting for a turn; beyond, RESOURCE_EXHAUSTED with a retry hint")),
    _option("max_queue_wait", float, typer.Option(
        WORK.max_queue_wait_s or 0.0, "--max-queue-wait", min=0.0,
        help="seconds a heavy Select / PriorLabels may wait for a turn before RESOURCE_EXHAUSTED with a retry hint "
             "(0: until its deadline)")),
    _option("max_concurrent_light", int, typer.Option(
        WORK.light_max_concurrent, "--max-concurrent-light", min=1,
        help="light Selects (random, margin, ...) computed at once")),
    _option("max_queued_light", int, typer.Option(
        WORK.light_max_queued, "--max-queued-light", min=0, help="light Selects waiting for a turn")),
    _option("max_concurrent_decodes", int, typer.Option(
        WORK.decode_max_concurrent, "--max-concurrent-decodes", min=1,
        help="images above --large-image-pixels decoded at once (Ingest, and GetImages thumbnails)")),
    _option("max_queued_decodes", int, typer.Option(
        WORK.decode_max_queued, "--max-queued-decodes", min=0,
        help="large images waiting to be decoded; beyond, that Ingest or GetImages is RESOURCE_EXHAUSTED with a "
             "retry hint")),
    _option("large_image_pixels", int, typer.Option(
        WORK.large_image_pixels, "--large-image-pixels", min=0,
        help="images above this many pixels decode in the bounded decode lane")),
]


def _work(values: dict[str, Any]) -> WorkConfig:
    try:
        return WorkConfig(max_concurrent=values["max_concurrent_work"], max_queued=values["max_queued_work"],
                          max_queue_wait_s=values["max_queue_wait"] or None,
                          light_max_concurrent=values["max_concurrent_light"],
                          light_max_queued=values["max_queued_light"],
                          decode_max_concurrent=values["max_concurrent_decodes"],
                          decode_max_queued=values["max_queued_decodes"],
                          large_image_pixels=values["large_image_pixels"])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


# Give ``serve`` the heavy-work lanes' options where its ``work: WorkConfig`` parameter stands.
work_options = option_group("work", _WORK_PARAMS, _work, in_place=True)


# ---- the web app's guards (``serve --web-port`` and ``web``; agent/web/guards.py) ---------------------
WebAllowedHostsOpt = typer.Option(
    "", "--web-allowed-hosts", envvar="SHORTLIST_WEB_ALLOWED_HOSTS", show_default=False,
    help="more names the web app answers to (comma-separated, e.g. the name Label Studio or a reverse proxy "
         "calls it by; *.example.com for a domain, * for any). Default: localhost, 127.0.0.1 and [::1]; on a "
         "non-loopback address also that address, this machine's names and the HTTPS certificate's")

WebMaxBodyMbOpt = typer.Option(
    16.0, "--web-max-body-mb", envvar="SHORTLIST_WEB_MAX_BODY_MB", min=0.001,
    help="the web app's largest request body in MiB (a labels batch or a Label Studio webhook; bigger ones are "
         "refused with 413 before they are read)")


def host_list(text: str) -> tuple[str, ...]:
    """--web-allowed-hosts' comma-separated names (blanks dropped)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
