"""The app's HTTP guards, ASGI middleware that ``create_app`` wraps around every route.

- ``OriginGuard``: a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` header names another
  origin than the one it was sent to is refused (403) before any route sees it. Browsers send ``Origin``
  with every cross-origin POST, including the "simple" ones (a ``text/plain`` form or a ``no-cors`` fetch)
  that need no CORS preflight and so reach the server whatever CORS says; such a request carries the
  browser's cookies or, worse, is served with the app's default token (``shortlist web --token``), which is
  cross-site request forgery. Non-browser clients (Label Studio's server-to-server webhook, scripts) send
  no ``Origin`` and pass. Same origin means the ``Origin``'s host and port equal the request's ``Host``
  (the scheme is not compared: a TLS-terminating proxy talks plain HTTP to the app).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.web.errors import error_response

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
                message = (f"cross-origin request refused: this {scope['method']} was sent by a page of {origin!r}, "
                           f"not by this app ({host or 'no Host header'}), as another site's page can make a "
                           "browser do (cross-site request forgery). Use the app's own pages, or send the request "
                           "without an Origin header (scripts and Label Studio's webhook send none). Behind a "
                           "reverse proxy, pass the browser's Host header on to the app (nginx: proxy_set_header "
                           "Host $host).")
                response = error_response(Request(scope, receive), 403, "CROSS_ORIGIN", message)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
