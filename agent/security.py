"""Who may reach the agent and what it may touch: TLS, bearer tokens with roles, the exposure rule,
one agent per data folder, owner-only files.

Tokens: a file of ``role:token`` lines (roles ``read`` and ``write``; write implies read; blank lines
and ``#`` comments are ignored). Clients send gRPC metadata ``authorization: Bearer TOKEN``.
``AuthInterceptor`` checks every call of ``shortlist.v1.Agent`` against ``RPC_ROLES`` (the health
service and reflection need no token): a missing or unknown token is UNAUTHENTICATED, a read token on
a write RPC PERMISSION_DENIED. Tokens are compared with ``hmac.compare_digest`` against every known
token (no early exit), never logged, and the file is re-read when it changes. It fails closed: a file
emptied of tokens admits no caller at once; a broken new file is refused with a logged error naming the
line, the previous tokens staying in force for 30 s (an editor's half-written save), then no caller is
admitted until it is fixed (``TokenStore``).

Exposure: ``serve`` on an address that is not loopback needs TLS and authentication (tokens, or
client certificates with ``--tls-client-ca``), or an explicit ``--insecure`` (then a warning at start
and in GetStatus).
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from agent.errors import AgentError, PermissionDenied, Unauthenticated, abort, rewrap_handler
from shortlist.locks import Locked, PidLock
from shortlist.v1 import agent_pb2

log = logging.getLogger(__name__)

READ = "read"
WRITE = "write"
ROLES = (READ, WRITE)
_IMPLIES = {READ: {READ}, WRITE: {READ, WRITE}}

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
# The one place that says which role each RPC of shortlist.v1.Agent needs. A new RPC must be added
# here: ``check_roles`` (run by create_server and by the tests) refuses a service with a method missing, in one
# line (``serve``: "cannot start: RPC X has no role in agent/security.py RPC_ROLES: add it as read or write").
# Requests of a READ RPC that need a WRITE token all the same: Select's audit draw is recorded for everyone
# (Status.audit.drawn, and which labels count as audit labels), so a viewer must not start one.
WRITE_REQUESTS: Mapping[str, tuple[type[Any], Callable[[Any], str | None]]] = {
    "Select": (agent_pb2.SelectRequest,
               lambda r: "an audit draw (Select strategy audit)" if r.strategy == "audit" else None),
}

# True while the handler of a read-token call runs (AuthInterceptor): a Select made with it is answered but not
# recorded (agent/core.py ``Agent.select``). A viewer's or dashboard's Selects change nothing: recorded, each
# distinct one grew the selections table (docs/agent.md, "Heavy work"), and its random draws could make
# hand-picked labels count as audit labels.
READ_ONLY_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("shortlist_read_only_call", default=False)

# The role also decides whether the client retries a busy refusal (agent/client.py busy_retry_methods: the
# read RPCs that are not client streams).
RPC_ROLES: Mapping[str, str] = {
    "Select": READ,
    "PriorLabels": READ,
    "ListSamples": READ,
    "GetStatus": READ,
    "ListLabels": READ,
    "GetMap": READ,
    "GetImages": READ,
    "GetQueue": READ,
    # Replaces or marks the queue a whole team labels from (a viewer's click wiped its marks): a write.
    "UpdateQueue": WRITE,
    "Ingest": WRITE,
    "SubmitLabels": WRITE,
    "RetractLabels": WRITE,
    "RenameClass": WRITE,  # relabels every sample of a class and retires its name
    "DeleteSamples": WRITE,  # removes samples, their labels and payloads for good
    "ReloadModel": WRITE,
}

MIN_TOKEN_LENGTH = 16
TOKEN_HINT = "generate one with `openssl rand -hex 32`"
OWNER_DIR = 0o700
OWNER_FILE = 0o600
LOCK_FILE = "agent.lock"


class SecurityError(ValueError):
    """A security setting is wrong or missing; the message says what to pass instead."""


class DataDirLocked(OSError):
    """Another agent process holds the data folder."""


class RolesOutOfDate(ValueError):
    """RPC_ROLES and the service disagree: a developer's mistake, said in one line when the agent starts."""


