"""A small typed client for the agent: used by the CLI, training's ``cycle`` and the benchmarks.

    stub = connect("127.0.0.1:50051")            # waits until the agent answers (or says why it cannot)
    stub = connect("agent.lab:50051", config=ClientConfig(tls_ca=Path("ca.pem"), token="..."))
    reply = ingest(stub, samples, batch=256)      # one client stream, requests of <= 256 samples and
                                                  # <= REQUEST_BYTES each
    ids = [s.id for s in stub.Select(agent_pb2.SelectRequest(budget=10, strategy="random")).selected]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import grpc
import numpy as np

from agent.errors import RETRY_AFTER_KEY, Rejected, rejection_message
from agent.security import READ, RPC_ROLES, printable_ascii
from shortlist.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from shortlist.datasets import ImageItem

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
# Ingest packs samples into requests of at most this many bytes (besides at most ``batch`` samples): a
# quarter of both sides' default 64 MiB message limit, so a folder of phone photos (3-5 MB each) goes
# in requests of a few photos. A sample above it travels alone; one above MAX_MESSAGE_BYTES minus
# REQUEST_MARGIN can never be sent and is rejected here, and the rest still go.
REQUEST_BYTES = 16 * 1024 * 1024
REQUEST_MARGIN = 64 * 1024  # room for the request's own framing and gRPC's
LABELS_PER_REQUEST = 10_000  # well below the agent's default --max-ids-per-request (100,000)
# Transient failures worth retrying (the agent restarting, a brief network blip), for every RPC but the
# client stream Ingest: gRPC retries a stream whose sent messages still fit its retry buffer, so a small
# Ingest that the agent ended with UNAVAILABLE at shutdown ("N samples of this stream were stored") was
# sent again to the stopped agent and ended "failed to connect", the count lost; ``ingest`` callers resume
# by ids instead.
_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
RETRY_POLICY = json.dumps({"methodConfig": [{
    "name": [{"service": _SERVICE.full_name, "method": m.name} for m in _SERVICE.methods if not m.client_streaming],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})


def busy_retry_methods(roles: Mapping[str, str] | None = None) -> frozenset[str]:
    """RPCs a busy refusal is retried for (BusyRetry): those whose RESOURCE_EXHAUSTED with a hint means that
    nothing was done, and whose repetition changes nothing but the answer's freshness: the read RPCs of
    agent/security.py RPC_ROLES (or ``roles``) whose request is not a client stream, so a new RPC is
    decided there once. Select and PriorLabels are the heavy work that admission (agent/admission.py)
    refuses with Busy "it was not started": a refused Select wrote no selection record (it is written once
    the work is done), so the repeat is the first one that runs; the rest only read. Not retried: the write
    RPCs (SubmitLabels and RetractLabels: each applied call is a label event in the history, and their
    RESOURCE_EXHAUSTED is a size limit or a full disk, never a busy lane; UpdateQueue, ReloadModel) and any
    client stream (Ingest, a write too: its samples are read from the caller's iterator as they are sent,
    so they cannot be sent again; its refusals are per stream and ``ingest`` callers resume by ids)."""
    roles = RPC_ROLES if roles is None else roles
    return frozenset(m.name for m in _SERVICE.methods if roles.get(m.name) == READ and not m.client_streaming)


BUSY_RETRY_METHODS = busy_retry_methods()


@dataclass(frozen=True)
class BusyRetry:
    """How the client retries a call the agent refused with RESOURCE_EXHAUSTED and a retry hint (the
    trailing metadata ``retry-after-ms`` that admission's ``Busy`` sends; a RESOURCE_EXHAUSTED without
    it, e.g. a size limit, is never retried), for the blocking calls (``stub.Select(req)``,
    ``.with_call``, and server streams refused before their first item) of ``methods``; ``.future()``
    calls are not retried.

    Each wait is the hint times a random factor in [1, 1 + ``jitter``] (clients refused together do not
    come back together). A retry is made only while its wait fits in what is left of ``max_wait_s``
    (seconds of waiting in all, per call) and, with as long again as the refused attempt took, in what is
    left of the call's own deadline (``timeout=``; the retried call gets what is left of it; checked again
    after the wait, which a loaded machine can overrun), and at most ``attempts`` calls in all (the first
    one included): otherwise the last refusal is raised, with ``busy_attempts`` and ``busy_waited_s`` set
    on it (``describe`` words it). ``BusyRetry.OFF`` (or ``attempts=1``, or ``max_wait_s=0``) turns it off:
    ``bench load`` measures the agent's refusals, and the web app passes the hint on to the browser as
    Retry-After."""

    attempts: int = 5
    max_wait_s: float = 20.0
    jitter: float = 0.5
    methods: frozenset[str] = field(default=BUSY_RETRY_METHODS)

    OFF: ClassVar[BusyRetry]

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.max_wait_s < 0 or self.jitter < 0:
            raise ValueError("busy retry: attempts >= 1, max_wait_s >= 0 and jitter >= 0")

    @property
    def enabled(self) -> bool:
        return self.attempts > 1 and self.max_wait_s > 0 and bool(self.methods)


BusyRetry.OFF = BusyRetry(attempts=1, max_wait_s=0.0)


def retry_hint_s(e: grpc.RpcError) -> float | None:
    """The agent's retry hint (seconds) on a refusal, from its ``retry-after-ms`` trailer; None without one."""
    trailers = e.trailing_metadata() if isinstance(e, grpc.Call) else None
    for key, value in trailers or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, int(value) / 1000)
            except ValueError:
                return None
    return None


