"""The Queue page: the current selection as a thumbnail grid, "ask for the next N" with a strategy
chooser built from the strategy registry's ``describe()`` (agent/params.py), and keyboard labelling.

The queue (ids in order, where they came from, and per-item "skipped" / "not sure" marks) is kept by the
agent (GetQueue / UpdateQueue, queue ``WebConfig.queue``, in its SQLite state: agent/queues.py), so it
survives restarts of the app and of the agent and every app process of the agent shows the same one.
Labels are never kept here: each one is a SubmitLabels (annotator: the login name) and the page shows it
saved only once that RPC returned; the page's undo is a RetractLabels: of a first label, the sample is
unlabelled again; of a change, with restore_previous, the label before comes back in its giver's name (the
history keeps every row).
APIs (JSON): ``GET /api/queue``, ``POST /api/queue/select`` (a Select fills the queue),
``POST /api/queue`` (set the queue to given ids, e.g. a selection on the map), ``POST /api/labels``,
``POST /api/labels/retract``, ``POST /api/labels/now`` (a read: the current label of ids and who gave it),
``POST /api/queue/mark``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints
from starlette.responses import RedirectResponse, Response

from agent.errors import code_name
from agent.limits import Limits
from agent.queues import CREATED_TOLERANCE_S, QueueData
from agent.web.auth import Caller, CallerDep, session
from agent.web.errors import HttpError
from agent.web.module import Nav, WebModule
from agent.web.pages import registry_choices, render
from shortlist.v1 import agent_pb2

router = APIRouter()

# Keys of the keyboard, in the order classes get them (the page's own commands use other keys).
HOTKEYS = "1234567890abcdefghijklmnopqrstuvwxyz"
MAX_QUEUE = 10_000  # ids a queue may hold (POST /api/queue)


class Presence:
    """Which page of which queue each annotator has open, as their pages load and poll (``/api/queue``, every
    ``refresh_s``): so that "the next page" and the page ``/queue`` opens on are pages nobody else is on.
    In this app process only (a second app process on the same agent does not see these); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int, float]] = {}  # annotator -> (queue created, page, monotonic s)

    def see(self, annotator: str, created: float, page: int) -> None:
        with self._lock:
            self._seen[annotator] = (created, page, time.monotonic())

    def others(self, annotator: str, created: float, within_s: float) -> set[int]:
        """The pages of queue ``created`` that other annotators had open in the last ``within_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            for who in [w for w, (_, _, t) in self._seen.items() if now - t > max(within_s, 60.0)]:
                del self._seen[who]  # gone (closed the page): forgotten
            return {p for w, (c, p, t) in self._seen.items() if w != annotator and c == created and now - t <= within_s}


def setup(app: Any) -> None:
    app.state.queue_presence = Presence()


def presence(request: Request) -> Presence:
    return request.app.state.queue_presence  # type: ignore[no-any-return]


def pick_page(open_pages: set[int], pages: int, busy: set[int], after: int | None = None) -> int:
    """The page (1-based) an annotator goes to: the first page with open (unlabelled) samples that nobody
    else is on (``busy``), else the first with open samples; counted from page 1 (``after`` None: opening the
    queue, which keeps its order, e.g. the most informative first) or from the page after ``after``,
    wrapping round and leaving ``after`` itself last (the next page). Nothing open: the page after
    ``after`` (1 when opening)."""
    start = 1 if after is None else after % pages + 1
    order = [(start - 1 + k) % pages + 1 for k in range(pages)]
    if after is not None and pages > 1:
        order.remove(after)
    for p in order:
        if p in open_pages and p not in busy:
            return p
    for p in order:
        if p in open_pages:
            return p
    return order[0]


def choose_page(request: Request, caller: Caller, state: QueueData, after: int | None) -> int:
    """``pick_page`` for this caller: the queue's pages with open samples (one ListSamples of every id) and
    the pages other annotators have open (polled within the last two refreshes and a bit)."""
    size = caller.config.page_size
    pages = max(1, math.ceil(len(state.ids) / size))
    if pages == 1:
        return 1
    if after is not None:
        after = min(max(1, after), pages)
    open_pages = {i // size + 1 for i, it in enumerate(items(caller, state, state.ids)) if not it["label"]}
    busy = presence(request).others(caller.annotator, state.created, 2 * caller.config.refresh_s + 5)
    return pick_page(open_pages, pages, busy, after)


def current(caller: Caller) -> QueueData:
    """The app's queue as the agent keeps it (GetQueue)."""
    return QueueData.of(caller(caller.stub.GetQueue, agent_pb2.GetQueueRequest(name=caller.config.queue)))