def check_roles(roles: Mapping[str, str] | None = None) -> None:
    """Every method of shortlist.v1.Agent has a role (read or write) in RPC_ROLES (or ``roles``), and it names
    no other method; RolesOutOfDate (a ValueError: ``serve`` says "cannot start" and exits 2) otherwise."""
    roles = RPC_ROLES if roles is None else roles
    methods = [m.name for m in AGENT_SERVICE.methods]
    missing = [m for m in methods if m not in roles]
    if missing:
        which = (f"RPC {missing[0]} has no role" if len(missing) == 1
                 else f"RPCs {', '.join(missing)} have no role")
        raise RolesOutOfDate(f"{which} in agent/security.py RPC_ROLES: add "
                             f"{'it' if len(missing) == 1 else 'each'} as {READ} or {WRITE}")
    bad = sorted(f"{m}={r!r}" for m, r in roles.items() if r not in ROLES)
    if bad:
        raise RolesOutOfDate(f"agent/security.py RPC_ROLES gives {', '.join(bad)}: a role is {READ} or {WRITE}")
    extra = sorted(set(roles) - set(methods))
    if extra:
        raise RolesOutOfDate(f"agent/security.py RPC_ROLES names {', '.join(extra)}, which {AGENT_SERVICE.full_name} "
                             "has no RPC of: remove it")


# ---- tokens --------------------------------------------------------------------------------------
# A token this short or made of this few different characters is warned about at start (and when the tokens
# file is re-read): accepted, since it may be a test setup, but a guess away from the data (the security review:
# `write:aaaaaaaaaaaaaaaa` and `read:passwordpassword` passed silently). `openssl rand -hex 32` gives 64.
WEAK_TOKEN_CHARS = 20
WEAK_TOKEN_DISTINCT = 10


def weak_token(token: str) -> str | None:
    """Why ``token`` is weak ("N characters", "only N different characters"), or None; never the token."""
    if len(token) < WEAK_TOKEN_CHARS:
        return f"{len(token)} characters, fewer than {WEAK_TOKEN_CHARS}"
    if len(set(token)) < WEAK_TOKEN_DISTINCT:
        return f"only {len(set(token))} different characters"
    return None


def printable_ascii(text: str) -> bool:
    """Whether ``text`` can travel as gRPC metadata (printable ASCII), as a token must."""
    return text.isascii() and text.isprintable()


def parse_tokens(text: str, source: str, allow_empty: bool = False) -> list[tuple[bytes, str]]:
    """(token, role) pairs from a tokens file's text. SecurityError names the bad line (never its token);
    a text with no tokens is one too unless ``allow_empty`` (a live file emptied to revoke every token)."""
    pairs: list[tuple[bytes, str]] = []
    seen: dict[bytes, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, token = line.partition(":")
        role, token = role.strip(), token.strip()
        where = f"{source} line {n}"
        if not sep or role not in ROLES:
            raise SecurityError(f"{where}: expected `role:token` with role {' or '.join(ROLES)}")
        if len(token) < MIN_TOKEN_LENGTH or not printable_ascii(token) or " " in token:
            raise SecurityError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                                f"without spaces ({TOKEN_HINT})")
        if (weak := weak_token(token)) is not None:
            log.warning("%s: a weak %s token (%s): anyone who guesses it can %s; make a strong one with "
                        "`openssl rand -hex 32` or `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`",
                        where, role, weak, "label and change the data" if role == WRITE else "see the data")
        key = token.encode()
        if key in seen:
            raise SecurityError(f"{where}: the same token is already given on line {seen[key]}")
        seen[key] = n
        pairs.append((key, role))
    if not pairs and not allow_empty:
        raise SecurityError(f"{source}: no tokens (one `role:token` a line, role read or write; {TOKEN_HINT})")
    return pairs