def describe(e: grpc.RpcError) -> str:
    """``CODE: message`` of a failed call, for people (the message as ``detail`` words it)."""
    if not isinstance(e, grpc.Call):
        return str(e)
    return f"{e.code().name}: {detail(e)}"


def detail(e: grpc.RpcError) -> str:
    """The message of a failed call, for people (the CLIs print it after the code); for a busy refusal the
    client gave up on, also the agent's hint and how long the client retried."""
    if not isinstance(e, grpc.Call):
        return str(e)
    text = e.details() or ""
    hint = retry_hint_s(e)
    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or hint is None:
        return text
    attempts = getattr(e, "busy_attempts", 1)
    waited = getattr(e, "busy_waited_s", 0.0)
    tried = (f"gave up after {attempts} attempts and {waited:.1f} s of waiting" if attempts > 1 else
             "did not retry (the wait would not fit in its retry budget or the call's deadline)")
    return (f"{text} [the agent asks to retry in {hint:g} s; the client {tried}: retry later, or allow longer "
            "waits with --busy-retry-s (env SHORTLIST_BUSY_RETRY_S)]")


# grpc hands intercept_unary_unary the outcome of a blocking call (complete: a reply, or the error) and the
# call object of a ``.future()`` call, which may already be complete too when the agent refuses at once,
# so ``done()`` cannot tell them apart; the future's class can (grpc._channel, not a public name: an
# unknown outcome that is still running counts as a future as well).
try:
    from grpc import _channel as _grpc_channel

    _FUTURE_CLASS: type | None = getattr(_grpc_channel, "_MultiThreadedRendezvous", None)
except ImportError:
    _FUTURE_CLASS = None


def _is_future(outcome: Any) -> bool:
    return not outcome.done() or (_FUTURE_CLASS is not None and isinstance(outcome, _FUTURE_CLASS))


