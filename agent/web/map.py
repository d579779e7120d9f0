"""The Map page: the pool's embeddings in 2-D (GetMap: PCA + t-SNE computed by the agent in the
background per model version), drawn on a canvas by static/map.js (no library), coloured by label,
prior label (GET /api/priors/all of agent/web/priors.py) or "in the queue"; hovering shows the
thumbnail; a lasso or box selection becomes the Queue page's queue (POST /api/queue with source "map",
agent/web/queue.py), so the samples chosen on the map are labelled there with the keyboard.

While a new model version's map computes, the agent sends the previous version's map
(``shown_version``): the page keeps drawing it, with a notice, and polls the header alone until the
new map is ready. Once drawn, the page keeps polling the header every ``WebConfig.refresh_s`` and redraws
when it changes (samples added or placed, another model version served).

APIs (JSON): ``GET /api/map?offset=&limit=`` (one page of points as column arrays: ids, x, y, label
index into ``classes``; the page fetches MAP_PAGE points at a time, each from the answer's ``next``),
``GET /api/map/queue`` (the ids in the queue).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from agent.web.auth import Caller, CallerDep, session
from agent.web.errors import HttpError
from agent.web.module import Nav, WebModule
from agent.web.pages import render
from agent.web.priors import default_method, method_choices
from shortlist.v1 import agent_pb2

router = APIRouter()

MAP_PAGE = 20_000  # points per /api/map answer
GRPC_CHUNK = 8192  # points per GetMap message


@router.get("/map")
def map_page(request: Request, caller: Caller = CallerDep) -> Response:
    from agent.web.queue import current  # the queue module owns the queue

    status = caller.status()
    return render(request, "map.html", {
        "status": status, "methods": method_choices(status), "default_method": default_method(status),
        "classes": list(status.classes), "can_label": session(request).can_label, "map_page": MAP_PAGE,
        "refresh_ms": round(caller.config.refresh_s * 1000), "queue_created": current(caller).created})


@router.get("/api/map")
def map_api(request: Request, offset: int = Query(0), limit: int = Query(MAP_PAGE),
            caller: Caller = CallerDep) -> Response:
    """The map's state and points ``offset`` .. ``offset + limit`` (at most MAP_PAGE). Offsets count the
    stored map's places (``total``), deleted samples' among them until the map is made again: their points
    are left out, so a page can hold fewer than ``limit`` ids and the next page starts at ``next``, not at
    ``offset`` + the ids received. A JSONResponse directly: FastAPI's encoder walks every list element, much
    slower on a page of points (page timings: docs/app.md, Map)."""
    if offset < 0 or not 1 <= limit <= MAP_PAGE:
        raise HttpError(400, "INVALID_ARGUMENT", f"offset >= 0 and limit 1..{MAP_PAGE:,} please")
    chunks = caller.stream(caller.stub.GetMap, agent_pb2.GetMapRequest(offset=offset, limit=limit, chunk=GRPC_CHUNK))
    status = caller.status()
    classes = list(status.classes)
    index = {c: k for k, c in enumerate(classes)}
    h = chunks[0] if chunks else agent_pb2.MapChunk()
    ids: list[str] = []
    xs: list[float] = []
    ys: list[float] = []
    labels: list[int] = []
    for c in chunks:
        for p in c.points:
            ids.append(p.id)
            xs.append(round(p.x, 3))
            ys.append(round(p.y, 3))
            labels.append(index.get(p.label, -1) if p.label else -1)
    return JSONResponse({
        "model_version": h.model_version, "state": h.state, "progress": round(h.progress, 3), "method": h.method,
        "total": h.total, "fitted": h.fitted, "pending": h.pending, "recomputing": h.recomputing,
        "message": h.message, "shown_version": h.shown_version, "offset": offset, "next": offset + limit,
        "classes": classes,
        "labeled": status.labeled,
        "ids": ids, "x": xs, "y": ys, "label": labels})


@router.get("/api/map/queue")
def queue_ids(request: Request, caller: Caller = CallerDep) -> dict[str, Any]:
    """Every id in the Queue page's queue (for colouring "in the queue")."""
    from agent.web.queue import current  # the queue module owns the queue

    state = current(caller)
    return {"ids": state.ids, "source": state.source, "created": state.created}


MODULE = WebModule(router, nav=Nav("Map", "/map", 30))
