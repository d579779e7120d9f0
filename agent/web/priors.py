"""The Review priors page: unlabelled samples grouped by prior label, sorted by confidence, filtered by
class and confidence range, paginated; accept a prior (a SubmitLabels with ``source = "prior:METHOD"``,
the annotator being the caller) or correct it (a SubmitLabels with the chosen class, source "manual").

Priors come from one ``PriorLabels`` call per (method, model version) over every unlabelled embedded
sample, kept by the web process (``PriorsCache``, shared by every caller the agent accepts) and
paginated here, so paging and filtering never call the agent again; on a 50,000-sample pool a page
costs a numpy mask and a slice. Samples labelled through this page drop out at once; the priors of the
others are those computed from the labels at ``computed_at`` (the page says how many label changes --
labels given or taken back, counted by ``Status.label_events`` -- came since, and offers "Recompute"); a
new model version recomputes them at the next request.

APIs (JSON): ``GET /api/priors`` (a page), ``POST /api/priors/labels`` (accept or correct),
``GET /api/priors/all`` (id -> prior class for every sample, for the Map page's colouring).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

from agent.client import calibration_dict
from agent.errors import quoted
from agent.web.auth import Caller, CallerDep, session
from agent.web.errors import HttpError, for_people
from agent.web.module import Nav, WebModule
from agent.web.pages import registry_choices, render
from agent.web.queue import rejections
from shortlist.v1 import agent_pb2

router = APIRouter()

ACCEPT_PREFIX = "prior:"  # SubmitLabelsRequest.source of accepted priors: "prior:METHOD"
MAX_PAGE_SIZE = 200
MAX_LABELS = 1000  # labels in one POST /api/priors/labels
# PriorLabels messages converted to arrays at a time (PriorSet.from_stream): the transient memory of a set is
# its arrays plus this many messages, whatever the pool's size.
STREAM_CHUNK = 4096


@dataclass
class PriorSet:
    """PriorLabels of one method over every unlabelled sample, as arrays (row i = ``ids[i]``)."""

    method: str
    model_version: str
    classes: list[str]
    ids: list[str]
    label: np.ndarray  # class index of the prior
    confidence: np.ndarray
    second: np.ndarray  # the runner-up class index (-1 with one class)
    second_p: np.ndarray
    labeled_at: int  # Status.labeled when computed
    events_at: int  # Status.label_events when computed (the labelled count alone misses a retraction + a label)
    computed_at: float
    row_of: dict[str, int] = field(default_factory=dict)
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # labelled since, through this app
    # PriorLabel.calibration of the stream's first row as JSON ({} from an agent that does not send it)
    calibration: dict[str, Any] = field(default_factory=dict)
    embedded_at: int = 0  # Status.embedded when computed (the page's "N new samples" notice compares it)
    deleted_at: int = 0  # Status.samples_deleted when computed: a deletion since makes the set stale

    def __post_init__(self) -> None:
        self.row_of = {i: r for r, i in enumerate(self.ids)}
        self.done = np.zeros(len(self.ids), bool)
        # Grouped by prior class (in the class list's order), most confident first within a group.
        self.order = np.lexsort((-self.confidence, self.label)) if len(self.ids) else np.zeros(0, np.int64)

    @classmethod
    def from_stream(cls, method: str, classes: list[str], status: agent_pb2.Status,
                    rows: Iterable[agent_pb2.PriorLabel]) -> PriorSet:
        """The set from PriorLabels ``rows`` computed at ``status`` (its labelled count and label revision).
        ``rows`` is read as it streams and converted to arrays STREAM_CHUNK rows at a time: the reply's
        messages are never all held (a list of them grew the agent's memory by a large fraction at 300,000
        samples: docs/agent.md, the paragraph on streamed replies just before "Heavy work: admission,
        cancellation, cache", has the figure)."""
        index = {c: k for k, c in enumerate(classes)}
        ids: list[str] = []
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        version, cal = "", None
        chunk = iter(rows)
        while True:
            batch = list(itertools.islice(chunk, STREAM_CHUNK))
            if not batch:
                break
            n = len(batch)
            label = np.zeros(n, np.int64)
            conf = np.zeros(n, np.float32)
            second = np.full(n, -1, np.int64)
            second_p = np.zeros(n, np.float32)
            for r, p in enumerate(batch):
                if cal is None and p.HasField("calibration"):  # on the stream's first row
                    cal = p.calibration
                ids.append(p.id)
                label[r] = index.get(p.label, -1)
                conf[r] = p.confidence
                version = p.model_version
                if len(p.probs) > 1:
                    ranked = sorted(p.probs.items(), key=lambda kv: -kv[1])
                    second[r], second_p[r] = index.get(ranked[1][0], -1), ranked[1][1]
            parts.append((label, conf, second, second_p))
            del batch  # before the next chunk is read: one chunk of messages alive at a time
        label, conf, second, second_p = (
            (np.concatenate([part[i] for part in parts]) for i in range(4)) if parts else
            (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)))
        calibration = {} if cal is None else calibration_dict(cal)
        if calibration.get("warning"):  # the agent's words are for CLI users
            calibration["warning"] = for_people(str(calibration["warning"]))
        return cls(method, version, classes, ids, label, conf, second, second_p, status.labeled,
                   status.label_events, time.time(), calibration=calibration, embedded_at=status.embedded,
                   deleted_at=status.samples_deleted)


