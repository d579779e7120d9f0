"""What every page shares: the Jinja2 templates (agent/web/templates, ``base.html`` has the nav) and
``render``, which adds the nav, the signed-in user and the app's settings to a template's context."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def registry_choices(registry: Mapping[str, Any], names: Iterable[str]) -> list[dict[str, object]]:
    """A registry's description of each name the agent offers (name, summary, params with kind, default,
    range, doc), for a chooser; ``short`` is the summary's first sentence. A name the web process's copy
    of the registry lacks gets an empty description."""
    out = []
    for name in names:
        entry = registry.get(name)
        d: dict[str, object] = entry.describe() if entry is not None else {"name": name, "summary": "", "params": []}
        summary = str(d.get("summary", ""))
        cut = summary.find(". ")
        d["short"] = summary if cut < 0 else summary[:cut + 1]
        out.append(d)
    return out
