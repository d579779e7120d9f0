"""Who is calling: the browser's token (``Authorization: Bearer`` header, else the login cookie, else the
app's ``default_token``) is forwarded to the agent as the gRPC ``authorization`` metadata, so the agent's
one auth interceptor (agent/security.py) decides: a read token can view, a write token can label. The
login name (a cookie) becomes the annotator of the labels given.

/login checks a token with the agent (GetStatus: valid at all; an empty SubmitLabels, marked as a role check
so the agent logs a read token's refusal at INFO: may it label?) and sets HttpOnly, SameSite=Strict cookies
(Secure under HTTPS); /logout clears them. The cookies are
SameSite=Strict, the write APIs take JSON only and every POST whose Origin is another site is refused
(agent/web/guards.py), so another site cannot make a browser label, signed in or served by a default token.

A request with more than one Authorization header is answered 401 before any of this
(``OneAuthorizationGuard``), as the agent answers more than one ``authorization`` metadata entry.

Every call also carries the browser's address (``request.client.host``; the app has no trusted-proxy
setting, so X-Forwarded-For is never read) as ``agent.security.WEB_CLIENT_KEY``: on the local socket the
agent logs and counts refusals under it. When the agent requires tokens (``WebConfig.tokens_required``), a
request without one is answered 401 by the app (a page: the sign-in page) without calling the agent. A
refused sign-in is logged at WARNING with the address and the name given, never the token, at most one line
per address and reason every 10 s (the agent's RefusalLog; the next line counts those left out).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import grpc
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agent import client as client_lib
from agent.limits import name_problem
from agent.security import ROLE_CHECK_KEY, WEB_CLIENT_KEY, RefusalLog
from agent.web.config import WebConfig
from agent.web.errors import (
    HttpError,
    error_response,
    for_people,
    rpc_error_response,
    token_refused,
    unavailable_response,
    wants_json,
)
from agent.web.module import WebModule
from agent.web.pages import render
from shortlist.v1 import agent_pb2, agent_pb2_grpc

TOKEN_COOKIE = "shortlist_token"
USER_COOKIE = "shortlist_user"
ROLE_COOKIE = "shortlist_role"  # "read" / "write": only what the pages show; the agent enforces the roles
COOKIE_MAX_AGE = 30 * 24 * 3600
MAX_NAME_CHARS = 64

# The body limit of this module's routes (the sign-in form: a name, a token and a page to go back to), instead
# of the app's ``max_body_bytes`` (16 MiB): a Content-Length above it is answered 413 before anything is read
# (agent/web/guards.py ``BodyLimitGuard``), a body without one is cut at it as it is read (agent/web/app.py).
# Before, anyone who reached the app had /login parse 16 MiB forms without a token. A token of the agent's
# longest (4,096 characters), percent-encoded, fits.
MAX_BODY_BYTES = 32 * 1024
BODY_LIMIT_ADVICE = "a sign-in form holds a name and a token: send only those (and next)"

R = TypeVar("R")
router = APIRouter()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """What the pages know of the caller (for display; the agent enforces the roles)."""

    user: str
    role: str  # "write", "read", or "" when unknown
    has_token: bool
    annotator: str = ""  # the name labels are recorded under (annotator_for): what the header shows

    @property
    def can_label(self) -> bool:
        return self.role != "read"


# The answer (401) to a request with more than one Authorization header, as the agent answers more than one
# ``authorization`` metadata entry (agent/security.py ``bearer``): taking the first, a proxy that adds its own
# header in front of the client's made the request run as whichever came first (a read token's page run with
# a write token, say), silently.
REPEATED_AUTHORIZATION = ("more than one Authorization header: send one Authorization header, `Authorization: "
                          "Bearer TOKEN` (a proxy or client layer may add its own)")


def authorization_header(request: Request) -> str:
    """The request's one Authorization header ("": none); HttpError 401 (``REPEATED_AUTHORIZATION``) when it
    has several (``OneAuthorizationGuard`` answers those before any route: this keeps every reader honest)."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise HttpError(401, "UNAUTHENTICATED", REPEATED_AUTHORIZATION)
    return values[0] if values else ""