def replace(caller: Caller, queue: agent_pb2.Queue, if_created: float | None = None) -> QueueData:
    """Make ``queue`` the app's queue (UpdateQueue: durable before it answers; unknown ids are NOT_FOUND).
    ``if_created``: only if the queue is still the one the page showed (its ``created``), else 409."""
    request = agent_pb2.UpdateQueueRequest(name=caller.config.queue, queue=queue)
    if if_created is not None:
        request.if_created = if_created
    return QueueData.of(caller(caller.stub.UpdateQueue, request))


def open_count(caller: Caller, state: QueueData) -> int:
    """How many of the whole queue's samples are unlabelled (one ListSamples of every id: for a confirmation
    before replacing the queue, not for polling)."""
    return sum(1 for it in items(caller, state, state.ids) if not it["label"]) if state.ids else 0


def describe(state: QueueData) -> str:
    """What filled the queue, for people: "a map selection", "strategy uncertainty", ..."""
    if state.source == "select":
        return f"strategy {state.strategy}" if state.strategy else "a Select"
    return {"map": "a map selection", "api": "an API client", "": "nothing"}.get(state.source, state.source)


def check_unchanged(caller: Caller, if_created: float | None) -> None:
    """409 before a Select or a replacement when the queue is no longer the one the page showed (UpdateQueue
    checks it again, atomically): a stale page does not spend a Select, nor record a draw, for a queue it
    cannot replace; the answer says what the queue is now. 400 for a NaN or infinite ``if_created``."""
    if if_created is None:
        return
    if not math.isfinite(if_created):
        # NaN compares unequal to everything, so the test below let it through (and a Select was spent before
        # the agent refused it); JSON bodies may say NaN, Infinity or 1e999 (Python's json reads them)
        raise HttpError(400, "INVALID_ARGUMENT", f"if_created {if_created} is not a finite number: send the "
                        "`created` of the queue as GET /api/queue answered it (0 for a queue never filled), or "
                        "leave if_created out to replace the queue unconditionally")
    now = current(caller)
    if abs(now.created - if_created) > CREATED_TOLERANCE_S:
        when = time.strftime("%H:%M:%S", time.localtime(now.created)) if now.created else "never"
        raise HttpError(409, "FAILED_PRECONDITION", f"the queue was replaced meanwhile by {describe(now)} "
                        f"({len(now.ids):,} samples, at {when}): not replaced; look at it first")


def strategy_choices(status: agent_pb2.Status) -> list[dict[str, object]]:
    """The registry's description of each strategy the agent offers (name, summary, params with kind,
    default, range, doc); the summary cut to its first sentence for the chooser."""
    from agent.strategies import STRATEGIES  # imports scikit-learn: only when a page needs it

    return registry_choices(STRATEGIES, status.strategies)


def hotkeys(classes: list[str]) -> list[tuple[str, str]]:
    """(key, class) in the agent's class list order (GetStatus: the order classes were first given), so
    every annotator who loads the page at the same time gets the same keys; the page keeps them until it is
    reloaded (queue.js), appending classes it first sees in sorted order."""
    return [(HOTKEYS[i] if i < len(HOTKEYS) else "", c) for i, c in enumerate(classes)]


def items(caller: Caller, state: QueueData, ids: list[str]) -> list[dict[str, Any]]:
    """Queue items with their current label (one ListSamples of these ids)."""
    labels: dict[str, str] = {}
    if ids:
        for s in caller.stream(caller.stub.ListSamples, agent_pb2.ListSamplesRequest(ids=ids)):
            labels[s.id] = s.label
    return [{"id": i, "label": labels.get(i, ""), "mark": state.marks.get(i, "")} for i in ids]


def page_of(state: QueueData, page: int, size: int) -> tuple[list[str], int, int]:
    pages = max(1, math.ceil(len(state.ids) / size))
    page = min(max(1, page), pages)
    return state.ids[(page - 1) * size: page * size], page, pages


