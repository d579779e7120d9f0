"""Labelling queues (GetQueue / UpdateQueue): what the web app's Queue page works through.

A queue is a named list of sample ids in labelling order, with where it came from (a Select: its
strategy, params, model version, selection id and details; or e.g. "map" for samples chosen on the map)
and per-sample marks ("skip", "unsure") that people set while they work. Labels are never kept here:
whether a sample of the queue is labelled is the label table's business (a queue item labelled
anywhere shows labelled, one retracted shows open again).

Kept by the agent in the ``queues`` table of its SQLite state (one JSON row per name, written in one
durable transaction before UpdateQueue answers), so a queue survives restarts of the agent and of the
web app, and every app process of the agent (``serve --web-port``, any number of ``shortlist web``)
shows the same queue. Updates of one queue are serialised (one lock), so two people marking samples at
the same moment never lose each other's marks.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from agent.errors import FailedPrecondition, InvalidArgument, NotFound, quoted
from agent.limits import Limits, check_count, metadata_problem, text_problem
from agent.state import State
from shortlist.v1 import agent_pb2

DEFAULT_QUEUE = "default"
MARKS = ("skip", "unsure")  # "" clears a mark
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789:_.-")
MAX_NAME_CHARS = 64  # queue names and the source / strategy / model_version / selection_id fields
# if_created matches when within this many seconds of the stored ``created``: a client that printed the
# double with 6 decimals (rounding error <= 0.5 us) still matches; fills are further apart than that.
CREATED_TOLERANCE_S = 1e-6


@dataclass
class QueueData:
    """One queue as stored (``created``: Unix time it was filled, 0 = never; ``marks``: id -> mark)."""

    name: str
    ids: list[str] = field(default_factory=list)
    source: str = ""
    strategy: str = ""
    params: dict[str, str] = field(default_factory=dict)
    model_version: str = ""
    selection_id: str = ""
    details: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    marks: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, q: agent_pb2.Queue) -> QueueData:
        """A GetQueue / UpdateQueue reply, whole (the web app's view of its queue)."""
        return cls(q.name, list(q.ids), q.source, q.strategy, dict(q.params), q.model_version, q.selection_id,
                   dict(q.details), q.created, dict(q.marks))


def queue_name(name: str) -> str:
    """The stored name of a requested one ("" = DEFAULT_QUEUE); InvalidArgument for a bad name."""
    name = name or DEFAULT_QUEUE
    if len(name) > MAX_NAME_CHARS or not set(name) <= NAME_CHARS:
        raise InvalidArgument(f"queue name {quoted(name[:MAX_NAME_CHARS])} must be at most {MAX_NAME_CHARS} lower-case "
                              "letters, digits and ':_.-' (e.g. default, web, team-a)")
    return name


class Queues:
    """GetQueue / UpdateQueue over State (thread-safe)."""

    def __init__(self, state: State, limits: Limits) -> None:
        self.state = state
        self.limits = limits
        self.lock = threading.Lock()  # read-modify-write of a queue (marks) must not interleave (DeleteSamples too)

    def get(self, name: str) -> QueueData:
        name = queue_name(name)
        stored = self.state.queue(name)
        if stored is None:
            return QueueData(name)
        body = stored[0]
        return QueueData(name=name, ids=[str(i) for i in body.get("ids", [])],
                         source=str(body.get("source", "")), strategy=str(body.get("strategy", "")),
                         params=dict(body.get("params", {})),
                         model_version=str(body.get("model_version", "")),
                         selection_id=str(body.get("selection_id", "")),
                         details=dict(body.get("details", {})),
                         created=float(body.get("created", 0.0)),
                         marks=dict(body.get("marks", {})))

    def _check_new(self, q: QueueData) -> None:
        lim = self.limits
        check_count(q.ids, lim.max_ids_per_request, "max_ids_per_request", "queue ids",
                    advice="send a shorter queue")
        for what, value in (("source", q.source), ("strategy", q.strategy), ("model_version", q.model_version),
                            ("selection_id", q.selection_id)):
            if len(value) > MAX_NAME_CHARS:
                raise InvalidArgument(f"queue {what} {quoted(value[:MAX_NAME_CHARS])}... is longer than "
                                      f"{MAX_NAME_CHARS} characters")
        for what, m in (("params", q.params), ("details", q.details)):
            problem = metadata_problem(m, lim, f"queue {what}")
            if problem is not None:
                raise InvalidArgument(problem)
        seen: set[str] = set()
        unknown: list[str] = []
        for i in q.ids:
            if not i:
                raise InvalidArgument("an empty id in the queue: give the ids of stored samples")
            problem = text_problem(i, lim.max_id_chars, "max_id_chars", "id")
            if problem is not None:
                raise InvalidArgument(problem)
            if i in seen:
                raise InvalidArgument(f"id {quoted(i)} is in the queue twice; send each id once")
            seen.add(i)
            if self.state.lookup(i) is None:
                unknown.append(i)
        if unknown:
            shown = ", ".join(quoted(u[:64]) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise NotFound(f"{len(unknown)} unknown id(s) for the queue: {shown}; ingest them first")

    def update(self, name: str, replace: QueueData | None, marks: Sequence[tuple[str, str]],
               if_created: float | None = None) -> QueueData:
        """Replace queue ``name`` by ``replace`` (when given; created now, no marks), then apply ``marks``
        ((id, "skip" | "unsure" | "")) in order; stored durably before it returns the queue as stored.
        ``if_created``: replace only if the queue's ``created`` is still that one, within CREATED_TOLERANCE_S
        (else FailedPrecondition; not finite: InvalidArgument)."""
        name = queue_name(name)
        check_count(marks, self.limits.max_ids_per_request, "max_ids_per_request", "marks")
        for i, mark in marks:
            if mark not in ("", *MARKS):
                raise InvalidArgument(f"mark {quoted(mark[:16])} of {quoted(i[:64])}: use one of {', '.join(MARKS)} "
                                      "or \"\" to clear")
        if if_created is not None and replace is None:
            raise InvalidArgument("if_created goes with queue: it makes the replacement conditional; send the new "
                                  "queue with it, or leave if_created out to only mark")
        if if_created is not None and not math.isfinite(if_created):
            # NaN compares unequal to everything, so the tolerance test below would let it through: an
            # unconditional overwrite from a client that meant a condition (e.g. JS's Number(undefined)).
            raise InvalidArgument(f"if_created {if_created} is not a finite number: send the `created` of the queue "
                                  "as GetQueue answered it (0 for a queue never filled), or leave if_created out "
                                  "to replace unconditionally")
        for i, _ in marks:
            if not i:
                raise InvalidArgument("a mark with an empty id: give the id of a sample in the queue")
        if replace is not None:
            self._check_new(replace)
        with self.lock:
            q = self.get(name)
            if replace is not None and if_created is not None and abs(q.created - if_created) > CREATED_TOLERANCE_S:
                when = time.strftime("%H:%M:%S", time.localtime(q.created)) if q.created else "never"
                raise FailedPrecondition(
                    f"queue {quoted(name)} was replaced meanwhile (filled at {when}, {len(q.ids)} samples): "
                    "not replaced; look at it and ask again")
            if replace is not None:
                q = QueueData(name, list(replace.ids), replace.source, replace.strategy, dict(replace.params),
                              replace.model_version, replace.selection_id, dict(replace.details), time.time(), {})
            if marks:
                members = set(q.ids)
                missing = [i for i, _ in marks if i not in members]
                if missing:
                    raise NotFound(f"{quoted(missing[0][:64])} is not in queue {quoted(name)} (it was replaced "
                                   "meanwhile?): reload the queue and mark again")
                for i, mark in marks:
                    if mark:
                        q.marks[i] = mark
                    else:
                        q.marks.pop(i, None)
            body = asdict(q)
            body.pop("name")
            self.state.set_queue(name, body)
            return q