def repeated_authorization_response(request: Request) -> Response:
    """The 401 to a request with several Authorization headers: JSON for an API (``WWW-Authenticate: Basic`` on
    Label Studio's routes, as their other 401s), else the error page, with no session (the page must not read
    the headers it refuses) and not the sign-in redirect of other 401s: the browser or proxy would send the
    same headers to /login again."""
    headers = {"WWW-Authenticate": 'Basic realm="shortlist"'} if request.url.path.startswith("/labelstudio/") else None
    if wants_json(request):
        return JSONResponse({"error": "UNAUTHENTICATED", "message": REPEATED_AUTHORIZATION}, status_code=401,
                            headers=headers)
    return render(request, "error.html", {"status": 401, "code": "UNAUTHENTICATED", "message": REPEATED_AUTHORIZATION,
                                          "session": Session(user="", role="", has_token=False)}, status_code=401)


class OneAuthorizationGuard:
    """Every request with more than one Authorization header is answered 401 (``repeated_authorization_response``)
    before anything reads a token from it (the TokenFirstGuard, the routes, Label Studio's Basic auth), logged
    at WARNING at most once per address every 10 s (RefusalLog)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or len(Headers(scope=scope).getlist("authorization")) < 2:
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no receive: the body is never read
        address = client_address(request)
        more = request.app.state.sign_in_refusals.admit("repeated authorization header", address)
        if more is not None:
            log.warning("answered %s %s from %s 401: more than one Authorization header%s", request.method,
                        request.url.path, address or "an unknown address", more)
        await repeated_authorization_response(request)(scope, receive, send)


def token_of(request: Request) -> str:
    """The caller's token: a bearer header, else the login cookie, else the app's default token ("": none).
    HttpError 401 when the request has more than one Authorization header (``authorization_header``)."""
    header = authorization_header(request)
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    if cookie:
        return cookie
    config: WebConfig = request.app.state.config
    return config.default_token


def session(request: Request) -> Session:
    user, token = unquote(request.cookies.get(USER_COOKIE, ""))[:MAX_NAME_CHARS], token_of(request)
    return Session(user=user,
                   role=request.cookies.get(ROLE_COOKIE, "") if request.cookies.get(ROLE_COOKIE) in ("read", "write")
                   else "", has_token=bool(token), annotator=annotator_for(user, token))


def annotator_for(user: str, token: str) -> str:
    """The annotator recorded with a label: the login name, else a fingerprint of the token (never the token)."""
    if user:
        return user
    if token:
        return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]
    return "web"


@dataclass(frozen=True)
class Caller:
    """One request's way to the agent: the app's shared channel plus this caller's token."""

    stub: agent_pb2_grpc.AgentStub
    token: str
    user: str
    config: WebConfig
    client: str = ""  # the browser's address (request.client.host)
    known: KnownTokens | None = None  # where a token the agent answered is remembered (the app's)

    @property
    def annotator(self) -> str:
        return annotator_for(self.user, self.token)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.token, self.client)

    def __call__(self, rpc: Callable[..., R], request: Any, timeout: float | None = None) -> R:
        """``rpc(request)`` with this caller's token and a deadline (``config.rpc_timeout_s`` by default).
        A grpc.RpcError escapes to agent/web/errors.py, which maps it to HTTP."""
        reply = rpc(request, metadata=self.metadata, timeout=timeout or self.config.rpc_timeout_s)
        if self.known is not None and self.token and not isinstance(reply, Iterator):
            self.known.add(self.token)  # (a stream's refusal comes later, as it is read: only unary replies count)
        return reply

    def status(self) -> agent_pb2.Status:
        return self(self.stub.GetStatus, agent_pb2.GetStatusRequest())

    def stream(self, rpc: Callable[..., Iterable[R]], request: Any, timeout: float | None = None) -> list[R]:
        return list(self(rpc, request, timeout))

    def iterate(self, rpc: Callable[..., Iterable[R]], request: Any, timeout: float | None = None) -> Iterator[R]:
        """A server stream's messages as they arrive (``stream`` collects them all: for long replies, e.g.
        PriorLabels of the whole pool, read them one by one instead)."""
        return iter(self(rpc, request, timeout))