class PriorsCache:
    """The app's prior sets, one per method (thread-safe; one computation per method at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, PriorSet] = {}
        self._computing: dict[str, threading.Lock] = {}

    def get(self, caller: Caller, method: str, status: agent_pb2.Status, refresh: bool = False) -> PriorSet:
        """The prior set of ``method`` at the served model version, computed now when missing, stale
        (another model version, or samples deleted since: a deleted sample must not be shown) or ``refresh``;
        grpc.RpcError escapes (FAILED_PRECONDITION before any label)."""
        with self._lock:
            gate = self._computing.setdefault(method, threading.Lock())
            cached = self._sets.get(method)
        if cached is not None and self._current(cached, status) and not refresh:
            return cached
        started = time.time()
        with gate:
            with self._lock:
                cached = self._sets.get(method)
            if cached is not None and self._current(cached, status) and cached.computed_at >= started:
                return cached  # another request computed it while this one waited
            rows = caller.iterate(caller.stub.PriorLabels, agent_pb2.PriorLabelsRequest(method=method),
                                  timeout=caller.config.select_timeout_s)
            fresh = PriorSet.from_stream(method, list(status.classes), status, rows)
            if not fresh.ids:
                fresh.model_version = status.model_version
            with self._lock:
                self._sets[method] = fresh
            return fresh

    @staticmethod
    def _current(cached: PriorSet, status: agent_pb2.Status) -> bool:
        return cached.model_version == status.model_version and cached.deleted_at == status.samples_deleted

    def peek(self, method: str) -> PriorSet | None:
        with self._lock:
            return self._sets.get(method)

    def labelled(self, ids: list[str], done: bool = True) -> None:
        """These samples are labelled now: they leave every prior set (``done=False``: their labels were
        taken back, they are back in the sets that had them)."""
        with self._lock:
            sets = list(self._sets.values())
        for s in sets:
            for i in ids:
                r = s.row_of.get(i)
                if r is not None:
                    s.done[r] = done


def setup(app: FastAPI) -> None:
    app.state.priors = PriorsCache()


def cache(request: Request) -> PriorsCache:
    c: PriorsCache = request.app.state.priors
    return c


def method_choices(status: agent_pb2.Status) -> list[dict[str, object]]:
    """The prior-method registry's description of each method the agent offers (for the chooser)."""
    from agent.priors import PRIOR_METHODS  # imports scikit-learn: only when a page needs it

    return registry_choices(PRIOR_METHODS, status.prior_methods)


def default_method(status: agent_pb2.Status) -> str:
    return "knn" if "knn" in status.prior_methods else (status.prior_methods[0] if status.prior_methods else "")