class _BusyRetrier(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Retries busy refusals of ``policy.methods`` (see BusyRetry)."""

    def __init__(self, policy: BusyRetry, sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy
        self._sleep = sleep

    def _applies(self, details: Any) -> bool:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        return method.rpartition("/")[2] in self.policy.methods

    def _wait(self, e: grpc.RpcError, attempt: int, waited: float, deadline: float | None,
              attempt_s: float = 0.0) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with ``e``. ``attempt_s``: how long
        the refused attempt took (seconds); the next one is expected to take as long, so a retry whose wait
        plus that would not end before the deadline is not made (the caller gets the refusal, which says
        what to do, rather than DEADLINE_EXCEEDED a moment later)."""
        if not isinstance(e, grpc.Call) or e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        hint = retry_hint_s(e)
        if hint is None or attempt >= self.policy.attempts:
            return None
        wait = hint * (1 + self.policy.jitter * random.random())
        if waited + wait > self.policy.max_wait_s:
            return None
        if deadline is not None and time.monotonic() + wait + attempt_s >= deadline:
            return None
        return wait

    def _pause(self, wait: float, deadline: float | None, attempt_s: float) -> bool:
        """Sleep ``wait`` s before a retry; False when the next attempt (expected to take ``attempt_s``, as
        the refused one did) no longer fits in the deadline after the sleep: a loaded machine can oversleep
        past what ``_wait`` allowed, and the refusal says more than DEADLINE_EXCEEDED a moment later."""
        self._sleep(wait)
        return deadline is None or time.monotonic() + attempt_s < deadline

    @staticmethod
    def _gave_up(e: Any, attempt: int, waited: float) -> None:
        with contextlib.suppress(AttributeError):  # an error object that takes no attributes: not worded
            e.busy_attempts, e.busy_waited_s = attempt, waited

    @staticmethod
    def _deadline(details: Any) -> float | None:
        return None if details.timeout is None else time.monotonic() + details.timeout

    @staticmethod
    def _left(details: Any, deadline: float | None) -> Any:
        if deadline is None:
            return details
        return details._replace(timeout=max(0.001, deadline - time.monotonic()))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        deadline = self._deadline(client_call_details)
        t0 = time.monotonic()
        outcome = continuation(client_call_details, request)
        if not self._applies(client_call_details) or _is_future(outcome):  # .future(): not retried
            return outcome
        attempt, waited = 1, 0.0
        while True:
            e = outcome.exception()
            if e is None:
                return outcome
            attempt_s = time.monotonic() - t0
            wait = self._wait(e, attempt, waited, deadline, attempt_s)
            if wait is None:
                self._gave_up(e, attempt, waited)
                return outcome
            if not self._pause(wait, deadline, attempt_s):
                self._gave_up(e, attempt, waited + wait)
                return outcome
            attempt, waited = attempt + 1, waited + wait
            t0 = time.monotonic()
            outcome = continuation(self._left(client_call_details, deadline), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = continuation(client_call_details, request)
        if not self._applies(client_call_details):
            return call
        return _RetriedStream(self, continuation, client_call_details, request, call)


class _RetriedStream:
    """A server stream whose busy refusal before the first item is retried (``_BusyRetrier``); it
    delegates everything else (``cancel``, ``code``, ``details``, metadata) to the current call."""

    def __init__(self, retrier: _BusyRetrier, continuation: Any, details: Any, request: Any, call: Any) -> None:
        self._retrier, self._continuation, self._details, self._request = retrier, continuation, details, request
        self._call = call
        self._started = False
        self._deadline = retrier._deadline(details)
        self._t0 = time.monotonic()  # when the current attempt started (about: the first call was just made)

    def __iter__(self) -> _RetriedStream:
        return self

    def __next__(self) -> Any:
        if self._started:
            return next(self._call)
        attempt, waited = 1, 0.0
        while True:
            try:
                item = next(self._call)
                self._started = True
                return item
            except StopIteration:
                self._started = True
                raise
            except grpc.RpcError as e:
                attempt_s = time.monotonic() - self._t0
                wait = self._retrier._wait(e, attempt, waited, self._deadline, attempt_s)
                if wait is None:
                    self._retrier._gave_up(e, attempt, waited)
                    raise
                if not self._retrier._pause(wait, self._deadline, attempt_s):
                    self._retrier._gave_up(e, attempt, waited + wait)
                    raise
                attempt, waited = attempt + 1, waited + wait
                self._t0 = time.monotonic()
                self._call = self._continuation(self._retrier._left(self._details, self._deadline), self._request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class AgentUnavailable(ConnectionError):
    """The agent could not be reached; the message says why (refused, unresolved name, TLS, timeout)."""


class IngestInterrupted(RuntimeError):
    """Reading the samples failed in the middle of an Ingest stream. The stream was closed cleanly, so
    ``reply`` says what the agent stored of the samples read before the failure; ``cause`` is the
    reader's exception (also ``__cause__``)."""

    def __init__(self, cause: Exception, reply: agent_pb2.IngestReply, sent: int) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.reply = reply
        self.sent = sent


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), or the caller's ``stop`` event, in the middle of a call made of requests the agent
    makes durable one by one (``ingest``'s stream, ``submit_labels``' and ``retract_labels``' chunks): what
    is known of what was stored, for the caller to say before it exits. ``reply``: the agent's replies
    received, summed (what it acknowledged); ``sent``: the items sent (or taken from the source) before
    the stop; ``unconfirmed``: those of them no reply covers (the agent may have stored them, or not).
    Re-sending the same items is safe: stored samples count as duplicates, stored labels as accepted.
    A KeyboardInterrupt, so a caller that does not look for it still stops as on Ctrl-C."""

    def __init__(self, reply: Any, sent: int, unconfirmed: int) -> None:
        super().__init__()
        self.reply = reply
        self.sent = sent
        self.unconfirmed = unconfirmed


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a token (None when it can): gRPC metadata is printable ASCII, so a token with
    another character (an accented letter, a control character) could not even be sent (gRPC refused the
    call with INTERNAL "Invalid metadata" and a C-core trace), and no agent's --tokens file holds one."""
    if printable_ascii(token):
        return None
    at = next(i for i, c in enumerate(token) if not printable_ascii(c))
    return (f"a token is printable ASCII (character {at + 1} of this one's {len(token)} is not): check it "
            "against the agent's --tokens file")


@dataclass(frozen=True)
class ClientConfig:
    """How to reach an agent: TLS (``tls_ca`` trusts the agent's certificate; ``tls_cert``/``tls_key``
    are this client's certificate for mutual TLS; ``tls_server_name`` overrides the name checked in
    the agent's certificate), the bearer ``token``, how long to wait for the connection, and how calls
    refused by a busy agent are retried (``busy_retry``; ``BusyRetry.OFF`` turns it off).

    ``from_env()`` reads SHORTLIST_TLS_CA, SHORTLIST_TLS_CERT, SHORTLIST_TLS_KEY,
    SHORTLIST_TLS_SERVER_NAME, SHORTLIST_TOKEN and SHORTLIST_BUSY_RETRY_S (seconds of waiting for a busy
    agent per call, 0 = off; the CLI's --tls-ca ... --token, --busy-retry-s default to them)."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""
    token: str = ""
    connect_timeout: float = CONNECT_TIMEOUT_S
    busy_retry: BusyRetry = BusyRetry()

    def __post_init__(self) -> None:
        if (problem := token_problem(self.token)) is not None:
            raise ValueError(problem)

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @staticmethod
    def from_env() -> ClientConfig:
        def path(name: str) -> Path | None:
            value = os.environ.get(name, "")
            return Path(value) if value else None

        return ClientConfig(tls_ca=path("SHORTLIST_TLS_CA"), tls_cert=path("SHORTLIST_TLS_CERT"),
                            tls_key=path("SHORTLIST_TLS_KEY"),
                            tls_server_name=os.environ.get("SHORTLIST_TLS_SERVER_NAME", ""),
                            token=os.environ.get("SHORTLIST_TOKEN", ""),
                            busy_retry=busy_retry(float(os.environ.get("SHORTLIST_BUSY_RETRY_S", "") or
                                                        BusyRetry().max_wait_s)))

    def _read(self, path: Path, flag: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise AgentUnavailable(f"cannot read {flag} {path}: {e.strerror or e}") from None

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AgentUnavailable("a client certificate needs both --tls-cert FILE and --tls-key FILE")
        return grpc.ssl_channel_credentials(
            root_certificates=None if self.tls_ca is None else self._read(self.tls_ca, "--tls-ca"),
            private_key=None if self.tls_key is None else self._read(self.tls_key, "--tls-key"),
            certificate_chain=None if self.tls_cert is None else self._read(self.tls_cert, "--tls-cert"))


def busy_retry(max_wait_s: float) -> BusyRetry:
    """The default BusyRetry with at most ``max_wait_s`` seconds of waiting per call (0: off)."""
    return BusyRetry(max_wait_s=max_wait_s) if max_wait_s > 0 else BusyRetry.OFF


class _CallDetailsInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """A client interceptor of every kind of call that only looks at or changes the call's details
    (``_details``): the four intercept methods gRPC asks for, written once."""

    def _details(self, details: Any) -> Any:
        return details

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _BearerToken(_CallDetailsInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to every call (works on TLS and on loopback plaintext channels,
    where gRPC refuses call credentials)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])


class _LastCall(_CallDetailsInterceptor):
    """Remembers the method of the latest call started on its channel (``last_call``), so that a client can
    name the RPC an older agent does not offer (its UNIMPLEMENTED says only "Method not found!")."""

    channel: grpc.Channel | None = None

    def _details(self, details: Any) -> Any:
        global _last_call
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        _last_call = (method.rsplit("/", 1)[-1], self.channel)
        return details


_last_call: tuple[str, grpc.Channel | None] | None = None


def last_call() -> tuple[str, grpc.Channel | None] | None:
    """The RPC name (e.g. ``ListLabels``) of the latest call started on a ``channel`` of this process, and that
    channel; None before any."""
    return _last_call


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a plain HOST:PORT / [V6]:PORT address; None for other gRPC targets (unix:, dns:///)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address or host in ("unix", "unix-abstract", "vsock"):
        return None
    return host.strip("[]"), int(port)


def _probe_tcp(address: str, host: str, port: int, timeout: float) -> None:
    """Fail at once with a precise reason when the name does not resolve or nothing listens."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise AgentUnavailable(f"cannot resolve the agent's host name {host!r} ({e.strerror}); check --agent "
                               f"{address} (or SHORTLIST_AGENT)") from None
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                s.connect(sockaddr)
                return
        except OSError as e:
            last = e
    if isinstance(last, ConnectionRefusedError):
        raise AgentUnavailable(f"connection refused by {address}: no agent listens there; check --agent (or "
                               "SHORTLIST_AGENT), or start one with `shortlist serve --data-dir D --models M "
                               f"--port {port}`") from None
    if isinstance(last, TimeoutError | socket.timeout):
        raise AgentUnavailable(f"no answer from {address} within {timeout:g} s (a firewall, or the wrong address?); "
                               "raise --connect-timeout if the network is slow") from None
    raise AgentUnavailable(f"cannot reach {address}: {last.strerror if last else 'no address'}") from None


def _client_cert_refused(address: str, config: ClientConfig) -> str:
    if config.tls_cert is None:
        return (f"the agent at {address} requires a client certificate (mutual TLS): pass --tls-cert FILE "
                "--tls-key FILE (env SHORTLIST_TLS_CERT, SHORTLIST_TLS_KEY)")
    return (f"the agent at {address} refused the client certificate {config.tls_cert}: it must be signed by the "
            "CA the agent trusts (its --tls-client-ca), valid today, and made for a client (extendedKeyUsage "
            "clientAuth, when it lists key usages: a server's certificate, serverAuth only, is refused); check "
            f"with `openssl x509 -in {config.tls_cert} -noout -issuer -dates -ext extendedKeyUsage`")


def _probe_tls(address: str, host: str, port: int, config: ClientConfig, timeout: float) -> str:
    """Why gRPC could not set up a channel that TCP reaches: a TLS mismatch or a handshake failure ("" if
    none is seen, e.g. the agent was only briefly unavailable)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if not config.tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                ctx.set_alpn_protocols(["h2"])
                try:
                    with ctx.wrap_socket(raw, server_hostname=host):
                        return (f"the agent at {address} uses TLS: pass --tls-ca FILE (the CA that signed its "
                                "certificate; env SHORTLIST_TLS_CA)")
                except (ssl.SSLError, OSError):
                    return ""
            ctx = ssl.create_default_context(cafile=None if config.tls_ca is None else str(config.tls_ca))
            ctx.set_alpn_protocols(["h2"])
            if config.tls_cert is not None and config.tls_key is not None:
                ctx.load_cert_chain(config.tls_cert, config.tls_key)
            name = config.tls_server_name or host
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                if not tls.recv(1):  # TLS 1.3: a refused client certificate shows as a closed connection
                    return _client_cert_refused(address, config)
    except ssl.SSLCertVerificationError as e:
        return (f"TLS handshake with {address} failed: its certificate is not trusted ({e.verify_message}); pass "
                "--tls-ca with the CA that signed the agent's certificate, and --tls-server-name NAME when you "
                "connect by an address the certificate does not name")
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason or "BAD_CERTIFICATE" in reason \
                or "UNKNOWN_CA" in reason:
            return _client_cert_refused(address, config)
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH" in reason:
            return f"the agent at {address} does not speak TLS: drop --tls-ca/--tls-cert (and SHORTLIST_TLS_*)"
        return f"TLS handshake with {address} failed: {reason}"
    except (OSError, ValueError):
        return ""
    return ""


def _close_unwatched(ch: grpc.Channel, ready_future: grpc.Future) -> None:
    """Close ``ch`` after its ready future gave up, once grpc's connectivity-polling thread has seen that no one
    watches any more (it looks every 0.2 s): closed under that thread, grpc raises "Cannot monitor channel
    state: Channel closed!" in it, a traceback on stderr (and a failed test under pytest). Waits at most 0.5 s;
    reads grpc's private ``_connectivity_state`` when there is one, else closes at once."""
    ready_future.cancel()
    state = getattr(ch, "_connectivity_state", None)
    deadline = time.monotonic() + 0.5
    while getattr(state, "polling", False) and time.monotonic() < deadline:
        time.sleep(0.02)
    ch.close()


def channel(address: str, timeout: float | None = None, config: ClientConfig | None = None,
            starting: bool = False, max_reconnect_backoff_ms: int | None = None) -> grpc.Channel:
    """A channel to ``address`` (HOST:PORT) with ``config``'s TLS and token, once ready; AgentUnavailable
    says why not (name not resolved, connection refused, TLS mismatch or untrusted certificate, or no
    answer within ``timeout`` s, default ``config.connect_timeout``). A wrong token shows at the first call
    as UNAUTHENTICATED or PERMISSION_DENIED. ``starting``: the agent was just started, so a refused
    connection is retried until the timeout instead of failing at once. ``max_reconnect_backoff_ms``: the
    longest wait between reconnection attempts once the agent is gone (gRPC's default grows to 120 s, so a
    long-lived channel, like the web app's, answered UNAVAILABLE for ~26 s after the agent came back)."""
    config = config or ClientConfig()
    wait = config.connect_timeout if timeout is None else timeout
    deadline = time.monotonic() + wait
    hp = _host_port(address)
    while hp is not None:
        try:
            _probe_tcp(address, *hp, min(wait, 5.0))
            break
        except AgentUnavailable:
            if not starting or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", RETRY_POLICY)]
    if max_reconnect_backoff_ms is not None:
        first = min(200, max_reconnect_backoff_ms)
        options += [("grpc.initial_reconnect_backoff_ms", first), ("grpc.min_reconnect_backoff_ms", first),
                    ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms)]
    creds = config.credentials()
    if creds is not None and config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    ch = grpc.insecure_channel(address, options=options) if creds is None else \
        grpc.secure_channel(address, creds, options=options)
    ready_future = grpc.channel_ready_future(ch)
    reason = ""
    probed = False
    ready = False
    while True:
        left = deadline - time.monotonic()
        try:  # a connection TCP reaches is ready within milliseconds unless TLS (or the protocol) disagrees
            ready_future.result(timeout=max(0.0, min(left, 1.0)))
            ready = True
            break
        except grpc.FutureTimeoutError:
            pass
        if hp is not None and not probed:
            probed = True
            reason = _probe_tls(address, *hp, config, min(wait, 5.0))
            if reason:
                break
        if time.monotonic() >= deadline:
            break
    if not ready:
        _close_unwatched(ch, ready_future)
        raise AgentUnavailable(reason or f"no agent answers at {address} after {wait:g}s; start one with "
                               "`shortlist serve --data-dir D --models M --port PORT`, or raise --connect-timeout")
    # The token goes first, so that every retried attempt carries it too.
    interceptors: list[Any] = [_BearerToken(config.token)] if config.token else []
    if config.busy_retry.enabled:
        interceptors.append(_BusyRetrier(config.busy_retry))
    recorder = _LastCall()
    recorder.channel = grpc.intercept_channel(ch, recorder, *interceptors)
    return recorder.channel


def connect(address: str, timeout: float | None = None, config: ClientConfig | None = None,
            starting: bool = False) -> agent_pb2_grpc.AgentStub:
    """A stub for the agent at ``address``, once its channel is ready (retries UNAVAILABLE, and busy refusals
    as ``config.busy_retry`` says); see ``channel``."""
    return agent_pb2_grpc.AgentStub(channel(address, timeout, config, starting))


def image_sample(sample_id: str, encoded: bytes, label: str = "", uri: str = "",
                 metadata: dict[str, str] | None = None) -> agent_pb2.Sample:
    return agent_pb2.Sample(id=sample_id, encoded_image=encoded, label=label, uri=uri, metadata=metadata or {})


def tensor_sample(sample_id: str, pixels: np.ndarray, label: str = "", uri: str = "",
                  metadata: dict[str, str] | None = None) -> agent_pb2.Sample:
    """HxWx3 uint8 or 3xHxW float32 pixels -> a Sample with a raw Tensor payload."""
    t = agent_pb2.Tensor(dtype=str(pixels.dtype), shape=list(pixels.shape),
                         data=np.ascontiguousarray(pixels).tobytes())
    return agent_pb2.Sample(id=sample_id, tensor=t, label=label, uri=uri, metadata=metadata or {})


def item_sample(item: ImageItem, label: str = "", metadata: dict[str, str] | None = None) -> agent_pb2.Sample:
    """One image of a source (shortlist.datasets.ImageItem) as a Sample: its file bytes as they are, or, for a
    source that holds pixels only (torchvision's CIFAR-10 batches), its HxWx3 pixels as a raw Tensor."""
    if item.encoded is not None:
        return image_sample(item.id, item.encoded, label=label, uri=item.uri, metadata=metadata)
    if item.pixels is None:
        raise ValueError(f"{item.id}: the source gave neither file bytes nor pixels")
    return tensor_sample(item.id, item.pixels, label=label, uri=item.uri, metadata=metadata)


def _framed_size(sample: agent_pb2.Sample) -> int:
    """Bytes ``sample`` adds to an IngestRequest: its own size, the field tag and the length prefix."""
    n = sample.ByteSize()
    return n + 1 + (n.bit_length() + 6) // 7


def batches(samples: Iterable[agent_pb2.Sample], batch: int,
            on_batch: Callable[[int], None] | None = None, max_bytes: int | None = None,
            rejected: list[agent_pb2.Rejection] | None = None) -> Iterator[agent_pb2.IngestRequest]:
    """Group samples into IngestRequests of at most ``batch`` samples and ``max_bytes`` bytes (default
    REQUEST_BYTES; a larger sample goes alone); ``on_batch(n)`` after each is handed over. A sample too
    large for any message (MAX_MESSAGE_BYTES - REQUEST_MARGIN) is skipped with a Rejection appended to
    ``rejected`` (counted by ``on_batch`` too)."""
    limit = REQUEST_BYTES if max_bytes is None else max_bytes
    largest = MAX_MESSAGE_BYTES - REQUEST_MARGIN
    buf: list[agent_pb2.Sample] = []
    size = 0
    for s in samples:
        n = _framed_size(s)
        if n > largest:
            if rejected is not None:
                rejected.append(rejection_message(Rejected(
                    s.id, agent_pb2.REJECTION_CODE_PAYLOAD_TOO_LARGE,
                    f"sample of {n / 2**20:.1f} MiB is larger than the largest gRPC message "
                    f"({largest / 2**20:.1f} MiB); not sent (shrink or re-encode the image)")))
            if on_batch is not None:
                on_batch(1)
            continue
        if buf and size + n > limit:
            yield agent_pb2.IngestRequest(samples=buf)
            if on_batch is not None:
                on_batch(len(buf))
            buf, size = [], 0
        buf.append(s)
        size += n
        if len(buf) >= batch:
            yield agent_pb2.IngestRequest(samples=buf)
            if on_batch is not None:
                on_batch(len(buf))
            buf, size = [], 0
    if buf:
        yield agent_pb2.IngestRequest(samples=buf)
        if on_batch is not None:
            on_batch(len(buf))


def ingest(stub: agent_pb2_grpc.AgentStub, samples: Iterable[agent_pb2.Sample], batch: int = 256,
           on_batch: Callable[[int], None] | None = None, timeout: float | None = None,
           max_bytes: int | None = None, stop: threading.Event | None = None,
           all_sent: threading.Event | None = None) -> agent_pb2.IngestReply:
    """Stream ``samples`` in one Ingest call, in requests of at most ``batch`` samples and ``max_bytes``
    bytes (see ``batches``); the reply comes once all are durable. Samples too large to send are in the
    reply's ``rejected`` like the agent's own rejections. When iterating ``samples`` raises, the stream
    is closed after the samples read so far and IngestInterrupted carries the agent's reply for them.
    Once ``stop`` is set (``shortlist ingest``'s first Ctrl-C) no further sample is read: the stream is
    closed the same way and Interrupted carries the agent's reply for those sent. Ctrl-C while waiting
    (without ``stop``, or a second one) cancels the call: Interrupted then knows only how many were sent.
    ``all_sent`` is set once every sample was read and handed to the stream (``stop`` no longer matters)."""
    failed: list[Exception] = []
    sent = 0
    stopped = False

    def guarded() -> Iterator[agent_pb2.Sample]:
        nonlocal sent, stopped
        try:
            for s in samples:
                if stop is not None and stop.is_set():  # that sample is not sent: a rerun sends it
                    stopped = True
                    return
                sent += 1
                yield s
            if all_sent is not None:
                all_sent.set()
        except Exception as e:  # gRPC would turn it into UNKNOWN "Exception iterating requests!"
            failed.append(e)

    too_large: list[agent_pb2.Rejection] = []
    call = stub.Ingest.future(batches(guarded(), batch, on_batch, max_bytes, too_large), timeout=timeout)
    try:
        reply: agent_pb2.IngestReply = call.result()
    except KeyboardInterrupt:
        # The agent keeps every request it committed, but the count of them would come only with the reply;
        # cancelling tells it the stream is over at once (it would otherwise wait for the next request).
        call.cancel()
        raise Interrupted(agent_pb2.IngestReply(), sent, sent) from None
    reply.rejected_count = rejected_count(reply) + len(too_large)
    reply.rejected.extend(too_large)
    if failed:
        raise IngestInterrupted(failed[0], reply, sent) from failed[0]
    if stopped:
        raise Interrupted(reply, sent, 0)
    return reply


# ListSamples' initial metadata: the label revision (Status.label_events) of the labels it streams, one snapshot
# taken at the call's start (agent/service.py sends it).
LABEL_EVENTS_KEY = "shortlist-label-events"


def list_samples(stub: agent_pb2_grpc.AgentStub, labeled_only: bool = False,
                 include_payload: bool = False) -> Iterator[agent_pb2.Sample]:
    yield from stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=labeled_only,
                                                             include_payload=include_payload))