def client_address(request: Request) -> str:
    """The browser's address as the app sees it (the socket's peer; no X-Forwarded-For: no trusted proxy)."""
    return request.client.host if request.client is not None else ""


# The agent's words for a token it does not know (agent/security.py), which errors.FOR_PEOPLE rewords for pages.
UNKNOWN_TOKEN = "unknown token: check --token / SHORTLIST_TOKEN against the agent's --tokens file"
_unusable_tokens = RefusalLog()
NO_TOKEN = "sign in with your token first"  # the app's answer (401) to an API request without a token


class UnusableToken(grpc.RpcError):
    """A token gRPC cannot send (not printable ASCII: an accented letter in a cookie, a control character in
    a header), answered as the agent answers any token it does not know: UNAUTHENTICATED, 401 "unknown
    token". Sending it made gRPC fail the call with INTERNAL "Invalid metadata" (a 500) and log a C-core
    trace for each request; no agent's --tokens file can hold such a token (agent.security.parse_tokens)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED

    def details(self) -> str:
        return UNKNOWN_TOKEN

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def call_metadata(token: str, client: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """A call's metadata: the token (if any), the browser's address (if known) and ``extra``. UnusableToken
    for a token that is not printable ASCII, logged as the agent logs refusals (RefusalLog: at most one
    line per address every 10 s, the next counting those left out)."""
    if token and client_lib.token_problem(token) is not None:
        more = _unusable_tokens.admit("unusable token", client)
        if more is not None:
            log.warning("refused a token from %s: not printable ASCII, so unknown to the agent%s",
                        client or "an unknown address", more)
        raise UnusableToken()
    out = [("authorization", f"Bearer {token}")] if token else []
    if client:
        out.append((WEB_CLIENT_KEY, client))
    return (*out, *extra)


def caller(request: Request) -> Caller:
    """FastAPI dependency: the Caller of this request (route functions are sync ``def``: FastAPI runs them
    in its threadpool, so the blocking gRPC calls never run on the event loop). Without a token while the
    agent requires one: 401 here (a page: the sign-in page), no call the agent would refuse and log."""
    state = request.app.state
    config: WebConfig = state.config
    token = token_of(request)
    if config.tokens_required and not token:
        raise HttpError(401, "UNAUTHENTICATED", NO_TOKEN)
    unknown_token_throttled(request, token)
    user = session(request).user
    signed_in_here(request, annotator_for(user, token), user)
    return Caller(state.stub(), token, user, config, client_address(request), state.known_tokens)


# The annotator a page was loaded for, sent by its scripts with every write (agent/web/static/app.js
# Shortlist.api, from base.html's <meta name="shortlist-as">), percent-encoded UTF-8 (a header is latin-1).
# The cookies are the browser's, not the tab's: on a shared computer, tab 1 opened as "ana" and tab 2 then
# signed in as "ben" left tab 1 showing "ana | Sign out" while its labels went in as ben's (the security
# review). A write whose page was loaded for someone else is refused (409 SIGNED_IN_ELSEWHERE), nothing sent
# to the agent. Without the header (the CLI, curl, Label Studio) nothing is checked: the token decides.
AS_HEADER = "x-shortlist-as"
SIGNED_IN_ELSEWHERE = "SIGNED_IN_ELSEWHERE"


def signed_in_here(request: Request, annotator: str, user: str) -> None:
    """HttpError 409 when the request says (``AS_HEADER``) that its page was loaded for another annotator than
    ``annotator``, the one this request's cookies (or token) record labels under; ``user``: the login name."""
    shown = request.headers.get(AS_HEADER)
    if shown is None or unquote(shown) == annotator:
        return
    if user:
        message = f"you are signed in as {annotator} in another tab: reload this page to label as {annotator}"
    else:
        message = (f"this browser signed out in another tab (labels would now be recorded under {annotator}): "
                   "reload this page, or sign in again")
    raise HttpError(409, SIGNED_IN_ELSEWHERE, message)