@router.get("/priors")
def priors_page(request: Request, caller: Caller = CallerDep) -> Response:
    status = caller.status()
    return render(request, "priors.html", {
        "status": status, "methods": method_choices(status), "default_method": default_method(status),
        "classes": list(status.classes), "can_label": session(request).can_label, "annotator": caller.annotator,
        "page_size": min(caller.config.page_size, MAX_PAGE_SIZE),
        "refresh_ms": round(caller.config.refresh_s * 1000)})


def check_method(status: agent_pb2.Status, method: str) -> None:
    if method not in status.prior_methods:
        raise HttpError(400, "INVALID_ARGUMENT", f"unknown prior method {quoted(method)}; valid: "
                        f"{', '.join(status.prior_methods) or 'none'}")


@router.get("/api/priors")
def priors_api(request: Request, method: str = Query(""), label: str = Query(""),
               min_conf: float = Query(0.0, alias="min"), max_conf: float = Query(1.0, alias="max"),
               sort: Literal["desc", "asc"] = Query("desc"), page: int = Query(1), size: int = Query(0),
               after: str = Query("", max_length=4096), offset: int | None = Query(None),
               refresh: bool = Query(False), caller: Caller = CallerDep) -> dict[str, Any]:
    """One page of unlabelled samples with their prior: grouped by prior class, by confidence within a
    group (``sort``: most confident first, or least), only class ``label`` ("" all) and confidence in
    [``min``, ``max``]. Where the page starts: ``after`` (a cursor: the samples that follow that id in this
    order, the page's "Next"), else ``offset`` (rows into the filtered list, its "Previous"), else ``page``.
    The list shrinks as samples are labelled, so "Next" by page number would skip the samples that moved up
    (accept all, next: the old page 2 is page 1 now); the cursor is unknown once the priors were recomputed
    without it (it was labelled): then ``page``."""
    status = caller.status()
    method = method or default_method(status)
    check_method(status, method)
    if not (0.0 <= min_conf <= max_conf <= 1.0):
        raise HttpError(400, "INVALID_ARGUMENT",
                              f"the confidence range must satisfy 0 <= min <= max <= 1 (got {min_conf}, {max_conf})")
    size = size or min(caller.config.page_size, MAX_PAGE_SIZE)
    if not 1 <= size <= MAX_PAGE_SIZE or page < 1 or (offset is not None and offset < 0):
        raise HttpError(400, "INVALID_ARGUMENT", f"page >= 1, offset >= 0 and size 1..{MAX_PAGE_SIZE} please")
    if label and label not in status.classes:
        raise HttpError(400, "INVALID_ARGUMENT", f"unknown class {quoted(label)}")
    ps = cache(request).get(caller, method, status, refresh)
    in_range = ~ps.done & (ps.confidence >= min_conf - 1e-6) & (ps.confidence <= max_conf + 1e-6) & (ps.label >= 0)
    counts = np.bincount(ps.label[in_range], minlength=len(ps.classes)) if len(ps.ids) else np.zeros(len(ps.classes))
    wanted = ps.classes.index(label) if label in ps.classes else -2  # a class newer than these priors: none
    mask = in_range if not label else in_range & (ps.label == wanted)
    order = ps.order if sort == "desc" else np.lexsort((ps.confidence, ps.label)) if len(ps.ids) else ps.order
    rows = order[mask[order]]
    pages = max(1, math.ceil(len(rows) / size))
    cursor = ps.row_of.get(after) if after else None
    if cursor is not None:  # the rows of this list at or before the cursor's place in the (fixed) order
        start = int(mask[order[:int(np.flatnonzero(order == cursor)[0]) + 1]].sum())
    elif offset is not None:
        start = offset
    else:
        start = (page - 1) * size
    if start >= len(rows):  # past the end (its samples were labelled meanwhile): the last page
        start = (pages - 1) * size
    page = start // size + 1
    part = rows[start: start + size]
    items = [{"id": ps.ids[r], "label": ps.classes[ps.label[r]], "confidence": round(float(ps.confidence[r]), 4),
              "second": ps.classes[ps.second[r]] if ps.second[r] >= 0 else "",
              "second_p": round(float(ps.second_p[r]), 4)} for r in part.tolist()]
    return {"method": method, "model_version": ps.model_version, "computed_at": ps.computed_at,
            "labeled_at": ps.labeled_at, "labeled_now": status.labeled,
            # the pool's unlabelled count now (the agent's), not this prior list's: computed before others
            # labelled, it had "273 unlabelled" beside "129 labelled" in a pool of 300
            "events_since": max(0, status.label_events - ps.events_at),
            "unlabelled": max(0, int(status.samples - status.labeled)),
            "total": len(rows), "page": page, "pages": pages, "size": size, "offset": start,
            "counts": {c: int(n) for c, n in zip(ps.classes, counts, strict=False)}, "items": items,
            "calibration": ps.calibration, "audit": method_audit(status, method),
            # what the page compares GET /api/progress/head with to offer a Recompute
            "embedded_at": ps.embedded_at, "label_events_now": status.label_events}


