"""The web app: ``create_app(config, client_factory)`` and ``MODULES``, its route modules.

Each page or API is one module of agent/web/ that ends with ``MODULE = WebModule(router, ...)``
(agent/web/module.py: its fastapi.APIRouter and, if any, its nav entry, ``setup`` and smaller body limit);
it is switched on by one line in ``MODULES``. Pages render
templates/ (``base.html`` holds the nav) with ``agent.web.pages.render``; static files (vendored, no CDN,
no build step) are under /static. Routes are sync ``def`` functions (FastAPI runs them in its
threadpool) that reach the agent only through ``agent.web.auth.Caller`` (gRPC, with the caller's
token); errors map to HTTP in agent/web/errors.py.

``client_factory()`` returns a ready gRPC channel to the agent (no token: each call carries the
caller's); it is called once, at the first request that needs the agent, and the channel is shared.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import cast

import grpc
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from agent.web import auth, errors, images, labelstudio, map, priors, progress, queue
from agent.web.auth import OneAuthorizationGuard, TokenFirstGuard
from agent.web.config import WebConfig
from agent.web.guards import BodyLimitGuard, BodyPaceGuard, HostGuard, OriginGuard, SecurityHeaders, allowed_hosts
from agent.web.module import WebModule
from agent.web.pages import STATIC
from shortlist.v1 import agent_pb2_grpc

# Route modules of agent/web/, in order. A new page or API: its module, plus one line here.
MODULES: tuple[WebModule, ...] = (
    auth.MODULE,
    images.MODULE,
    queue.MODULE,
    priors.MODULE,
    map.MODULE,
    progress.MODULE,  # labels over time, class balance, annotators, the audit, exports
    labelstudio.MODULE,
)


class _Stub:
    """The shared stub, created on first use (so the app starts even while the agent is still starting)."""

    def __init__(self, factory: Callable[[], grpc.Channel]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._stub: agent_pb2_grpc.AgentStub | None = None
        self.channel: grpc.Channel | None = None

    def __call__(self) -> agent_pb2_grpc.AgentStub:
        with self._lock:
            if self._stub is None:
                self.channel = self._factory()
                self._stub = agent_pb2_grpc.AgentStub(self.channel)
            return self._stub

    def close(self) -> None:
        with self._lock:
            if self.channel is not None:
                self.channel.close()
            self.channel, self._stub = None, None


def create_app(config: WebConfig, client_factory: Callable[[], grpc.Channel]) -> FastAPI:
    app = FastAPI(title=config.title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.stub = _Stub(client_factory)
    nav: list[tuple[int, str, str]] = []
    app.state.body_limits = {}  # path -> (a smaller body limit than max_body_bytes, advice): agent/web/errors.py
    for module in MODULES:
        # max_body_size: Starlette's RequestBodyLimitMiddleware around each route, counting a body as it is read
        # and cutting it at the limit (413, worded by agent/web/errors.py); a Content-Length above the limit is
        # refused before any route runs (agent/web/guards.py, BodyLimitGuard). A module may set a smaller
        # max_body_bytes for its routes (the sign-in form's, agent/web/auth.py).
        limit = config.max_body_bytes
        if module.max_body_bytes is not None:
            limit = min(limit, module.max_body_bytes)
        if limit < config.max_body_bytes:
            for route in module.router.routes:
                app.state.body_limits[getattr(route, "path", "")] = (limit, module.body_limit_advice)
        app.include_router(module.router, max_body_size=limit)
        if module.nav is not None:
            nav.append((module.nav.order, module.nav.label, module.nav.path))
        if module.setup is not None:  # per-app state a module keeps (e.g. the queue)
            module.setup(app)
    app.state.nav = [(label, path) for _, label, path in sorted(nav)]
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    errors.install(app)

    @app.exception_handler(404)
    async def _not_found(request: Request, e: Exception) -> Response:
        """An address with no page (/nope): the app's error page (lang, title, a way back) for a browser, not
        FastAPI's bare JSON; an API client (errors.wants_json) keeps FastAPI's answer."""
        if errors.wants_json(request) or not isinstance(e, StarletteHTTPException):
            return await http_exception_handler(request, cast(StarletteHTTPException, e))
        detail = e.detail if e.detail and e.detail != "Not Found" else ""
        return errors.error_response(request, 404, "NOT_FOUND", detail or (
            f"There is no page at {request.url.path}: open a page from the menu, or check the address."))
    app.add_middleware(BodyPaceGuard)  # agent/web/guards.py: no bodies sent a byte now and then
    app.add_middleware(TokenFirstGuard)  # agent/web/auth.py: no body read before the agent knows the token
    app.add_middleware(OneAuthorizationGuard)  # agent/web/auth.py: one Authorization header at most (else 401)
    app.add_middleware(OriginGuard)  # no cross-site POSTs (checked before the token)
    app.add_middleware(BodyLimitGuard, limit=config.max_body_bytes,
                       paths={path: limit for path, (limit, _) in app.state.body_limits.items()})  # no oversized bodies
    app.add_middleware(HostGuard, hosts=allowed_hosts(config))  # no DNS rebinding (checked first)
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, refusals included

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse(app.state.nav[0][1] if app.state.nav else "/login", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
