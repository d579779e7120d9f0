"""The agent's domain exceptions and the ONE place that turns any exception into a gRPC status.

Code anywhere in the agent (core, ingest, strategies, priors, models) raises these; it never calls
``context.abort`` itself. ``ErrorMapping`` (a ``grpc.ServerInterceptor``, installed by
agent.service.create_server around every ``shortlist.v1.Agent`` method) catches what escapes a method,
including errors raised in the middle of a server stream (ListSamples, PriorLabels) and while the
client stream of Ingest is read, and answers the mapped status code with the exception's message,
which says what to do. It also parses every request itself (the handlers get raw bytes), so a
malformed message or invalid UTF-8 answers INVALID_ARGUMENT instead of gRPC's default INTERNAL.

No RPC answers UNKNOWN: anything not recognised below is a bug, answered INTERNAL (its traceback is
logged; request metadata, and so any token, is never logged).

A message may carry context added with ``BaseException.add_note`` (e.g. Ingest adds how many samples
of the stream were stored before the failure): the notes are appended to the status message. Those Ingest
counts also travel as trailing metadata (``note_stored``: ``shortlist-stored``, ``shortlist-handled``,
``shortlist-rejected-count``, ``shortlist-rejected``), for clients that must not parse English.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import grpc
from google.protobuf.message import DecodeError

from shortlist.v1 import agent_pb2

log = logging.getLogger(__name__)

# Trailing metadata key with the suggested wait (milliseconds) on RESOURCE_EXHAUSTED / UNAVAILABLE.
RETRY_AFTER_KEY = "retry-after-ms"
# Trailing metadata key on an Ingest stream that ended with an error: how many samples of that stream were
# newly stored before it (an integer string). Not a resume point: duplicates and rejections are not in it
# (HANDLED_KEY is).
STORED_KEY = "shortlist-stored"
# Beside it: how many samples from the stream's start the agent handled (stored, already stored, or rejected):
# a pipeline resumes with the sample after them (an integer string).
HANDLED_KEY = "shortlist-handled"
# And the rejections among them: how many (an integer string), and the first ones as JSON, a list of
# {"id": ..., "code": ..., "reason": ...} (``code``: the RejectionCode's name; ASCII, at most TRAILER_REJECTIONS
# entries and TRAILER_REJECTED_CHARS characters; ids cut to 128 characters, reasons to 200): they travel in
# the trailers, which clients cap at 8 KiB.
REJECTED_COUNT_KEY = "shortlist-rejected-count"
REJECTED_KEY = "shortlist-rejected"
TRAILER_REJECTIONS = 10
TRAILER_REJECTED_CHARS = 2048
# The attribute ``note_stored`` sets on an exception (read by ``map_exception``).
_STORED_ATTR = "shortlist_stored"
# Longest status message sent: it travels in the trailers, which clients cap (8 KiB by default), and a
# message may echo a client's string (a strategy name, a param). Longer ones keep their head and tail.
MAX_DETAILS_CHARS = 2000


def quoted(value: str) -> str:
    """``value`` as a message shows a client's string: JSON-quoted (double quotes; ``\\n``, ``"`` and other
    control characters escaped; other characters kept as they are), so a user of any client language reads
    the same quoting, not Python's repr (``'ana\\n'``), and can parse it back as JSON. Characters that print
    nothing (U+200B, U+00A0, U+2028, ...) are written as JSON ``\\uXXXX`` escapes too, so two ids that look
    alike can be told apart. Cut long values before quoting (``quoted(v[:64])``)."""
    return "".join(ch if ch.isprintable() or ch == " " else _json_escape(ch)
                   for ch in json.dumps(value, ensure_ascii=False))


def _json_escape(ch: str) -> str:
    """``ch`` as JSON's ``\\uXXXX`` escape (a surrogate pair above U+FFFF, as JSON spells those)."""
    return json.dumps(ch)[1:-1]


