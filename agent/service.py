"""The gRPC servicer: a thin translation between shortlist.v1 messages and agent.core.Agent.

Errors: the servicer raises, it never aborts; agent.errors.ErrorMapping (installed here as the outermost
interceptor) turns every exception of every RPC into its status code, parses requests itself (malformed
bytes: INVALID_ARGUMENT) and maps errors raised mid-stream. Messages larger than
``Limits.max_message_bytes`` are refused by gRPC itself with RESOURCE_EXHAUSTED. The standard health
service and server reflection are registered beside ``shortlist.v1.Agent``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.audit import Accuracy, AuditReport
from agent.cancel import CancelToken
from agent.client import LABEL_EVENTS_KEY
from agent.config import AgentConfig
from agent.core import Agent, AgentStatus, Replaced, SelectQuery
from agent.errors import Behaviour, ErrorMapping, rejection_message, rewrap_handler
from agent.ingest import Incoming
from agent.lazy import warm_in_background
from agent.limits import Limits
from agent.memory import IdleTrim
from agent.priors.calibration import TemperatureFit
from agent.queues import QueueData
from agent.security import READ_ONLY_CALL
from agent.streams import OPEN_SERVICE_SLOTS, RequestGuard, StreamGuard
from shortlist.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name


def incoming(s: agent_pb2.Sample) -> Incoming:
    """A Sample message -> agent.ingest.Incoming (the blob kept for a tensor is its serialised message).
    ``annotator``, ``label_time`` and ``label_source`` are ListSamples output and ignored here (Google's AIP-203
    on output-only fields): a sample read with ListSamples goes back to Ingest as it is."""
    kind = s.WhichOneof("payload")
    if kind == "encoded_image":
        return Incoming(s.id, "image", s.encoded_image, s.encoded_image, uri=s.uri, metadata=dict(s.metadata),
                        label=s.label)
    if kind == "tensor":
        t = s.tensor
        return Incoming(s.id, "tensor", t.data, t.SerializeToString(deterministic=True), dtype=t.dtype,
                        shape=tuple(int(d) for d in t.shape), uri=s.uri, metadata=dict(s.metadata), label=s.label)
    return Incoming(s.id, "", b"", b"", uri=s.uri, metadata=dict(s.metadata), label=s.label)


def accuracy_message(a: Accuracy) -> agent_pb2.Accuracy:
    return agent_pb2.Accuracy(correct=a.correct, total=a.total, accuracy=a.accuracy, low=a.low, high=a.high)


def calibration_message(fit: TemperatureFit) -> agent_pb2.Calibration:
    """PriorLabel.calibration for a reply whose confidences were calibrated by ``fit``."""
    return agent_pb2.Calibration(source=fit.fitting_set, held_out=fit.samples, temperature=fit.temperature,
                                 audit_labels=fit.audit_labels, warning=fit.warning(), left_out=fit.left_out)


def audit_message(r: AuditReport) -> agent_pb2.PriorAudit:
    return agent_pb2.PriorAudit(
        drawn=r.drawn, labelled=r.labelled, current=r.current, model_version=r.model_version,
        confidence_level=r.confidence_level, interval_method=r.interval_method, computed_at=r.computed_at,
        error=r.error, left_out=r.left_out,
        methods=[agent_pb2.PriorAccuracy(
            method=m.method, overall=None if m.overall is None else accuracy_message(m.overall),
            per_class=[agent_pb2.ClassAccuracy(class_name=c, accuracy=accuracy_message(a)) for c, a in m.per_class],
            mean_confidence=m.mean_confidence, error=m.error) for m in r.methods])


def status_message(st: AgentStatus) -> agent_pb2.Status:
    return agent_pb2.Status(samples=st.samples, labeled=st.labeled, embedded=st.embedded,
                            model_version=st.model_version, strategies=st.strategies,
                            prior_methods=st.prior_methods, classes=st.classes,
                            pending_model_version=st.pending_model_version, pending_embedded=st.pending_embedded,
                            pending_embed_rate=st.pending_embed_rate,
                            warnings=st.warnings, audit=audit_message(st.audit),
                            classes_open=st.classes_open, label_events=st.label_events,
                            agent_version=st.agent_version, agent_commit=st.agent_commit,
                            schema_version=st.schema_version, samples_deleted=st.samples_deleted)


def queue_message(q: QueueData) -> agent_pb2.Queue:
    return agent_pb2.Queue(name=q.name, ids=q.ids, source=q.source, strategy=q.strategy, params=q.params,
                           model_version=q.model_version, selection_id=q.selection_id, details=q.details,
                           created=q.created, marks=q.marks)


def replaced_message(r: Replaced) -> agent_pb2.Replaced:
    """A label another annotator gave that SubmitLabels replaced or RetractLabels took back."""
    return agent_pb2.Replaced(id=r.id, label=r.label, annotator=r.annotator)


# The most bytes of entries one list of a unary reply that lists per-item outcomes holds (IngestReply.rejected,
# SubmitLabelsReply's and RetractLabelsReply's lists; the rest is counted in its *_count field): at most 4
# such lists in a reply, so every reply stays well under a default client's 4 MiB receive limit, whatever
# the request (a reply over it reaches the client as RESOURCE_EXHAUSTED although the request was applied).
REPLY_LIST_BYTES = 512 * 1024
# A list entry's framing beside its own ByteSize: the field tag and the length varint.
_ENTRY_FRAMING = 6

T = TypeVar("T")
M = TypeVar("M", agent_pb2.Rejection, agent_pb2.Replaced, agent_pb2.Agreement, agent_pb2.TwinConflict)


def capped(items: Iterable[T], make: Callable[[T], M], budget: int = REPLY_LIST_BYTES) -> list[M]:
    """The messages ``make`` builds of ``items``, in order, up to the first that would take the list past
    ``budget`` bytes (only those are built)."""
    out: list[M] = []
    used = 0
    for item in items:
        msg = make(item)
        used += msg.ByteSize() + _ENTRY_FRAMING
        if used > budget:
            break
        out.append(msg)
    return out


# gRPC's time_remaining() for a call without a deadline: about 2**63 ns in seconds (9223372035 s); any
# figure above this (over 30 years) is no deadline.
NO_DEADLINE_S = 1e9


# ReloadModel waits at most this long for the model manager to look at the registry (``ModelManager.reload``),
# and leaves at least the margin of the call's deadline for its reply.
RELOAD_WAIT_S = 5.0
RELOAD_REPLY_MARGIN_S = 0.2


def deadline_s(remaining: float | None) -> float | None:
    """Seconds left of a call's deadline as gRPC says it, None for a call without one (gRPC answers a huge
    number then: admission must not judge, nor log, a call as having 9223372035058190336 s left)."""
    return None if remaining is None or remaining > NO_DEADLINE_S else remaining


def call_token(context: grpc.ServicerContext) -> CancelToken:
    """A cancellation token for this call's heavy work: cancelled when the client cancels or leaves, and
    past the call's deadline (if it has one)."""
    token = CancelToken.within(deadline_s(context.time_remaining()))
    if not context.add_callback(lambda: token.cancel("the client cancelled the call")):
        token.cancel("the call had already ended")
    return token


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, agent: Agent, warnings: Sequence[str] = ()) -> None:
        self.agent = agent
        self.warnings = list(warnings)  # about how the server runs (e.g. --insecure), shown in GetStatus

    def _status(self) -> agent_pb2.Status:
        msg = status_message(self.agent.status())
        msg.warnings.extend(self.warnings)
        return msg

    def Ingest(self, request_iterator: Iterator[agent_pb2.IngestRequest],
               context: grpc.ServicerContext) -> agent_pb2.IngestReply:
        """Ingest: store and embed the streamed samples (docs/agent.md, API)."""
        # The pipeline (agent.ingest) reads the stream lazily in its own thread.
        batches = ([incoming(s) for s in req.samples] for req in request_iterator)
        total = self.agent.ingest.stream(batches, active=context.is_active, token=call_token(context))
        return agent_pb2.IngestReply(
            accepted=total.accepted, duplicates=total.duplicates, labels_added=total.labels_added,
            rejected=capped(total.rejected, rejection_message),
            rejected_count=len(total.rejected), same_payload=total.same_payload,
            same_payload_examples=[agent_pb2.SamePayload(id=i, other_id=o) for i, o in total.same_payload_examples],
            duplicates_other_uri=total.other_uri,
            other_uri_example=None if total.other_uri_example is None else agent_pb2.OtherUri(
                id=total.other_uri_example[0], stored_uri=total.other_uri_example[1],
                sent_uri=total.other_uri_example[2]),
            twin_conflicts=total.twin_conflicts,
            twin_conflict_examples=[agent_pb2.TwinConflict(id=i, twin_id=t, twin_label=lb)
                                    for i, t, lb in total.twin_conflict_examples])

    def Select(self, request: agent_pb2.SelectRequest, context: grpc.ServicerContext) -> agent_pb2.SelectReply:
        """Select: the strategy's ``budget`` picks (docs/agent.md, API)."""
        query = SelectQuery(request.budget, request.strategy, dict(request.params), request.seed, dict(request.where),
                            request.group_by, request.max_per_group)
        res = self.agent.select(query, call_token(context), record=not READ_ONLY_CALL.get())
        return agent_pb2.SelectReply(selected=[agent_pb2.Selected(id=i, score=s) for i, s in res.selected],
                                     model_version=res.model_version, strategy=res.strategy,
                                     selection_id=res.selection_id, details=res.details)

    def SubmitLabels(self, request: agent_pb2.SubmitLabelsRequest,
                     context: grpc.ServicerContext) -> agent_pb2.SubmitLabelsReply:
        """SubmitLabels: record labels, with what they overwrote or agreed with (docs/agent.md, API)."""
        replaced: list[Replaced] = []
        agreed: list[tuple[str, tuple[str, str]]] = []
        twins: list[tuple[str, str, str]] = []
        accepted, rejected = self.agent.submit_labels(
            [(a.id, a.label) for a in request.labels], request.annotator, request.source,
            {a.id: a.if_current for a in request.labels if a.HasField("if_current")}, replaced, agreed, twins)
        return agent_pb2.SubmitLabelsReply(
            accepted=accepted, rejected=capped(rejected, rejection_message), rejected_count=len(rejected),
            overwritten=capped(replaced, replaced_message), overwritten_count=len(replaced),
            agreed=capped(agreed, lambda a: agent_pb2.Agreement(id=a[0], now=agent_pb2.LabelNow(label=a[1][0],
                                                                                                 annotator=a[1][1]))),
            agreed_count=len(agreed),
            twin_conflicts=capped(twins, lambda t: agent_pb2.TwinConflict(id=t[0], twin_id=t[1], twin_label=t[2])),
            twin_conflicts_count=len(twins))

    def RetractLabels(self, request: agent_pb2.RetractLabelsRequest,
                      context: grpc.ServicerContext) -> agent_pb2.RetractLabelsReply:
        """RetractLabels: take labels back (docs/agent.md, API)."""
        replaced: list[Replaced] = []
        accepted, rejected = self.agent.retract_labels(list(request.ids), request.annotator, request.source,
                                                       dict(request.if_current), replaced,
                                                       request.restore_previous)
        return agent_pb2.RetractLabelsReply(accepted=accepted, rejected=capped(rejected, rejection_message),
                                            rejected_count=len(rejected),
                                            overwritten=capped(replaced, replaced_message),
                                            overwritten_count=len(replaced))

    def DeleteSamples(self, request: agent_pb2.DeleteSamplesRequest,
                      context: grpc.ServicerContext) -> agent_pb2.DeleteSamplesReply:
        """DeleteSamples: delete samples for good (docs/agent.md, "Deleting samples")."""
        accepted, rejected, removed = self.agent.delete_samples(list(request.ids), request.annotator, request.reason)
        return agent_pb2.DeleteSamplesReply(accepted=accepted, rejected=capped(rejected, rejection_message),
                                            rejected_count=len(rejected), payloads_removed=removed)

    def RenameClass(self, request: agent_pb2.RenameClassRequest,
                    context: grpc.ServicerContext) -> agent_pb2.RenameClassReply:
        """RenameClass: rename or merge a class, retiring the old name (docs/agent.md, API)."""
        moved, merged, classes = self.agent.rename_class(request.from_class, request.to_class, request.annotator)
        return agent_pb2.RenameClassReply(moved=moved, merged=merged, classes=classes)

    def GetQueue(self, request: agent_pb2.GetQueueRequest, context: grpc.ServicerContext) -> agent_pb2.Queue:
        """GetQueue: a named queue of sample ids (docs/agent.md, API)."""
        return queue_message(self.agent.queues.get(request.name))

    def UpdateQueue(self, request: agent_pb2.UpdateQueueRequest, context: grpc.ServicerContext) -> agent_pb2.Queue:
        """UpdateQueue: replace a queue or mark its items (docs/agent.md, API)."""
        replace = None
        if request.HasField("queue"):
            q = request.queue
            replace = QueueData(request.name, list(q.ids), q.source, q.strategy, dict(q.params), q.model_version,
                                q.selection_id, dict(q.details))
        return queue_message(self.agent.queues.update(request.name, replace,
                                                      [(m.id, m.mark) for m in request.marks],
                                                      request.if_created if request.HasField("if_created") else None))

    def PriorLabels(self, request: agent_pb2.PriorLabelsRequest,
                    context: grpc.ServicerContext) -> Iterator[agent_pb2.PriorLabel]:
        """PriorLabels: one prior label per requested id, streamed (docs/agent.md, API)."""
        for r in self.agent.prior_labels(request.method, list(request.ids), dict(request.params),
                                         call_token(context)):
            msg = agent_pb2.PriorLabel(id=r.id, label=r.label, confidence=r.confidence, probs=r.probs,
                                       model_version=r.model_version, not_embedded=r.not_embedded)
            if r.calibration is not None:  # the first row only (agent/core.py)
                msg.calibration.CopyFrom(calibration_message(r.calibration))
            yield msg

    def ListSamples(self, request: agent_pb2.ListSamplesRequest,
                    context: grpc.ServicerContext) -> Iterator[agent_pb2.Sample]:
        """ListSamples: the stored samples, streamed (docs/agent.md, API); the labels are one snapshot taken at
        the call's start, and its label revision (Status.label_events) is sent as initial metadata
        (LABEL_EVENTS_KEY), so a caller can record which labels it got."""
        events, rows = self.agent.list_samples_at(request.labeled_only, request.include_payload, list(request.ids))
        context.send_initial_metadata(((LABEL_EVENTS_KEY, str(events)),))
        for rec, label, data, given in rows:
            msg = agent_pb2.Sample(id=rec.id, uri=rec.uri, metadata=rec.metadata, label=label)
            if given is not None:
                msg.annotator, msg.label_time, msg.label_source = given
            if data:
                if rec.kind == "tensor":
                    msg.tensor.CopyFrom(agent_pb2.Tensor.FromString(data))
                else:
                    msg.encoded_image = data
            yield msg

    def ListLabels(self, request: agent_pb2.ListLabelsRequest,
                   context: grpc.ServicerContext) -> Iterator[agent_pb2.LabelRecord]:
        """ListLabels: the current labels, or their whole history, from a cursor on (docs/agent.md, API)."""
        for e in self.agent.list_labels(request.history, request.after_seq, request.limit):
            yield agent_pb2.LabelRecord(id=e.id, label=e.label, annotator=e.annotator, time=e.time, source=e.source,
                                        model_version=e.model_version, audit=e.audit, current=e.current,
                                        retracted=e.retracted, seq=e.row)

    def GetMap(self, request: agent_pb2.GetMapRequest, context: grpc.ServicerContext) -> Iterator[agent_pb2.MapChunk]:
        """GetMap: the pool map's points in chunks, each with the map's state (docs/agent.md, The pool map)."""
        st, chunks = self.agent.get_map(request.offset, request.limit, request.chunk)

        def chunk_message() -> agent_pb2.MapChunk:
            return agent_pb2.MapChunk(model_version=st.version, state=st.state, progress=st.progress,
                                      method=st.method, total=st.total, fitted=st.fitted, pending=st.pending,
                                      recomputing=st.recomputing, message=st.message, shown_version=st.shown)

        sent = False
        for part in chunks:
            sent = True
            msg = chunk_message()
            msg.points.extend(agent_pb2.MapPoint(id=i, x=x, y=y, label=lab) for i, x, y, lab in part)
            yield msg
        if not sent:
            yield chunk_message()

    def GetStatus(self, request: agent_pb2.GetStatusRequest, context: grpc.ServicerContext) -> agent_pb2.Status:
        """GetStatus: the agent's status and warnings (docs/agent.md, API)."""
        return self._status()

    def ReloadModel(self, request: agent_pb2.ReloadModelRequest, context: grpc.ServicerContext) -> agent_pb2.Status:
        """ReloadModel: look for a new model version now; the status after the agent has looked (waits at most
        RELOAD_WAIT_S, or less under the call's deadline; not for a re-embedding to end) (docs/agent.md, API)."""
        remaining = deadline_s(context.time_remaining())
        wait = RELOAD_WAIT_S if remaining is None else min(RELOAD_WAIT_S, remaining - RELOAD_REPLY_MARGIN_S)
        self.agent.manager.reload(wait)
        return self._status()

    def GetImages(self, request: agent_pb2.GetImagesRequest,
                  context: grpc.ServicerContext) -> agent_pb2.GetImagesReply:
        """GetImages: the samples' images, resized (docs/agent.md, API)."""
        found = self.agent.images.get(list(request.ids), request.max_side, request.format, call_token(context))
        return agent_pb2.GetImagesReply(images=[
            agent_pb2.Image(id=r.id, data=r.data, mime_type=r.mime_type, width=r.width, height=r.height,
                            sha256=r.sha256, error=r.error) for r in found])


