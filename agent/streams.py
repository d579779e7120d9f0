"""Server streams' guard: no caller can take the gRPC threads that other callers' unary calls need.

gRPC's synchronous server runs each call in a thread of one fixed pool, and a server stream (ListSamples,
ListLabels, GetMap, PriorLabels; the reflection service's stream) holds its thread until it ends: while
HTTP/2 flow control holds back a message the client does not read, the thread waits in gRPC's send. 100
ListSamples calls whose clients never read took every thread of the pool, and GetStatus, SubmitLabels and
the web app hung until the clients let go (the security review, docs/reliability.md).

``StreamGuard`` (a server interceptor, installed by agent.service.create_server) bounds both:

- at most ``Limits.max_server_streams`` server streams at once; one more is refused at once with
  RESOURCE_EXHAUSTED and the trailing metadata ``retry-after-ms``, like an Ingest stream over
  ``--max-ingest-streams``. create_server adds as many threads to the pool, so the streams never take the
  ``--workers`` threads of the unary calls;
- a stream that has waited ``Limits.stream_stall_timeout_s`` for its client to take one message (or, for a
  bidirectional stream, to send the next one) is cancelled by a watchdog thread: cancelling the call makes
  gRPC's pending send fail, which frees the handler's thread (the client sees CANCELLED). The time a handler
  spends computing (a PriorLabels before its first row) is not a stall: only the wait on the client counts.

Health ``Watch`` streams pass untouched: they are non-blocking (they hold no thread while open).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from agent.errors import RETRY_AFTER_KEY, Behaviour, rewrap_handler
from agent.limits import limit_hint
from agent.security import RefusalLog, caller_address

log = logging.getLogger(__name__)


@dataclass
class _Open:
    """One open server stream: its context, and since when it waits on its client (None: it does not)."""

    context: grpc.ServicerContext
    method: str
    waiting_since: float | None = None
    cancelled: bool = False


class StreamGuard(grpc.ServerInterceptor):
    """Caps the server streams served at once (``limit``; one more: RESOURCE_EXHAUSTED with ``retry_after_s``
    as ``retry-after-ms``) and cancels one whose client has taken no message for ``stall_s`` seconds. Start
    the watchdog thread with the server; ``close`` stops it."""

    def __init__(self, limit: int, stall_s: float, retry_after_s: float = 2.0,
                 refusals: RefusalLog | None = None) -> None:
        self.limit = limit
        self.stall_s = stall_s
        self.retry_after_s = retry_after_s
        self.refusals = refusals if refusals is not None else RefusalLog()
        self._slots = threading.BoundedSemaphore(limit)
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
            if not self._slots.acquire(blocking=False):
                self._refuse(method, context)
            entry = _Open(context, method)
            with self._lock:
                self._open[id(entry)] = entry
            try:
                for msg in fn(_timed(request, entry) if request_streaming else request, context):
                    entry.waiting_since = time.monotonic()  # until gRPC asks for the next one: the send is done
                    yield msg
                    entry.waiting_since = None
            finally:
                entry.waiting_since = None
                with self._lock:
                    self._open.pop(id(entry), None)
                self._slots.release()

        return streaming

    def _refuse(self, method: str, context: grpc.ServicerContext) -> None:
        self.refusals.refused(f"a server stream ({method.rpartition('/')[2]}) over --max-server-streams",
                              context.peer(), context.invocation_metadata())
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(round(self.retry_after_s * 1000))),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"the agent is already serving {self.limit} server streams (ListSamples, ListLabels, GetMap, "
                      f"PriorLabels), its limit; retry in {self.retry_after_s:g} s {limit_hint('max_server_streams')}")

    def _watch(self) -> None:
        tick = min(1.0, self.stall_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                stalled = [e for e in self._open.values() if not e.cancelled and e.waiting_since is not None
                           and now - e.waiting_since > self.stall_s]
            for e in stalled:
                e.cancelled = True
                peer = e.context.peer()
                more = self.refusals.admit("stalled stream", caller_address(peer, e.context.invocation_metadata()))
                if more is not None:
                    log.warning("cancelled a %s stream to %s: its client took no message for %g s "
                                "(--stream-stall-timeout)%s", e.method.rpartition("/")[2], peer, self.stall_s, more)
                e.context.cancel()  # the pending send fails and the handler's thread is free


def _timed(requests: Iterator[Any], entry: _Open) -> Iterator[Any]:
    """``requests`` with the wait for each next one counted as a wait on the client."""
    while True:
        entry.waiting_since = time.monotonic()
        try:
            request = next(requests)
        except StopIteration:
            return
        finally:
            entry.waiting_since = None
        yield request