class AgentError(Exception):
    """Base of the agent's domain exceptions: ``code`` is the gRPC status they map to; the message says
    what to do."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(AgentError, ValueError):
    """Bad request parameter (INVALID_ARGUMENT). The message says what to do."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(AgentError, RuntimeError):
    """The request is well-formed but the state cannot answer it yet (FAILED_PRECONDITION), e.g. an
    uncertainty strategy with too few labels, no model published, or a read-only data folder."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(AgentError, LookupError):
    """Unknown sample ids (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class _Retryable(AgentError):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ResourceExhausted(_Retryable):
    """A limit was reached (RESOURCE_EXHAUSTED): too many concurrent streams, a full disk, a request
    above a size limit. ``retry_after_s``, when set, is sent as trailing metadata ``retry-after-ms``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(_Retryable):
    """The agent cannot take the request now (UNAVAILABLE), e.g. shutting down; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


Overloaded = ResourceExhausted  # the name admission control reads best with


class Cancelled(AgentError):
    """The client went away or cancelled (CANCELLED)."""

    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(AgentError):
    """The request's deadline passed before the work finished (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(AgentError):
    """An authenticated caller whose role does not allow this RPC (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(AgentError):
    """No or an unknown credential (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class DataLoss(AgentError):
    """Stored data is corrupt (DATA_LOSS), e.g. a payload blob whose hash differs."""

    code = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class Mapped:
    """What a client gets for an exception: status code, message, optional retry hint (seconds)."""

    code: grpc.StatusCode
    message: str
    retry_after_s: float | None = None
    stream: StreamCount | None = None  # what an Ingest stream had done before the failure (``note_stored``)


class Rejected(NamedTuple):
    """A per-item rejection of Ingest, SubmitLabels, RetractLabels or DeleteSamples, as the agent's code
    builds it (the only way: ``rejection_message`` turns it into the reply's Rejection). ``code``: an
    agent_pb2.REJECTION_CODE_* value, never UNSPECIFIED (docs/agent.md, "Rejection codes"); ``reason``: for
    people; ``now``: for a conditional write (if_current) that found another label, (the sample's label now,
    "" = unlabelled; who gave or took back the last one)."""

    id: str
    code: agent_pb2.RejectionCode
    reason: str
    now: tuple[str, str] | None = None


class Problem(NamedTuple):
    """Why an item cannot be taken, before its id is known to the caller: a Rejected less the id."""

    code: agent_pb2.RejectionCode
    reason: str

    def of(self, item_id: str) -> Rejected:
        return Rejected(item_id, self.code, self.reason)


def rejection_message(r: Rejected) -> agent_pb2.Rejection:
    """The one place a Rejection message is built (tests/agent/test_rejection_codes.py checks there is no
    other). A code that is UNSPECIFIED or no RejectionCode is a bug in the agent: logged as an error (the tests
    fail on it) and sent as it is, since failing the reply of a write that was committed would be worse."""
    if r.code == agent_pb2.REJECTION_CODE_UNSPECIFIED or r.code not in agent_pb2.RejectionCode.values():
        log.error("bug: the rejection of %r has no RejectionCode (%d): %s", r.id[:64], r.code, r.reason)
    msg = agent_pb2.Rejection(id=r.id, reason=r.reason, code=r.code)
    if r.now is not None:
        msg.now.CopyFrom(agent_pb2.LabelNow(label=r.now[0], annotator=r.now[1]))
    return msg


def code_name(code: int) -> str:
    """A Rejection code as outputs write it: its enum name ("REJECTION_CODE_UNKNOWN_ID"), or the number as a
    string for a code this client does not know (a newer agent's)."""
    try:
        return agent_pb2.RejectionCode.Name(code)  # type: ignore[arg-type]
    except ValueError:
        return str(code)


class StreamTally(Protocol):
    """What an Ingest stream did before a failure (agent.ingest.IngestResult): samples newly stored, already
    stored (duplicates), and rejected, in the order sent."""

    accepted: int
    duplicates: int
    rejected: list[Rejected]


@dataclass(frozen=True)
class StreamCount:
    """An Ingest stream's counts as its trailing metadata sends them (``STORED_KEY``, ``HANDLED_KEY``,
    ``REJECTED_COUNT_KEY``, ``REJECTED_KEY``)."""

    stored: int
    handled: int
    rejected: int
    rejected_json: str

    def trailers(self) -> list[tuple[str, str]]:
        return [(STORED_KEY, str(self.stored)), (HANDLED_KEY, str(self.handled)),
                (REJECTED_COUNT_KEY, str(self.rejected)), (REJECTED_KEY, self.rejected_json)]


def rejections_json(rejected: list[Rejected]) -> str:
    """The first of ``rejected`` as the ASCII JSON of ``REJECTED_KEY``, within its bounds."""
    shown = [{"id": r.id[:128], "code": code_name(r.code), "reason": r.reason[:200]}
             for r in rejected[:TRAILER_REJECTIONS]]
    while True:
        text = json.dumps(shown, ensure_ascii=True, separators=(",", ":")).replace("\x7f", "\\u007f")
        if len(text) <= TRAILER_REJECTED_CHARS or not shown:
            return text
        shown.pop()


# What a request's reply says (``storage_problem``): the fault, what to do, and what of the request was stored.
_UNSTORED = "; nothing of this request past what an earlier reply acknowledged was stored"
_DISK_FULL_IS = ("the agent's data folder is full (no space left on its disk or quota): free space there")
_IO_ERROR_IS = ("the agent could not read or write its data folder (I/O error): check its disk (full, failing, "
                "unmounted?)")
_READ_ONLY_IS = ("the agent's data folder is not writable (read-only file system or permissions): make it "
                 "writable for the user running `shortlist serve`")
_DISK_FULL = f"{_DISK_FULL_IS} and retry{_UNSTORED}"
_IO_ERROR = f"{_IO_ERROR_IS} and retry{_UNSTORED}"
_READ_ONLY = f"{_READ_ONLY_IS} and retry; reads keep working"


class RepeatedWarning:
    """One warning that background work may hit again and again (a full disk at every try): logged the first
    time, then at most once per ``every_s`` seconds while it repeats, saying how many times it came meanwhile, so
    a weekend-long full disk does not fill the log (which may be on that disk). ``key`` tells repeats apart
    (default: the text; pass e.g. the errno when the text holds a temp file's name). Not thread-safe: one per
    thread of work."""

    def __init__(self, logger: logging.Logger, every_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.every_s, self.clock = logger, every_s, clock
        self._key: Hashable = None
        self._logged_at = 0.0
        self._repeats = 0  # times it came since it was last logged

    def warning(self, message: str, key: Hashable = None) -> None:
        key = message if key is None else key
        now = self.clock()
        if key == self._key and now - self._logged_at < self.every_s:
            self._repeats += 1
            return
        if key == self._key and self._repeats:
            self.logger.warning("%s (%d more time(s) in the last %.0f s)", message, self._repeats,
                                now - self._logged_at)
        else:
            self.logger.warning("%s", message)
        self._key, self._logged_at, self._repeats = key, now, 0

    def clear(self, recovered: str = "") -> None:
        """The trouble is over: ``recovered`` (when given, and a warning was logged) is logged at INFO, and the
        next warning is logged at once."""
        if self._key is not None and recovered:
            self.logger.info("%s", recovered)
        self._key, self._repeats = None, 0


def note_stored(e: BaseException, tally: StreamTally) -> BaseException:
    """``e`` (returned) with what an Ingest stream did before it (``tally``): a note appended to the status
    message, and trailing metadata ``shortlist-stored`` (samples newly stored), ``shortlist-handled`` (samples
    from the stream's start handled: stored, duplicates and rejected; the resume point),
    ``shortlist-rejected-count`` and ``shortlist-rejected`` (the one place both are made)."""
    rejected = len(tally.rejected)
    handled = tally.accepted + tally.duplicates + rejected
    e.add_note(f"{tally.accepted} samples of this stream were stored before the failure; the first {handled} "
               f"samples it sent were handled ({tally.accepted} stored, {tally.duplicates} already stored, "
               f"{rejected} rejected{f', the first in the trailing metadata {REJECTED_KEY}' if rejected else ''}): "
               f"resend from sample {handled + 1} on "
               "(resent samples are counted as duplicates)")
    setattr(e, _STORED_ATTR, StreamCount(tally.accepted, handled, rejected, rejections_json(tally.rejected)))
    return e


def _stream(e: BaseException) -> StreamCount | None:
    n = getattr(e, _STORED_ATTR, None)
    return n if isinstance(n, StreamCount) else None


def _with_notes(message: str, e: BaseException) -> str:
    notes = getattr(e, "__notes__", None) or []
    return "; ".join([message.rstrip(" ;."), *notes]) if notes else message  # "...: do X; 3 samples ... stored"


def storage_problem(e: BaseException, request: bool = True) -> Mapped | None:
    """A full, read-only, failing or corrupt data folder, from an OSError or sqlite3 error (by its
    errno / SQLite result code, else its text); None for anything else. ``request`` False: the message
    says only the fault and what to do (for a log line of background work, or a reply's detail about a
    write the request did not need), not "retry; nothing of this request ... was stored"."""
    full, read_only, io_error = ((_DISK_FULL, _READ_ONLY, _IO_ERROR) if request
                                 else (_DISK_FULL_IS, _READ_ONLY_IS, _IO_ERROR_IS))
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return Mapped(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{full} ({e})", 30.0)
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return Mapped(grpc.StatusCode.FAILED_PRECONDITION, f"{read_only} ({e})")
        if e.errno == errno.EIO:
            return Mapped(grpc.StatusCode.UNAVAILABLE, f"{io_error} ({e})", 30.0)
        return None
    if isinstance(e, sqlite3.Error):
        name = (getattr(e, "sqlite_errorname", "") or "").upper()  # e.g. SQLITE_FULL, SQLITE_READONLY_DBMOVED
        text = str(e).lower()
        if name == "SQLITE_FULL" or "disk is full" in text:
            return Mapped(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{full} (sqlite: {e})", 30.0)
        if name.startswith(("SQLITE_READONLY", "SQLITE_PERM")) or "readonly" in text or "read-only" in text:
            return Mapped(grpc.StatusCode.FAILED_PRECONDITION, f"{read_only} (sqlite: {e})")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
            return Mapped(grpc.StatusCode.UNAVAILABLE, f"the agent's database is busy ({e}); retry shortly", 1.0)
        if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "disk i/o error" in text:
            return Mapped(grpc.StatusCode.UNAVAILABLE, f"{io_error} (sqlite: {e})", 30.0)
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
            return Mapped(grpc.StatusCode.DATA_LOSS, f"the agent's database is corrupt ({e}); stop the agent and "
                          "restore the data folder from a backup")
    return None


def map_exception(e: BaseException) -> Mapped:
    """The status a client gets for ``e``. INTERNAL only for what is not recognised (a bug)."""
    m = _map(e)
    stream = _stream(e)
    return m if stream is None else Mapped(m.code, m.message, m.retry_after_s, stream)


def _map(e: BaseException) -> Mapped:
    if isinstance(e, AgentError):
        return Mapped(e.code, _with_notes(str(e), e), getattr(e, "retry_after_s", None))
    if isinstance(e, DecodeError):
        return Mapped(grpc.StatusCode.INVALID_ARGUMENT,
                      f"malformed request: not a valid protobuf message for this RPC, or a string field is not "
                      f"valid UTF-8 ({e}); send messages built from protos/shortlist/v1/agent.proto")
    storage = storage_problem(e)
    if storage is not None:
        return Mapped(storage.code, _with_notes(storage.message, e), storage.retry_after_s)
    if isinstance(e, MemoryError):
        return Mapped(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      _with_notes("the agent ran out of memory for this request; send smaller requests "
                                  "or lower the limits of `shortlist serve`", e), 10.0)
    if isinstance(e, grpc.RpcError):  # reading the client's stream failed: it cancelled or went away
        return Mapped(grpc.StatusCode.CANCELLED,
                      _with_notes("the request stream was broken by the client", e))
    return Mapped(grpc.StatusCode.INTERNAL,
                  _with_notes(f"internal error ({type(e).__name__}: {e}); this is a bug in the agent, please "
                              "report it with the agent's log", e))


def abort(context: grpc.ServicerContext, e: BaseException, method: str = "") -> None:
    """End the RPC with ``e``'s mapped status (raises). Logs the traceback for INTERNAL only (never the
    request's metadata, so never a token)."""
    m = map_exception(e)
    if m.code == grpc.StatusCode.INTERNAL:
        log.error("%s failed with a bug", method or "a request", exc_info=e)
    elif m.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DATA_LOSS,
                    grpc.StatusCode.FAILED_PRECONDITION) and not isinstance(e, AgentError):
        log.error("%s: storage problem: %s", method or "a request", m.message)  # a full or read-only disk
    trailing: list[tuple[str, str]] = []
    if m.retry_after_s is not None:
        trailing.append((RETRY_AFTER_KEY, str(round(m.retry_after_s * 1000))))
    if m.stream is not None:
        trailing.extend(m.stream.trailers())
    if trailing:
        context.set_trailing_metadata(tuple(trailing))
    context.abort(m.code, shorten(m.message))


def shorten(message: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """``message`` cut to ``limit`` characters in the middle (the head says what, the tail holds notes)."""
    if len(message) <= limit:
        return message
    head = limit * 3 // 5
    return f"{message[:head]} ...[{len(message) - limit:,} characters cut]... {message[-(limit - head):]}"


def _already_ended(context: grpc.ServicerContext) -> bool:
    """True when the handler itself called ``context.abort`` / ``set_code`` (its status stands)."""
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):
        return False
    return code is not None and code != grpc.StatusCode.OK


Parser = Callable[[bytes], Any]


def _parse(parse: Parser | None, raw: Any) -> Any:
    if parse is None or not isinstance(raw, bytes | bytearray | memoryview):
        return raw
    try:
        return parse(bytes(raw))
    except DecodeError:
        raise
    except Exception as e:  # upb raises DecodeError, the pure-Python backend others: all malformed input
        raise DecodeError(str(e)) from e


def _parsed_stream(parse: Parser | None, raw: Iterator[Any]) -> Iterator[Any]:
    for item in raw:
        yield _parse(parse, item)


# A handler's behaviour: (request or request iterator, context) -> response or response iterator.
Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def rewrap_handler(handler: grpc.RpcMethodHandler,
                   around: Callable[[Behaviour, bool, bool], Behaviour],
                   request_deserializer: Callable[[bytes], Any] | None) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced by ``around(behaviour, request_streaming, response_streaming)``
    (a generator function where the response streams) and requests parsed by ``request_deserializer``; the
    response serializer kept. The one place that tells the four kinds of gRPC method apart for a server
    interceptor that wraps them (ErrorMapping here, agent.service.CallStarts); a handler with no behaviour
    is returned as it is."""
    ser = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(around(handler.unary_unary, False, False),
                                                   request_deserializer, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(around(handler.unary_stream, False, True),
                                                    request_deserializer, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(around(handler.stream_unary, True, False),
                                                    request_deserializer, ser)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(around(handler.stream_stream, True, True),
                                                     request_deserializer, ser)
    return handler


def wrap_handler(handler: grpc.RpcMethodHandler, method: str = "") -> grpc.RpcMethodHandler:
    """``handler`` with requests parsed inside the mapping and every exception mapped by ``abort``
    (``method``, e.g. "/shortlist.v1.Agent/Select", names it in the log)."""
    parse = handler.request_deserializer

    def guard(context: grpc.ServicerContext, e: Exception) -> None:
        if _already_ended(context):
            raise e
        abort(context, e, method)

    def around(fn: Behaviour, request_streaming: bool, response_streaming: bool) -> Behaviour:
        def parsed(raw: Any) -> Any:
            return _parsed_stream(parse, raw) if request_streaming else _parse(parse, raw)

        def returning(raw: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(parsed(raw), context)
            except Exception as e:
                guard(context, e)
                raise

        def streaming(raw: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(parsed(raw), context)
            except Exception as e:
                guard(context, e)
                raise

        return streaming if response_streaming else returning

    return rewrap_handler(handler, around, None)  # parsed inside, so a malformed request is mapped too


class ErrorMapping(grpc.ServerInterceptor):
    """Wraps every method of the services named in ``services`` (full names, e.g. ``shortlist.v1.Agent``)
    with ``wrap_handler``. Install it first (outermost) so it also maps errors raised by handlers that
    other interceptors return."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self.prefixes = tuple(f"/{s}/" for s in services)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = getattr(handler_call_details, "method", "") or ""
        if handler is None or not method.startswith(self.prefixes):
            return handler
        return wrap_handler(handler, method)