class CallStarts(grpc.ServerInterceptor):
    """Tells ``IdleTrim`` (agent/memory.py) when each call to the agent's service starts and when it ends,
    so that the malloc arenas' free pages are handed back once a burst of calls is over (health checks do not
    count). The end counts too: a call that outlasts ``IDLE_S`` after the last start (a heavy Select, a
    PriorLabels) frees its blocks after the trim that the pause brought, and they are handed back after it."""

    def __init__(self, trim: IdleTrim) -> None:
        self.trim = trim
        self.prefix = f"/{SERVICE_NAME}/"

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if not (getattr(handler_call_details, "method", "") or "").startswith(self.prefix):
            return continuation(handler_call_details)
        self.trim.touch()
        handler = continuation(handler_call_details)
        return None if handler is None else _touch_when_done(handler, self.trim.touch)


def _touch_when_done(handler: grpc.RpcMethodHandler, touch: Callable[[], None]) -> grpc.RpcMethodHandler:
    """``handler`` calling ``touch`` when its behaviour returns or raises (a response stream: when it ends or
    is closed)."""
    def around(fn: Behaviour, request_streaming: bool, response_streaming: bool) -> Behaviour:
        def returning(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(request, context)
            finally:
                touch()

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(request, context)
            finally:
                touch()

        return streaming if response_streaming else returning

    return rewrap_handler(handler, around, handler.request_deserializer)


class Health(health.HealthServicer):
    """grpcio-health-checking's servicer, whose open Watch streams a shutdown ends (``end_watches``): the
    server's stop waits for every open call up to its grace, and a Watch never ends on its own, so one
    watcher (a load balancer, a client's health check) made every stop take the whole grace."""

    def __init__(self) -> None:
        super().__init__()
        self._ended = False

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext,
              send_response_callback: Callable[[Any], None] | None = None) -> Any:
        if send_response_callback is None:  # (a server without non-blocking streams: the library's way)
            return super().Watch(request, context)
        send = send_response_callback
        ended = threading.Lock()
        state = {"open": True}

        def once(response: Any) -> None:  # the end (None) is sent once: by end_watches or when the call closes
            with ended:
                if not state["open"]:
                    return
                if response is None:
                    state["open"] = False
                    if self._ended:
                        context.set_code(grpc.StatusCode.UNAVAILABLE)
                        context.set_details("the agent is shutting down")
            send(response)

        super().Watch(request, context, once)
        if self._ended:  # a Watch that came in after end_watches: NOT_SERVING, then the end at once
            once(None)
        return None

    def end_watches(self) -> None:
        """End every open Watch stream with UNAVAILABLE (after the NOT_SERVING that
        ``enter_graceful_shutdown`` sent them), and any opened from now on."""
        with self._lock:
            self._ended = True
            callbacks = [cb for cbs in self._send_response_callbacks.values() for cb in cbs]
        for cb in callbacks:
            cb(None)