def warn_if_shared(path: Path, what: str) -> None:
    """Log a warning when a secret file can be read by users other than its owner."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s %s can be read by other users (mode %03o); `chmod 600 %s`", what, path, mode, path)


# Days before its end at which a certificate's coming expiry is warned about at start.
CERT_WARN_DAYS = 30


def warn_if_out_of_date(cert: Path, what: str, now: datetime | None = None) -> None:
    """Log a warning when the PEM certificate ``cert`` (its first) is expired, not yet valid, or expires within
    CERT_WARN_DAYS of ``now`` (UTC; default the clock's), naming the file and its dates: the agent serves all
    the same (an operator may be rotating), but clients refuse such a certificate in their handshake."""
    # imported here: only a TLS agent reads a certificate, and the import is not free
    from cryptography import x509

    try:
        decoded = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return  # ssl has read it already (load_cert_chain): a form cryptography does not read is not a date problem
    now = now or datetime.now(UTC)
    start, end = decoded.not_valid_before_utc, decoded.not_valid_after_utc
    valid = f"valid {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    if end <= now:
        log.warning("%s %s expired on %s UTC (%s): clients will refuse it; install a new certificate", what, cert,
                    f"{end:%Y-%m-%d %H:%M}", valid)
    elif start > now:
        log.warning("%s %s is not valid before %s UTC (%s): clients will refuse it until then; check this "
                    "machine's clock or the certificate", what, cert, f"{start:%Y-%m-%d %H:%M}", valid)
    elif end - now <= timedelta(days=CERT_WARN_DAYS):
        left = end - now
        when = f"in {left.days} days" if left.days >= 2 else f"in {left.total_seconds() / 3600:.0f} hours"
        log.warning("%s %s expires on %s UTC, %s (%s): clients will refuse it then; renew it before",
                    what, cert, f"{end:%Y-%m-%d %H:%M}", when, valid)


def read_token_text(path: Path) -> str:
    warn_if_shared(path, "the tokens file")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SecurityError(f"cannot read --tokens {path}: {e}") from None


def read_tokens(path: Path) -> list[tuple[bytes, str]]:
    return parse_tokens(read_token_text(path), str(path))


# What a caller is told while the tokens file admits nobody (never the file's path: the caller is not trusted).
NO_TOKENS = ("the agent's tokens file holds no tokens, so no caller is admitted; ask the agent's operator to add "
             "a token to it")
BROKEN_TOKENS = ("the agent's tokens file does not parse, so no caller is admitted; ask the agent's operator to "
                 "fix it")
MISSING_TOKENS = ("the agent's tokens file is missing, so no caller is admitted; ask the agent's operator to "
                  "put it back")


class TokenStore:
    """The tokens of a file, re-read when the file changes (checked at most every ``recheck_s``).

    Fails closed: a file that holds no tokens (emptied, or comments only) admits no caller, at once (the
    way to revoke the last token, or to lock everyone out); ``refusal()`` says so. A file that cannot be
    read or parsed (an editor's half-written save, a typo, a file removed) keeps the previous tokens for
    ``broken_grace_s`` seconds, logged as an error, and then admits no caller either until it is fixed. The file
    given at start must hold tokens (SecurityError). ``clock``: seconds, monotonic (tests pass their own)."""

    def __init__(self, path: Path, recheck_s: float = 1.0, broken_grace_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self.broken_grace_s = broken_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = read_tokens(path)
        self._stamp = self._stat()
        self._checked = clock()
        self._closed = ""  # why no caller is admitted ("" while the tokens hold)
        # since when (monotonic) the file does not parse, why, and whether because it is missing
        self._broken: tuple[float, str, bool] | None = None

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self.recheck_s:
            return
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                self._expire_grace(now)
                return
            self._stamp = stamp
            try:
                tokens = parse_tokens(read_token_text(self.path), str(self.path), allow_empty=True)
            except SecurityError as e:
                missing = not self.path.exists()
                self._file_broken(now, str(e), missing)
                return
            self._broken = None
            self._tokens = tokens
            if tokens:
                self._closed = ""
                log.info("re-read the tokens file %s: %d tokens", self.path, len(tokens))
            else:
                self._closed = NO_TOKENS
                log.error("the tokens file %s holds no tokens: every call is refused (UNAUTHENTICATED) until a "
                          "`role:token` line is added", self.path)

    def _file_broken(self, now: float, why: str, missing: bool) -> None:
        """The file changed and does not parse (``missing``: it is gone): keep the previous tokens for the grace
        period (lock held)."""
        if self._broken is None:
            self._broken = (now, why, missing)
            log.error("the tokens file %s; %s", self._trouble(why, missing),
                      "no caller is admitted until it is fixed" if self._closed else
                      f"the previous tokens stay in force for {self.broken_grace_s:g} s (the grace), then no "
                      "caller is admitted until it is fixed")
        else:
            self._broken = (self._broken[0], why, missing)
            log.error("the tokens file %s", self._trouble(why, missing))
        if self._closed in (BROKEN_TOKENS, MISSING_TOKENS):  # closed already: say what is wrong now
            self._closed = MISSING_TOKENS if missing else BROKEN_TOKENS
        self._expire_grace(now)

    def _trouble(self, why: str, missing: bool) -> str:
        return f"{self.path} is missing" if missing else f"does not parse: {why}"

    def _expire_grace(self, now: float) -> None:
        """After the grace period of a broken file: no caller is admitted (logged once; lock held). The time is
        checked at the next call, which may come after the grace has passed: both are said."""
        if self._broken is None or self._closed in (BROKEN_TOKENS, MISSING_TOKENS):
            return
        since, why, missing = self._broken
        if self._closed or now - since >= self.broken_grace_s:
            if not self._closed:
                log.error("the tokens file %s, %.0f s after the change was seen (the grace is %g s): every call "
                          "is refused (UNAUTHENTICATED) until it is fixed", self._trouble(why, missing), now - since,
                          self.broken_grace_s)
            self._tokens, self._closed = [], MISSING_TOKENS if missing else BROKEN_TOKENS

    def refusal(self) -> str:
        """Why no caller is admitted ("" while the file's tokens are in force): the file holds no tokens, or
        it has not parsed for longer than the grace period."""
        self._maybe_reload()
        return self._closed

    def role(self, token: str) -> str | None:
        """The role of ``token`` (None when unknown), compared in constant time with every known token."""
        self._maybe_reload()
        given = token.encode()
        found: str | None = None
        for known, role in self._tokens:  # no early exit: the time does not depend on which one matches
            if hmac.compare_digest(given, known):
                found = role
        return found


# Metadata the in-process web app adds on the agent's local Unix socket (agent/web/auth.py, Caller): the browser's
# address (request.client.host), which refusals are then logged with and counted under instead of the socket's
# empty peer "unix:"; and a sign-in's role check (an expected PERMISSION_DENIED for a read token: logged at INFO).
# Believed only on the Unix socket, which only the app's process can reach (a folder of mode 0700): a client over
# TCP could write anything there.
WEB_CLIENT_KEY = "x-shortlist-web-client"
ROLE_CHECK_KEY = "x-shortlist-role-check"
_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF.:[]%-_" "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ")


def metadata_value(metadata: Any, key: str) -> str | None:
    for k, value in metadata or ():
        if k == key:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


def caller_address(peer: str, metadata: Any = None) -> str:
    """Who a refusal is logged with and counted under: gRPC's ``ipv4:HOST:PORT`` without its port (a client
    opening a new connection per call gets a new port each time); on the local Unix socket, the browser's
    address the web app passed (``WEB_CLIENT_KEY``), as ``ADDRESS (web app)``."""
    if peer.startswith("unix:"):
        web = metadata_value(metadata, WEB_CLIENT_KEY)
        if web and len(web) <= 64 and set(web) <= _ADDRESS_CHARS:
            return f"{web} (web app)"
        return peer
    return peer.rpartition(":")[0] if peer.count(":") >= 2 else peer


class RepeatedAuthorization(Exception):
    """More than one ``authorization`` metadata entry: which one counts is not for the agent to guess."""


def bearer(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` metadata entry; "" when the header is malformed,
    None when absent. RepeatedAuthorization when there is more than one such entry: taking the first, a
    proxy or client layer that adds its own header made the call authenticate as whichever came first."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if len(values) > 1:
        raise RepeatedAuthorization
    if not values:
        return None
    text = values[0].decode(errors="replace") if isinstance(values[0], bytes) else str(values[0])
    scheme, _, token = text.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


class RefusalLog:
    """Refused calls, logged with the client's address, at most one line per (reason, address) every
    ``interval_s`` seconds, the next one saying how many were left out meanwhile: a client retrying a bad
    token in a loop (11,000 calls in 3 s in the security review) must not fill the disk with one line each."""

    def __init__(self, interval_s: float = 10.0, max_keys: int = 4096) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (last logged, left out since)

    def refused(self, what: str, peer: str, metadata: Any = None, level: int = logging.WARNING) -> None:
        """Log (or count) one refusal; ``peer`` is gRPC's ``ipv4:HOST:PORT``, keyed by the address
        ``caller_address`` makes of it (and of the call's ``metadata``). ``level``: INFO for an expected one (a
        sign-in's role check)."""
        peer = caller_address(peer, metadata)
        more = self.admit(what, peer)
        if more is not None:
            log.log(level, "refused %s from %s%s", what, peer or "an unknown peer", more)

    def admit(self, what: str, address: str) -> str | None:
        """Whether to log one more ``what`` from ``address`` now: None to leave it out (counted), else the
        text to end the line with ("" or " (N more from it in the last S s, not logged)"). For callers that
        word their own lines (the web app's refused sign-ins): ``what`` must not hold what the client chose,
        or every variation would be a line of its own."""
        now = time.monotonic()
        key = (what, address)
        with self._lock:
            last, left_out = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.interval_s:
                self._seen[key] = (last, left_out + 1)
                return None
            if len(self._seen) >= self.max_keys:  # many addresses: forget the old entries, not the memory bound
                self._seen.clear()
            self._seen[key] = (now, 0)
        return f" ({left_out} more from it in the last {self.interval_s:.0f} s, not logged)" if left_out else ""


def _deny(handler: grpc.RpcMethodHandler, refusal: AgentError,
          refusals: RefusalLog | None = None, what: str = "", role_check: bool = False) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``refusal`` (its code and message, mapped by agent.errors.abort like any
    other error) before reading its request, logging ``what`` with the client's
    address through ``refusals`` at WARNING; ``role_check`` (the call carries ROLE_CHECK_KEY): at INFO and
    named a sign-in's role check, when it came over the local socket.

    Whatever ``handler``'s kind, the refusal is a bidirectional-stream handler: gRPC calls it as the call
    arrives, with an iterator over requests it never reads (a unary handler is called only once its request
    message has been read whole, so concurrent large calls without a token held every message in memory:
    docs/agent.md, "Limits", "What a call costs before it is refused", has the figures and the command). The
    wire is the same for the four kinds, so the client gets the status as from any handler."""
    def refuse(_requests: Any, context: grpc.ServicerContext) -> Any:
        if refusals is not None:
            # the mark is believed from the web app's local socket only (like WEB_CLIENT_KEY): a client over TCP
            # could otherwise send ROLE_CHECK_KEY to log its refusals below WARNING, or as the app's harmless probe
            peer = context.peer()
            expected = role_check and peer.startswith("unix:")
            refusals.refused(what + (" (a sign-in's role check)" if expected else ""), peer,
                             context.invocation_metadata(), logging.INFO if expected else logging.WARNING)
        abort(context, refusal)

    return grpc.stream_stream_rpc_method_handler(refuse, None, handler.response_serializer)


def _needs_role(what: str, need: str, role: str) -> str:
    """PERMISSION_DENIED's message: ``what`` needs role ``need``; the caller's token has ``role``."""
    return (f"{what} needs a token with role {need}; this token has role {role} (ask the agent's operator for a "
            "write token)")


def _read_only(handler: grpc.RpcMethodHandler, name: str, role: str,
               check: tuple[type[Any], Callable[[Any], str | None]], refusals: RefusalLog) -> grpc.RpcMethodHandler:
    """``handler`` (a unary request) for a read token: refusing, with PERMISSION_DENIED, the requests ``check``
    names (the request's message type, what about it needs a write token or None), and running the others
    with READ_ONLY_CALL set (answered, not recorded). The request may still be bytes here
    (agent.errors.wrap_handler parses it inside its error mapping): it is parsed once more to look; one that
    does not parse is left to the handler's own INVALID_ARGUMENT."""
    message, needs_write = check

    def around(behaviour: Any, _request_streaming: bool, _response_streaming: bool) -> Any:
        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                parsed = message.FromString(request) if isinstance(request, bytes) else request
            except Exception:  # a malformed request: the handler's own message says so
                return behaviour(request, context)
            what = needs_write(parsed)
            if what is not None:
                refusals.refused(f"{name}: {what} with a {role} token", context.peer(), context.invocation_metadata())
                abort(context, PermissionDenied(_needs_role(what, WRITE, role)))
            mark = READ_ONLY_CALL.set(True)  # answered, not recorded
            try:
                return behaviour(request, context)
            finally:
                READ_ONLY_CALL.reset(mark)
        return checked

    return rewrap_handler(handler, around, handler.request_deserializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer-token check for every RPC of shortlist.v1.Agent (other services pass untouched)."""

    def __init__(self, tokens: TokenStore) -> None:
        check_roles()
        self.tokens = tokens
        self._prefix = f"/{AGENT_SERVICE.full_name}/"
        self.refusals = RefusalLog()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        handler = continuation(handler_call_details)
        if handler is None or not method.startswith(self._prefix):
            return handler
        name = method[len(self._prefix):]
        need = RPC_ROLES.get(name, WRITE)
        try:
            token = bearer(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        except RepeatedAuthorization:
            return _deny(handler, Unauthenticated(
                         "more than one authorization metadata entry: send one authorization header, "
                         "`authorization: Bearer TOKEN` (a proxy or client layer may add its own)"),
                         self.refusals, f"{name}: repeated authorization metadata")
        if token is None:
            return _deny(handler, Unauthenticated(
                         "this agent requires a token: pass --token TOKEN or set SHORTLIST_TOKEN (API clients send "
                         "the metadata `authorization: Bearer TOKEN`); ask the agent's operator for one"),
                         self.refusals, f"{name}: no token")
        if not token:
            return _deny(handler, Unauthenticated(
                         "malformed authorization metadata: send `authorization: Bearer TOKEN`"),
                         self.refusals, f"{name}: malformed authorization metadata")
        role = self.tokens.role(token)
        if role is None and (closed := self.tokens.refusal()):
            return _deny(handler, Unauthenticated(closed), self.refusals, f"{name}: {closed}")
        if role is None:
            return _deny(handler, Unauthenticated(
                         "unknown token: check --token / SHORTLIST_TOKEN against the agent's --tokens file"),
                         self.refusals, f"{name}: unknown token")
        if need not in _IMPLIES[role]:
            metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
            expected = metadata_value(metadata, ROLE_CHECK_KEY) is not None  # a sign-in asking what the token may do
            return _deny(handler, PermissionDenied(_needs_role(name, need, role)), self.refusals,
                         f"{name}: a {role} token", expected)
        if name in WRITE_REQUESTS and WRITE not in _IMPLIES[role]:
            return _read_only(handler, name, role, WRITE_REQUESTS[name], self.refusals)
        return handler


# ---- TLS and exposure ----------------------------------------------------------------------------
def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SecurityError(f"cannot read {flag} {path}: {e.strerror or e}") from None


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only reaches this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


@dataclass(frozen=True)
class ServerSecurity:
    """Security settings of ``serve``: TLS files, the tokens file, and the explicit ``--insecure``."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens: Path | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server TLS credentials (None without --tls-cert), after checking the files belong together."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityError("TLS needs both --tls-cert FILE and --tls-key FILE")
        if self.tls_cert is None or self.tls_key is None:
            if self.tls_client_ca is not None:
                raise SecurityError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is on top of TLS)")
            return None
        cert, key = _read(self.tls_cert, "--tls-cert"), _read(self.tls_key, "--tls-key")
        warn_if_shared(self.tls_key, "the TLS key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as e:
            raise SecurityError(f"--tls-cert {self.tls_cert} and --tls-key {self.tls_key} are not a PEM certificate "
                                f"and its matching private key ({e.reason or e})") from None
        warn_if_out_of_date(self.tls_cert, "the TLS certificate (--tls-cert)")
        client_ca = None
        if self.tls_client_ca is not None:
            client_ca = _read(self.tls_client_ca, "--tls-client-ca")
            try:
                ctx.load_verify_locations(cafile=self.tls_client_ca)
            except ssl.SSLError as e:
                raise SecurityError(f"--tls-client-ca {self.tls_client_ca} is not a PEM CA certificate "
                                    f"({e.reason or e})") from None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        check_roles()
        return [] if self.tokens is None else [AuthInterceptor(TokenStore(self.tokens))]

    def check_exposure(self, host: str) -> list[str]:
        """Refuse (SecurityError) a non-loopback ``host`` without TLS and authentication unless insecure;
        returns the warnings to show at start and in GetStatus."""
        authenticated = self.tokens is not None or self.tls_client_ca is not None
        return check_exposure(host, tls=self.tls, authenticated=authenticated, insecure=self.insecure)


def listen_socket(host: str, port: int, what: str, flags: str) -> socket.socket:
    """A TCP socket listening on host:port (port 0: any free port), or OSError saying that ``what`` ("the
    web app") cannot listen there and which ``flags`` to change. SO_REUSEADDR: a port left in TIME_WAIT by
    the previous run is free (the kernel still refuses a port another socket listens on)."""
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(f"{what} cannot listen on {host}:{port} ({e.strerror or e}): the port is in use by another "
                      f"process or the address is not one of this machine's; pick another {flags}") from None
    return sock


def check_exposure(host: str, *, tls: bool, authenticated: bool, insecure: bool,
                   tls_flags: str = "--tls-cert FILE --tls-key FILE",
                   auth_flags: str = "tokens (--tokens FILE) or client certificates (--tls-client-ca FILE)",
                   what: str = "serve", host_flag: str = "--host") -> list[str]:
    """The one exposure rule (the agent's gRPC port and the web app's HTTP port): a ``host`` other machines
    can reach needs TLS and authentication, or an explicit ``insecure``. SecurityError (saying what to pass)
    when refused; else the warnings to show (non-empty only for an accepted --insecure). ``host_flag``: the
    option that set ``host``, named in the refusal (``serve --web-host`` for its web app)."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        try:  # "127.1", "10.1.2": the C library reads them as IPv4 addresses, gRPC cannot listen on them
            full = socket.inet_ntoa(socket.inet_aton(bare))
        except OSError:
            full = ""
        if full:
            raise SecurityError(f"{host_flag} {host} is an IPv4 address in short form, which the server cannot listen "
                                f"on: write it in full, {host_flag} {full}") from None
    if is_loopback(host) or (tls and authenticated):
        return []
    missing = []
    if not tls:
        missing.append(f"TLS ({tls_flags})")
    if not authenticated:
        missing.append(auth_flags)
    if not insecure:
        raise SecurityError(
            f"refusing to {what} on {host}, which other machines can reach, without {' and '.join(missing)}; "
            f"pass them (see README, 'Running the agent on a network'), listen on {host_flag} 127.0.0.1, or pass "
            "--insecure to accept that anyone who reaches the port can read and change the agent's data")
    return [f"insecure: serving on {host} without {' and '.join(missing)} (--insecure): anyone who reaches "
            "this port can read and change the agent's data"]


# ---- the data folder -----------------------------------------------------------------------------
def owner_only_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700: only the agent's user can enter it."""
    path.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != OWNER_DIR:
        try:
            path.chmod(OWNER_DIR)
        except PermissionError:
            log.warning("cannot make %s readable by its owner only (it belongs to another user)", path)


def owner_only_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite then gives its -wal/-shm the same mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE))


class DataDirLock(PidLock):
    """An exclusive ``flock`` on ``<data>/agent.lock`` for as long as the agent has the folder open
    (shortlist.locks: never stale); a second agent (another process, or another Agent in this one) is refused at
    start."""

    def __init__(self, data_dir: Path) -> None:
        try:
            super().__init__(data_dir / LOCK_FILE, OWNER_FILE)
        except Locked as e:
            raise DataDirLocked(f"the data folder {data_dir} is in use by another agent{e.who}; stop it, or give "
                                "this agent its own --data-dir") from None