def list_samples_at(stub: agent_pb2_grpc.AgentStub, labeled_only: bool = False,
                    include_payload: bool = False) -> tuple[int | None, Iterator[agent_pb2.Sample]]:
    """``list_samples`` and the label revision (Status.label_events) its labels are a snapshot of, from the
    call's initial metadata (None from an agent that does not send it). Waits for the agent's first answer."""
    call = stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=labeled_only, include_payload=include_payload))
    sent = dict(call.initial_metadata() or ())
    events = sent.get(LABEL_EVENTS_KEY)
    return (int(events) if isinstance(events, str) and events.isdigit() else None), call


def list_labels(stub: agent_pb2_grpc.AgentStub, history: bool = False, after_seq: int = 0,
                limit: int = 0) -> Iterator[agent_pb2.LabelRecord]:
    """Each labelled sample's current label (``history``: every label ever given), oldest first; only the
    records whose ``seq`` is above ``after_seq`` (a sync's cursor: the last record's seq it received), at most
    ``limit`` of them (0: all)."""
    yield from stub.ListLabels(agent_pb2.ListLabelsRequest(history=history, after_seq=after_seq, limit=limit))


def counted(count: int, listed: Sized) -> int:
    """How many entries a reply's list had in all: its ``*_count`` field (the agent lists the first entries
    only, ``REPLY_LIST_BYTES`` in agent/service.py), or the list's length from an agent older than those
    fields (its lists are complete; the field is then 0)."""
    return max(count, len(listed))


