"""What every page shares: the Jinja2 templates (agent/web/templates, ``base.html`` has the nav) and
``render``, which adds the nav, the signed-in user and the app's settings to a template's context."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))


DOT_SEGMENTS = (".", "..")


def image_url(kind: str, sample_id: str) -> str:
    """The app's URL of ``sample_id``'s image (``kind``: "thumb" or "image"): the whole id percent-encoded as
    one path segment, its "/" too (Jinja's ``urlencode`` keeps "/", so the browser resolved the "." and ".."
    segments of ``ward7/../img000.png`` and showed img000.png's image on that sample's tile); an id that is
    "." or ".." itself, which browsers resolve as a dot segment even when written %2e, goes in the query
    (``/thumb/?id=..``)."""
    if sample_id in DOT_SEGMENTS:
        return f"/{kind}/?id={quote(sample_id, safe='')}"
    return f"/{kind}/{quote(sample_id, safe='')}"


templates.env.globals["image_url"] = image_url


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    from agent.web.auth import session

    state = request.app.state
    ctx = {"nav": state.nav, "config": state.config, "path": request.url.path, **(context or {})}
    if "session" not in ctx:  # (a refusal of the request's Authorization headers gives its own: no session)
        ctx["session"] = session(request)
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