@router.get("/queue")
def queue_page(request: Request, page: int | None = Query(None), after: int | None = Query(None),
               caller: Caller = CallerDep) -> Response:
    """``page``: that page. Without it, the first page with open samples nobody else has open (annotators on
    one queue spread out); ``after=P`` (the Next link, the ``]`` key): a redirect to the next such page after
    page P (see pick_page)."""
    status = caller.status()
    state = current(caller)
    config = caller.config
    if after is not None:
        return RedirectResponse(f"/queue?page={choose_page(request, caller, state, after)}", status_code=303)
    if page is None:
        page = choose_page(request, caller, state, None)
    ids, page, pages = page_of(state, page, config.page_size)
    presence(request).see(caller.annotator, state.created, page)
    return render(request, "queue.html", {
        "status": status, "queue": state, "items": items(caller, state, ids), "page": page, "pages": pages,
        "offset": (page - 1) * config.page_size, "classes": hotkeys(list(status.classes)),
        "strategies": strategy_choices(status), "refresh_ms": round(config.refresh_s * 1000),
        "can_label": session(request).can_label, "annotator": caller.annotator})


@router.get("/api/queue")
def queue_api(request: Request, page: int = Query(1), count_open: bool = Query(False, alias="open"),
              caller: Caller = CallerDep) -> dict[str, Any]:
    """A page of the queue with each item's label and mark, and the agent's class list now (``classes``: the
    page compares it with its keys to warn that a reload would number them otherwise). ``open=true``: also
    ``open``, how many of the whole queue's samples are unlabelled (one ListSamples of every id: asked for
    by the page's confirmation before replacing the queue, not by its polling)."""
    state = current(caller)
    ids, page, pages = page_of(state, page, caller.config.page_size)
    presence(request).see(caller.annotator, state.created, page)  # this page polls: its annotator is on it
    extra: dict[str, Any] = {}
    if count_open:
        extra["open"] = open_count(caller, state)
    return {**extra, "total": len(state.ids), "page": page, "pages": pages, "source": state.source,
            "created": state.created,
            "strategy": state.strategy, "selection_id": state.selection_id, "model_version": state.model_version,
            "items": items(caller, state, ids), "classes": list(caller.status().classes)}


# The bounds of a Select's ``params`` and ``where`` here: the agent's default limits (agent/limits.py
# max_metadata_entries, max_metadata_chars; it checks its own, possibly raised, limits again). Without them a
# body of 600,000 params (10.7 MiB) was validated item by item into a 66 MB 422 after 66 s (the security review).
MAX_MAP_ENTRIES = Limits().max_metadata_entries
MapText = Annotated[str, StringConstraints(max_length=Limits().max_metadata_chars)]


def at_most_entries(most: int) -> BeforeValidator:
    """A check that a mapping has at most ``most`` entries, run before any entry is validated: pydantic checks a
    dict's max_length only after validating every entry (600,000 entries: 600,000 errors)."""

    def check(value: Any) -> Any:
        if isinstance(value, dict) and len(value) > most:
            raise ValueError(f"{len(value):,} entries; at most {most}")
        return value

    return BeforeValidator(check)


TextMap = Annotated[dict[MapText, MapText], at_most_entries(MAX_MAP_ENTRIES)]


class SelectBody(BaseModel):
    strategy: str = Field(max_length=64)
    budget: int
    params: TextMap = Field(default_factory=dict)
    where: TextMap = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0)
    # The ``created`` of the queue the page showed: replace it only if it is still that one (else 409, and the
    # page shows the queue now). None: replace whatever it is (API clients).
    if_created: float | None = None


def nothing_selected(where: dict[str, str], details: dict[str, str]) -> str:
    """What the page says when a Select chose nothing: why (the agent's ``nothing_selected`` detail, or the
    filter that matched nothing) and that the queue was kept."""
    shown = ", ".join(f"{k}={v}" for k, v in sorted(where.items()))
    why = details.get("nothing_selected", "")  # agent.core.NOTHING_SELECTED (the app does not import the core)
    if where and (not why or why.startswith("no unlabelled sample matches")):  # the filter's own case
        return (f"no unlabelled sample matches {shown}; the queue was kept (keys and values must equal a "
                "sample's metadata exactly)")
    return f"{why or 'the agent selected no sample'}; the queue was kept"