def rejected_count(reply: agent_pb2.IngestReply | agent_pb2.SubmitLabelsReply | agent_pb2.RetractLabelsReply) -> int:
    """The rejections a reply counts in all (``counted``)."""
    return counted(reply.rejected_count, reply.rejected)


# SubmitLabels' or RetractLabels' reply: both are (accepted, rejected, overwritten), summed over chunks by
# ``_summed`` (with SubmitLabels' twin_conflicts).
LabelsReply = TypeVar("LabelsReply", agent_pb2.SubmitLabelsReply, agent_pb2.RetractLabelsReply)


def _summed(total: LabelsReply, calls: Iterable[tuple[int, Callable[[], LabelsReply]]],
            stop: threading.Event | None) -> LabelsReply:
    """Make ``calls`` ((items, call) of one request each, durable on its own) one after the other, adding
    each reply into ``total``. Once ``stop`` is set no further request is made: Interrupted with the replies
    so far, nothing unconfirmed; Ctrl-C during a request: Interrupted with that request's items unconfirmed."""
    sent = 0
    for items, call in calls:
        if stop is not None and stop.is_set():
            raise Interrupted(total, sent, 0)
        sent += items
        try:
            reply = call()
        except KeyboardInterrupt:
            raise Interrupted(total, sent, items) from None
        total.accepted += reply.accepted
        total.rejected_count += rejected_count(reply)  # the totals, also where a reply listed the first only
        total.overwritten_count += counted(reply.overwritten_count, reply.overwritten)
        total.rejected.extend(reply.rejected)
        total.overwritten.extend(reply.overwritten)
        if isinstance(total, agent_pb2.SubmitLabelsReply) and isinstance(reply, agent_pb2.SubmitLabelsReply):
            total.agreed_count += counted(reply.agreed_count, reply.agreed)
            total.twin_conflicts_count += counted(reply.twin_conflicts_count, reply.twin_conflicts)
            total.agreed.extend(reply.agreed)
            total.twin_conflicts.extend(reply.twin_conflicts)
    return total