CallerDep = Depends(caller)


# The routes whose request bodies the app reads only from a caller the agent knows (TokenFirstGuard).
TOKEN_FIRST_PREFIXES = ("/api/", "/labelstudio/")
TOKEN_FIRST_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KNOWN_TOKEN_S = 10.0  # how long a token the agent answered counts as known here (it still checks every call)
MAX_KNOWN_TOKENS = 1024


class KnownTokens:
    """Tokens the agent answered (kept as sha256, thread-safe). In the last ``KNOWN_TOKEN_S`` (``has``): they
    skip the TokenFirstGuard's check. Ever, until the agent refuses one (``accepted``): they skip the
    unknown-token throttle, so a person signed in, or Label Studio's token, is never held up because someone at
    the same address guesses tokens (with the 10 s memory alone, a guess a second kept an idle person's token
    out for good). The agent still checks every call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, float] = {}  # sha256 of a token -> when it stops counting as known
        self._accepted: dict[str, None] = {}  # sha256 of the tokens the agent answered, oldest first

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def has(self, token: str) -> bool:
        with self._lock:
            return self._known.get(self._key(token), 0.0) > time.monotonic()

    def accepted(self, token: str) -> bool:
        with self._lock:
            return self._key(token) in self._accepted

    def add(self, token: str) -> None:
        key = self._key(token)
        with self._lock:
            if len(self._known) >= MAX_KNOWN_TOKENS:
                now = time.monotonic()
                self._known = {k: t for k, t in self._known.items() if t > now}
                if len(self._known) >= MAX_KNOWN_TOKENS:
                    self._known.clear()
            self._known[key] = time.monotonic() + KNOWN_TOKEN_S
            self._accepted.pop(key, None)
            self._accepted[key] = None
            if len(self._accepted) > MAX_KNOWN_TOKENS:  # the least recently answered goes
                del self._accepted[next(iter(self._accepted))]

    def forget(self, token: str) -> None:
        """The agent refused ``token`` (revoked since): it counts as unknown again."""
        key = self._key(token)
        with self._lock:
            self._known.pop(key, None)
            self._accepted.pop(key, None)


def unknown_token_throttled(request: Request, token: str) -> None:
    """HttpError 429 (with Retry-After) when this request's address has used up its allowance of failed tries
    (SignInThrottle: sign-ins, and tokens the agent refused in headers or cookies, errors.rpc_error_response)
    and its ``token`` is neither one the agent has answered (``KnownTokens.accepted``) nor at its second try
    (``SignInThrottle``): a token guessed by header is slowed as one guessed through the sign-in form, without
    asking the agent."""
    if not token or request.app.state.known_tokens.accepted(token):
        return
    address = client_address(request)
    # Label Studio's webhook is sent once (answered 429, its annotation is lost): its token may take the
    # address's second-try check at its first try (docs/app.md, "Webhooks from a throttled address").
    wait = request.app.state.sign_in_throttle.wait(address, token, first=request.url.path == WEBHOOK_PATH)
    if wait > 0:
        seconds = math.ceil(wait)
        more = request.app.state.sign_in_refusals.admit("token throttled", address)
        if more is not None:  # (a webhook answered 429 loses its annotation unless its sender retries: said)
            log.warning("answered %s %s from %s 429 without asking the agent: too many unknown tokens from this "
                        "address (a token the agent has answered is never held up)%s", request.method,
                        request.url.path, address or "an unknown address", more)
        raise HttpError(429, "RESOURCE_EXHAUSTED", f"Too many failed sign-ins from this computer: wait {seconds} "
                        "s, then try again with a token the agent knows", {"Retry-After": str(seconds)})


class TokenFirstGuard:
    """While the agent requires tokens, a request that carries a body to an API (/api/, /labelstudio/) is
    answered before its body is read unless its token is one the agent knows: no token, 401 at once; a token
    not seen in the last ``KNOWN_TOKEN_S``, a GetStatus with it first (in the threadpool), and the agent's
    refusal (401) or absence (503) is the answer. FastAPI reads and parses a JSON body on the event loop
    before a route's dependencies (``caller``) run, so anyone who reached the port stalled every request
    with 16 MiB bodies and no token: 1.92 s each, /healthz 8.96 s behind eight of them (the security review).
    The route's own call still carries the token, so the agent's check (and a token revoked meanwhile) still
    decides what is done; this only decides whether the body is worth reading."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in TOKEN_FIRST_METHODS
                or not str(scope["path"]).startswith(TOKEN_FIRST_PREFIXES)):
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no receive: nothing here reads the body
        config: WebConfig = request.app.state.config
        if not config.tokens_required:
            await self.app(scope, receive, send)
            return
        if str(scope["path"]).startswith("/labelstudio/"):
            from agent.web.labelstudio import Unauthorized, request_token  # late: labelstudio imports this module

            try:
                token = request_token(request)  # also Basic auth, Label Studio's way
            except Unauthorized:
                await self.app(scope, receive, send)  # the route answers 401 for the header before reading
                return
        else:
            token = token_of(request)
        if not token:
            if str(scope["path"]).startswith("/labelstudio/"):
                await self.app(scope, receive, send)  # its routes answer 401 (their own words) before reading
            else:  # as ``caller`` would, but after FastAPI had parsed the body
                await error_response(request, 401, "UNAUTHENTICATED", NO_TOKEN)(scope, receive, send)
            return
        known: KnownTokens = request.app.state.known_tokens
        if not known.has(token):
            answer = await run_in_threadpool(self._check, request, token, config)
            if answer is not None:
                await answer(scope, receive, send)
                return
            known.add(token)
        await self.app(scope, receive, send)

    @staticmethod
    def _check(request: Request, token: str, config: WebConfig) -> Response | None:
        """None when the agent knows ``token``, else the answer to send (401, or 503 while it is away; 429
        without asking it while the address has failed too often: ``unknown_token_throttled``)."""
        try:
            unknown_token_throttled(request, token)  # (Label Studio's Basic auth included: its own token)
        except HttpError as e:
            return error_response(request, e.status, e.code, e.message, e.headers)
        try:
            request.app.state.stub().GetStatus(agent_pb2.GetStatusRequest(),
                                               metadata=call_metadata(token, client_address(request)),
                                               timeout=config.rpc_timeout_s)
        except grpc.RpcError as e:
            if str(request.url.path).startswith("/labelstudio/") and e.code() == grpc.StatusCode.UNAUTHENTICATED:
                token_refused(request, token)
                return error_response(request, 401, "UNAUTHENTICATED", e.details() or UNKNOWN_TOKEN,
                                      {"WWW-Authenticate": 'Basic realm="shortlist"'})
            return rpc_error_response(request, e)
        except client_lib.AgentUnavailable as e:
            return unavailable_response(request, e)
        return None