@router.post("/api/queue/select")
def ask(request: Request, body: SelectBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """Ask the agent for the next ``budget`` samples by ``strategy``; they become the queue. When it selects
    none (a ``where`` filter that matches no unlabelled sample, every sample labelled), the queue is kept as
    it is: 404 saying why, never an empty queue in place of the team's."""
    limit = caller.config.max_ask
    if not 1 <= body.budget <= limit:
        raise HttpError(400, "INVALID_ARGUMENT", f"ask for 1..{limit} samples at a time")
    params = {k: v for k, v in body.params.items() if v.strip() != ""}
    check_unchanged(caller, body.if_created)
    reply = caller(caller.stub.Select, agent_pb2.SelectRequest(budget=body.budget, strategy=body.strategy,
                                                               params=params, seed=body.seed, where=body.where),
                   timeout=caller.config.select_timeout_s)
    if not reply.selected:  # the team's queue (and its marks) is never replaced by an empty one
        raise HttpError(404, "NOT_FOUND", nothing_selected(body.where, dict(reply.details)))
    state = replace(caller, agent_pb2.Queue(ids=[s.id for s in reply.selected], source="select",
                                            strategy=reply.strategy, params=params, model_version=reply.model_version,
                                            selection_id=reply.selection_id, details=dict(reply.details)),
                    body.if_created)
    return {"total": len(state.ids), "selection_id": reply.selection_id, "strategy": reply.strategy,
            "model_version": reply.model_version, "details": dict(reply.details)}


class SetBody(BaseModel):
    ids: list[str] = Field(max_length=MAX_QUEUE)  # (checked as it is read: 700,000 ids were 700,000 errors)
    source: str = Field(default="api", max_length=64)
    if_created: float | None = None  # as SelectBody.if_created


@router.post("/api/queue")
def set_queue(request: Request, body: SetBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """Make ``ids`` the queue (e.g. samples chosen on the map); unknown ids are NOT_FOUND (404)."""
    ids = list(dict.fromkeys(body.ids))
    if not ids or len(ids) > MAX_QUEUE:
        raise HttpError(400, "INVALID_ARGUMENT", f"send 1..{MAX_QUEUE} ids")
    check_unchanged(caller, body.if_created)
    state = replace(caller, agent_pb2.Queue(ids=ids, source=body.source), body.if_created)
    return {"total": len(state.ids)}


class LabelItem(BaseModel):
    id: str
    label: str
    # The label the page showed for this sample ("" = open): the label is stored only if it is still that one
    # (LabelAssignment.if_current), so two annotators on the same sample never overwrite one another unknowingly.
    # None: no condition (API clients that want the last write to win).
    if_current: str | None = Field(default=None, max_length=1024)


class LabelsBody(BaseModel):
    labels: list[LabelItem] = Field(min_length=1, max_length=1000)


def rejections(rejected: Iterable[agent_pb2.Rejection]) -> list[dict[str, Any]]:
    """The per-item rejections of a SubmitLabels / RetractLabels for the page. An item whose condition
    (if_current: the label the page showed) failed because the sample was labelled or taken back meanwhile
    has ``changed`` set, its ``label`` now (so the page shows it at once instead of at the next refresh) and
    ``by`` (who gave it), from the agent's ``Rejection.now``, and a ``reason`` for the annotator: the agent's
    words up to "not changed" (what it is now and who gave it), since the page leaves the sample as it is
    rather than asking to resend. ``code``: the agent's RejectionCode by name (``agent.errors.code_name``), for
    programs: the reason's words may change."""
    out: list[dict[str, Any]] = []
    for r in rejected:
        item: dict[str, Any] = {"id": r.id, "code": code_name(r.code), "reason": r.reason,
                                "changed": r.HasField("now")}
        if r.HasField("now"):
            item.update(label=r.now.label, by=r.now.annotator, reason=r.reason.split(": not changed")[0])
        out.append(item)
    return out


@router.post("/api/labels")
def submit(body: LabelsBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """One SubmitLabels with the caller's annotator name; answers once the agent has stored them. An item
    with ``if_current`` is stored only if the sample's label is still that one (else a rejection with
    ``changed``: see ``rejections``)."""
    labels = []
    for x in body.labels:
        item = agent_pb2.LabelAssignment(id=x.id, label=x.label.strip())
        if x.if_current is not None:
            item.if_current = x.if_current
        labels.append(item)
    reply = caller(caller.stub.SubmitLabels, agent_pb2.SubmitLabelsRequest(labels=labels, annotator=caller.annotator))
    # agreed: labels the sample already had, given by someone else (``by``) before this page saw it; the
    # page's undo leaves them as they are instead of taking back the other annotator's label. agreed_count:
    # how many there were in all (the agent lists the first ones only, REPLY_LIST_BYTES in agent/service.py;
    # an older agent sends 0): above len(agreed), the page cannot tell which of its labels were agreements.
    # twin_conflicts: labels stored that differ from the label of a byte-identical sample under another id.
    return {"accepted": reply.accepted, "annotator": caller.annotator,
            "rejected": rejections(reply.rejected),
            # rejected_count: every refusal (the agent lists the first ones only, as agreed_count)
            "rejected_count": max(reply.rejected_count, len(reply.rejected)),
            "agreed": [{"id": a.id, "label": a.now.label, "by": a.now.annotator} for a in reply.agreed],
            "agreed_count": max(reply.agreed_count, len(reply.agreed)),
            # overwritten: the labels stored ones replaced that someone else had given (the page's undo of such
            # a change puts that label back in its giver's name: it says whose label it was)
            "overwritten": [{"id": o.id, "label": o.label, "by": o.annotator} for o in reply.overwritten],
            "twin_conflicts": [{"id": t.id, "twin_id": t.twin_id, "twin_label": t.twin_label}
                               for t in reply.twin_conflicts]}


MAX_RETRACT = 1000  # ids in one retraction (RetractBody)


class RetractBody(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=MAX_RETRACT)
    # id -> the label the caller gave (the undo's): taken back only if it is still that one, so an undo never
    # removes a label someone else gave since (RetractLabelsRequest.if_current).
    if_current: Annotated[dict[str, str], at_most_entries(MAX_RETRACT)] = Field(default_factory=dict)
    # The queue's undo of a change: the label before the one taken back comes back, in the name of whoever
    # gave it (RetractLabelsRequest.restore_previous); unlabelled when there was none.
    restore_previous: bool = False


@router.post("/api/labels/retract")
def retract(request: Request, body: RetractBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """Take labels back: one RetractLabels with the caller's annotator name; the samples are unlabelled once
    it answers (their history keeps the label and the retraction), or, with ``restore_previous`` (the queue's
    undo of a change), have the label they had before again, recorded as its giver's."""
    from agent.web.priors import cache  # the Review priors page shows them again (with their cached prior)

    reply = caller(caller.stub.RetractLabels, agent_pb2.RetractLabelsRequest(
        ids=body.ids, annotator=caller.annotator, if_current=body.if_current,
        restore_previous=body.restore_previous))
    refused = {r.id for r in reply.rejected}
    if not body.restore_previous:  # (the queue's undo of a change leaves the sample labelled: still done)
        cache(request).labelled([i for i in body.ids if i not in refused], done=False)
    return {"accepted": reply.accepted, "annotator": caller.annotator,
            "rejected": rejections(reply.rejected)}


class NowBody(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=MAX_RETRACT)


def _listed(caller: Caller, ids: list[str], unknown: list[str]) -> list[agent_pb2.Sample]:
    """ListSamples of ``ids`` (no payloads); an id unknown to the agent (deleted since the page showed it: the
    call is NOT_FOUND) is appended to ``unknown`` and left out, found by halving the list (a few calls per
    unknown id, as agent/exports.py does)."""
    try:
        return caller.stream(caller.stub.ListSamples, agent_pb2.ListSamplesRequest(ids=ids))
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    if len(ids) == 1:
        unknown.append(ids[0])
        return []
    half = len(ids) // 2
    return _listed(caller, ids[:half], unknown) + _listed(caller, ids[half:], unknown)


@router.post("/api/labels/now")
def labels_now(body: NowBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """Each sample's current label and who gave it, when (Unix s) and how (source), from one ListSamples of
    ``ids`` (Sample.annotator, label_time, label_source; a read: any signed-in user may ask). The Queue page
    asks after a reload what became of the answers the page before left unanswered. ``labels``: id ->
    {label, by, time, source} ("" / 0 when unlabelled); ``unknown``: ids the agent does not have (deleted)."""
    unknown: list[str] = []
    samples = _listed(caller, list(dict.fromkeys(body.ids)), unknown)
    return {"labels": {s.id: {"label": s.label, "by": s.annotator, "time": s.label_time, "source": s.label_source}
                       for s in samples},
            "unknown": unknown}


class MarkBody(BaseModel):
    id: str
    mark: Literal["", "skip", "unsure"]


@router.post("/api/queue/mark")
def mark(request: Request, body: MarkBody, caller: Caller = CallerDep) -> dict[str, Any]:
    """Mark a queue item skipped or not sure ("" clears): kept with the queue by the agent (UpdateQueue);
    the sample stays unlabelled. An id no longer in the queue (replaced meanwhile) is 404."""
    caller(caller.stub.UpdateQueue, agent_pb2.UpdateQueueRequest(
        name=caller.config.queue, marks=[agent_pb2.QueueMark(id=body.id, mark=body.mark)]))
    return {"id": body.id, "mark": body.mark}


MODULE = WebModule(router, nav=Nav("Queue", "/queue", 10), setup=setup)