def submit_labels(stub: agent_pb2_grpc.AgentStub, labels: Iterable[tuple[str, str]],
                  annotator: str = "", chunk: int = LABELS_PER_REQUEST, source: str = "",
                  if_current: Mapping[str, str] | None = None,
                  stop: threading.Event | None = None) -> agent_pb2.SubmitLabelsReply:
    """Submit (id, label) pairs, ``chunk`` per request (the agent takes at most ``--max-ids-per-request``
    in one); the replies are summed. Each request is durable on its own. ``source`` says how they were
    made ("" = "manual"; "prior:METHOD" for accepted priors, "labelstudio", ...). ``if_current``: id -> the
    label it must have now ("" = unlabelled) for the new one to be stored (LabelAssignment.if_current).
    ``stop`` set, or Ctrl-C: Interrupted with the replies so far (``_summed``)."""
    pairs = list(labels)
    parts = [pairs[start:start + chunk] for start in range(0, max(len(pairs), 1), chunk)]
    return _summed(agent_pb2.SubmitLabelsReply(),
                   ((len(p), _labels_request(stub, p, annotator, source, if_current or {})) for p in parts), stop)


def submit_attributed_labels(stub: agent_pb2_grpc.AgentStub, rows: Iterable[tuple[str, str, str, str]],
                             chunk: int = LABELS_PER_REQUEST, if_current: Mapping[str, str] | None = None,
                             stop: threading.Event | None = None) -> agent_pb2.SubmitLabelsReply:
    """Submit (id, label, annotator, source) rows, each under its own annotator and source (e.g. an exported
    labels.csv moved to another agent): one request per annotator and source (``chunk`` rows at most each), in
    the order each pair first appears; otherwise as ``submit_labels`` (the ids are expected to be distinct, so
    the order between requests does not matter)."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i, lab, annotator, source in rows:
        groups.setdefault((annotator, source), []).append((i, lab))
    cond = if_current or {}
    calls = ((len(part), _labels_request(stub, part, annotator, source, cond))
             for (annotator, source), pairs in groups.items()
             for part in (pairs[start:start + chunk] for start in range(0, len(pairs), chunk)))
    return _summed(agent_pb2.SubmitLabelsReply(), calls, stop)


def _labels_request(stub: agent_pb2_grpc.AgentStub, part: list[tuple[str, str]], annotator: str, source: str,
                    cond: Mapping[str, str]) -> Callable[[], agent_pb2.SubmitLabelsReply]:
    req = agent_pb2.SubmitLabelsRequest(
        labels=[agent_pb2.LabelAssignment(id=i, label=lab, if_current=cond.get(i)) if i in cond
                else agent_pb2.LabelAssignment(id=i, label=lab) for i, lab in part],
        annotator=annotator, source=source)
    return lambda: stub.SubmitLabels(req)


def retract_labels(stub: agent_pb2_grpc.AgentStub, ids: Iterable[str], annotator: str = "",
                   chunk: int = LABELS_PER_REQUEST, source: str = "",
                   if_current: Mapping[str, str] | None = None,
                   stop: threading.Event | None = None,
                   restore_previous: bool = False) -> agent_pb2.RetractLabelsReply:
    """Take the labels of ``ids`` back (the samples become unlabelled; the history keeps what was given),
    ``chunk`` ids per request; the replies are summed. Each request is durable on its own. ``if_current``:
    id -> the label it must have now to be taken back (RetractLabelsRequest.if_current). ``stop`` set, or
    Ctrl-C: Interrupted with the replies so far (``_summed``). ``restore_previous``: put back each sample's
    label before its latest one, in its giver's name (RetractLabelsRequest.restore_previous)."""
    todo = list(ids)
    cond = if_current or {}

    def request(part: list[str]) -> Callable[[], agent_pb2.RetractLabelsReply]:
        req = agent_pb2.RetractLabelsRequest(ids=part, annotator=annotator, source=source,
                                             if_current={i: cond[i] for i in part if i in cond},
                                             restore_previous=restore_previous)
        return lambda: stub.RetractLabels(req)

    parts = [todo[start:start + chunk] for start in range(0, max(len(todo), 1), chunk)]
    return _summed(agent_pb2.RetractLabelsReply(), ((len(p), request(p)) for p in parts), stop)


