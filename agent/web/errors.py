"""The ONE place that turns a gRPC status (or an unreachable agent) into an HTTP answer.

Every page and API route calls the agent through gRPC and lets ``grpc.RpcError`` escape; the handlers
installed by ``install`` answer with the status below and the agent's own message (which says what to
do). API routes (paths under /api/, /thumb/, /image/, or a request that accepts JSON) get JSON
``{"error": CODE, "message": ...}``; pages get the error page, and an UNAUTHENTICATED page request is
redirected to /login.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

import grpc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response

from agent.client import AgentUnavailable
from agent.errors import RETRY_AFTER_KEY

log = logging.getLogger(__name__)

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 502,
}

# What a page says while the agent cannot be reached (the technical detail goes to the server log).
NOT_REACHABLE = ("the agent is not reachable; retrying: this page works again as soon as it is back (reload in a "
                 "moment; if it lasts, tell whoever runs the agent)")

# The agent's messages speak to CLI users and API clients ("pass --token TOKEN or set SHORTLIST_TOKEN", "run
# shortlist select --strategy audit"); the gRPC API keeps them. What the app shows people in a browser is
# mapped here, in this one place: (pattern, replacement) applied in order by ``for_people``.
FOR_PEOPLE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"this agent requires a token: pass --token TOKEN or set SHORTLIST_TOKEN.*", re.S),
     "This agent needs a token: sign in with the token you were given (ask whoever runs the agent for one)."),
    (re.compile(r"unknown token: check --token / SHORTLIST_TOKEN against the agent's --tokens file.*", re.S),
     "This token is not known to the agent; check it with whoever runs the agent."),
    (re.compile(r"^(.+?) needs a token with role write; this token has role read.*", re.S),
     r"Your token can view but not change anything: \1 needs a write token. Sign in with a write token "
     "(ask whoever runs the agent for one)."),
    (re.compile(r"\(shortlist select --strategy audit(?: --budget \d+)?\)"),
     "(draw an audit sample on the Progress page, then label it in the Queue)"),
    (re.compile(r"declare every class \(shortlist serve --classes [^)]*\)"),
     "ask whoever runs the agent to declare every class"),
    # admission's deadline refusals (agent/admission.py ``_too_late``): the app sets the deadline, not its user
    (re.compile(r"it needs a deadline of at least (\d+) s \(retrying with this deadline will not help: give it a "
                r"longer one, or make the call smaller\)"),
     r"it would need about \1 s, longer than this app waits: ask for fewer samples or a lighter strategy (whoever "
     r"runs the agent can run it from the command line with --timeout \1)"),
    (re.compile(r"it needs a deadline of at least \d+ s, or a retry in about \d+ ms \(once the calls ahead of it "
                r"have ended\)"),
     "try again in a moment, once the calls ahead of it have ended"),
]


def for_people_at(request: Request) -> bool:
    """Whether ``request`` comes from the app's pages (people in a browser): not the Label Studio backend's
    routes, whose caller is Label Studio and whose messages reach the person who set it up (who needs the
    agent's words, "connection refused" included)."""
    return not request.url.path.startswith("/labelstudio/")


def for_people(message: str) -> str:
    """``message`` (the agent's, worded for CLI users) in the words of someone using the app in a browser."""
    for pattern, replacement in FOR_PEOPLE:
        message = pattern.sub(replacement, message)
    return message


API_PREFIXES = ("/api/", "/thumb/", "/image/", "/labelstudio/")


class HttpError(Exception):
    """A request the web layer itself refuses (before or besides the agent): answered like a mapped status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 502)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIXES) or "application/json" in request.headers.get("accept", "")


# Retry-After of a 429 whose refusal carries no hint from the agent (a call too long for its deadline by
# itself: the same call again will not fit; the message says what to do): docs/app.md promises the header.
DEFAULT_RETRY_AFTER_S = "10"


def retry_after(e: grpc.RpcError) -> str | None:
    """Seconds (rounded up) from the agent's ``retry-after-ms`` trailer, for an HTTP Retry-After header."""
    trailers = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == RETRY_AFTER_KEY:
            try:
                return str(max(1, -(-int(value) // 1000)))
            except ValueError:
                return None
    return None


def error_response(request: Request, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    if wants_json(request):
        return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
    from agent.web.pages import render  # late: pages imports this module

    return render(request, "error.html", {"status": status, "code": code, "message": message},
                  status_code=status, headers=headers)


def too_large(request: Request) -> Response:
    """The 413 for a request body above ``WebConfig.max_body_bytes``: the limit and how to raise it; above its
    route's own smaller limit (``app.state.body_limits``, the sign-in form's): that limit and what fits."""
    small = getattr(request.app.state, "body_limits", {}).get(request.url.path)
    if small is not None:
        limit, advice = small
        return error_response(request, 413, "CONTENT_TOO_LARGE",
                              f"the request body is larger than {limit} bytes, the limit of {request.url.path}"
                              + (f": {advice}" if advice else ""))
    limit = request.app.state.config.max_body_bytes
    return error_response(request, 413, "CONTENT_TOO_LARGE",
                          f"the request body is larger than this app's limit of {limit / (1 << 20):g} MiB ({limit} "
                          "bytes); send smaller batches, or raise the limit with --web-max-body-mb (or "
                          "SHORTLIST_WEB_MAX_BODY_MB) where the app is started")


def token_refused(request: Request, token: str) -> None:
    """The agent refused ``token`` (UNAUTHENTICATED), sent by header, cookie or Label Studio's Basic auth: a
    failed try from the request's address, as a failed sign-in is (agent/web/auth.py ``SignInThrottle``), and a
    token it had answered before is revoked: no longer exempt from the throttle (``KnownTokens``)."""
    state = request.app.state
    if hasattr(state, "sign_in_throttle"):
        state.sign_in_throttle.failed(request.client.host if request.client else "")
    if token and hasattr(state, "known_tokens"):
        state.known_tokens.forget(token)


def _token_sent(request: Request) -> str:
    """The token ``request`` sent: Label Studio's Basic auth password on its routes (before, the cookie or
    default token was forgotten there instead, and a revoked Basic token stayed exempt from the throttle)."""
    from agent.web.auth import token_of  # (late: auth and labelstudio import this module)
    from agent.web.labelstudio import Unauthorized, request_token

    if request.url.path.startswith("/labelstudio/"):
        try:
            return request_token(request)
        except Unauthorized:
            return ""
    return token_of(request)


def rpc_error_response(request: Request, e: grpc.RpcError) -> Response:
    """The answer to a call the agent refused or could not take (``HTTP_STATUS``, the agent's message in a
    person's words on the app's pages, Retry-After on 429 and 503)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = (e.details() if hasattr(e, "details") else "") or code.name
    status = http_status(code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        token_refused(request, _token_sent(request))
    if status >= 500:
        log.warning("%s %s: the agent answered %s: %s", request.method, request.url.path, code.name, message)
    wait = retry_after(e) if status in (429, 503) else None
    if status == 429 and wait is None:
        wait = DEFAULT_RETRY_AFTER_S
    if not for_people_at(request):
        return error_response(request, status, code.name, message, {"Retry-After": wait} if wait else None)
    message = for_people(message)
    if code == grpc.StatusCode.UNAVAILABLE and wait is None:
        # gRPC's own words for a connection that failed ("failed to connect to all addresses; last error:
        # ..."), not the agent's (whose UNAVAILABLE carries a retry-after hint): logged above, not shown
        message, wait = NOT_REACHABLE, "2"
    return error_response(request, status, code.name, message, {"Retry-After": wait} if wait else None)


def unavailable_response(request: Request, e: AgentUnavailable) -> Response:
    """The answer while the agent cannot be reached at all (503, Retry-After 2)."""
    log.warning("%s %s: the agent cannot be reached: %s", request.method, request.url.path, e)
    message = NOT_REACHABLE if for_people_at(request) else f"the agent cannot be reached: {e}"
    return error_response(request, 503, "UNAVAILABLE", message, {"Retry-After": "2"})


def short_input(value: Any) -> Any:
    """A validation error's ``input`` as a 422 shows it: a scalar as it is (a string cut to 200 characters), a
    list or object as its size only. FastAPI echoes it whole: a list of 700,000 labels (a 16 MiB body, where
    at most 1,000 are taken) was encoded into a 16 MiB answer while every other request waited (docs/app.md,
    "Bodies only from known tokens")."""
    if isinstance(value, str):
        return value[:200]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | dict):
        return f"a {type(value).__name__} of {len(value):,} items"
    return type(value).__name__


# The errors a 422 lists (the rest are counted): FastAPI lists one per bad item, so {"ids": [1] * 700000} (2 MiB,
# any known token) came back as a 70 MB answer after 44 s while /healthz waited 13.5 s (the security review).
MAX_ERRORS = 20


def short_loc(loc: Any) -> list[Any]:
    """An error's ``loc`` with each part shortened as ``short_input`` does: a dict key is part of it, and a
    15 MB key came back whole."""
    return [short_input(part) for part in loc] if isinstance(loc, list | tuple) else [short_input(loc)]


def validation_response(e: RequestValidationError) -> Response:
    """FastAPI's 422 (``detail``: its errors), at most ``MAX_ERRORS`` of them (``errors``: how many there were),
    each with its ``input`` and ``loc`` shortened (``short_input``, ``short_loc``)."""
    found = e.errors()
    errors = [{**err, "loc": short_loc(err.get("loc", ())),
               **({"input": short_input(err.get("input"))} if "input" in err else {})}
              for err in found[:MAX_ERRORS]]
    return JSONResponse({"detail": jsonable_encoder(errors), "errors": len(found)}, status_code=422)


def invalid_in_words(e: RequestValidationError) -> str:
    """The first of a page request's validation errors for a person: "page: Input should be a valid integer"."""
    errors = e.errors()
    if not errors:
        return "this address has a value the page cannot use"
    first = errors[0]
    where = ".".join(str(part)[:64] for part in first.get("loc", ())[1:]) or "the request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {str(first.get('msg', 'invalid'))[:200]}{more}; fix the address, or open the page from the menu"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, e: RequestValidationError) -> Response:
        if wants_json(request):
            return validation_response(e)
        # a page (/queue?page=abc): the app's error page, not FastAPI's JSON
        return error_response(request, 422, "INVALID_ARGUMENT", invalid_in_words(e))

    @app.exception_handler(grpc.RpcError)
    def _rpc_error(request: Request, e: grpc.RpcError) -> Response:
        return rpc_error_response(request, e)

    @app.exception_handler(HttpError)
    def _http_error(request: Request, e: HttpError) -> Response:
        return error_response(request, e.status, e.code, e.message, e.headers)

    @app.exception_handler(413)  # raised by Starlette's body limit (max_body_size of the routes) as it reads
    def _too_large(request: Request, e: Exception) -> Response:
        return too_large(request)

    @app.exception_handler(AgentUnavailable)
    def _unavailable(request: Request, e: AgentUnavailable) -> Response:
        return unavailable_response(request, e)
