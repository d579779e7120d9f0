"""Server streams' guard: no caller can take the gRPC threads that other callers' unary calls need.

gRPC's synchronous server runs each call in a thread of one fixed pool, and a server stream (ListSamples,
ListLabels, GetMap, PriorLabels; the reflection service's stream) holds its thread until it ends: while
HTTP/2 flow control holds back a message the client does not read, the thread waits in gRPC's send. 100
ListSamples calls whose clients never read took every thread of the pool, and GetStatus, SubmitLabels and
the web app hung until the clients let go (the security review, docs/reliability.md).

``StreamGuard`` (a server interceptor, installed by agent.service.create_server) bounds both:

- at most ``Limits.max_server_streams`` server streams at once; one more is refused at once with
  RESOURCE_EXHAUSTED and the trailing metadata ``retry-after-ms``, like an Ingest stream over
  ``--max-ingest-streams``. One client (a token when the agent has --tokens, else a peer address) holds at
  most half of them (``share``, at least 1), so that a read token's streams that are never read cannot take
  every slot (the operator's walk-through: 17 stalled ListSamples took all 16, re-openable after each stall
  timeout). The in-process web app's calls (on the agent's local Unix socket, ``serve --web-port``) have as
  many slots again of their own: outside clients cannot make its pages and Label Studio webhooks answer 429.
  create_server adds as many threads to the pool, so the streams never take the ``--workers`` threads of the
  unary calls;
- a stream that has waited ``Limits.stream_stall_timeout_s`` for its client to take one message (or, for a
  bidirectional stream, to send the next one) is cancelled by a watchdog thread: cancelling the call makes
  gRPC's pending send fail, which frees the handler's thread. The time a handler spends computing (a PriorLabels
  before its first row) is not a stall: only the wait on the client counts. The cancel carries a status
  (``cancel_with_status``): the client sees DEADLINE_EXCEEDED and a message that names --stream-stall-timeout and
  says how to resume, not a bare CANCELLED it could not tell from its own cancel (a Node client that paused its
  stream got exactly that).

Health ``Watch`` streams pass untouched: they are non-blocking (they hold no thread while open). The services
open without a token (reflection; health is the other) have slots of their own (``OPEN_SERVICE_SLOTS``), so a
caller without a token cannot take the agent's stream slots from the callers with one.

``RequestGuard`` (installed outside the token check) bounds the other wait on a client: gRPC's synchronous server
reads a unary call's request message in one of its pool's threads before the handler runs, so a client that sends
a call's headers and never its message held that thread until it gave up (120 such health ``Check`` calls, open
to all, left a ``GetStatus`` with a token at DEADLINE_EXCEEDED). It gives each call with a unary request (a unary
call, a server stream, health's ``Watch``) a request-streaming handler instead, which the server runs at once, and
reads the one message there, under the same watchdog: the first ``Limits.max_server_streams`` calls of the
agent's service waiting at once may wait the stall timeout, the first ``OPEN_SERVICE_SLOTS`` of the open services
``OPEN_REQUEST_TIMEOUT_S``, and any more ``OVER_LIMIT_WAIT_S`` (a message sent with its headers is there at once:
such calls are not refused, only the ones still waiting then are cancelled). A unary request and a request
stream of one message are the same on the wire, so clients see no difference; create_server adds as many threads
to the pool as there are long waits.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from agent.errors import Behaviour, InvalidArgument, ResourceExhausted, abort, rewrap_handler
from agent.limits import limit_hint
from agent.security import RefusalLog, RepeatedAuthorization, bearer, caller_address

log = logging.getLogger(__name__)

AGENT_PREFIX = "/shortlist.v1.Agent/"  # the service whose calls carry a token when the agent has --tokens
# Calls of the services open without a token (health, reflection) that may wait on their client at once: their
# server streams (reflection), and, apart, their calls waiting for their request message (RequestGuard).
OPEN_SERVICE_SLOTS = 4
# Seconds an open service's call may wait for its request message (a health check's is a few bytes, sent with
# its headers): then it is cancelled, freeing its slot for the next probe.
OPEN_REQUEST_TIMEOUT_S = 5.0
# Seconds a call may wait for its request message while the first ones of its service (RequestGuard) wait.
OVER_LIMIT_WAIT_S = 1.0


def client_share(limit: int) -> int:
    """How many of ``limit`` server streams one client may hold at once: half, so that one client's streams
    that are never read cannot take every slot, and at least two (or ``limit``, when smaller), because one
    command of a client may itself hold two at once (``shortlist export-labels`` reads PriorLabels while it
    lists the labels: with a share of one it was refused on an idle agent started with a small limit)."""
    return max(min(2, limit), limit // 2)


# The words of the refusal of a stream over one client's share of --max-server-streams (tests look for them).
STREAM_SHARE_WORDS = "its share of the agent's server streams"


@dataclass
class _Open:
    """One open server stream: its context, and since when it waits on its client (None: it does not)."""

    context: grpc.ServicerContext
    method: str
    waiting_since: float | None = None
    cancelled: bool = False
    timeout_s: float | None = None  # None: the guard's stall timeout
    what: str = "stream"  # the log's word for it
    receiving: bool = False  # the wait is for the client's next message (a bidirectional stream), not its read


class StreamGuard(grpc.ServerInterceptor):
    """Caps the server streams served at once (``limit``; one more: RESOURCE_EXHAUSTED with ``retry_after_s``
    as ``retry-after-ms``) and cancels one whose client has taken no message for ``stall_s`` seconds. Start
    the watchdog thread with the server; ``close`` stops it."""

    def __init__(self, limit: int, stall_s: float, retry_after_s: float = 2.0,
                 refusals: RefusalLog | None = None, per_token: bool = False) -> None:
        self.limit = limit
        self.share = client_share(limit)  # one client's streams at once (``holder``)
        self.per_token = per_token  # the agent has --tokens: a client is its token, else its address
        self.stall_s = stall_s
        self.retry_after_s = retry_after_s
        self.refusals = refusals if refusals is not None else RefusalLog()
        self._slots = threading.BoundedSemaphore(limit)
        self._web_slots = threading.BoundedSemaphore(limit)  # the in-process web app's, on the local socket
        self._held: dict[str, int] = {}  # holder -> its public streams open now
        self._open_slots = threading.BoundedSemaphore(OPEN_SERVICE_SLOTS)  # reflection's, without a token
        self._lock = threading.Lock()
        self._open: dict[int, _Open] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._open)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler.response_streaming:
            return handler
        behaviour = handler.unary_stream or handler.stream_stream
        if getattr(behaviour, "experimental_non_blocking", False):  # health Watch: holds no thread
            return handler
        method: str = getattr(handler_call_details, "method", "") or ""
        return rewrap_handler(handler, lambda fn, request_streaming, _: self._guarded(fn, request_streaming, method),
                              handler.request_deserializer)

    def _guarded(self, fn: Behaviour, request_streaming: bool, method: str) -> Behaviour:
        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            slots, holder = self._admit(method, context)
            entry = self.track(_Open(context, method))
            try:
                for msg in fn(_timed(request, entry) if request_streaming else request, context):
                    entry.waiting_since = time.monotonic()  # until gRPC asks for the next one: the send is done
                    yield msg
                    entry.waiting_since = None
            finally:
                self.untrack(entry)
                self._release(slots, holder)

        return streaming

    def holder(self, context: grpc.ServicerContext) -> str:
        """Whose share a public stream counts against: its token (a digest) when the agent has --tokens (the
        token check ran before), else its peer address without the port."""
        metadata = context.invocation_metadata()
        if self.per_token:
            try:
                token = bearer(metadata)
            except RepeatedAuthorization:
                token = None
            if token:
                return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        return caller_address(context.peer(), metadata)

    def _admit(self, method: str, context: grpc.ServicerContext) -> tuple[threading.BoundedSemaphore, str | None]:
        """A slot for a new stream of ``method`` (its pool, and the holder its share counts against: None for
        the open services and the web app), or the call ends here with RESOURCE_EXHAUSTED."""
        if not method.startswith(AGENT_PREFIX):
            if not self._open_slots.acquire(blocking=False):
                self._refuse(method, context, False)
            return self._open_slots, None
        if context.peer().startswith("unix:"):  # only the in-process web app reaches the local socket
            if not self._web_slots.acquire(blocking=False):
                self._refuse(method, context, True)
            return self._web_slots, None
        holder = self.holder(context)
        with self._lock:
            over_share = self._held.get(holder, 0) >= self.share
            if not over_share:
                self._held[holder] = self._held.get(holder, 0) + 1
        if over_share:
            self._refuse_share(method, context)
        if not self._slots.acquire(blocking=False):
            self._forget(holder)
            self._refuse(method, context, True)
        return self._slots, holder

    def _release(self, slots: threading.BoundedSemaphore, holder: str | None) -> None:
        slots.release()
        if holder is not None:
            self._forget(holder)

    def _forget(self, holder: str) -> None:
        with self._lock:
            left = self._held.get(holder, 0) - 1
            if left > 0:
                self._held[holder] = left
            else:
                self._held.pop(holder, None)

    def track(self, entry: _Open) -> _Open:
        """Watch ``entry`` (its waits on its client) until ``untrack``."""
        with self._lock:
            self._open[id(entry)] = entry
        return entry

    def untrack(self, entry: _Open) -> None:
        entry.waiting_since = None
        with self._lock:
            self._open.pop(id(entry), None)

    def refuse(self, context: grpc.ServicerContext, logged: str, message: str) -> None:
        """End the call with RESOURCE_EXHAUSTED, ``message`` and the retry hint (agent.errors.abort sends it as
        ``retry-after-ms``); log ``logged`` (throttled)."""
        self.refusals.refused(logged, context.peer(), context.invocation_metadata())
        abort(context, ResourceExhausted(message, self.retry_after_s))

    def _refuse_share(self, method: str, context: grpc.ServicerContext) -> None:
        name = method.rpartition("/")[2]
        who = "token" if self.per_token else "address"
        self.refuse(context, f"a server stream ({name}) over one client's share of --max-server-streams",
                    f"this {who} already has {self.share} server stream{'s' if self.share != 1 else ''} open "
                    f"(ListSamples, ListLabels, GetMap, PriorLabels), {STREAM_SHARE_WORDS} ({self.share} of its "
                    f"{self.limit}, so that one client cannot take them all); read or close one, or retry in "
                    f"{self.retry_after_s:g} s "
                    f"{limit_hint('max_server_streams')}")

    def _refuse(self, method: str, context: grpc.ServicerContext, agent_call: bool) -> None:
        name = method.rpartition("/")[2]
        if agent_call:
            self.refuse(context, f"a server stream ({name}) over --max-server-streams",
                        f"the agent is already serving {self.limit} server streams (ListSamples, ListLabels, GetMap, "
                        f"PriorLabels), its limit; retry in {self.retry_after_s:g} s "
                        f"{limit_hint('max_server_streams')}")
        else:
                self.refuse(context, f"a stream of an open service ({name}) over its {OPEN_SERVICE_SLOTS}",
                        f"the agent is already serving {OPEN_SERVICE_SLOTS} streams of the services open without a "
                        f"token (reflection), their limit; retry in {self.retry_after_s:g} s")

    def stall_message(self, e: _Open) -> str:
        """What the client of the stalled call ``e`` is told: what happened, and what to do."""
        name = e.method.rpartition("/")[2]
        if e.receiving:
            return (f"the agent cancelled this {name} stream: its client sent no next message for {self.stall_s:g} s "
                    "(the agent's --stream-stall-timeout), which frees the stream's slot for other callers; send "
                    "the next request sooner, or end the call and open a new one when there is one")
        if e.timeout_s is None and e.what == "stream":
            return (f"the agent cancelled this {name} stream: its client took no message for {self.stall_s:g} s "
                    "(the agent's --stream-stall-timeout), which frees the stream's slot for other callers; read "
                    "the stream without pausing that long (buffer the rows and work on them after), or have the "
                    f"operator raise --stream-stall-timeout; {STALL_RESUME.get(name, 'call again')}")
        wait = (f"{self.stall_s:g} s (the agent's --stream-stall-timeout)" if e.timeout_s is None
                else f"{e.timeout_s:g} s")
        return (f"the agent cancelled this {name} call: its request message had not come whole after {wait}; send "
                "it with the call's headers (a large one needs a link that carries it in that time)")

    def _watch(self) -> None:
        tick = min(1.0, self.stall_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                stalled = [e for e in self._open.values() if not e.cancelled and e.waiting_since is not None
                           and now - e.waiting_since > (self.stall_s if e.timeout_s is None else e.timeout_s)]
            for e in stalled:
                e.cancelled = True
                peer = e.context.peer()
                more = self.refusals.admit(f"stalled {e.what}", caller_address(peer, e.context.invocation_metadata()))
                if more is not None:
                    name = e.method.rpartition("/")[2]
                    if e.timeout_s is None and e.what == "stream":
                        log.warning("cancelled a %s stream to %s: its client took no message for %g s "
                                    "(--stream-stall-timeout)%s", name, peer, self.stall_s, more)
                    else:
                        log.warning("cancelled a %s call from %s: its client sent no request message in %g s%s%s",
                                    name, peer, self.stall_s if e.timeout_s is None else e.timeout_s,
                                    " (--stream-stall-timeout)" if e.timeout_s is None else "", more)
                cancel_with_status(e.context, grpc.StatusCode.DEADLINE_EXCEEDED, self.stall_message(e))


# How a client resumes a server stream the stall watchdog cut (the message's last part), per method.
STALL_RESUME = {
    "ListLabels": "resume with ListLabelsRequest.after_seq set to the seq of the last record received",
    "ListSamples": "list again and skip the samples already received (ListSamples streams them in ingest order), "
                   "or ask for the ids not received yet (ListSamplesRequest.ids)",
    "GetMap": "resume with GetMapRequest.offset set to the points received so far",
    "PriorLabels": "ask again for the ids not received yet (PriorLabelsRequest.ids)",
}


def cancel_with_status(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """Cancel the call of ``context`` from another thread (its handler may wait in gRPC's send), telling the
    client ``code`` and ``details``.

    ``context.abort`` cannot do it from another thread: it only records the status and raises in the caller, and
    the status is sent when the handler returns, which a handler blocked in a send held back by flow control
    never does. gRPC core's ``grpc_call_cancel_with_status`` (which grpcio's public API does not expose; its
    call object does, as ``cancel(code, details)``) ends the stream at once: the server's HTTP/2 transport
    writes the status as trailers ahead of the messages flow control holds (they are dropped), then resets the
    stream, and the pending send fails, which frees the handler's thread. A Python client and a Node client
    (@grpc/grpc-js, stream paused) both received the code and details. Where that object is missing (another
    grpcio), a plain cancel: the client then sees CANCELLED."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    if call is not None:
        try:
            call.cancel(code.value[0], details)
            return
        except (TypeError, AttributeError, ValueError):  # another grpcio's signature: the plain cancel below
            log.debug("grpc_call_cancel_with_status unavailable", exc_info=True)
    context.cancel()