def delete_samples(stub: agent_pb2_grpc.AgentStub, ids: Iterable[str], annotator: str = "", reason: str = "",
                   chunk: int = LABELS_PER_REQUEST) -> agent_pb2.DeleteSamplesReply:
    """Delete the samples ``ids`` for good (DeleteSamples), ``chunk`` ids per request (each one transaction,
    durable on its own); the replies are summed (``rejected`` holds the first ones, ``rejected_count`` all).
    Ctrl-C during a request: Interrupted with the replies so far and that request's ids unconfirmed (the agent
    may have applied it: the deletion cannot be told from its reply any more)."""
    todo = list(ids)
    total = agent_pb2.DeleteSamplesReply()
    sent = 0
    for start in range(0, max(len(todo), 1), chunk):
        part = todo[start:start + chunk]
        sent += len(part)
        try:
            reply = stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(ids=part, annotator=annotator, reason=reason))
        except KeyboardInterrupt:
            raise Interrupted(total, sent, len(part)) from None
        total.accepted += reply.accepted
        total.payloads_removed += reply.payloads_removed
        total.rejected_count += max(reply.rejected_count, len(reply.rejected))
        total.rejected.extend(reply.rejected)
    return total


# ---- calibration provenance (PriorLabel.calibration, docs/agent.md "Calibration provenance") -----------
PICKUP_WAIT_S = 10.0  # how long a publisher waits for the agent to say what it made of a new version