def _safe_next(target: str) -> str:
    """Only a local path (no scheme, no host): a login link cannot send the browser elsewhere. Never the
    sign-in page itself (nor /logout): signing in there would show the form again, as if it had failed."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    if parts.path.rstrip("/") in ("/login", "/logout"):
        return "/"
    return target


def probe_role(stub: agent_pb2_grpc.AgentStub, token: str, timeout: float, client: str = "") -> str:
    """"write" or "read" for ``token`` (an empty SubmitLabels stores nothing: PERMISSION_DENIED = read only;
    marked as a role check, so the agent logs that refusal at INFO), "" when the probe cannot tell;
    grpc.RpcError (UNAUTHENTICATED for an unknown token) escapes."""
    metadata = call_metadata(token, client)
    stub.GetStatus(agent_pb2.GetStatusRequest(), metadata=metadata, timeout=timeout)
    try:
        stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(), metadata=(*metadata, (ROLE_CHECK_KEY, "1")),
                          timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            return "read"
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        return ""  # the agent cannot take writes now (e.g. a read-only data folder): role unknown, sign in anyway
    return "write"


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", {"next": _safe_next(next), "error": "", "name": session(request).user})


# Failed sign-ins per client address: a burst of SIGN_IN_BURST, then SIGN_IN_PER_S a second; past that, a
# sign-in from the address is answered 429 with Retry-After, unchecked, until the allowance is back. A person
# who mistypes their token is never held up; a script guessing tokens (99 a second in the security review,
# all 401) is slowed a hundredfold. Other addresses are not affected (behind a reverse proxy every browser
# has the proxy's address, and shares its allowance).
#
# The second try of a token (THROTTLED_CHECK_S): behind a proxy a script's guesses used to lock out a colleague
# with the right token (and a Label Studio webhook answered 429 may be lost) as long as the guessing went on. A
# token this address sent while throttled (answered 429, remembered as sha256 for REMEMBER_S) is checked by the
# agent when it comes again, one such check per address every THROTTLED_CHECK_S, and a token checked so once
# gets no other: a guesser that does not send a guess twice never gets one (its rate stays SIGN_IN_PER_S), while
# a right token is in at its second try, at most THROTTLED_CHECK_S after its first (then KnownTokens: never
# held up again). A guesser that repeats each guess competes for those checks, and gets at most
# 1 / THROTTLED_CHECK_S more a second. Label Studio does not resend a webhook, so a token sent to WEBHOOK_PATH
# may take that check at its first try: a guesser gains no more checks by it (at most 1 / THROTTLED_CHECK_S more
# a second, as by repeating its guesses), only saves the repeat.
SIGN_IN_BURST = 5
SIGN_IN_PER_S = 1.0
MAX_THROTTLED_ADDRESSES = 4096
THROTTLED_CHECK_S = 2.0
WEBHOOK_PATH = "/labelstudio/webhook"  # whose tokens get the second-try check at their first try
REMEMBER_S = 60.0
MAX_REMEMBERED_TOKENS = 16384  # (address, sha256) pairs, ~150 bytes each: a flood of new guesses pushes the oldest out


class SignInThrottle:
    """A token bucket of failed sign-ins per address (``burst`` deep, refilled ``per_s`` a second): ``begin``
    takes a try, ``passed`` gives it back; past it, a token's second try (``check_s``, the note above).
    Thread-safe: the sign-in route runs in FastAPI's threadpool."""

    def __init__(self, burst: int = SIGN_IN_BURST, per_s: float = SIGN_IN_PER_S,
                 max_addresses: int = MAX_THROTTLED_ADDRESSES, check_s: float = THROTTLED_CHECK_S,
                 remember_s: float = REMEMBER_S, max_remembered: int = MAX_REMEMBERED_TOKENS) -> None:
        self.burst = burst
        self.per_s = per_s
        self.max_addresses = max_addresses
        self.check_s = check_s
        self.remember_s = remember_s
        self.max_remembered = max_remembered
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (allowance left, when it was counted)
        self._checked_at: dict[str, float] = {}  # address -> when its last second-try check was given
        self._seen: dict[tuple[str, str], float] = {}  # (address, sha256) answered 429 -> when; oldest first
        self._spent: dict[tuple[str, str], None] = {}  # (address, sha256) given its second-try check; oldest first

    def _second_try(self, address: str, token: str, now: float, first: bool = False) -> float:
        """With the lock held, ``address`` throttled: 0.0 when ``token`` gets its second-try check now (taken),
        else the seconds until it may (remembering it as sent), or ``math.inf`` when it never will. ``first``:
        the check may be this try's, its first (a Label Studio webhook, which is not sent again)."""
        if not token:
            return math.inf
        key = (address, hashlib.sha256(token.encode()).hexdigest())
        if key in self._spent:
            return math.inf
        slot = max(0.0, self._checked_at.get(address, -math.inf) + self.check_s - now)
        seen = self._seen.get(key)
        if slot <= 0 and (first or (seen is not None and now - seen <= self.remember_s)):
            self._seen.pop(key, None)
            self._spent[key] = None
            if len(self._spent) > self.max_remembered:
                del self._spent[next(iter(self._spent))]
            if len(self._checked_at) >= self.max_addresses and address not in self._checked_at:
                self._checked_at = {a: t for a, t in self._checked_at.items() if now - t < self.check_s}
            self._checked_at[address] = now
            return 0.0
        if seen is None or now - seen > self.remember_s:  # (a try kept waiting keeps its first time: no refresh)
            self._seen.pop(key, None)
            self._seen[key] = now
            while len(self._seen) > self.max_remembered:
                del self._seen[next(iter(self._seen))]
            return max(slot, 1e-3)  # its first try: answered 429 (Retry-After 1 at least), its second may pass
        return slot

    def _left(self, address: str, now: float) -> float:
        left, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), left + (now - at) * self.per_s)

    def begin(self, address: str, token: str = "") -> tuple[float, bool]:
        """Take one try from ``address``'s allowance (given back by ``passed`` unless the sign-in fails):
        (0.0, True); or, the allowance spent, ``token``'s second-try check: (0.0, False), nothing to give back;
        else (the seconds until it may try again, False), nothing taken. Taken before the token is checked,
        so that concurrent tries cannot all pass on one allowance."""
        now = time.monotonic()
        with self._lock:
            left = self._left(address, now)
            if left < 1.0:
                return min((1.0 - left) / self.per_s, self._second_try(address, token, now)), False
            self._take(address, left, now)
            return 0.0, True

    def _take(self, address: str, left: float, now: float) -> None:
        """Record one try taken from ``address``'s allowance ``left`` (call with the lock held), keeping at most
        ``max_addresses``: first the addresses whose allowance is full again go (they lose nothing), else all."""
        if address not in self._buckets and len(self._buckets) >= self.max_addresses:
            self._buckets = {a: b for a, b in self._buckets.items() if self._left(a, now) < self.burst}
            if len(self._buckets) >= self.max_addresses:
                self._buckets.clear()
        self._buckets[address] = (max(0.0, left - 1.0), now)

    def wait(self, address: str, token: str = "", first: bool = False) -> float:
        """The seconds until ``address`` may try ``token`` (0.0: it may now; nothing taken from the allowance,
        a second-try check taken when it is that which lets it; ``first``: as ``_second_try``'s)."""
        now = time.monotonic()
        with self._lock:
            left = self._left(address, now)
            if left >= 1.0:
                return 0.0
            return min((1.0 - left) / self.per_s, self._second_try(address, token, now, first))

    def failed(self, address: str) -> None:
        """A try ``address`` made with an unknown token outside the sign-in form (a header or cookie the agent
        refused): taken from its allowance as a failed sign-in is."""
        now = time.monotonic()
        with self._lock:
            self._take(address, self._left(address, now), now)

    def passed(self, address: str) -> None:
        """Give back the try ``begin`` took: the sign-in did not fail."""
        now = time.monotonic()
        with self._lock:
            if address in self._buckets:
                self._buckets[address] = (min(float(self.burst), self._left(address, now) + 1.0), now)