def _timed(requests: Iterator[Any], entry: _Open) -> Iterator[Any]:
    """``requests`` with the wait for each next one counted as a wait on the client."""
    while True:
        entry.receiving = True
        entry.waiting_since = time.monotonic()
        try:
            request = next(requests)
        except StopIteration:
            return
        finally:
            entry.waiting_since = None
            entry.receiving = False
        yield request


class RequestGuard(grpc.ServerInterceptor):
    """Reads each unary request in a handler of its own, bounded in time (module docstring): the first ``limit``
    calls of the agent's service waiting at once for their request message may wait ``streams``' stall timeout,
    the first ``OPEN_SERVICE_SLOTS`` of the open services ``OPEN_REQUEST_TIMEOUT_S``; any further one
    ``OVER_LIMIT_WAIT_S`` (a client sends a small message with its headers: it is there at once). Then
    ``streams``' watchdog cancels the call, freeing its thread. Install it outside the token check: a call the
    check refuses reads nothing and passes untouched."""

    def __init__(self, streams: StreamGuard, limit: int) -> None:
        self.streams = streams
        self.limit = limit
        self._lock = threading.Lock()
        self._waiting = {True: 0, False: 0}  # the agent's service?: its calls waiting for their request now

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method: str = getattr(handler_call_details, "method", "") or ""
        read = self._reader(method)
        parse, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            def answer(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return unary(read(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(answer, parse, ser)
        stream = handler.unary_stream
        if stream is None:
            return handler
        if getattr(stream, "experimental_non_blocking", False):  # health Watch: hands over its callback
            def watch(requests: Iterator[Any], context: grpc.ServicerContext, send: Callable[[Any], None]) -> None:
                stream(read(requests, context), context, send)  # type: ignore[call-arg]

            watch.experimental_non_blocking = True  # type: ignore[attr-defined]
            return grpc.stream_stream_rpc_method_handler(watch, parse, ser)

        def streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            yield from stream(read(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(streaming, parse, ser)

    def _reader(self, method: str) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
        agent_call = method.startswith(AGENT_PREFIX)
        limit, timeout_s = (self.limit, None) if agent_call else (OPEN_SERVICE_SLOTS, OPEN_REQUEST_TIMEOUT_S)

        def read(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            with self._lock:
                within = self._waiting[agent_call] < limit
                self._waiting[agent_call] += 1
            entry = self.streams.track(_Open(context, method, time.monotonic(), what="request",
                                             timeout_s=timeout_s if within else OVER_LIMIT_WAIT_S))
            try:
                return next(requests)
            except StopIteration:
                # the client closed its side without a message: a broken client, not a missing method (gRPC's own
                # UNIMPLEMENTED here made `shortlist` report an agent older than itself)
                abort(context, InvalidArgument(
                    f"{method} takes exactly one request message and this call closed its side without one; send "
                    "the request message (a generated stub's unary call does), not an empty request stream"))
            finally:
                self.streams.untrack(entry)
                with self._lock:
                    self._waiting[agent_call] -= 1

        return read
