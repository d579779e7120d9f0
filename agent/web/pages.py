"""What every page shares: the Jinja2 templates (agent/web/templates, ``base.html`` has the nav) and
``render``, which adds the nav, the signed-in user and the app's settings to a template's context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    from agent.web.auth import session

    state = request.app.state
    ctx = {"nav": state.nav, "config": state.config, "session": session(request), "path": request.url.path,
           **(context or {})}
    return templates.TemplateResponse(request, template, ctx, status_code=status_code, headers=headers)