@dataclass(frozen=True)
class _ServerParts:
    """What ``stop_server`` stops beside a server ``create_server`` made: its health service (told
    NOT_SERVING first, its Watch streams ended before the server stops) and its ``IdleTrim`` thread."""

    health: Health
    trim: IdleTrim
    streams: StreamGuard


# create_server's servers -> their parts. Callers keep the (server, port, agent) they unpack, and
# stop_server(server, agent) finds the rest here; weak, so a server dropped without stop_server leaves none.
_PARTS: weakref.WeakKeyDictionary[grpc.Server, _ServerParts] = weakref.WeakKeyDictionary()


# Client keepalive pings the agent accepts: one every KEEPALIVE_MIN_PING_MS or slower, also on a connection
# without calls (gRPC's server default is one per 5 minutes and none without calls: a client pinging every 10 s,
# common behind NAT, was sent GOAWAY "too_many_pings" every ~20 s). docs/agent.md, "Keepalive".
KEEPALIVE_MIN_PING_MS = 5000


def keepalive_options() -> list[tuple[str, Any]]:
    """The server's keepalive enforcement (gRPC core channel args): pings at KEEPALIVE_MIN_PING_MS or slower
    are accepted with or without calls; faster ones are strikes (2 allowed, then GOAWAY)."""
    return [("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_MS),
            ("grpc.http2.max_ping_strikes", 2)]


def connection_options(limits: Limits) -> list[tuple[str, Any]]:
    """gRPC server options from ``limits``: message sizes, and the bounds on connections that keep idle,
    half-open or never-speaking ones from using up the process's file descriptors (a raw TCP connection that
    never sends HTTP/2's preface is closed after the handshake timeout)."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", round(limits.handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", round(limits.connection_idle_timeout_s * 1000)),
        # a connection with calls in flight whose peer vanished (half-open) answers no ping: closed then
        ("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
        *keepalive_options()]


# Server keepalive pings (seconds between, and the wait for the answer) on connections with calls in flight.
KEEPALIVE_S = 120
KEEPALIVE_TIMEOUT_S = 20


def create_server(config: AgentConfig, interceptors: Sequence[grpc.ServerInterceptor] = (),
                  credentials: grpc.ServerCredentials | None = None,
                  options: Sequence[tuple[str, Any]] = (),
                  local_socket: str | None = None,
                  on_listening: Callable[[], None] | None = None) -> tuple[grpc.Server, int, Agent]:
    """Open the data folder, start the model manager and a started gRPC server on ``config.address``
    (port 0 = any free port), with an ``IdleTrim`` that hands malloc's free pages back after each burst
    of calls (agent/memory.py). Returns (server, bound port, agent); stop with ``stop_server``.

    ``interceptors`` run inside the error mapping (so what they raise is mapped too), in order;
    ``credentials`` (e.g. ``grpc.ssl_server_credentials``) make the port a TLS port; ``options`` are
    extra gRPC server options; ``local_socket`` (a path) adds a plaintext Unix-socket port there, for a client
    in this process (the web app of ``serve --web-port``): put it in a folder only this user can enter.
    Tokens are checked on it like on the TCP port.

    ``config.security`` (TLS, tokens, --insecure) is checked before the data folder is opened:
    agent.security.SecurityError says what is missing. Its token check runs outermost, before the error
    mapping, and refuses a call as it arrives, before its request message is read (agent.security._deny): a
    caller without a valid token costs no parsing, and no more memory than gRPC buffered of its message. A
    port another process holds is an OSError (SO_REUSEPORT is off, so two agents never share a port), and so
    is a data folder another agent holds (agent.security.DataDirLocked)."""
    limits = config.limits
    security = config.security
    warnings = security.check_exposure(config.host)
    credentials = credentials if credentials is not None else security.credentials()
    auth = security.interceptors()
    for w in warnings:
        log.warning("%s", w)
    agent = Agent(config)
    trim = IdleTrim()
    streams = StreamGuard(limits.max_server_streams, limits.stream_stall_timeout_s, limits.ingest_retry_after_s,
                          per_token=security.tokens is not None)
    try:
        server_options = [*connection_options(limits), *options]
        # The lanes' running and queued calls, the server streams (StreamGuard: the public ones and the web app's
        # own), the Ingest streams and the calls waiting for their request message (RequestGuard) hold gRPC
        # threads of their own on top of ``workers``, so neither a full queue of heavy calls nor clients that
        # stall leave GetStatus, SubmitLabels or the web app without a thread.
        threads = (config.workers + config.work.threads + 3 * limits.max_server_streams + limits.max_ingest_streams
                   + 2 * OPEN_SERVICE_SLOTS)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
                             # RequestGuard outside the token check: a refused call reads nothing, passes it
                             interceptors=[CallStarts(trim), RequestGuard(streams, limits.max_server_streams), *auth,
                                           streams, ErrorMapping((SERVICE_NAME,)), *interceptors],
                             options=server_options)
        agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(agent, warnings), server)
        health_servicer = Health()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        try:
            bound = (server.add_secure_port(config.address, credentials) if credentials is not None
                     else server.add_insecure_port(config.address))
        except RuntimeError:  # grpcio raises when the address cannot be bound
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {config.address}: the port is in use by another process (another "
                          "agent?) or the address is not one of this machine's; pick another --port or --host")
        if local_socket is not None and server.add_insecure_port(f"unix:{local_socket}") == 0:
            raise OSError(f"cannot listen on the local socket {local_socket}")
        if on_listening is not None:
            on_listening()  # just before clients can reach it: `shortlist serve` arms its signal handlers here
        server.start()
        warm_in_background()  # scikit-learn, scipy.stats: imported after the port answers (agent/lazy.py)
    except BaseException:
        trim.close()
        streams.close()
        agent.close()
        raise
    _PARTS[server] = _ServerParts(health_servicer, trim, streams)
    return server, bound, agent


# After a shutdown ended Ingest streams: how long their clients get to read that answer before the server closes
# its connections (a stop's ``grace`` bounds it).
SHUTDOWN_LINGER_S = 0.5


def stop_server(server: grpc.Server, agent: Agent, grace: float = 5.0) -> None:
    """Graceful stop: NOT_SERVING, cancel heavy work (Select, PriorLabels answer UNAVAILABLE at their next
    checkpoint), end open Ingest streams after their current batch (UNAVAILABLE, with how many of their
    samples were stored), finish the other in-flight calls (up to ``grace`` s), snapshot, close state."""
    t0 = time.monotonic()
    parts = _PARTS.pop(server, None)
    if parts is not None:
        parts.health.enter_graceful_shutdown()
    agent.work.shutdown()
    agent.light_work.shutdown()
    agent.light_prior_work.shutdown()
    agent.decode_work.shutdown()
    agent.ingest.close_streams()  # each ends after its batch, saying how much it stored
    if agent.ingest.wait_closed(grace):
        # Let their clients read that answer and stop sending before the connections close: a client still
        # sending into a closed socket got "Stream removed (sendmsg: Broken pipe)" instead (about 1 in 30
        # stops of a stream of small requests), without the count of its stored samples.
        time.sleep(min(SHUTDOWN_LINGER_S, max(0.0, grace - (time.monotonic() - t0))))
    if parts is not None:  # else the server's stop waits the whole grace for them
        parts.health.end_watches()
    t1 = time.monotonic()
    server.stop(max(0.0, grace - (t1 - t0))).wait()
    t2 = time.monotonic()
    if parts is not None:
        parts.trim.close()
        parts.streams.close()
    agent.close()
    log.info("shutdown: lanes cancelled in %.2f s, gRPC server stopped in %.2f s, agent closed in %.2f s",
             t1 - t0, t2 - t1, time.monotonic() - t2)