def method_audit(status: agent_pb2.Status, method: str) -> dict[str, Any] | None:
    """The audit's measured accuracy of ``method`` (Status.audit: on the audit labels, with its interval), or
    None when it has none yet: the page's "Accept all" confirmation shows it beside the lowest confidence."""
    for m in status.audit.methods:
        if m.method == method and m.HasField("overall") and m.overall.total:
            o = m.overall
            return {"accuracy": o.accuracy, "low": o.low, "high": o.high, "total": o.total}
    return None


class LabelItem(BaseModel):
    id: str = Field(max_length=4096)
    label: str = Field(max_length=4096)


class PriorLabelsBody(BaseModel):
    method: str = Field(max_length=64)
    labels: list[LabelItem] = Field(min_length=1, max_length=MAX_LABELS)


@router.post("/api/priors/labels")
def label_api(request: Request, body: PriorLabelsBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """Accept priors or correct them (annotator: the caller). A label equal to the sample's prior under
    ``method`` is an accepted prior (source "prior:METHOD"); any other is a correction (source "manual").
    The prior is the one this app showed (its cached set), else asked of the agent for those ids; when
    the agent has no prior for them (an unknown or labelled id among them) they are corrections, and
    SubmitLabels refuses the unknown ids one by one. Every label is conditional on the sample being still
    unlabelled (``if_current=""``): one labelled since the priors were computed is refused with ``changed``,
    its label now and who gave it, and left as it is. One the sample already had, given by someone else
    (another annotator accepting the same prior at the same time), is stored and listed in ``agreed`` with who
    gave it: the page's undo leaves those, so it never takes back the other annotator's label. ``agreed_count``
    counts them all: above ``len(agreed)`` (the agent's list was cut short) the page offers no undo. Likewise
    ``rejected_count`` counts every refusal, ``rejected`` lists the first ones: above ``len(rejected)`` the page
    says how many were refused and why (the listed reasons), and which samples were stored is not known."""
    status = caller.status()
    check_method(status, body.method)
    ps = cache(request).peek(body.method)
    shown: dict[str, str] = {}
    unknown = []
    for x in body.labels:
        r = ps.row_of.get(x.id) if ps is not None and ps.model_version == status.model_version else None
        if ps is not None and r is not None and ps.label[r] >= 0:
            shown[x.id] = ps.classes[ps.label[r]]
        else:
            unknown.append(x.id)
    if unknown:  # not in the cached set (e.g. the app restarted): the agent's prior for them now
        try:
            rows = caller.stream(caller.stub.PriorLabels, agent_pb2.PriorLabelsRequest(method=body.method,
                                                                                      ids=unknown),
                                 timeout=caller.config.select_timeout_s)
            shown.update({p.id: p.label for p in rows})
        except grpc.RpcError as e:  # an unknown or labelled id among them: no prior to accept for any of them
            if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise
    accepts = [x for x in body.labels if shown.get(x.id) == x.label.strip()]
    fixes = [x for x in body.labels if shown.get(x.id) != x.label.strip()]
    accepted, rejected = 0, []
    per_source = {"accepts": 0, "fixes": 0}  # labels stored by each SubmitLabels (exact, unlike ``stored``)
    stored: list[str] = []
    twins: list[dict[str, str]] = []  # labels stored that differ from a byte-identical sample's (as /api/labels)
    agreed: list[dict[str, str]] = []  # labels the sample already had from someone else (as /api/labels)
    agreed_count = 0  # how many in all: the agent lists the first ones only (as /api/labels)
    rejected_count = 0  # how many were refused in all: the agent lists the first ones only (REPLY_LIST_BYTES)
    # Two SubmitLabels (the source is per request): the accepted priors, then the corrections.
    for kind, part, source in (("accepts", accepts, ACCEPT_PREFIX + body.method), ("fixes", fixes, "manual")):
        if not part:
            continue
        # if_current="": this page lists unlabelled samples, and a prior was computed from the labels before;
        # a label someone gave since stays (the item is refused with who gave it, see queue.rejections).
        reply = caller(caller.stub.SubmitLabels, agent_pb2.SubmitLabelsRequest(
            labels=[agent_pb2.LabelAssignment(id=x.id, label=x.label.strip(), if_current="") for x in part],
            annotator=caller.annotator, source=source))
        refused = {r.id for r in reply.rejected}
        accepted += reply.accepted
        per_source[kind] = reply.accepted
        rejected += rejections(reply.rejected)
        rejected_count += max(reply.rejected_count, len(reply.rejected))
        twins += [{"id": t.id, "twin_id": t.twin_id, "twin_label": t.twin_label} for t in reply.twin_conflicts]
        agreed += [{"id": a.id, "label": a.now.label, "by": a.now.annotator} for a in reply.agreed]
        agreed_count += max(reply.agreed_count, len(reply.agreed))
        if max(reply.rejected_count, len(reply.rejected)) > len(reply.rejected):
            # the list was cut short: which of the others were stored cannot be told, so none leaves the page's
            # priors (a refused one hidden until a Recompute would be worse than a stored one shown: accepting
            # it again is refused as labelled meanwhile)
            continue
        stored += [x.id for x in part if x.id not in refused]
    # labelled meanwhile by someone else: off this page too
    cache(request).labelled(stored + [str(r["id"]) for r in rejected if r.get("changed") and r.get("label")])
    # the counts after these labels, the agent's: the page shows them (adding ``accepted`` counted a sample
    # someone had already labelled so, an agreed one, twice); None when the agent could not say (the labels
    # are stored all the same: the page then adds what it knows)
    counts: dict[str, int | None] = {"labeled_now": None, "unlabelled": None}
    try:
        now = caller.status()
        counts = {"labeled_now": int(now.labeled), "unlabelled": max(0, int(now.samples - now.labeled))}
    except grpc.RpcError:
        pass
    return {**counts, "accepted": accepted, "annotator": caller.annotator,
            "accepted_priors": per_source["accepts"], "corrected": per_source["fixes"], "rejected": rejected,
            "twin_conflicts": twins, "agreed": agreed, "agreed_count": agreed_count, "rejected_count": rejected_count}


@router.get("/api/priors/all")
def all_priors(request: Request, method: str = Query(""), caller: Caller = CallerDep) -> Response:
    """The prior class of every unlabelled sample as two aligned lists (``ids``, ``label`` = index into
    ``classes``), for colouring the map."""
    status = caller.status()
    method = method or default_method(status)
    check_method(status, method)
    ps = cache(request).get(caller, method, status)
    keep = np.flatnonzero(~ps.done)
    return JSONResponse({"method": method, "model_version": ps.model_version, "classes": ps.classes,
                         "ids": [ps.ids[r] for r in keep.tolist()], "label": ps.label[keep].tolist(),
                         "confidence": np.round(ps.confidence[keep].astype(np.float64), 3).tolist()})


MODULE = WebModule(router, nav=Nav("Review priors", "/priors", 20), setup=setup)