def reload_model(stub: agent_pb2_grpc.AgentStub, version: str, wait_s: float = PICKUP_WAIT_S) -> agent_pb2.Status:
    """Ask the agent to look at its registry now (ReloadModel) and wait up to ``wait_s`` for its status to
    show what it made of ``version``: serving it, embedding it (``pending_model_version``), or refusing it (a
    warning that starts with the version's name). The agent's reply is its status once it has looked at the
    registry (at most 5 s later); GetStatus is polled after it while the agent was busy embedding, or is an older
    agent whose reply was the status from before; the last status seen is returned either way, so the caller
    can say which it was. With a read token (ReloadModel needs write) the agent is
    not asked but still watched: it takes the version up at its own next registry check (``serve --poll``)."""
    try:
        st = stub.ReloadModel(agent_pb2.ReloadModelRequest())
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        st = stub.GetStatus(agent_pb2.GetStatusRequest())
    deadline = time.monotonic() + wait_s
    while not (version in (st.model_version, st.pending_model_version) or refusal(st, version) is not None) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
        st = stub.GetStatus(agent_pb2.GetStatusRequest())
    return st


def refusal(st: agent_pb2.Status, version: str) -> str | None:
    """The agent's reason for refusing ``version`` (its GetStatus warning), or None."""
    return next((w for w in st.warnings if w.startswith(f"{version} ")), None)


def first_calibration(rows: Iterable[agent_pb2.PriorLabel]) -> agent_pb2.Calibration | None:
    """The ``calibration`` of a PriorLabels reply (set on its first row only), or None when no row carries
    one (no rows, or an agent older than the field)."""
    for p in rows:
        if p.HasField("calibration"):
            return p.calibration
    return None


def finite(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every float that is not finite replaced by None, for strict
    JSON: JSON has no Infinity or NaN, and a parser in another language refuses Python's ``Infinity``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def ranked(probs: Mapping[str, float]) -> dict[str, float]:
    """A PriorLabel's class probabilities, most probable first (ties by name): a protobuf map has no
    order, so printing it as it comes gives another key order on each call."""
    return dict(sorted(probs.items(), key=lambda kv: (-kv[1], kv[0])))


def calibration_dict(c: agent_pb2.Calibration) -> dict[str, object]:
    """PriorLabel.calibration as JSON."""
    return {"source": c.source, "held_out": c.held_out, "temperature": c.temperature,
            "audit_labels": c.audit_labels, "left_out": c.left_out, "warning": c.warning}


def calibration_line(c: agent_pb2.Calibration) -> str:
    """One line under ``shortlist prior``'s table: the agent's warning when the confidences cannot be
    trusted yet, else where they were calibrated."""
    if c.warning:
        return c.warning
    if c.source == "off":
        return "confidences not calibrated (calibrate=false): the method's own"
    what = "audit labels (audit or random draws)" if c.source == "audit" else "held-out labels"
    # (a warning already names the accepted priors left out: Calibration.left_out)
    left = (f"; {c.left_out} accepted prior{'' if c.left_out == 1 else 's'} (source prior:*) left out"
            if c.left_out else "")
    return f"confidences calibrated on {c.held_out} {what} (temperature {c.temperature:.3g}){left}"