def setup(app: Any) -> None:
    app.state.sign_in_refusals = RefusalLog()
    app.state.sign_in_throttle = SignInThrottle()
    app.state.known_tokens = KnownTokens()


def _refused_sign_in(request: Request, address: str, name: str, why: str) -> None:
    """Log a refused sign-in at WARNING, at most one line per (``why``, address) every 10 s (the agent's
    RefusalLog): anyone who reaches the page can try, and each line carries a name they chose. The line
    names the first attempt's name and says how many were left out since."""
    more = request.app.state.sign_in_refusals.admit(f"web sign-in: {why}", address)
    if more is not None:
        log.warning("web sign-in refused from %s (name %r): %s%s", address or "an unknown address", name, why, more)


@router.post("/login")
def login(request: Request, name: str = Form(""), token: str = Form(""), next: str = Form("/")) -> Response:
    config: WebConfig = request.app.state.config
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS:  # refused, not cut: labels are recorded under the name as given
        return render(request, "login.html", {
            "next": _safe_next(next), "name": name, "error_field": "name",
            "error": f"Your name has {len(name)} characters; names may have at most {MAX_NAME_CHARS}. Shorten it "
                     "and sign in again (labels are recorded under this name)."}, status_code=400)
    if (problem := name_problem(name, "your name")) is not None:  # the agent refuses it as an annotator
        return render(request, "login.html", {"next": _safe_next(next), "name": "", "error": for_people(problem),
                                              "error_field": "name"}, status_code=400)
    token = token.strip() or config.default_token
    address = client_address(request)
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    wait, taken = throttle.begin(address, token)
    if wait > 0:  # a right token is checked at its second try only (SignInThrottle): else guessing goes on
        _refused_sign_in(request, address, name, "too many failed sign-ins")
        seconds = math.ceil(wait)
        return render(request, "login.html", {
            "next": _safe_next(next), "name": name,
            "error": f"Too many failed sign-ins from this computer: wait {seconds} s, then sign in again."},
            status_code=429, headers={"Retry-After": str(seconds)})
    try:
        return _sign_in(request, config, name, token, next, address, throttle if taken else None)
    except BaseException:
        if taken:
            throttle.passed(address)  # not a refused token (the agent away, ...): the try is given back
        raise


