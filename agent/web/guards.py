"""The app's HTTP guards, ASGI middleware that ``create_app`` wraps around every route.

- ``OriginGuard``: a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` header names another
  origin than the one it was sent to is refused (403) before any route sees it. Browsers send ``Origin``
  with every cross-origin POST, including the "simple" ones (a ``text/plain`` form or a ``no-cors`` fetch)
  that need no CORS preflight and so reach the server whatever CORS says; such a request carries the
  browser's cookies or, worse, is served with the app's default token (``shortlist web --token``), which is
  cross-site request forgery. Non-browser clients (Label Studio's server-to-server webhook, scripts) send
  no ``Origin`` and pass. Same origin means the ``Origin``'s host and port equal the request's ``Host``
  (the scheme is not compared: a TLS-terminating proxy talks plain HTTP to the app).
- ``HostGuard``: Starlette's TrustedHostMiddleware, answering only to the app's own names (``allowed_hosts``):
  with DNS rebinding a page of another site re-points its own name at the app's address (127.0.0.1, say)
  and then reads the app's pages, images and labels as same-origin; its requests carry that name in
  ``Host``, so refusing unknown names stops it. The refusal says which option adds a name.
- ``BodyLimitGuard``: a request declaring a body above ``WebConfig.max_body_bytes`` (``Content-Length``), or
  above its route's smaller limit (the sign-in form's, agent/web/auth.py ``MAX_BODY_BYTES``), is refused (413)
  before anything reads it. Bodies without a length (chunked) are counted as the route
  reads them and cut at the limit by Starlette's RequestBodyLimitMiddleware (``max_body_size`` of the
  routes, agent/web/app.py), whose own answer to a too long Content-Length would hide the 413's advice.
  Bodies are read before the agent checks the caller's token, so without the limit anyone who reaches
  the app could make it hold gigabytes.
- ``BodyPaceGuard``: a request body must come at ``BODY_MIN_BYTES_PER_S`` or faster, after ``BODY_GRACE_S``
  (its deadline is the grace plus the bytes come so far at that pace), else the request is answered 408 and
  its connection closed. Bodies are read before the agent checks the token, and the connection cap
  (agent/web/server.py) evicts only connections still waiting for their headers: 256 requests each sending
  one byte of a declared body now and then held every connection, and the app answered everyone 503.
- ``SecurityHeaders``: every answer says ``X-Content-Type-Options: nosniff`` (an image or JSON is never run
  as a script or page), ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'`` (no other site frames
  the pages to trick clicks), ``Referrer-Policy: same-origin`` (sample ids in URLs stay here) and a
  Content-Security-Policy the app's pages satisfy: scripts only from /static (no inline script: page
  data travels in ``<script type="application/json">`` blocks), styles from /static plus inline ones (the
  charts are matplotlib SVGs with style attributes, and the pages set widths and colours), images from
  the app and ``data:`` (the favicon), fetches to the app only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import quoted
from agent.security import RefusalLog, is_loopback
from agent.web.config import WebConfig, host_pattern
from agent.web.errors import error_response, too_large

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ALLOWED_HOSTS_OPTION = "--web-allowed-hosts"  # of `shortlist serve` and `shortlist web` (agent/cli_options.py)

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _netloc(origin: str) -> str:
    """``host[:port]`` of an Origin header ("" for ``null`` or anything that is not scheme://host)."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return ""
    return parts.netloc.lower()


def _default_port(scheme: str) -> str:
    return {"http": "80", "https": "443"}.get(scheme, "")


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names the site at ``Host`` (default ports written or not)."""
    netloc, host = _netloc(origin), host.strip().lower()
    if not netloc or not host:
        return False
    if netloc == host:
        return True
    port = _default_port(urlsplit(origin.strip()).scheme)
    return bool(port) and (netloc.removesuffix(f":{port}") == host.removesuffix(f":{port}"))


class OriginGuard:
    """Refuse a state-changing request that a page of another origin made the browser send (403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            host = headers.get("host", "")
            if origin is not None and not same_origin(origin, host):
                message = (f"cross-origin request refused: this {scope['method']} was sent by a page of "
                           f"{quoted(origin)}, not by this app ({host or 'no Host header'}), as another site's page "
                           "can make a browser do (cross-site request forgery). Use the app's own pages, or send the "
                           "request without an Origin header (scripts and Label Studio's webhook send none). Behind a "
                           "reverse proxy, pass the browser's Host header on to the app (nginx: proxy_set_header "
                           "Host $host).")
                response = error_response(Request(scope, receive), 403, "CROSS_ORIGIN", message)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def certificate_names(cert: Path) -> list[str]:
    """The DNS names and IP addresses of a PEM certificate's subjectAltName (else its common name): the names
    browsers can reach an HTTPS app by without a warning. [] when the file cannot be read that way."""
    # imported here, not at the top: only an HTTPS app reads a certificate, and the import is not free
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        decoded = x509.load_pem_x509_certificate(cert.read_bytes())
        try:
            san = decoded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [*san.get_values_for_type(x509.DNSName),
                     *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
        except x509.ExtensionNotFound:
            names = []
        if not names:
            names = [str(attr.value) for attr in decoded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except (OSError, ValueError) as e:
        log.warning("web app: cannot read the names of %s (%s); add them with %s", cert, e, ALLOWED_HOSTS_OPTION)
        return []
    out = []
    for name in names:
        try:
            out.append(host_pattern(name))
        except ValueError:
            continue
    return out


def allowed_hosts(config: WebConfig) -> list[str]:
    """The names the app answers to. On a loopback address: localhost, 127.0.0.1 and [::1] only (no other
    site can own those names). On another address: those, that address (unless it is a wildcard such as
    0.0.0.0), the machine's host name and fully qualified name, and the names of the HTTPS certificate.
    Plus ``config.allowed_hosts`` (--web-allowed-hosts) either way."""
    names = list(LOOPBACK_HOSTS)
    if not is_loopback(config.host):
        host = config.host.strip("[]")
        try:
            wildcard = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            wildcard = False
        if not wildcard:
            names.append(host_pattern(host))
        for name in (socket.gethostname(), socket.getfqdn()):
            if name:
                names.append(host_pattern(name))
        if config.https_cert is not None:
            names += certificate_names(config.https_cert)
    names += config.allowed_hosts
    return list(dict.fromkeys(names))


class HostGuard:
    """Starlette's TrustedHostMiddleware with an answer that says what to do: a request whose ``Host`` is not
    one of ``hosts`` is refused (400) with the names allowed and the option that adds one."""

    _PASSED = "shortlist.host_allowed"

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = list(hosts)
        self.check = TrustedHostMiddleware(self._passed, allowed_hosts=self.hosts, www_redirect=False)

    async def _passed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[self._PASSED] = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def discard(message: Message) -> None:  # Starlette's own "Invalid host header" answer
            pass

        await self.check(scope, receive, discard)
        if scope.pop(self._PASSED, False):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
        message = (f"this web app does not answer to the name {quoted(host)} (the request's Host header), only to "
                   f"{', '.join(self.hosts)}: a page of another site could otherwise read the app through DNS "
                   f"rebinding. If {name or 'that'} is a name people or Label Studio use to reach this app, restart "
                   f"it with {ALLOWED_HOSTS_OPTION} {name or 'NAME'} (several names: comma-separated; or the "
                   "environment variable SHORTLIST_WEB_ALLOWED_HOSTS).")
        response = error_response(Request(scope, receive), 400, "UNKNOWN_HOST", message)
        await response(scope, receive, send)


class BodyLimitGuard:
    """Refuse a request whose Content-Length is above ``limit`` bytes (413, unread), or above ``paths``' limit
    for its path (the sign-in form's, smaller)."""

    def __init__(self, app: ASGIApp, limit: int, paths: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.paths = dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length", "")
            limit = self.paths.get(str(scope.get("path", "")), self.limit)
            if length.strip().isdigit() and int(length) > limit:
                await too_large(Request(scope, receive))(scope, receive, send)
                return
        await self.app(scope, receive, send)


# A request body's pace: the first BODY_GRACE_S are free, then it must have come at BODY_MIN_BYTES_PER_S on
# average (the largest legitimate bodies, a labels batch or a webhook, are a few hundred KiB: a second or two on
# the slowest link this allows; the 16 MiB cap itself in about 17 minutes).
BODY_GRACE_S = 10.0
BODY_MIN_BYTES_PER_S = 16 * 1024


class BodyPaceGuard:
    """Answer 408 (and close the connection) to a request whose body comes slower than ``min_rate`` bytes a
    second after ``grace_s``: the route's read of the body is ended as if the client had gone, and the
    answer is this guard's. Requests without a body, and everything after the body (a response's wait for
    the client going away), are not timed."""

    def __init__(self, app: ASGIApp, grace_s: float = BODY_GRACE_S, min_rate: float = BODY_MIN_BYTES_PER_S) -> None:
        self.app = app
        self.grace_s = grace_s
        self.min_rate = min_rate
        self.refusals = RefusalLog()  # one line per client address every 10 s at most

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        got = 0
        body_done = timed_out = started = False

        async def paced() -> Message:
            nonlocal got, body_done, timed_out
            if body_done or timed_out:
                return await receive()
            left = start + self.grace_s + got / self.min_rate - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.0))
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}  # the route's read ends (Starlette: ClientDisconnect)
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                # The route's answer to the cut read (FastAPI's 400 "error parsing the body" on a route whose
                # body it parses): dropped, this guard's 408 goes instead.
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, paced, sending)
        except ClientDisconnect:
            if not timed_out:
                raise
        if timed_out and not started:
            address = str((scope.get("client") or ("?",))[0])
            more = self.refusals.admit("slow body", address)
            if more is not None:
                log.warning("cut a request body from %s: %d bytes in %.0f s%s", address, got,
                            time.monotonic() - start, more)
            await error_response(
                Request(scope), 408, "request_timeout",
                f"the request's body came too slowly ({got} bytes in {time.monotonic() - start:.0f} s; the app "
                f"waits {self.grace_s:g} s, then wants {self.min_rate / 1024:g} KiB/s): send it again",
                headers={"Connection": "close"})(scope, receive, send)


CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


# Answers the browser may keep: static files and images (they set their own Cache-Control; an image of an id
# never changes). Everything else (pages, API JSON, errors, redirects) is ``Cache-Control: no-store``: a page
# shown again by Back must not be the one from before (labels given since shown open, or the queue of a
# user who has signed out).
CACHEABLE_PREFIXES = ("/static/", "/thumb/", "/image/")


HSTS = "max-age=31536000"  # a year; no includeSubDomains: the app does not speak for the domain's other names


class SecurityHeaders:
    """Add ``SECURITY_HEADERS`` to every response (a header a route set itself is kept), ``Strict-Transport-
    Security: HSTS`` to every HTTPS one (browsers then never try plain HTTP for this name), and
    ``Cache-Control: no-store`` to every one outside ``CACHEABLE_PREFIXES`` that sets none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if scope.get("scheme") == "https" and "strict-transport-security" not in headers:
                    headers["Strict-Transport-Security"] = HSTS
                if "cache-control" not in headers and not str(scope.get("path", "")).startswith(CACHEABLE_PREFIXES):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
