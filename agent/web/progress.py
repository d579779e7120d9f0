"""The Progress page: labels over time (overall and per annotator), class balance, per annotator and per
source, the audit's prior-accuracy estimates with their intervals, the model version served and the
background re-embedding, a button that draws an audit sample into the queue, and the export download.

Everything comes from two reads through the caller's token: GetStatus and ListLabels(history=True);
agent/progress.py aggregates them and draws the charts (server-rendered SVG, cached per state).
Routes: ``GET /progress`` (the page), ``GET /api/progress`` (the same as JSON), ``GET /api/progress/head``
(GetStatus' counts alone: the open page polls it and offers a reload once they change),
``GET /api/progress/queue`` (the queue's size and open samples: the audit button asks before replacing
open work) and ``GET /progress/export`` (a zip of ``shortlist export-labels``' folder; agent/exports.py).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, Response

from agent import exports
from agent.progress import (
    Progress,
    audit_dict,
    audit_svg,
    audit_text,
    class_balance_svg,
    class_balance_text,
    class_timeline_svg,
    class_timeline_text,
    collect,
    timeline_svg,
    timeline_text,
)
from agent.web.auth import Caller, CallerDep, session
from agent.web.errors import HttpError, for_people
from agent.web.module import Nav, WebModule
from agent.web.pages import render
from shortlist.v1 import agent_pb2

router = APIRouter()

AUDIT_DEFAULT = 50  # the audit button's default sample size
_CHARTS: OrderedDict[tuple[Any, ...], dict[str, str]] = OrderedDict()
_CHARTS_LOCK = threading.Lock()
CHART_CACHE = 16


def read(caller: Caller) -> tuple[agent_pb2.Status, Progress]:
    status = caller.status()
    history = caller(caller.stub.ListLabels, agent_pb2.ListLabelsRequest(history=True),
                     timeout=caller.config.select_timeout_s)
    return status, collect(history, status.classes)


def charts(status: agent_pb2.Status, p: Progress) -> dict[str, str]:
    """The page's SVGs and their text alternatives (``NAME_text``), drawn once per state (label history,
    classes and audit estimates)."""
    key = (p.events, p.timeline[-1] if p.timeline else None, tuple(sorted(p.per_class.items())),
           tuple((a.name, a.labels) for a in p.annotators.values()), status.audit.SerializeToString())
    with _CHARTS_LOCK:
        hit = _CHARTS.get(key)
        if hit is not None:
            _CHARTS.move_to_end(key)
            return hit
    drawn = {"timeline": timeline_svg(p), "class_timeline": class_timeline_svg(p), "classes": class_balance_svg(p),
             "audit": audit_svg(status.audit)}
    # each chart's text alternative (the page shows it to screen readers only; the SVG is hidden from them)
    drawn |= {"timeline_text": timeline_text(p), "class_timeline_text": class_timeline_text(p),
              "classes_text": class_balance_text(p), "audit_text": audit_text(status.audit)}
    with _CHARTS_LOCK:
        _CHARTS[key] = drawn
        while len(_CHARTS) > CHART_CACHE:
            _CHARTS.popitem(last=False)
    return drawn


def summary(status: agent_pb2.Status, p: Progress) -> dict[str, Any]:
    """The page's figures as plain data (also ``GET /api/progress``)."""
    total = sum(p.per_class.values())
    t = p.tally
    return {
        # label_events is GetStatus' (as `shortlist status`): every label row, labels given, retractions, class
        # renames and labels an undo put back (restored) alike;
        # labels_given = labels_new + labels_repeated + labels_changed
        "samples": status.samples, "labelled": status.labeled, "label_events": status.label_events,
        **{k: v for k, v in t.total.as_dict().items() if k not in ("agreeing", "current")}, "renamed": t.renames,
        "restored": t.restores,
        "model_version": status.model_version, "embedded": status.embedded,
        "pending_model_version": status.pending_model_version, "pending_embedded": status.pending_embedded,
        "classes": {c: {"labels": n, "share": n / total if total else 0.0}
                    for c, n in sorted(p.per_class.items(), key=lambda kv: (-kv[1], kv[0]))},
        "annotators": [{"name": a.name, "labels": a.labels, "samples": len(a.samples), "first": a.first,
                        "last": a.last, "per_hour": a.per_hour, "sources": dict(a.sources),
                        **t.annotators[a.name].as_dict()}
                       for a in sorted(p.annotators.values(), key=lambda a: -a.labels)],
        "sources": dict(p.per_source), "audit": audit_dict(status.audit),
        "warnings": [for_people(w) for w in status.warnings]}


@router.get("/progress")
def progress_page(request: Request, caller: Caller = CallerDep) -> Response:
    status, p = read(caller)
    return render(request, "progress.html", {
        "status": status, "s": summary(status, p), "charts": charts(status, p), "audit": status.audit,
        "audit_default": min(AUDIT_DEFAULT, caller.config.max_ask), "can_label": session(request).can_label,
        "formats": exports.FORMATS, "prior_methods": list(status.prior_methods), "head": head(status),
        "refresh_ms": round(caller.config.refresh_s * 1000)})


@router.get("/api/progress")
def progress_api(caller: Caller = CallerDep) -> dict[str, Any]:
    status, p = read(caller)
    return summary(status, p)


def head(status: agent_pb2.Status) -> dict[str, Any]:
    """What the open page compares to notice that its figures are out of date (GetStatus alone: cheap)."""
    return {"samples": status.samples, "labelled": status.labeled, "model_version": status.model_version,
            "pending_model_version": status.pending_model_version, "audit_drawn": status.audit.drawn,
            "audit_labelled": status.audit.labelled, "embedded": status.embedded,
            "label_events": status.label_events}


@router.get("/api/progress/head")
def progress_head(caller: Caller = CallerDep) -> dict[str, Any]:
    return head(caller.status())


@router.get("/api/progress/queue")
def queue_state(caller: Caller = CallerDep) -> dict[str, Any]:
    """The queue the audit button would replace: its size and how many of its samples are still unlabelled
    (the page asks before replacing a queue with open samples), and its ``created``: the Select that
    replaces it sends it as ``if_created``, so a queue replaced meanwhile is a 409, not overwritten."""
    from agent.web.queue import current, open_count  # the queue module owns the queue

    state = current(caller)
    return {"total": len(state.ids), "open": open_count(caller, state), "source": state.source,
            "strategy": state.strategy, "created": state.created}


@router.get("/progress/export")
def export_zip(fmt: list[str] = Query(list(exports.FORMATS), alias="format"), prior_method: str = Query("knn"),
               history: bool = Query(False), caller: Caller = CallerDep) -> Response:
    """The export folder (agent/exports.py) as one zip, built in a temporary folder removed after sending."""
    try:
        config = exports.ExportConfig(formats=tuple(fmt), prior_method=prior_method, history=history)
    except exports.ExportError as e:
        raise HttpError(400, "INVALID_ARGUMENT", str(e)) from None
    tmp = Path(tempfile.mkdtemp(prefix="shortlist-export-"))
    try:
        folder = tmp / "shortlist-export"
        try:
            exports.export_labels(caller.stub, folder, config, metadata=caller.metadata)
        except exports.ExportError as e:
            raise HttpError(400, "INVALID_ARGUMENT", str(e)) from None
        archive = tmp / "shortlist-export.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    z.write(path, path.relative_to(tmp).as_posix())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename="shortlist-export.zip",
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


MODULE = WebModule(router, nav=Nav("Progress", "/progress", 40))