def _sign_in(request: Request, config: WebConfig, name: str, token: str, next: str, address: str,
             throttle: SignInThrottle | None) -> Response:
    """The sign-in after the throttle's ``begin``: a refusal keeps the try taken, anything else gives it back
    (``throttle`` None: none was taken, a second-try check)."""
    if config.tokens_required and not token:
        _refused_sign_in(request, address, name, "no token given")
        return render(request, "login.html", {"next": _safe_next(next), "name": name,
                                              "error": "Give your token: this agent lets people in by token."},
                      status_code=401)
    try:
        role = probe_role(request.app.state.stub(), token, config.rpc_timeout_s, address)
    except grpc.RpcError as e:
        if e.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise
        _refused_sign_in(request, address, name, e.code().name)  # never the token
        return render(request, "login.html", {"next": _safe_next(next), "name": name,
                                              "error": for_people(e.details() or "the agent refused this token")},
                      status_code=401)
    if throttle is not None:
        throttle.passed(address)
    if token:  # answered by the agent: never throttled here from now on (a second try let it in, say)
        request.app.state.known_tokens.add(token)
    response = RedirectResponse(_safe_next(next), status_code=303)
    opts: dict[str, Any] = {"max_age": COOKIE_MAX_AGE, "samesite": "strict", "secure": config.https, "path": "/"}
    if token and token != config.default_token:
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, **opts)
    else:
        response.delete_cookie(TOKEN_COOKIE, path="/")
    if name:
        # percent-encoded UTF-8: headers are latin-1, so a name beyond it ("Łukasz", "张伟") set as it is made
        # the sign-in answer 500 (session() decodes it)
        response.set_cookie(USER_COOKIE, quote(name, safe=""), httponly=True, **opts)
    else:  # no name: the labels go under the token's fingerprint, never under the name of whoever signed in before
        response.delete_cookie(USER_COOKIE, path="/")
    if role:
        response.set_cookie(ROLE_COOKIE, role, httponly=True, **opts)
    else:
        response.delete_cookie(ROLE_COOKIE, path="/")
    return response


# What "Sign out" asks the browser to forget of this site besides the app's cookies: its HTTP cache (the
# images and thumbnails, kept a day under Cache-Control: private, max-age=86400 so that paging through the
# queue does not fetch them again: patients' images on a shared workstation's disk after the person left)
# and its storage (sessionStorage and the like). Not "cookies": browsers clear those for the whole
# registrable domain (the spec's words), so an app at shortlist.hospital.example would sign the person out
# of every other *.hospital.example site too; the app's own cookies are deleted one by one below instead.
# Browsers act on it for secure origins only (https, and http://localhost / 127.0.0.1).
CLEAR_SITE_DATA = '"cache", "storage"'


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303, headers={"Clear-Site-Data": CLEAR_SITE_DATA})
    for cookie in (TOKEN_COOKIE, USER_COOKIE, ROLE_COOKIE):
        response.delete_cookie(cookie, path="/")
    return response


MODULE = WebModule(router, setup=setup, max_body_bytes=MAX_BODY_BYTES, body_limit_advice=BODY_LIMIT_ADVICE)
