"""The agent as plain Python: ingest, select, labels, priors, status over State + blobs + models.

agent/service.py is a thin gRPC layer over ``Agent``; tests and benchmarks can also call it directly.
Errors are agent.errors' domain exceptions (InvalidArgument, FailedPrecondition, NotFound, ...); the
service maps them, and every other exception, to status codes in one place (agent.errors.ErrorMapping).

Data folder layout::

    D/state.sqlite   (+ -wal, -shm)   samples, labels, embeddings, selections, model versions
    D/blobs/ab/cdef...                payloads by sha256 (absent with blobs off)
    D/index/v0003/                    hnswlib snapshot of the serving version
    D/map/v0003.npz                   2-D map of the pool under the serving version (agent/pool_map.py)
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from agent import cancel
from agent.admission import Admission
from agent.audit import AuditReport, PriorAuditor
from agent.blobs import BlobStore
from agent.cache import LruCache, fingerprint, frozen
from agent.config import AUDIT_MIN_LABELS, AgentConfig, WorkConfig
from agent.errors import FailedPrecondition, InvalidArgument, NotFound, Problem, Rejected, quoted, storage_problem
from agent.images import Images
from agent.index import IndexView
from agent.ingest import (
    PAYLOAD_ERROR_KEY,
    IngestPipeline,
    label_refusal,
    live_classes,
    near_retired_problem,
    new_class_problem,
    rejection_id,
)
from agent.limits import (
    MIB,
    annotator_name,
    check_count,
    check_text,
    limit_hint,
    metadata_problem,
    name_problem,
    stored_annotator,
    text_problem,
)
from agent.models import ModelManager, Serving
from agent.params import StrategyEntry
from agent.pool import EntryBug, Pool, state_rng
from agent.pool_map import MapStatus, PoolMap
from agent.priors import PRIOR_METHODS, get_prior_method
from agent.priors.calibration import TemperatureFit, audit_todo, calibrate_flag
from agent.queues import Queues
from agent.security import LOCK_FILE, DataDirLock, owner_only_dir
from agent.state import (
    AGENT_SOURCES,
    INDEX_STALE_KEY,
    MANUAL_SOURCE,
    RENAME_SOURCE,
    RESTORE_SOURCE,
    LabelEvent,
    SampleRecord,
    State,
    StateCorruptError,
    unfinished_copy,
)
from agent.strategies import LABEL_FREE, MODEL_FREE, STRATEGIES, get_strategy
from agent.strategies.audit import AUDIT
from shortlist.images import allow_pixels
from shortlist.manifest import Manifest, registry_mistake
from shortlist.v1 import agent_pb2
from shortlist.version import git_commit, package_version

log = logging.getLogger(__name__)

# GetMap: points per streamed message by default, and at most.
MAP_CHUNK = 4096
MAX_MAP_CHUNK = 65_536
# (id, x, y, current label or "") of one map point.
MapPointRow = tuple[str, float, float, str]

# Pool.knn answers at most this many queries per index call, with a cancellation checkpoint between.
KNN_BLOCK = 4096
# The state's meta key holding the last calibrated PriorLabels' method and TemperatureFit (JSON).
LAST_PRIOR_FIT_KEY = "last_prior_fit"
# A uniform draw's labels count as audit labels over the longest start of the draw, and of each of its
# stretches, of which at least this share is labelled, one unlabelled pick always allowed (``counted_labels``).
DRAW_LABELLED_SHARE = 0.9
# ... and, for a draw of another strategy than the audit (random), only once they hold at least this many
# labelled picks in all: fewer (and smaller draws) count nothing. Many small random draws (a dashboard's
# "3 random frames" every few seconds, with a read token) cover the whole pool between them, so hand-picked
# labels were the first picks of some draw and counted as a uniform sample (150 draws of 3 made 25
# hand-picked labels "audit" labels and silenced the calibration warning). A start of 10 labelled picks by
# coincidence needs about f^10 per draw, f the labelled share of the pool. An audit draw (a write token's
# deliberate act) counts from its first labelled pick.
MIN_DRAW_COUNTED = 10
# A stretch of a draw away from its start (``counted_labels``: the web app's Queue starts each annotator at
# a tile chosen by their name) counts once its counted part holds at least this many labelled picks. Labels
# chosen among a draw's picks (the cat pictures of a random order of the pool) form such a run only by
# chance, about f^10 per pick, f the chosen class's share: over 200-pick draws, a minimum of 3 made a chosen
# class of 20% count 24% of its labels, 10 makes it under 0.01% (0.07% at 30%, 4% at 50%).
MIN_STRETCH_COUNTED = 10


# DeleteSamples' rejection of an id no stored sample has (docs/agent.md, "Retrying writes").
NOT_STORED = ("not a stored sample: never ingested, or deleted already (the agent keeps no id of a deleted sample, "
              "so it cannot tell which); a resent DeleteSamples whose first send was applied gets this for each of "
              "its ids: the samples are gone, nothing is left to do")


class Replaced(NamedTuple):
    """A label that SubmitLabels replaced (with another one) or RetractLabels took back, given by another
    annotator than the call's: the sample, the label it had and who gave it."""

    id: str
    label: str
    annotator: str


class LabelGiver(NamedTuple):
    """Who gave a sample's current label (ListSamples' Sample.annotator), when (Unix s) and how (its source)."""

    annotator: str
    time: float
    source: str


def _unicode_form(text: str) -> str:
    """"NFC" or "NFD" when ``text`` is in that normal form (NFC first: plain ASCII is both), else "mixed"."""
    return next((f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, text)), "mixed")


@dataclass
class SelectResult:
    selected: list[tuple[str, float]]
    model_version: str
    strategy: str
    selection_id: str
    details: dict[str, str] = field(default_factory=dict)


# A cached Select: (chosen ids and scores, details, the recorded selection's id or "").
SelectCached = tuple[list[tuple[str, float]], dict[str, str], str]


@dataclass
class SelectFlight:
    """One Select being computed (``Agent._single_flight``): ``done`` is set when it ends; ``result`` is its
    answer (None when it raised: an identical Select waiting for it then runs itself)."""

    done: threading.Event = field(default_factory=threading.Event)
    result: SelectResult | None = None


@dataclass(frozen=True)
class SelectQuery:
    """One Select request, as ``Agent.select`` takes it (and checks it): at most ``budget`` picks among the
    unlabelled samples whose metadata has every key=value of ``where``, by the strategy named ``strategy`` with
    its ``params``, seeded by ``seed``; with the per-group cap, at most ``max_per_group`` picks per value of the
    metadata key ``group_by`` (0 and "": no cap; both or neither). ``_run_strategy``, ``_run_capped`` and
    ``_strategy_round`` take it too, a capped round with its own ``budget``."""

    budget: int
    strategy: str
    params: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    where: Mapping[str, str] = field(default_factory=dict)
    group_by: str = ""
    max_per_group: int = 0

    def key(self, take: int) -> tuple[Hashable, ...]:
        """The request's part of its Select's cache key (``Agent._plan_select``), hashable and order-free in its
        mappings, with ``take`` (the picks it can have: the budget, at most the candidates) in place of the
        budget: a budget beyond the candidates gives the same answer."""
        return (self.strategy, frozen(self.params), self.seed, take, self.group_by, self.max_per_group,
                frozen(self.where))

    def recorded(self) -> dict[str, Any]:
        """The request as its selection's record holds it (``uniform_request`` reads it): group_by and
        max_per_group only with a cap."""
        request: dict[str, Any] = {"budget": self.budget, "strategy": self.strategy, "params": dict(self.params),
                                   "seed": self.seed, "where": dict(self.where)}
        if self.max_per_group:  # not a uniform draw (uniform_request): the cap reshapes the sample
            request.update(group_by=self.group_by, max_per_group=self.max_per_group)
        return request


@dataclass(frozen=True, eq=False)
class SelectPlan:
    """One Select once its pool is read (``Agent._plan_select``), as ``Agent._lead_select`` runs it: the checked
    ``query`` and its strategy's registry entry ``fn``; the ``pool`` (its candidates less ``left_out``
    byte-identical ones, ``Agent.twin_free``) and its rows' state seqs ``seqs``; ``take``, the picks it can have;
    the serving ``version`` ("" before a model); ``stored``, the samples stored as the pool was read, ``behind``
    of them not embedded by that version yet (both 0 before a model); its cache ``key``; the call's ``token``;
    and ``record``, False for a read token's call (answered, not recorded)."""

    query: SelectQuery
    fn: StrategyEntry
    pool: Pool
    seqs: np.ndarray
    take: int
    left_out: int
    version: str
    stored: int
    behind: int
    key: Hashable
    token: cancel.CancelToken | None
    record: bool


@dataclass
class PriorResult:
    id: str
    label: str
    confidence: float
    probs: dict[str, float]
    model_version: str
    # How the confidences were calibrated (agent/priors/calibration.py, "Provenance"): on the first
    # result of a reply only (the same for every row), None on the others.
    calibration: TemperatureFit | None = None
    # Stored samples the serving version has not embedded yet, on the first result only (``not_embedded``).
    not_embedded: int = 0


def uniform_draw(strategy: str, filtered: bool) -> bool:
    """Whether a Select of ``strategy`` (``filtered``: with a where filter or a per-group cap) drew uniformly
    from the whole unlabelled pool: a uniform strategy (``StrategyEntry.uniform``: audit, random), no where
    filter and no cap. Its
    picks' labels calibrate the priors as audit labels (``counted_labels``, ``Agent.uniform_seqs``)."""
    entry = STRATEGIES.get(strategy)
    return entry is not None and entry.uniform and not filtered


def uniform_request(request: Mapping[str, Any]) -> bool:
    """Whether a recorded Select ``request`` (the dict ``Agent.select`` records) was a uniform draw of the whole
    unlabelled pool (``uniform_draw``): not with a where filter, a per-group cap, or while the serving version
    had not embedded every stored sample (``not_embedded``: its candidates were the embedded part only)."""
    filtered = bool(request.get("where")) or bool(request.get("max_per_group")) or bool(request.get("not_embedded"))
    return uniform_draw(str(request.get("strategy")), filtered)


def _longest_start(labelled: np.ndarray) -> int:
    """The length of the longest start of ``labelled`` (K bool, K >= 1) that leaves at most one pick, or
    1 - DRAW_LABELLED_SHARE of them when more, unlabelled (``counted_labels``): 1 at least."""
    m = np.arange(1, len(labelled) + 1)
    skipped = m - np.cumsum(labelled)  # K: unlabelled among the first m picks
    return int(np.flatnonzero(skipped <= np.maximum(1.0, (1.0 - DRAW_LABELLED_SHARE) * m) + 1e-9)[-1]) + 1


def counted_labels(order: np.ndarray, labelled: np.ndarray, minimum: int = 1) -> np.ndarray:
    """The labelled picks of one uniform draw that count as a uniform sample of the pool, in the order drawn.
    ``order``: the draw's seqs in the order drawn (K); ``labelled``: whether each is labelled now (K bool).
    Counted, when they are at least ``minimum`` in all (else none: MIN_DRAW_COUNTED for random's draws):

    - the draw's start: the labelled picks of its longest start (its first m picks) that leaves at most one
      pick, or 1 - DRAW_LABELLED_SHARE of them when more, unlabelled (an audit's first labelled pick alone
      counts, as it always did);
    - its dense stretches: the draw is read as a ring (its last pick followed by its first, as the web app's
      Queue wraps round) and cut into stretches at every run of 2 or more unlabelled picks, so a stretch is
      labelled picks with single unlabelled ones between. A stretch counts the labelled picks of its
      longest start within the same slack, and those of its longest end (read backwards), each once it
      holds at least MIN_STRETCH_COUNTED labelled picks.

    Why: which positions of a random order get labelled must not depend on the images. Any set of positions
    chosen without looking is a uniform sample of the pool: the first m picks, the picks from a tile the
    Queue chose by a hash of the annotator's name onwards (tiles 11-20 then 1-5 of 20), or two annotators'
    stretches together. Labels someone chose among a large draw's picks are not (a pipeline that draws the
    whole pool in random order and labels the cat pictures it wants), and they are isolated: the picks of
    one class of share f lie where the random order put them, so a run of 10 of them (at most one other
    pick among them) has a chance of about f^10 per pick. Over 200-pick draws, a chosen class of one in ten
    counts nothing and one of 30% counts 0.07% of its labels (with a minimum of 3 a class of 20% counted
    24%); a person labelling down the Queue makes stretches of tens. The slack lets an annotator skip a pick
    or a few (an unreadable image; a label taken back) without stopping the count; skipping the hard ones
    biases it, as it biases the audit's estimate (agent/audit.py). What does not count: a stretch of fewer
    than MIN_STRETCH_COUNTED labelled picks away from the draw's start, and the part of a stretch beyond
    the slack from both its ends (a stretch labelled every other pick in its middle). Chosen labels right
    next to a counted stretch (the ring's wrap included) join it within the slack, a few at most, as they
    joined the draw's start before."""
    k = len(order)
    if k == 0 or not labelled.any():
        return order[:0]
    keep = np.zeros(k, bool)
    start = _longest_start(labelled)
    keep[:start] = labelled[:start]
    unlabelled = ~labelled
    # A pick that begins a stretch: labelled, after two unlabelled picks (on the ring).
    begins = np.flatnonzero(labelled & np.roll(unlabelled, 1) & np.roll(unlabelled, 2))
    if len(begins) == 0:  # no run of 2 unlabelled: the whole draw is one stretch, from its first pick
        begins, ring = np.zeros(1, np.int64), np.arange(k)
    else:  # the ring from the first stretch's first pick: stretch, gap, stretch, gap ... gap
        ring = np.roll(np.arange(k), -int(begins[0]))
        begins = begins - begins[0]
    on_ring = labelled[ring]
    ends = np.append(begins[1:], k)  # each stretch ends at the next one's start (its gap included)
    before = np.concatenate([[0], np.cumsum(on_ring)])
    dense = before[ends] - before[begins] >= MIN_STRETCH_COUNTED
    for b, e in zip(begins[dense].tolist(), ends[dense].tolist(), strict=True):
        e = b + int(np.flatnonzero(on_ring[b:e])[-1]) + 1  # the stretch without the gap after it
        m = _longest_start(on_ring[b:e])  # read from its first pick ...
        n = _longest_start(on_ring[b:e][::-1])  # ... and from its last, backwards
        for part in (ring[b:b + m], ring[e - n:e]):
            if labelled[part].sum() >= MIN_STRETCH_COUNTED:
                keep[part] |= labelled[part]
    counted = order[keep]
    return counted if len(counted) >= minimum else order[:0]


class CountedDraws:
    """The counted labelled picks (``counted_labels``) of every recorded uniform draw, kept up to date
    incrementally so that asking costs O(pool), not O(picks ever drawn): GetStatus asks on every call
    (``Agent.calibration_warning``, the auditor's report), and uniform draws are kept forever, so walking
    them all made it slower with every random Select a dashboard sent (docs/agent.md, "Cache").

    A draw's counted picks depend only on which of its own picks are labelled, so ``counted`` compares the
    labelled mask with the one it last saw and recounts only the draws holding a seq whose labelled state
    changed (found through ``_by_seq``), plus draws added since. ``recounts`` says how many draws were counted
    in all (for tests: a GetStatus with nothing changed counts none). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: list[np.ndarray] = []  # per draw: its seqs in the order drawn (int64)
        self._minimum: list[int] = []  # per draw: ``counted_labels``'s minimum
        self._audit: list[bool] = []  # per draw: an audit draw
        self._counted: list[np.ndarray] = []  # per draw: its counted seqs as last counted
        self._by_seq: dict[int, list[int]] = {}  # seq -> the draws (indices) holding it
        # per seq: how many draws count it (every draw; audit draws alone), and whether any draw holds it
        self._times = np.zeros(0, np.int64)
        self._audit_times = np.zeros(0, np.int64)
        self._drawn = np.zeros(0, bool)
        self._labelled = np.zeros(0, bool)  # the labelled mask the counts above were made with
        self._fresh: list[int] = []  # draws added and not counted yet
        self.recounts = 0

    def _grow(self, n: int) -> None:
        """Make the per-seq arrays hold seqs 0..n-1 at least."""
        if n <= len(self._times):
            return
        size = max(n, 2 * len(self._times))
        for name, dtype in (("_times", np.int64), ("_audit_times", np.int64), ("_drawn", bool),
                            ("_labelled", bool)):
            old = getattr(self, name)
            grown = np.zeros(size, dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)

    def add(self, strategy: str, order: np.ndarray) -> None:
        """A recorded uniform draw of ``strategy``: ``order``, its seqs (K int64) in the order drawn."""
        order = np.asarray(order, np.int64)
        with self._lock:
            d = len(self._orders)
            self._orders.append(order)
            self._minimum.append(1 if strategy == AUDIT else MIN_DRAW_COUNTED)
            self._audit.append(strategy == AUDIT)
            self._counted.append(order[:0])
            for q in np.unique(order).tolist():
                self._by_seq.setdefault(q, []).append(d)
            if len(order):
                self._grow(int(order.max()) + 1)
                self._drawn[order] = True
            self._fresh.append(d)

    def __len__(self) -> int:
        with self._lock:
            return len(self._orders)

    def counted(self, labels: np.ndarray, audit: np.ndarray, audit_only: bool) -> np.ndarray:
        """Seqs (ascending, unique, int64) of the counted labelled picks of every draw, or of the audit's
        draws only, and the labelled audit seqs no draw holds (``audit``: every audit seq ascending; an audit
        draw whose Select record a power loss took counts its labelled picks all). ``labels``: the current
        class per seq (``State.labels_by_seq``; a seq past its end is unlabelled)."""
        with self._lock:
            self._grow(max(len(labels), int(audit.max()) + 1 if len(audit) else 0))
            now = np.zeros(len(self._labelled), bool)
            now[: len(labels)] = labels >= 0
            changed = np.flatnonzero(now != self._labelled)
            todo = set(self._fresh)
            for q in changed.tolist():
                todo.update(self._by_seq.get(q, ()))
            self._labelled = now
            self._fresh = []
            for d in sorted(todo):
                order, old = self._orders[d], self._counted[d]
                new = counted_labels(order, now[order], self._minimum[d])
                np.subtract.at(self._times, old, 1)
                np.add.at(self._times, new, 1)
                if self._audit[d]:
                    np.subtract.at(self._audit_times, old, 1)
                    np.add.at(self._audit_times, new, 1)
                self._counted[d] = new
                self.recounts += 1
            times = self._audit_times if audit_only else self._times
            orphans = audit[~self._drawn[audit] & now[audit]]
            return np.union1d(np.flatnonzero(times > 0), orphans).astype(np.int64)


@dataclass
class AgentStatus:
    samples: int
    labeled: int
    embedded: int
    model_version: str
    strategies: list[str]
    prior_methods: list[str]
    classes: list[str]
    pending_model_version: str
    pending_embedded: int
    warnings: list[str] = field(default_factory=list)
    pending_embed_rate: float = 0.0  # samples a second the pending version embeds at (0: not known yet)
    audit: AuditReport = field(default_factory=AuditReport)
    classes_open: bool = True
    label_events: int = 0  # label rows ever stored: changes with every label change (Status.label_events)
    samples_deleted: int = 0  # samples deleted ever: changes with every deletion (Status.samples_deleted)
    agent_version: str = ""  # the package version, the git commit it runs from ("" if none), the folder's schema
    agent_commit: str = ""
    schema_version: int = 0


def no_model_message(models: Path, prior: bool = False, refused: str = "") -> str:
    """Why a call that needs a model cannot run yet: a Select (naming the strategies that need none) or, with
    ``prior``, a PriorLabels (every prior method reads the embeddings). ``refused``: the agent's sentence on the
    versions it refused (ModelManager.refused_only), when versions are published but none is served."""
    if refused:
        need = ("prior labels are computed in a model's embedding space, so no prior method works without one"
                if prior else f"strategies that work without a model: {', '.join(sorted(MODEL_FREE))}")
        return f"{refused}; then retry; {need}"
    todo = registry_mistake(models) or (f"publish one with `shortlist export --run RUN --models {models}` (or any "
                                        f"exporter writing {models}/vNNNN/)")
    if prior:
        return (f"no model is published in {models}; {todo}, then retry: prior labels are computed in a model's "
                "embedding space, so no prior method works without one")
    return (f"no model is published in {models}; {todo}, then retry; strategies that work without a model: "
            f"{', '.join(sorted(MODEL_FREE))}")


# SubmitLabelsRequest.source: lower-case letters, digits and ":_.-" ("manual", "prior:knn", "labelstudio").
SOURCE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789:_.-")
MAX_SOURCE_CHARS = 64


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be a label source (None when it can; "" means "manual")."""
    if len(source) > MAX_SOURCE_CHARS or not set(source) <= SOURCE_CHARS:
        return (f"source {quoted(source[:MAX_SOURCE_CHARS])} must be at most {MAX_SOURCE_CHARS} lower-case letters, "
                "digits "
                "and ':_.-' (e.g. manual, prior:knn, labelstudio)")
    if (what := AGENT_SOURCES.get(source)) is not None:
        return f"source {quoted(source)} is reserved for {what}; use e.g. 'manual' or 'import'"
    method = source.partition(":")[2] if source.startswith("prior:") else None
    if method is not None and method not in PRIOR_METHODS:
        # prior:METHOD marks an accepted prior (left out of the calibration's held-out labels, not scored by the
        # audit): a method this agent does not have would be counted as one without ever having been a prior.
        return (f"source {quoted(source)} names no prior method of this agent: an accepted prior's source is "
                f"prior:METHOD with METHOD one of {', '.join(sorted(PRIOR_METHODS))}; a label that is no accepted "
                "prior takes another source (e.g. 'manual')")
    return None


# SelectReply.details key present when the selection could not be recorded (disk full or read-only);
# its value says why. The selection itself is complete and valid.
SELECTION_NOT_RECORDED = "selection_not_recorded"
# Recorded selections other than uniform draws kept (the newest; every draw is kept: it calibrates the priors),
# pruned every PRUNE_EVERY records: a few kB each, so at most some tens of MB of history.
SELECTIONS_KEPT = 10_000
PRUNE_EVERY = 100
READ_ONLY_SELECT = ("made with a read token: this selection is complete but was not recorded, so it has no "
                    "selection_id (empty): a read token's Selects are not in the selections table and do not count "
                    "as draws for the calibration; ask with a write token to have it recorded")
# Select's details key saying why the answer is empty (an empty list alone reads like a failure).
NOTHING_SELECTED = "nothing_selected"
# Select's details key, present when byte-identical samples were left out of the candidates (``twin_free``):
# how many, and why. Absent in a pool without byte-identical samples.
SAME_PAYLOAD_LEFT_OUT = "same_payload_left_out"
# Select's details key, present while the serving version has not embedded every stored sample (the pool
# is being embedded after the first model, or after a restart that fell back to another version): how
# many, and that they are not candidates until then. Absent once every stored sample is embedded.
NOT_EMBEDDED = "not_embedded"
# The two halves of every answer given while the pool is embedded in the background (Select's NOT_EMBEDDED,
# its empty answer, the audit and PriorLabels refusals): what is going on, and when to ask again.
IN_BACKGROUND = "the pool is being embedded in the background"
ASK_AGAIN = "ask again when Status.embedded reaches Status.samples"


def behind_phrase(behind: int, stored: int, version: str) -> str:
    """"B of S stored samples are not embedded yet by vN (the pool is being embedded in the background)"."""
    return f"{behind:,} of {stored:,} stored samples are not embedded yet by {version} ({IN_BACKGROUND})"


# Select's details key, present on a random Select answered while NOT_EMBEDDED is: a draw of the embedded
# samples only, so not counted as a uniform draw for the calibration (an audit is refused then).
NOT_UNIFORM = "not_uniform"
# A Select with a per-group cap (SelectRequest.group_by / max_per_group) runs its strategy at most this many
# rounds: each round after the first reruns it on the candidates left (less the picks taken and the members
# of groups at their cap) for the picks still missing. Every round takes at least one pick (each group left
# has room), and in practice the first takes most of the budget and the next few the rest (camera-trap
# bursts, entropy, 30 picks, 1 per event: about half, then a quarter...); the bound keeps a capped call's
# cost at most this many strategy runs (each admitted on its own, like a Select of its own) when a strategy
# keeps proposing the same few groups. Short of the budget after it: GROUP_NOT_FILLED says so.
MAX_GROUP_ROUNDS = 8
# Select's details keys of a capped call: the rounds run, how many of the strategy's picks were set aside
# (their group was at its cap), and (only when the budget was not filled) why.
GROUP_ROUNDS = "group_rounds"
GROUP_SET_ASIDE = "group_set_aside"
GROUP_NOT_FILLED = "group_budget_not_filled"
# ... and, when no candidate has the group_by key (a typo, or metadata the pool lacks), that the cap changed
# nothing: every candidate was a group of its own.
GROUP_KEY_MISSING = "group_key_missing"


class DataFolderError(OSError):
    """The data folder cannot be used at start (read-only, no permission, a part of the wrong kind); the message
    says what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove it writable (a probe file); DataFolderError otherwise."""
    if folder.exists() and not folder.is_dir():
        raise DataFolderError(errno.ENOTDIR, f"the data folder {folder} is a file, not a folder: give --data-dir a "
                              "folder (created if missing) where the agent keeps its state")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise DataFolderError(e.errno, f"the data folder {folder} is not writable ({e.strerror or e}): the agent "
                              "stores samples and labels there; remount it read-write, fix its permissions or "
                              "free space, or pick another --data-dir") from None


class DataPart(NamedTuple):
    """One part of a data folder that the agent opens at start: its name in the folder, whether it is a folder
    (else a file), what it holds, and what moving a wrong one away costs."""
    name: str
    folder: bool
    holds: str
    moved: str


# Every part the start opens or creates, checked for its kind before anything is opened (``check_parts``): one of
# the wrong kind failed deep inside the start ("[Errno 17] File exists"), or (index, map) let an agent start
# that could never save its snapshots. SQLite's own -wal, -shm and -journal are left to SQLite (and to
# ``start_disk_full``: a start that cannot create them is most often a full disk).
DATA_PARTS = (
    DataPart("state.sqlite", False, "the agent's database: samples, labels, embeddings",
             "the agent then starts with an empty database"),
    DataPart(LOCK_FILE, False, "the lock that keeps a second agent out", "the agent makes a new one"),
    DataPart("blobs", True, "the samples' payloads",
             "samples whose payloads are not there cannot be re-embedded or shown"),
    DataPart("index", True, "the index snapshots", "the agent rebuilds the index from state.sqlite"),
    DataPart("map", True, "the pool maps", "the agent draws the maps again"),
)


def _kind(path: Path) -> str:
    """What ``path`` is, in words: "a folder", "a file" or "neither a file nor a folder (...)"."""
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    return "neither a file nor a folder (a broken link, a socket or a device)"


def part_problem(data_dir: Path, part: DataPart) -> str | None:
    """Why ``part`` of ``data_dir`` cannot be used (it exists but is of the wrong kind), with what to do; None when
    it is missing (the agent creates it) or of the right kind."""
    path = data_dir / part.name
    if not os.path.lexists(path) or (path.is_dir() if part.folder else path.is_file()):
        return None
    kind = _kind(path)
    thing = kind[2:] if kind in ("a file", "a folder") else "thing"
    return (f"{path} should be {'a folder' if part.folder else 'a file'} ({part.holds}) but is {kind}: the data folder "
            f"is damaged or not a Shortlist data folder; restore it from a backup (`shortlist restore`), or move "
            f"that {thing} away ({part.moved}), or give --data-dir another folder")


def check_parts(data_dir: Path, blobs: bool) -> None:
    """DataFolderError naming the first part of ``data_dir`` of the wrong kind (``DATA_PARTS``); ``blobs``: the
    payload folder is used (no --no-blobs)."""
    for part in DATA_PARTS:
        if part.name == "blobs" and not blobs:
            continue
        if (problem := part_problem(data_dir, part)) is not None:
            kind = errno.EISDIR if (data_dir / part.name).is_dir() else errno.ENOTDIR
            raise DataFolderError(kind, problem)


def start_disk_full(data_dir: Path, e: BaseException, min_free_bytes: int) -> str | None:
    """What ``serve`` says when its start failed with ``e`` because the data folder's disk is full: SQLite's
    "database or disk is full" (a migration, a write at start) or ENOSPC, or an I/O error while its disk has
    little space left (SQLite reports a -wal or -shm file it cannot create as "disk I/O error"); None for
    anything else. The folder is intact then: a start writes nothing outside a transaction, and each schema
    upgrade step is one (``State._open_schema``), rolled back when it cannot finish."""
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        return None
    if isinstance(e, sqlite3.Error):
        name = (getattr(e, "sqlite_errorname", "") or "").upper()
        text = str(e).lower()
        full = name == "SQLITE_FULL" or "disk is full" in text
        io = name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "disk i/o error" in text
        what = f"SQLite: {e}"
    elif isinstance(e, OSError):
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        io = e.errno == errno.EIO
        what = e.strerror or str(e)
    else:
        return None
    if not (full or (io and free < max(min_free_bytes, MIB))):
        return None
    return (f"the disk of the data folder {data_dir} is full ({free / MIB:.1f} MiB free; {what}): free space "
            "there and start the agent again. Nothing was lost: the folder is intact (a schema upgrade step "
            "that could not finish was rolled back; the next start goes on from there)")


# Below this much free space GetStatus says the data folder is full, not that it will be (a full disk left a few
# KiB free; one Ingest request may hold up to 16 MiB of samples).
FULL_BELOW_BYTES = MIB


def storage_warnings(data_dir: Path, min_free_bytes: int) -> list[str]:
    """GetStatus warnings about the data folder's file system: read-only (a read-only mount, or permissions
    that no longer let the agent's user write the folder, its blobs or its database), or little space left.
    Nothing is written: the permissions are asked with access(2), a few system calls per GetStatus."""
    stats = []
    for folder in (data_dir, data_dir / "blobs"):
        try:
            stats.append((folder, os.statvfs(folder)))
        except OSError:
            continue
    for folder, st in stats:
        if st.f_flag & os.ST_RDONLY:
            return [f"the data folder {folder} is read-only: Ingest, SubmitLabels and model swaps fail with "
                    "FAILED_PRECONDITION (reads and Select keep working); remount it read-write"]
    effective = os.access in os.supports_effective_ids  # the agent's effective user, as a write is checked
    for path, bits in ((data_dir, os.W_OK | os.X_OK), (data_dir / "blobs", os.W_OK | os.X_OK),
                       (data_dir / "state.sqlite", os.W_OK)):
        if path.exists() and not os.access(path, bits, effective_ids=effective):
            # SQLite writes through the files it opened before the permissions changed (chmod does not reach an
            # open file), so labels are still stored; new payloads and model files need new files, which fail.
            return [f"the data folder {data_dir} is read-only: its permissions do not let the agent's user write "
                    f"{path}, so Ingest of new samples and model swaps fail with FAILED_PRECONDITION (reads and "
                    "Select keep working); SubmitLabels is still stored while the database files the agent "
                    "holds open stay writable, but the agent will not start again on this folder; give the "
                    "agent's user write permission on the folder and what it holds (e.g. chmod -R u+w), or run "
                    "the agent as its owner"]
    for folder, st in stats:
        free = st.f_bavail * st.f_frsize
        if free < FULL_BELOW_BYTES:  # a request of samples or a model swap needs more than this
            return [f"the data folder {folder} is full ({free / 2**20:.1f} MiB free): Ingest, SubmitLabels and "
                    "model swaps fail now with RESOURCE_EXHAUSTED (reads and Select keep working); free space there"]
        if free < min_free_bytes:
            return [f"the data folder {folder} has {free / 2**20:.1f} MiB free (warning below "
                    f"{min_free_bytes / 2**20:.0f} MiB): when it is full, Ingest, SubmitLabels and model swaps "
                    "fail with RESOURCE_EXHAUSTED (reads and Select keep working); free space there"]
    return []


class Agent:
    """State, blobs and the model manager of one data folder."""

    def __init__(self, config: AgentConfig) -> None:
        data_dir = config.data_dir
        # Refused before the probe, the chmod and the lock (State refuses it too, but only after those): a refused
        # unfinished copy is left exactly as it was (an agent.lock was left inside it).
        if (unfinished := unfinished_copy(data_dir)) is not None:
            raise StateCorruptError(unfinished)
        check_writable(data_dir)  # a clear message for a read-only or full folder
        check_parts(data_dir, config.blobs)  # and for a part of it of the wrong kind (a file named blobs)
        owner_only_dir(data_dir)  # 0700: only the agent's user can read anything inside
        self.folder_lock = DataDirLock(data_dir)  # one agent per folder; DataDirLocked otherwise
        # Whatever fails from here on (a blob folder that is a file, a broken model...) undoes what was opened, in
        # reverse: else the lock stays held, and this process's next Agent is refused as in use by another agent.
        with contextlib.ExitStack() as undo:
            undo.callback(self.folder_lock.release)
            self._open(config, undo)
            undo.pop_all()  # opened: ``close`` undoes it from now on

    def _open(self, config: AgentConfig, undo: contextlib.ExitStack) -> None:
        """Open everything but the lock: the lanes, the state, the blobs, the model manager and the rest, each
        pushed on ``undo`` as it opens (the caller unwinds it if a later step raises)."""
        data_dir = config.data_dir
        self.config = config
        self.limits = config.limits
        work = config.work
        self._open_lanes(work, undo)
        self.data_dir = data_dir
        self.models = config.models
        self.version = (package_version(), git_commit())  # GetStatus's agent_version, agent_commit
        allow_pixels(config.limits.max_pixels)
        self.state = State(data_dir / "state.sqlite", None if config.classes is None else list(config.classes),
                           check=config.state_check)
        undo.callback(self.state.close)
        # The method and calibration of the last calibrated PriorLabels answered, for GetStatus's warning
        # while its confidences cannot be trusted (``status``); None before any. Kept in the state's meta
        # table, so a restart does not silence the warning until the next PriorLabels.
        self.last_prior_fit: tuple[str, TemperatureFit] | None = self._stored_prior_fit()
        # The recorded Selects of uniform strategies (audit, random) without a where filter, each as its seqs
        # in the order drawn: the uniform draws whose labels the calibration fits on (uniform_seqs).
        self._draws_lock = threading.Lock()
        # Held by DeleteSamples from its commit to the caches' clearing, and by Select from the check that its
        # picks still exist to its record and cache entry: a deletion commits wholly before a Select records
        # (whose picks then leave out the deleted samples) or after (it then finds the record and rewrites it).
        self._deleting = threading.Lock()
        # Selects in flight by their cache key: an identical Select that arrives while one runs waits for it
        # and answers its recorded selection rather than computing and recording it again (``_single_flight``).
        # The lock guards the dict only, so different Selects never wait on each other here.
        self._select_flights: dict[Hashable, SelectFlight] = {}
        self._select_flights_lock = threading.Lock()
        self._draws: list[tuple[str, np.ndarray]] = self._recorded_draws()
        self._counted_draws = CountedDraws()  # their counted picks, kept up to date (counted_seqs)
        self._recorded_since_prune = PRUNE_EVERY  # prune at the first record after a start
        if self.state.get_meta(INDEX_STALE_KEY) == "1":
            # A deletion since the last start (the flag is set in its transaction and stays set until here) left
            # gaps in the stored rows, renumbered now, and rows marked deleted in the snapshots: those no longer
            # match, and the graphs are rebuilt from the stored embeddings as they load. Without a deletion
            # there are no gaps, and the renumbering's check, a scan of every stored vector, is not made.
            self.state.compact_embeddings()
            shutil.rmtree(data_dir / "index", ignore_errors=True)
            self.state.set_meta(INDEX_STALE_KEY, "0")
        self.blobs = BlobStore(data_dir / "blobs") if config.blobs else None
        if self.blobs is not None:  # before anything serves: no Ingest is writing blobs
            swept = self.blobs.sweep(self.state.payload_digests())
            if swept:
                log.info("removed %d stored payload(s) that no sample names (written by an Ingest that stopped "
                         "before its commit)", swept)
        self.manager = ModelManager(config, self.state, self.blobs, on_classes=self._adopt_manifest_classes)
        undo.callback(self.manager.stop)
        self.ingest = IngestPipeline(self.state, self.blobs, self.manager, config.limits, self.decode_work,
                                     work.large_image_pixels)
        self.auditor = PriorAuditor(config.audit, self.state.audit_seqs, self.state.labels_by_seq, self._audit_pool,
                                    self._id_of, self._served_version, self.work,
                                    background=config.background, counted=self.audit_counted,
                                    accepted=self.state.accepted_prior_seqs)
        undo.callback(self.auditor.stop)
        self.queues = Queues(self.state, config.limits)
        self.images = Images(self.state, self.blobs, config.images, config.limits.max_message_bytes,
                             config.limits.max_pixels, self.decode_work, work.large_image_pixels,
                             check_ids=self.check_read_ids)
        self.manager.start(background=config.background)
        self.map = PoolMap(config.map, data_dir / "map", self._serving_view)
        if config.background:
            self.map.start()

    def _open_lanes(self, work: WorkConfig, undo: contextlib.ExitStack) -> None:
        """The admission lanes (heavy, light, light PriorLabels, large decodes), each pushed on ``undo``, and
        the Select and PriorLabels answer caches, sized by ``work``."""
        # Heavy work runs in the lane's own threads, at a lower priority and with one OpenMP thread, so
        # light calls get a core at once (agent/admission.py, LaneThreads; docs/reliability.md, Load).
        self.work = Admission(work.max_concurrent, work.max_queued, threads=work.heavy_threads,
                              max_wait_s=work.max_queue_wait_s)
        self.light_work = Admission(work.light_max_concurrent, work.light_max_queued, lane="light")
        # Light PriorLabels (knn for a few ids: ~0.3 CPU s at 50,000 rows and 5,000 labels, mostly its
        # calibration) get a lane of the same size of their own, so light Selects (random, margin: tens of
        # ms) never queue behind them (docs/reliability.md, Load).
        self.light_prior_work = Admission(work.light_max_concurrent, work.light_max_queued, lane="light",
                                          threads=work.light_prior_threads)
        self.decode_work = Admission(work.decode_max_concurrent, work.decode_max_queued, lane="decode")
        for lane in (self.work, self.light_work, self.light_prior_work, self.decode_work):
            undo.callback(lane.shutdown)
        # Select: (chosen ids and scores, details, the recorded selection's id or ""); PriorLabels: (probs,
        # confidence, calibration).
        self.select_cache: LruCache[SelectCached] = LruCache(
            work.cache_entries, work.cache_rows)
        self.prior_cache: LruCache[tuple[np.ndarray, np.ndarray, TemperatureFit | None]] = LruCache(
            work.cache_entries, work.cache_rows)

    def _id_of(self, seq: int) -> str:
        """Sample ``seq``'s id, "" once deleted (a pool read before a DeleteSamples may still hold its seq)."""
        rec = self.state.lookup_seq(seq)
        return "" if rec is None else rec.id

    def _stored_prior_fit(self) -> tuple[str, TemperatureFit] | None:
        """The last calibrated PriorLabels' method and fit as ``_note_prior_fit`` stored them; None when none
        was stored or it cannot be read (written by another version: the next PriorLabels stores it again)."""
        text = self.state.get_meta(LAST_PRIOR_FIT_KEY)
        if text is None:
            return None
        try:
            stored = json.loads(text)
            return str(stored["method"]), TemperatureFit(**stored["fit"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the stored last prior fit (%s): %s", e, text[:200])
            return None

    def _note_prior_fit(self, method: str, fit: TemperatureFit) -> None:
        """Remember the calibration a PriorLabels answered with, durably when it changed (one small write;
        the same request again writes nothing). A full or read-only disk keeps it in memory only: PriorLabels
        answers whatever the disk (docs/agent.md, failure table), and a restart then shows the last stored."""
        if self.last_prior_fit == (method, fit):
            return
        self.last_prior_fit = (method, fit)
        try:
            self.state.set_meta(LAST_PRIOR_FIT_KEY, json.dumps({"method": method, "fit": asdict(fit)}))
        except Exception as e:
            stored = storage_problem(e)
            if stored is None:
                raise
            log.warning("the last prior fit is kept in memory only: %s", stored.message)

    def _recorded_draws(self) -> list[tuple[str, np.ndarray]]:
        """(strategy, seqs in the order drawn) of every recorded Select of a uniform strategy
        (``StrategyEntry.uniform``) without a where filter (a random Select lost to a power loss before its
        commit is not among them: its labels then count as chosen, the cautious side; an audit draw so lost
        is still in the audit table, ``counted_seqs``)."""
        return [(str(request.get("strategy")), np.array(self._draw_seqs(str(r[0]) for r in result), np.int64))
                for _, request, result, _ in self.state.selections()
                if uniform_request(request)]

    def _draw_seqs(self, ids: Iterable[str]) -> list[int]:
        """The seqs of a recorded draw's picks, in order; 0 (never labelled) for a pick whose sample was
        deleted (its id "" in the record): it keeps its place in the draw, as in memory after the deletion,
        so the draw counts its labels as it did (the cautious side: a gap), and an id ingested again later is
        a new sample the draw never drew."""
        return [rec.seq if rec is not None else 0 for rec in (self.state.lookup(i) if i else None for i in ids)]

    def _seqs_of(self, ids: Iterable[str]) -> list[int]:
        """The seqs of the stored samples among ``ids``, in order."""
        return [rec.seq for rec in (self.state.lookup(i) for i in ids) if rec is not None]

    def uniform_seqs(self) -> np.ndarray:
        """Seqs of the labelled samples whose labels are a uniform sample of the pool, ascending: picks of the
        audit and of other uniform strategies (random) without a where filter, counted per draw by
        ``counted_labels`` (the dense stretches of the draw, in the order drawn, from its start or any pick on,
        wrapping round). The calibration fits its temperature on them once enough count (``Pool.audit``,
        agent/priors/calibration.py)."""
        return self.counted_seqs(audit_only=False)

    def audit_counted(self) -> np.ndarray:
        """``uniform_seqs`` of the audit's draws alone: the labels the accuracy audit scores (agent/audit.py)."""
        return self.counted_seqs(audit_only=True)

    def counted_seqs(self, audit_only: bool) -> np.ndarray:
        """The counted labelled picks (``counted_labels``) of every uniform draw, or of the audit's only. An
        audit draw whose Select record a power loss took (in the audit table, order unknown) counts its
        labelled picks all. Costs O(pool) plus the draws whose picks' labels changed since the last call
        (``CountedDraws``), not O(every pick ever drawn)."""
        labels = self.state.labels_by_seq()
        audit = self.state.audit_seqs()
        with self._draws_lock:
            counter = self._counted_draws  # (a deletion replaces it)
            fresh = self._draws[len(counter):]
            for strategy, order in fresh:  # under the lock: added once each, in the order recorded
                counter.add(strategy, order)
        return counter.counted(labels, audit, audit_only)

    def uniform_labelled(self) -> int:
        """How many labels count as uniform draws now (``uniform_seqs``) but the accepted priors among them,
        which the temperature fit leaves out (agent/priors/calibration.py, "Accepted priors"): the count the
        fit's ``audit_labels`` is compared with (``calibration_warning``), which does not count them either."""
        return len(np.setdiff1d(self.uniform_seqs(), self.state.accepted_prior_seqs(), assume_unique=True))

    def _served_version(self) -> str:
        serving = self.manager.current
        return "" if serving is None else serving.version

    def _audit_pool(self) -> tuple[Pool, np.ndarray, str] | None:
        serving = self.manager.current
        if serving is None:
            return None
        pool, seqs = self.model_pool(serving, {})
        return pool, seqs, serving.version

    def close(self) -> None:
        t0 = time.monotonic()
        self.auditor.stop()
        self.work.shutdown()  # cancels heavy work still running (it stops at its next checkpoint)
        self.light_work.shutdown()
        self.light_prior_work.shutdown()
        self.decode_work.shutdown()
        t1 = time.monotonic()
        try:
            self.map.stop()
            t2 = time.monotonic()
            self.manager.stop()
            t3 = time.monotonic()
            self.state.close()
        finally:
            self.folder_lock.release()
        log.info("close: auditor and lanes %.2f s, pool map %.2f s, model manager %.2f s, state %.2f s",
                 t1 - t0, t2 - t1, t3 - t2, time.monotonic() - t3)

    def _adopt_manifest_classes(self, manifest: Manifest) -> None:
        """With no class list yet (no --classes, no label), a model's class names become the closed list (so
        its logits apply). Not once labels were given on an open list: a model fine-tuned by ``shortlist
        cycle`` names the classes labelled so far, which need not be all of them (closing the list to them
        would refuse the next new class). A model whose classes are not the agent's list: GetStatus says
        its logits are not used and how to make them so (``class_warning``)."""
        if manifest.classes and not self.state.classes and not self.state.closed:
            self.state.set_closed_classes(list(manifest.classes))

    def class_warning(self, ours: list[str]) -> str:
        """GetStatus's note when the serving model names classes other than ``ours``, the agent's list
        (``pool_classes``): its logits are then not used (Select's uncertainty strategies fit a head on the
        labels instead); or when they are ours but only one (a model fine-tuned on one labelled class): the
        strategies that need class probabilities refuse (agent/strategies/uncertainty.py ``usable_logits``).
        "" otherwise."""
        serving = self.manager.current
        if serving is None or not serving.embedder.classes:
            return ""
        theirs = list(serving.embedder.classes)
        if theirs == ours:
            if len(theirs) >= 2:
                return ""
            return (f"model {serving.version}'s classifier knows one class ({quoted(theirs[0])}): the strategies that "
                    f"need class probabilities ({', '.join(sorted(set(STRATEGIES) - LABEL_FREE))}) refuse until "
                    "another class is labelled; label samples of another class and train a new model (`shortlist "
                    f"cycle`); meanwhile select with one that works without a classifier: "
                    f"{', '.join(sorted(LABEL_FREE))}")

        def shown(names: list[str]) -> str:
            return ", ".join(quoted(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")

        fix = (self._open_list_fix(theirs, ours) if not self.state.closed else
               "publish a model trained on this class list (same names, same order)")
        return (f"model {serving.version} names the classes [{shown(theirs)}] but the agent's class list is "
                f"[{shown(ours)}]: its logits are not used (Select's uncertainty strategies fit a linear head on the "
                f"labelled samples instead); {fix}")

    @staticmethod
    def _open_list_fix(theirs: list[str], ours: list[str]) -> str:
        """class_warning's fix on an open list: a restart with --classes in the model's order only when every
        class a current label uses (``ours``) is one of the model's (else the agent refuses to start so)."""
        cycle = "publish a model trained on these labels (`shortlist cycle`)"
        unknown = [c for c in ours if c not in theirs]
        if not unknown:
            return f"{cycle}, or, when the model's are all the classes, restart the agent with --classes " \
                   + ",".join(theirs)
        shown = ", ".join(quoted(c) for c in unknown[:12]) + (" ..." if len(unknown) > 12 else "")
        return (f"{cycle}; the labels use {shown}, which the model does not name, so a restart with the "
                "model's classes (--classes) would be refused")

    # ---- Labels ----------------------------------------------------------------------------------
    def _item_sample(self, sid: str, rejected: list[Rejected],
                     item_problem: Problem | None = None) -> SampleRecord | None:
        """The sample a SubmitLabels / RetractLabels item names, or None with its rejection appended: an id
        too long, then ``item_problem`` (the item's other field, e.g. a label too long), then an empty or
        unknown id."""
        too_long = text_problem(sid, self.limits.max_id_chars, "max_id_chars", "id")
        problem = Problem(agent_pb2.REJECTION_CODE_ID_TOO_LONG, too_long) if too_long is not None else item_problem
        if problem is not None:
            rejected.append(problem.of(rejection_id(sid, self.limits.max_id_chars)))
            return None
        rec = self.state.lookup(sid) if sid else None
        if rec is None:
            rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_INVALID_ID, "empty id") if not sid else
                            Rejected(sid, agent_pb2.REJECTION_CODE_UNKNOWN_ID,
                                     f"unknown id {quoted(sid)}: {self._unknown_id_hint(sid) or 'ingest it first'}"))
        return rec

    def _unknown_id_hint(self, sid: str) -> str:
        """For an unknown id that differs from a stored one only in Unicode form (an NFD file name from macOS
        ingested, the NFC one from a CSV sent, which look the same): which form each is and what to send;
        else "". Likewise for an id with white space at an end whose stripped form is stored (a CSV column
        padded, a name pasted with a blank). ``State.unicode_variant``: no scan of the ids."""
        stripped = sid.strip()
        if stripped != sid and stripped and self.state.lookup(stripped) is not None:
            return (f"{quoted(stripped[:64])} is stored: the id sent has white space at an end (ids are compared "
                    "exactly, byte for byte): send it without")
        stored = self.state.unicode_variant(sid)
        if stored is None:
            return ""
        form = _unicode_form(stored)
        how = f"normalised to {form}" if form != "mixed" else "exactly (ListSamples lists it)"
        return (f"a stored id differs from it only in Unicode form (stored {form}, sent {_unicode_form(sid)}; ids "
                f"are compared exactly, byte for byte): send the id as stored, {how}")

    def check_read_ids(self, ids: Sequence[str], what: str) -> None:
        """The ``ids`` of a read (PriorLabels, ListSamples, GetImages: ``what``): InvalidArgument for an empty id
        (no sample can have one, as the writes' INVALID_ID says), NotFound for unknown ones (``_unknown_ids``:
        what to do, and a hint where a stored id differs only in Unicode form or white space at its ends)."""
        if "" in ids:
            raise InvalidArgument(f"an empty id in the {what} request's ids (at {list(ids).index('')}): no sample "
                                  "has one; give the ids of stored samples")
        unknown = [i for i in ids if self.state.lookup(i) is None]
        if unknown:
            raise NotFound(f"{self._unknown_ids(unknown)}; ingest them first, or ask for stored ids (ListSamples "
                           "without ids lists them)")

    def _unknown_ids(self, unknown: Sequence[str]) -> str:
        """NotFound's list of unknown ids (the first 5), and the hint for the first of them that has one
        (``_unknown_id_hint``: Unicode form, white space)."""
        shown = ", ".join(quoted(u[:64]) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        hint = next(((u, h) for u in unknown[:100] if (h := self._unknown_id_hint(u))), None)
        return (f"{len(unknown)} unknown id(s): {shown}"
                + ("" if hint is None else f" ({quoted(hint[0][:64])}: {hint[1]})"))

    def _check_label_call(self, items: Sized, what: str, annotator: str, source: str) -> None:
        """The request-wide checks of SubmitLabels and RetractLabels (InvalidArgument / limits)."""
        lim = self.limits
        check_count(items, lim.max_ids_per_request, "max_ids_per_request", what)
        check_text(annotator, lim.max_label_chars, "max_label_chars", "annotator name")
        # as class names: a newline or a terminal escape in a name would reach other users' terminals and logs
        problem = name_problem(annotator, "annotator name")
        if problem is not None:
            raise InvalidArgument(problem)
        problem = source_problem(source)
        if problem is not None:
            raise InvalidArgument(problem)

    def _given_by_another(self, rec: SampleRecord, annotator: str) -> str | None:
        """Who gave ``rec``'s current label ("" when none; not who renamed its class: ``State.label_giver``),
        unless it was ``annotator`` (then None)."""
        giver = self.state.label_giver(rec.seq)
        by = giver[0] if giver is not None else ""
        return None if by == stored_annotator(annotator) else by

    def _own_retraction(self, rec: SampleRecord, annotator: str) -> str:
        """For an unlabelled ``rec`` that RetractLabels is asked to unlabel: a note when its label was last
        taken back by this request's ``annotator`` (a resend of a retraction that was applied), else ""."""
        history = self.state.label_history(rec.seq)
        if history and not history[-1][0] and history[-1][1] == stored_annotator(annotator):
            return (f" (already taken back by this request's annotator, {annotator_name(history[-1][1])}: a resend "
                    "of a request that was applied changes nothing)")
        return ""

    def _note_replaced(self, rec: SampleRecord, label: str, annotator: str, replaced: list[Replaced]) -> None:
        """Add ``rec``'s current ``label`` to ``replaced`` if another annotator than ``annotator`` gave it."""
        if (by := self._given_by_another(rec, annotator)) is not None:
            replaced.append(Replaced(rec.id, label, by))

    def _changed_meanwhile(self, rec: SampleRecord, current: int, expected: str | None,
                           annotator: str = "") -> Rejected | None:
        """The rejection of a conditional write on ``rec`` whose current label (class index, -1 = none) is not
        the ``expected`` one (None: no condition): the reason, and ``now`` = (that label, who gave it: after a
        class rename, who gave the label the rename moved, as ListLabels names it; for an unlabelled sample, who
        took its label back). When the request's own ``annotator`` gave it (e.g. a resend of a request that was
        applied, its reply lost), the reason says so instead of blaming a change "meanwhile"."""
        now = self.state.class_name(current) if current >= 0 else ""
        if expected is None or now == expected:
            return None
        history = self.state.label_history(rec.seq)
        giver = self.state.label_giver(rec.seq)
        by = giver[0] if giver is not None else ""
        last = self.state.last_label_by(rec.seq)
        renamer = last[0] if now and last is not None and last[1] == RENAME_SOURCE else None  # the latest change
        conflict = agent_pb2.REJECTION_CODE_CONFLICT  # every rejection below
        was = f"expected {quoted(expected)}" if expected else "expected unlabelled"
        me = stored_annotator(annotator)
        if (now and len(history) >= 2 and not history[-2][0] and history[-2][1] == me
                and last == (by, RESTORE_SOURCE)):
            # this annotator's undo (restore_previous) put the label back: a resend of it, not a change meanwhile
            return Rejected(rec.id, conflict, f"labelled {quoted(now)} again ({annotator_name(by)}'s label, put back "
                                              f"by an undo of this request's annotator, {annotator_name(me)}) already "
                                              f"({was}): not changed; if this resends a request that was applied, "
                                              "nothing is left to do, else look again", (now, by))
        if history and by == me and renamer is None:
            now_is = f"labelled {quoted(now)}" if now else "unlabelled (its label taken back)"
            return Rejected(rec.id, conflict, f"{now_is} by this request's annotator ({annotator_name(by)}) already "
                                              f"({was}): not changed; if this resends a request that was applied, "
                                              "nothing is left to do, else look again", (now, by))
        who = f" by {annotator_name(by)}" if by else ""
        if renamer is not None:  # the label is the giver's, under the name a rename gave its class
            who += f", its class renamed by {annotator_name(renamer)}"
        now_is = f"labelled {quoted(now)}{who}" if now else f"unlabelled (its label taken back{who})" if history \
            else "unlabelled"
        return Rejected(rec.id, conflict, f"{now_is} meanwhile ({was}): not changed; look again and resend",
                        (now, by))

    def submit_labels(self, labels: Sequence[tuple[str, str]], annotator: str, source: str = "",
                      if_current: Mapping[str, str] | None = None,
                      replaced: list[Replaced] | None = None,
                      agreed: list[tuple[str, tuple[str, str]]] | None = None,
                      twin_conflicts: list[tuple[str, str, str]] | None = None) -> tuple[int, list[Rejected]]:
        """Record (id, label) pairs durably, with who gave them and how (``source``, "" = "manual") and
        the model version served now; per-item rejections for unknown ids / labels, a new class name
        that would look like another (``name_problem``), an id listed twice (its second item) and, for an
        id in ``if_current``, a current label other than the one given there ("" = unlabelled) and other
        than the new label (a concurrent annotator's; optimistic concurrency). A label that is the sample's
        current one, last given by the same annotator through the same source, is accepted without a new
        history row: a client that resends after a lost reply changes nothing. ``replaced``, when given,
        gets the stored labels' previous labels that another annotator gave (Replaced; last write wins
        unless ``if_current`` says otherwise, and the caller can say so). ``agreed``, when given, gets
        (id, (label, who gave it)) for each accepted item of ``if_current`` whose sample already had the new
        label, given by someone else, though the caller expected another one (an agreement with a label the
        caller had not seen). ``twin_conflicts``, when given, gets (id, twin id, twin's label) for each accepted
        item and each sample byte-identical to it (State.payload_twins) whose label, counting this request's
        items before it, differs from the new one: stored all the same, the caller can warn."""
        lim = self.limits
        self._check_label_call(labels, "labels", annotator, source)
        rejected: list[Rejected] = []
        good: list[tuple[int, int]] = []
        seen: set[int] = set()
        unchanged = 0
        given: dict[int, str] = {}  # seq -> the label this request gives it (for twin_conflicts)
        with self.manager.writing() as serving:
            for sid, label in labels:
                # Ingest's check (one function): a refused name before the id, a closed list's lack of it after
                # the item's id and condition are judged (as before: a conflict or a resend is said first)
                refusal = label_refusal(self.state, label)
                too_long = text_problem(label, lim.max_label_chars, "max_label_chars", "label")
                problem = (Problem(agent_pb2.REJECTION_CODE_INVALID_LABEL, too_long) if too_long is not None
                           else None if refusal is None or refusal.unlisted else refusal.problem)
                rec = self._item_sample(sid, rejected, problem)
                if rec is None:
                    continue
                if not label:
                    rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_INVALID_LABEL, "empty label"))
                    continue
                if rec.seq in seen:  # which of the two was meant is the caller's to say
                    rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_DUPLICATE_IN_REQUEST,
                                             "listed twice in this request: send one label per sample"))
                    continue
                seen.add(rec.seq)
                current = self.state.label_index(rec.seq)
                same = current >= 0 and label == self.state.class_name(current)
                expected = (if_current or {}).get(sid)
                if not same and (conflict := self._changed_meanwhile(rec, current, expected, annotator)):
                    rejected.append(conflict)
                    continue
                if (same and expected is not None and expected != label and agreed is not None
                        and (by := self._given_by_another(rec, annotator)) is not None):  # not the caller's resend
                    agreed.append((sid, (label, by)))
                if same and self.state.last_label_by(rec.seq) == (stored_annotator(annotator),
                                                                  source or MANUAL_SOURCE):
                    unchanged += 1  # a resend (a retry after a lost reply): already stored, no second row
                    self._note_twin_conflicts(rec, label, given, twin_conflicts)
                    continue
                if refusal is not None:  # unlisted: the closed class list lacks it
                    rejected.append(refusal.problem.of(sid))
                    continue
                idx = self.state.class_index(label)
                assert idx is not None  # (label_refusal: a closed list holds it)
                good.append((rec.seq, idx))
                self._note_twin_conflicts(rec, label, given, twin_conflicts)
                if replaced is not None and current >= 0 and not same:  # a label over another one
                    self._note_replaced(rec, self.state.class_name(current), annotator, replaced)
            if good:
                self.state.add_labels(good, stored_annotator(annotator), source or MANUAL_SOURCE,
                                      "" if serving is None else serving.version)
        return len(good) + unchanged, rejected

    def _note_twin_conflicts(self, rec: SampleRecord, label: str, given: dict[int, str],
                             out: list[tuple[str, str, str]] | None) -> None:
        """SubmitLabels' accepted ``label`` for ``rec``: (id, twin id, twin's label) into ``out`` for each
        byte-identical sample labelled otherwise (its label in this request, ``given``, else its current one);
        then ``given`` records this one."""
        given[rec.seq] = label
        if out is None:
            return
        for q in self.state.payload_twins(rec.seq):
            now = given.get(q)
            if now is None:
                now = self.state.label_name(q)
            if now and now != label:
                out.append((rec.id, self.state.record(q).id, now))

    def retract_labels(self, ids: Sequence[str], annotator: str, source: str = "",
                       if_current: Mapping[str, str] | None = None,
                       replaced: list[Replaced] | None = None,
                       restore_previous: bool = False) -> tuple[int, list[Rejected]]:
        """Make the samples ``ids`` unlabelled, durably, recording who took the labels back and how
        (``source``, "" = "manual"); per-item rejections for unknown, unlabelled or repeated ids, and for an
        id in ``if_current`` whose current label is not the one given there (changed meanwhile).
        ``replaced``, when given, gets the labels taken back that another annotator gave (Replaced).
        ``restore_previous``: an undo of the latest label row instead: after the retraction, the label row
        before it is put back in the name of whoever gave it (``_restorable``), in the same transaction; a
        sample whose row before was a retraction, or that had none, stays unlabelled."""
        self._check_label_call(ids, "ids", annotator, source)
        stray = sorted(set(if_current or {}) - set(ids))
        if stray:  # a condition on nothing: the caller meant another request
            shown = ", ".join(quoted(i[:64]) for i in stray[:5]) + (" ..." if len(stray) > 5 else "")
            raise InvalidArgument(f"if_current names ids that are not in ids: {shown}; give each condition with "
                                  "its id in ids")
        rejected: list[Rejected] = []
        good: list[int] = []
        restore: list[tuple[int, int, str]] = []
        seen: set[int] = set()
        with self.manager.writing() as serving:
            labels = self.state.labels_by_seq()
            for sid in ids:
                rec = self._item_sample(sid, rejected)
                if rec is None:
                    continue
                if rec.seq in seen:
                    rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_DUPLICATE_IN_REQUEST,
                                             "listed twice in this request"))
                elif conflict := self._changed_meanwhile(rec, int(labels[rec.seq]), (if_current or {}).get(sid),
                                                         annotator):
                    rejected.append(conflict)
                elif labels[rec.seq] < 0:
                    rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_NOT_LABELLED,
                                             "not labelled: nothing to retract" + self._own_retraction(rec, annotator)))
                elif restore_previous and isinstance(back := self._restorable(rec), str):
                    rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_CANNOT_RESTORE, back))
                else:
                    good.append(rec.seq)
                    seen.add(rec.seq)
                    if restore_previous and back is not None:
                        restore.append((rec.seq, *back))
                    if replaced is not None:
                        self._note_replaced(rec, self.state.class_name(int(labels[rec.seq])), annotator, replaced)
            if good:
                self.state.retract_labels(good, stored_annotator(annotator), source or MANUAL_SOURCE,
                                          "" if serving is None else serving.version, restore)
        return len(good), rejected

    def _restorable(self, rec: SampleRecord) -> tuple[int, str] | str | None:
        """What RetractLabels with restore_previous puts back on labelled ``rec``: (class index, who gave it)
        of the label row before its latest one; None (unlabelled) when that row is a retraction or there is
        none; a rejection's reason when its class cannot be given now (a name the closed class list dropped).
        A class renamed since (RenameClass) comes back under its new name, as the rename moved its labels."""
        before = self.state.label_before_last(rec.seq)
        if before is None or before[0] < 0:
            return None
        name = self.state.class_name(before[0])
        name = self.state.renamed.get(name, name)
        if name not in self.state.classes:
            return (f"the label before the latest one, {quoted(name)}, is no class of the closed class list now: not "
                    "put back; retract without restore_previous, or label it with a class of the list")
        return self.state.classes.index(name), before[1]

    def delete_samples(self, ids: Sequence[str], annotator: str, reason: str,
                       before_commit: Callable[[], None] | None = None,
                       before_blobs: Callable[[], None] | None = None) -> tuple[int, list[Rejected], int]:
        """Delete the samples ``ids`` for good (docs/agent.md, "Deleting samples"): in one durable transaction
        (``State.delete_samples``), then out of the served and pending indexes, the recorded draws and the
        caches; then their payload files, unless another sample holds the same bytes. Per-item rejections for
        unknown and repeated ids. (deleted, rejections, payload files removed). ``before_commit`` and
        ``before_blobs``: test hooks (a failure inside the transaction; one between the commit and the
        removal of the files, whose files the next start's sweep removes)."""
        self._check_label_call(ids, "ids", annotator, "")
        check_text(reason, self.limits.max_metadata_chars, "max_metadata_chars", "reason")
        # Nothing to delete (every id unknown, or deleted already: a resend): answered at once, without waiting
        # for a backup that holds the blobs' lock (minutes; for ever if it is suspended). Judged again below,
        # under the locks: a sample stored meanwhile is deleted as if the call had come after it.
        good, rejected = self._deletable(ids)
        if not good:
            return 0, rejected, 0
        # The blobs' removal lock first (it waits while a backup links the payloads its state copy names), then
        # the queues' lock (no UpdateQueue writes a queue read before the deletion took its ids out) and the
        # write lock: waiting for a backup under the write lock held up every label and Ingest meanwhile.
        with (self.blobs.removing() if self.blobs is not None else contextlib.nullcontext()), \
                self.queues.lock, self.manager.writing() as serving:
            good, rejected = self._deletable(ids)
            if not good:  # deleted by another call while this one waited
                return 0, rejected, 0
            with self._deleting:
                digests = self.state.delete_samples(good, stored_annotator(annotator), reason, before_commit)
                self.manager.drop_samples(good)  # no GetStatus warning names them as unembeddable any more
                _, _, pending = self.manager.progress()
                for index in {id(i): i for i in (None if serving is None else serving.index, pending)
                              if i is not None}.values():
                    index.remove(good)
                dead = np.array(good, np.int64)
                with self._draws_lock:  # as a restart reads the records: the deleted picks become seq 0
                    self._draws = [(st, np.where(np.isin(order, dead), 0, order)) for st, order in self._draws]
                    self._counted_draws = CountedDraws()
                self.select_cache.clear()
                self.prior_cache.clear()
                self.images.cache.clear()
            removed = 0
            if self.blobs is not None and digests:
                if before_blobs is not None:
                    before_blobs()
                # Under the write lock: an Ingest of the same bytes commits before (then the payload is named
                # and kept) or after (it stores the payload again first: agent/ingest.py ``store``).
                removed = self.blobs.remove_held(digests)
        log.info("deleted %d sample(s) by %r (reason %r); %d payload file(s) removed", len(good),
                 stored_annotator(annotator), reason, removed)
        return len(good), rejected, removed

    def _deletable(self, ids: Sequence[str]) -> tuple[list[int], list[Rejected]]:
        """DeleteSamples' judgement of ``ids`` now: (the seqs of the stored samples they name, once each; the
        rejections of the others, in request order). Each lookup holds the state's lock."""
        rejected: list[Rejected] = []
        good: list[int] = []
        seen: set[int] = set()
        for sid in ids:
            if sid and text_problem(sid, self.limits.max_id_chars, "max_id_chars", "id") is None \
                    and self.state.lookup(sid) is None:
                # Not "ingest it first" (SubmitLabels' advice): a resent DeleteSamples whose first send was
                # applied lands here, and the tombstones hold no ids to tell it from an id never ingested.
                hint = self._unknown_id_hint(sid)  # a Unicode-form twin: most likely not a resend
                rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_UNKNOWN_ID,
                                         f"unknown id {quoted(sid)}: {hint}" if hint else NOT_STORED))
                continue
            rec = self._item_sample(sid, rejected)
            if rec is None:
                continue
            if rec.seq in seen:
                rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_DUPLICATE_IN_REQUEST,
                                         "listed twice in this request"))
            else:
                good.append(rec.seq)
                seen.add(rec.seq)
        return good, rejected

    # ---- Pools -----------------------------------------------------------------------------------
    def rename_class(self, old: str, new: str, annotator: str) -> tuple[int, bool, list[str]]:
        """Rename (merge, when ``new`` is a class already) class ``old`` to ``new``: every label now ``old``
        becomes ``new`` in one transaction, as one history row each by ``annotator`` with source "rename" (the
        earlier rows keep who gave the label), and ``old`` is retired: SubmitLabels and Ingest refuse it
        with the new name. (labels moved, merged, the class list after: GetStatus's)."""
        lim = self.limits
        self._check_label_call((), "labels", annotator, "")
        for name, what in ((old, "from_class"), (new, "to_class")):
            if not name:
                raise InvalidArgument(f"empty {what}: give the class to rename and its new name")
            check_text(name, lim.max_label_chars, "max_label_chars", what)
        if old == new:
            raise InvalidArgument(f"from_class and to_class are both {quoted(old)}: nothing to rename")
        with self.manager.writing() as serving:
            if self.state.renamed.get(old) == new:  # a resend (a retry after a lost reply): done already, but
                # for labels of ``old`` stored after the rename (before Ingest checked under this lock): move them
                moved = self.state.move_retired_labels(old, stored_annotator(annotator),
                                                       "" if serving is None else serving.version)
                if moved:
                    self.select_cache.clear()
                    self.prior_cache.clear()
                    log.warning("class %r: %d labels stored after its rename to %r moved to it by %s", old, moved,
                                new, stored_annotator(annotator))
                return moved, False, self.pool_classes(self.state.labels_by_seq())[0]
            if (problem := self.state.renamed_problem(old)) is not None:
                raise FailedPrecondition(f"{problem.split(';')[0]} already: rename {quoted(self.state.renamed[old])} "
                                         "instead")
            if old not in self.state.classes:
                shown = ", ".join(self.pool_classes(self.state.labels_by_seq())[0][:20])
                raise NotFound(f"no class {quoted(old)} to rename; the classes: {shown or '(none yet)'}")
            others = [c for c in live_classes(self.state) if c != old]
            if (problem := new_class_problem(others, new) or (
                    None if new in self.state.renamed else near_retired_problem(self.state, new, old))) is not None:
                raise InvalidArgument(f"to_class: {problem}")
            if (became := self.state.renamed.get(new)) is not None and became != old:
                # a retired name still means the class it became (a pipeline sending it is told that class's
                # name); given to another class, it would name that one, silently: only a rename back takes it
                raise InvalidArgument(
                    f"to_class: {quoted(new)} was renamed to {quoted(became)}, and a label {quoted(new)} is refused "
                    f"naming {quoted(became)}; "
                    f"pick another name (only {quoted(became)} can take {quoted(new)} back)")
            moved, merged = self.state.rename_class(old, new, stored_annotator(annotator),
                                                    "" if serving is None else serving.version)
            # cached answers are keyed on the labels' indices, which a rename of a class without labels (or a
            # merge in a closed list) leaves as they were while the class list changes under them
            self.select_cache.clear()
            self.prior_cache.clear()
        log.info("class %r %s %r by %s: %d labels moved", old, "merged into" if merged else "renamed to", new,
                 stored_annotator(annotator), moved)
        return moved, merged, self.pool_classes(self.state.labels_by_seq())[0]

    def _where_mask(self, seqs: np.ndarray, where: Mapping[str, str]) -> np.ndarray:
        """Whether each of ``seqs`` is a stored sample (not deleted) whose metadata matches ``where``."""
        alive = self.state.alive_by_seq()
        live = np.zeros(len(seqs), bool)
        inside = seqs < len(alive)
        live[inside] = alive[seqs[inside]]
        if not where:
            return live
        items = list(where.items())
        recs = (self.state.lookup_seq(int(q)) if live[i] else None for i, q in enumerate(seqs))
        return np.array([rec is not None and all(rec.metadata.get(k) == v for k, v in items) for rec in recs], bool)

    def model_pool(self, serving: Serving, where: Mapping[str, str],
                   audit: bool = False) -> tuple[Pool, np.ndarray]:
        """The Pool under ``serving`` (rows = its index rows) and the seq of every row. ``audit``: fill
        ``Pool.audit`` with the rows whose labels count as uniform draws (``uniform_seqs``: the audit's and
        random's picks, counted per draw); only
        a calibrated prior reads them (its temperature fit, agent/priors/calibration.py), so Select, an
        uncalibrated PriorLabels and the auditor (whose ``audited_pool`` knows no draws) leave it empty and
        skip the lookup."""
        view = serving.index.view()
        labels, classes = self._pool_labels(view.seqs)
        labeled = np.flatnonzero(labels >= 0)
        candidates = np.flatnonzero((labels < 0) & self._where_mask(view.seqs, where))
        logits = view.logits if serving.embedder.classes and serving.embedder.classes == classes else None
        index = serving.index

        def knn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            if len(queries) <= KNN_BLOCK:
                return index.knn(queries, k, limit=view.n)
            parts = []
            for start in range(0, len(queries), KNN_BLOCK):
                cancel.checkpoint()
                parts.append(index.knn(queries[start:start + KNN_BLOCK], k, limit=view.n))
            return np.concatenate([r for r, _ in parts]), np.concatenate([d for _, d in parts])

        drawn = np.flatnonzero(np.isin(view.seqs, self.uniform_seqs())) if audit and view.n \
            else np.zeros(0, np.int64)
        # the accepted priors, which the calibration never holds out (Pool.accepted), read with the draws
        accepted = np.flatnonzero(np.isin(view.seqs, self.state.accepted_prior_seqs())) if audit and view.n \
            else np.zeros(0, np.int64)
        pool = Pool(embeddings=view.vecs, labeled=labeled.astype(np.int64), labels=labels[labeled],
                    classes=classes, candidates=candidates.astype(np.int64), knn=knn, logits=logits,
                    pretext_loss=view.pretext, memo=index.memo, audit=drawn.astype(np.int64),
                    accepted=accepted.astype(np.int64))
        return pool, view.seqs

    def pool_classes(self, labels_by_seq: np.ndarray) -> tuple[list[str], np.ndarray | None]:
        """The class list Pools and GetStatus give, and the map from the state's class indices to its (None
        when they are the same). ``labels_by_seq``: ``State.labels_by_seq()``. The agent's list; for an open
        list, only the classes some current label uses, in first-seen order: a class whose labels were all
        retracted (a typo taken back) is no class of the pool, so no prior gives it a share and no cycle
        trains an output for it; its next label brings it back."""
        classes = list(self.state.classes)
        if self.state.closed:
            return classes, None
        used = np.unique(labels_by_seq[labels_by_seq >= 0])
        if len(used) == len(classes):
            return classes, None
        remap = np.full(len(classes), -1, np.int64)
        remap[used] = np.arange(len(used))
        return [classes[int(i)] for i in used], remap

    def _pool_labels(self, seqs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The current label of each of ``seqs`` as an index into the pool's class list (-1 = none), and that
        list (``pool_classes``)."""
        every = self.state.labels_by_seq()
        classes, remap = self.pool_classes(every)
        labels = every[seqs] if len(seqs) else np.zeros(0, np.int64)
        if remap is not None:
            labels = np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)
        return labels, classes

    def free_pool(self, where: Mapping[str, str]) -> tuple[Pool, np.ndarray]:
        """Every stored sample, no embeddings (Nx0): what model-free strategies get before a model."""
        seqs = self.state.all_seqs()
        labels, classes = self._pool_labels(seqs)
        labeled = np.flatnonzero(labels >= 0)
        candidates = np.flatnonzero((labels < 0) & self._where_mask(seqs, where))
        models = self.models

        def knn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            raise FailedPrecondition(no_model_message(models))

        pool = Pool(embeddings=np.zeros((len(seqs), 0), np.float32), labeled=labeled.astype(np.int64),
                    labels=labels[labeled], classes=classes,
                    candidates=candidates.astype(np.int64), knn=knn)
        return pool, seqs

    def labelled_ids(self) -> list[str]:
        """Ids of every labelled sample (the selection state that, with the seed, seeds a request's rng)."""
        labels = self.state.labels_by_seq()
        recs = (self.state.lookup_seq(int(q)) for q in np.flatnonzero(labels >= 0))
        return [rec.id for rec in recs if rec is not None]  # a sample deleted since the labels were read: none

    # ---- Select ----------------------------------------------------------------------------------
    def select(self, query: SelectQuery, token: cancel.CancelToken | None = None,
               record: bool = True) -> SelectResult:
        """Run ``query``'s strategy (in an admission slot, cancelled through ``token``) and record the selection
        under a new id, or answer a repeated identical request from the cache with the selection already
        recorded (its id; nothing written: a client repeating one call cannot grow the database).
        ``record`` False (a read token's call): answered, not recorded, and not a draw for the calibration; its
        selection_id is empty (as when a full disk keeps the record from being written) and
        ``details["selection_not_recorded"]`` says so. ``query.group_by`` / ``max_per_group`` (both or
        neither): at most that many picks share one value of that metadata key (``_run_capped``), for every
        strategy."""
        plan = self._plan_select(query, self._select_strategy(query), token, record)
        # the lane its strategy runs in (_strategy_round): an identical Select waiting for this one holds a place
        # in that lane's queue
        lane = self.light_work if plan.fn.is_light(plan.take) else self.work
        return self._single_flight(plan, lane)

    def _plan_select(self, query: SelectQuery, fn: StrategyEntry, token: cancel.CancelToken | None,
                     record: bool) -> SelectPlan:
        """``query`` (checked; ``fn``: its strategy's entry) with its pool read: the serving version's, or every
        stored sample's before a model (a model-free strategy only: FailedPrecondition otherwise), less the
        byte-identical candidates (``twin_free``); FailedPrecondition for an audit while the serving version has
        not embedded every stored sample."""
        serving = self.manager.current
        stored = behind = 0
        if serving is None:
            if query.strategy not in MODEL_FREE:
                raise FailedPrecondition(no_model_message(self.models, refused=self.manager.refused_only()))
            pool, seqs = self.free_pool(query.where)
            version = ""
        else:
            stored = self.state.count()  # before the view: a sample ingested in between is in both
            pool, seqs = self.model_pool(serving, query.where)
            version = serving.version
            behind = self.not_embedded(version, stored, int(np.count_nonzero(seqs)))  # (a deleted sample's row: 0)
            if behind and query.strategy == AUDIT:
                raise FailedPrecondition(
                    f"an audit draw must cover the whole pool, and {behind_phrase(behind, stored, version)}; "
                    f"{ASK_AGAIN}")
        candidates, left_out = self.twin_free(pool.candidates, seqs)
        pool = replace(pool, candidates=candidates)
        take = min(query.budget, len(pool.candidates))  # a budget beyond the candidates costs nothing more
        # Everything the answer depends on: the model version, the pool's rows, the labelled set with
        # its labels, the candidates (the where filter's result), the strategy, params, seed and budget.
        # (Metadata, which the where filter and the groups read, never changes once a sample is stored.) The
        # filter itself too: two filters with the same candidates differ in an empty answer's reason and in
        # whether the recorded request is a uniform draw.
        key = ("select", version, len(pool.embeddings), fingerprint(pool.labeled, pool.labels, pool.candidates),
               *query.key(take))
        return SelectPlan(query, fn, pool, seqs, take, left_out, version, stored, behind, key, token, record)

    def _lead_select(self, plan: SelectPlan, cached: SelectCached | None) -> SelectResult:
        """The Select past its cache look-up (``cached``: the cache's unrecorded answer, or None): run the
        strategy, record the selection and cache it."""
        if cached is not None:  # an empty answer too: a client polling one that matches nothing writes nothing
            chosen, details = list(cached[0]), dict(cached[1])
        else:
            chosen, details = self._select_answer(plan)
        return self._record_select(plan, cached is None, chosen, details)

    def _select_answer(self, plan: SelectPlan) -> tuple[list[tuple[str, float]], dict[str, str]]:
        """``plan``'s picks, (sample id, score) in the strategy's order, and details: the strategy's, with why
        nothing was selected, how many byte-identical samples were left out, and how many stored samples the
        serving version has not embedded yet (not candidates until then)."""
        query = plan.query
        details: dict[str, str] = {}
        chosen: list[tuple[str, float]]
        if plan.take == 0:
            chosen = []
            details[NOTHING_SELECTED] = self._why_nothing(query.where, plan.left_out, plan.behind, len(plan.seqs))
        elif query.max_per_group:
            chosen, details = self._run_capped(query, plan.fn, plan.pool, plan.seqs, plan.take, plan.token)
        else:
            chosen, details = self._run_strategy(query, plan.fn, plan.pool, plan.seqs, plan.take, plan.token)
        if plan.left_out:
            details[SAME_PAYLOAD_LEFT_OUT] = (
                f"{plan.left_out} unlabelled sample{'s' if plan.left_out != 1 else ''} left out of the candidates: "
                "the exact bytes of a labelled sample, or of an earlier-ingested candidate (one label covers "
                "byte-identical images)")
        if plan.behind:
            details[NOT_EMBEDDED] = (f"{behind_phrase(plan.behind, plan.stored, plan.version)}: they are not "
                                     f"candidates until then; {ASK_AGAIN}")
            if uniform_draw(query.strategy, bool(query.where) or bool(query.max_per_group)):
                details[NOT_UNIFORM] = ("a draw of the embedded samples only, not of the whole pool: its labels do "
                                        "not count as audit labels for the calibration")
        return chosen, details

    def _record_select(self, plan: SelectPlan, fresh: bool, chosen: list[tuple[str, float]],
                       details: dict[str, str]) -> SelectResult:
        """Record ``plan``'s answer ``chosen`` (less the picks deleted since) under a new id and cache it; a read
        token's (``plan.record`` False): cache it unrecorded when ``fresh`` (not from the cache), record nothing.
        The answer, its selection_id "" when not recorded."""
        query, version = plan.query, plan.version
        selection_id = uuid.uuid4().hex
        request = query.recorded()
        if plan.behind:  # not a uniform draw either: the candidates are the embedded part only
            request.update(not_embedded=plan.behind)
        with self._deleting:  # no DeleteSamples between the check and the record (``_deleting``)
            chosen = self._still_stored(chosen, int(plan.seqs.max(initial=0)))
            if not plan.record:  # cached unrecorded: a repeat by a read token is answered at once, by a write token
                if fresh:
                    self.select_cache.put(plan.key, (list(chosen), dict(details), ""), weight=max(1, len(chosen)))
                # "" as on a full disk: no id of a selection that was never stored (a fresh id here named none)
                return SelectResult(chosen, version, query.strategy, "",
                                    {**details, SELECTION_NOT_RECORDED: READ_ONLY_SELECT})
            recorded, details = self._record_selection(selection_id, request, chosen, version, details)
            # an unrecorded answer is cached without an id: a repeat runs the recording again
            kept = {k: v for k, v in details.items() if k != SELECTION_NOT_RECORDED}
            self.select_cache.put(plan.key, (list(chosen), kept, recorded), weight=max(1, len(chosen)))
        return SelectResult(chosen, version, query.strategy, recorded, details)  # "": no id of a selection not stored

    def _single_flight(self, plan: SelectPlan, lane: Admission) -> SelectResult:
        """The recorded answer of the Select ``plan`` (by its cache key): from the cache; or from an identical
        Select in flight (waited for, in a place of ``lane``'s queue and no admission slot, until ``plan.token``
        ends: concurrent clients, or a client's retry after its own deadline, make one computation and one
        record); or from ``_lead_select`` (given the cache's unrecorded answer, if any), as the one in flight for
        the key, or, when ``lane``'s queue has no place to wait in, as an ordinary call of its own (through
        admission: a free slot, or Busy as any call that finds the lane full)."""
        key = plan.key
        while True:
            cached = self.select_cache.get(key)
            if cached is not None and cached[2]:  # recorded, with its draw: the same selection again
                return SelectResult(list(cached[0]), plan.version, plan.query.strategy, cached[2], dict(cached[1]))
            with self._select_flights_lock:
                flight = self._select_flights.get(key)
                leading = flight is None
                if flight is None:
                    flight = self._select_flights[key] = SelectFlight()
            if leading:
                break
            waiting = plan.token or cancel.CancelToken()
            # A waiter holds a gRPC thread: it takes a queue place, as a queued call does, so that the threads
            # agent/service.py sizes for the lanes' running and queued calls bound the waiters too (150 waiters
            # outside the queue had taken every thread: a GetStatus timed out).
            with lane.park(waiting) as parked:
                while parked and not flight.done.wait(0.05):
                    waiting.check()
            if not parked:  # no place left: an ordinary call, admitted or refused Busy as any (not the flight's)
                return self._lead_select(plan, cached)
            done = flight.result
            if done is not None and done.selection_id:
                return replace(done, selected=list(done.selected), details=dict(done.details))
            # It raised, or was not recorded (a read token's, a full disk): look again (the cache), or run it.
        try:
            flight.result = self._lead_select(plan, cached)
            return flight.result
        finally:
            with self._select_flights_lock:
                self._select_flights.pop(key, None)
            flight.done.set()

    def _still_stored(self, chosen: list[tuple[str, float]], newest: int) -> list[tuple[str, float]]:
        """``chosen`` less the picks a DeleteSamples removed since the strategy ran (call holding ``_deleting``).
        ``newest``: the highest seq of the Select's pool; an id stored under a higher seq was deleted and
        ingested again since, a new sample the strategy never saw."""
        recs = ((self.state.lookup(i), s) for i, s in chosen)
        return [(rec.id, s) for rec, s in recs if rec is not None and rec.seq <= newest]

    def not_embedded(self, version: str, stored: int, rows: int) -> int:
        """How many of the ``stored`` samples (``State.count()``, read before the pool's view) ``version``'s
        index of ``rows`` rows lacks, less those it cannot embed (reported on their own): the backlog of the
        background embedding. 0 in steady state: Ingest adds a sample's row in the commit that stores it."""
        bad = len(self.manager.unembeddable.get(version, {}))
        return max(0, stored - rows - bad)

    def twin_free(self, candidates: np.ndarray, seqs: np.ndarray) -> tuple[np.ndarray, int]:
        """``candidates`` (pool rows; ``seqs``: every row's state seq) less the byte-identical samples a label
        would be spent on twice: those whose payload equals a labelled sample's (whether that one is in the pool
        or not), and of several byte-identical candidates all but the earliest ingested. Every Select strategy
        gets the candidates this leaves, in their order; and how many were left out. A pool without
        byte-identical samples keeps its candidates as they are (the same array)."""
        groups = self.state.payload_groups()
        if groups is None or len(candidates) == 0:
            return candidates, 0
        labels = self.state.labels_by_seq()
        n = min(len(groups), len(labels))
        labelled_groups = np.unique(groups[:n][labels[:n] >= 0])
        cand_seqs = seqs[candidates]
        group = groups[cand_seqs]
        keep = ~np.isin(group, labelled_groups)
        order = np.argsort(cand_seqs, kind="stable")  # ingest order
        order = order[keep[order]]
        _, first = np.unique(group[order], return_index=True)
        mask = np.zeros(len(candidates), bool)
        mask[order[first]] = True
        left_out = int(len(candidates) - mask.sum())
        return (candidates if left_out == 0 else candidates[mask]), left_out

    def _select_strategy(self, query: SelectQuery) -> StrategyEntry:
        """The strategy ``query`` asks for, once the request is checked (InvalidArgument: budget, the limits on
        its where filter and params, the strategy's declared params, an audit with a where filter or a
        per-group cap, group_by and max_per_group not set together or a negative cap)."""
        budget, strategy, params, where = query.budget, query.strategy, query.params, query.where
        group_by, max_per_group = query.group_by, query.max_per_group
        if budget <= 0:
            raise InvalidArgument(f"budget must be >= 1 (got {budget})")
        if budget > self.limits.max_select_budget:
            raise InvalidArgument(f"budget {budget:,} is above the limit of {self.limits.max_select_budget:,} "
                                  f"{limit_hint('max_select_budget')}")
        for problem in (metadata_problem(where, self.limits, "where filter"),
                        metadata_problem(params, self.limits, "params")):
            if problem is not None:
                raise InvalidArgument(problem)
        fn = get_strategy(strategy)
        fn.check(params)  # before any work: unknown params and values out of their declared ranges
        if max_per_group < 0:
            raise InvalidArgument(f"max_per_group must be >= 1, or 0 for no cap (got {max_per_group})")
        if max_per_group and not group_by:
            raise InvalidArgument(f"max_per_group {max_per_group} needs group_by: the metadata key whose value "
                                  "makes a group (e.g. group_by=event)")
        if group_by and not max_per_group:
            raise InvalidArgument(f"group_by {quoted(group_by[:64])} needs max_per_group >= 1: how many picks one "
                                  "group may have")
        if group_by and (problem := metadata_problem({group_by: ""}, self.limits, "group_by")) is not None:
            raise InvalidArgument(problem)
        if strategy == AUDIT and where:
            raise InvalidArgument("the audit draws from the whole unlabelled pool (its estimate is for the pool): "
                                  "drop the where filter")
        if strategy == AUDIT and max_per_group:
            raise InvalidArgument("the audit draws uniformly from the whole unlabelled pool (its estimate is for "
                                  "the pool): drop max_per_group")
        return fn

    def _run_strategy(self, query: SelectQuery, fn: StrategyEntry, pool: Pool, seqs: np.ndarray, take: int,
                      token: cancel.CancelToken | None) -> tuple[list[tuple[str, float]], dict[str, str]]:
        """Run ``query``'s strategy (its registry entry ``fn``) for ``take`` (>= 1) samples of ``pool`` (``seqs``:
        its rows' state seqs) in an admission slot of its lane (Busy, or the token's exception, from there): the
        chosen (sample id, score) pairs and the strategy's details. EntryBug when it returns rows that are not
        distinct candidates, at most ``query.budget``."""
        token = token or cancel.CancelToken()
        # Seeded by the seed and the labelled set: a loop that keeps its seed still draws afresh each round.
        rng = state_rng(query.seed, self.labelled_ids())
        rows, scores, details = self._strategy_round(query, fn, pool, take, rng, token)
        return self._chosen(seqs, rows, scores), details

    def _chosen(self, seqs: np.ndarray, rows: Sequence[int] | np.ndarray,
                scores: Sequence[float] | np.ndarray) -> list[tuple[str, float]]:
        """(id, score) of the picked ``rows`` (``seqs``: each row's seq), less a pick whose sample a DeleteSamples
        removed while the strategy ran."""
        recs = ((self.state.lookup_seq(int(seqs[r])), float(s)) for r, s in zip(rows, scores, strict=True))
        return [(rec.id, s) for rec, s in recs if rec is not None]

    def _strategy_round(self, query: SelectQuery, fn: StrategyEntry, pool: Pool, take: int, rng: np.random.Generator,
                        token: cancel.CancelToken) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """One run of ``query``'s strategy (its registry entry ``fn``) for ``take`` picks of ``pool``'s candidates,
        in an admission slot of its own (its size and prior as any Select's): its rows, scores and details,
        checked (EntryBug, INTERNAL naming the strategy: not distinct candidates, more than ``query.budget``, or
        not one score per row)."""
        strategy, params, budget = query.strategy, query.params, query.budget
        lane = self.light_work if fn.is_light(take) else self.work
        work = (len(pool.embeddings), len(pool.labeled), take)
        sel = lane.run(token, lambda: fn(pool, take, rng, dict(params)), f"Select {quoted(strategy)}",
                       size=fn.work_size(*work, params, pool.num_classes),
                       prior_cpu_s=fn.prior_cpu_s(*work, params, pool.num_classes))
        rows = np.asarray(sel.rows, np.int64)
        scores = np.asarray(sel.scores, np.float64)
        if (len(rows) > budget or len(np.unique(rows)) != len(rows) or len(scores) != len(rows)
                or not np.isin(rows, pool.candidates).all()):
            raise EntryBug("strategy", strategy, "its rows must be distinct candidates, at most the budget, "
                                                 "with one score each")
        return rows, scores, dict(sel.details)

    def _run_capped(self, query: SelectQuery, fn: StrategyEntry, pool: Pool, seqs: np.ndarray, take: int,
                    token: cancel.CancelToken | None) -> tuple[list[tuple[str, float]], dict[str, str]]:
        """``_run_strategy`` with at most ``cap`` (``query.max_per_group``) picks per value of the metadata key
        ``group_by`` (``query.group_by``), for any
        strategy: run it, keep its picks in its order while their group has room, and while short of ``take``
        run it again (at most MAX_GROUP_ROUNDS rounds, each admitted on its own: a round costs what a Select
        of that size does, and admission sees each) on the candidates left less the picks taken and the
        members of groups at their cap, for the picks still missing. A candidate without the key is a group
        of its own: nothing says it belongs with any other (partial metadata, e.g. a card without EXIF, would
        otherwise be capped as one burst). One rng for every round (seeded as ``_run_strategy``'s): the same
        request on the same state gives the same answer. The details: the first round's (the strategy's own)
        with GROUP_ROUNDS, GROUP_SET_ASIDE and, when short of ``take``, GROUP_NOT_FILLED."""
        token = token or cancel.CancelToken()
        group_by, cap = query.group_by, query.max_per_group
        rng = state_rng(query.seed, self.labelled_ids())
        cands = pool.candidates
        # Each candidate's group as an int: the index of its value, or a fresh one when it has no such key.
        values: dict[str, int] = {}
        group = np.empty(len(cands), np.int64)
        alone = 0
        for i, r in enumerate(cands):
            rec = self.state.lookup_seq(int(seqs[r]))
            value = None if rec is None else rec.metadata.get(group_by)
            if value is None:
                alone -= 1
                group[i] = alone
            else:
                group[i] = values.setdefault(value, len(values))
        group_of = dict(zip(cands.tolist(), group.tolist(), strict=True))
        counts: dict[int, int] = {}
        rows: list[int] = []
        scores: list[float] = []
        details: dict[str, str] = {}
        left, rounds, set_aside = cands, 0, 0
        while len(rows) < take and len(left) and rounds < MAX_GROUP_ROUNDS:
            rounds += 1
            need = min(take - len(rows), len(left))
            got, got_scores, said = self._strategy_round(replace(query, budget=need), fn,
                                                         replace(pool, candidates=left), need, rng, token)
            if rounds == 1:
                details = said
            for r, s in zip(got.tolist(), got_scores.tolist(), strict=True):
                g = group_of[r]
                if counts.get(g, 0) >= cap:
                    set_aside += 1
                    continue
                counts[g] = counts.get(g, 0) + 1
                rows.append(r)
                scores.append(s)
            full = np.array([g for g, c in counts.items() if c >= cap], np.int64)
            keep = ~np.isin(cands, np.array(rows, np.int64)) & ~np.isin(group, full)
            left = cands[keep]
        details[GROUP_ROUNDS] = str(rounds)
        details[GROUP_SET_ASIDE] = str(set_aside)
        if not values and len(cands):
            details[GROUP_KEY_MISSING] = (
                f"no candidate has the metadata key {quoted(group_by[:64])}: each is a group of its own, so the cap "
                "changed nothing (keys must equal a sample's metadata key exactly; see ListSamples)")
        if len(rows) < take:
            why = ("every candidate left is in a group at its cap" if not len(left) else
                   f"{MAX_GROUP_ROUNDS} rounds ran (the bound) with {len(left):,} candidates still eligible; "
                   "ask again with these picks labelled, or a larger max_per_group")
            details[GROUP_NOT_FILLED] = (f"{len(rows)} of {take} picked with at most {cap} per {quoted(group_by)}: "
                                         f"{why}")
        return self._chosen(seqs, rows, scores), details

    def _record_selection(self, selection_id: str, request: dict[str, Any], chosen: list[tuple[str, float]],
                          version: str, details: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Record a Select's answer (``request``: its budget, strategy, params, seed and where filter) under
        ``selection_id``; a uniform draw's samples first join the audit (durable before the answer: an
        unrecorded draw would not be audited). The id it was recorded under ("" when a full or read-only
        disk kept it from being recorded) and ``details`` (then saying why it was not)."""
        strategy = request["strategy"]
        drawn = self._seqs_of(i for i, _ in chosen) if uniform_request(request) else []
        if strategy == AUDIT and drawn:  # durable before the answer: an unrecorded draw would not be audited
            self.state.add_audit(drawn, selection_id)
        recorded = ""
        try:
            self.state.record_selection(selection_id, request, chosen, version)
            recorded = selection_id
            self._prune_selections()
            if drawn:  # once recorded, as a restart reads it
                with self._draws_lock:
                    self._draws.append((strategy, np.array(drawn, np.int64)))
        except Exception as e:  # a full or read-only disk must not stop the team from getting its shortlist
            stored = storage_problem(e, request=False)
            if stored is None:
                raise
            log.warning("Select answered without recording its selection: %s", stored.message)
            details = {**details, SELECTION_NOT_RECORDED: (
                "this selection is complete but was not recorded, so it has no selection_id (empty) and, if a "
                f"uniform draw, does not count for the calibration: {stored.message}; the same Select asked again "
                "once the folder takes writes is recorded")}
        return recorded, details

    def _prune_selections(self) -> None:
        """Every PRUNE_EVERY recorded Selects, keep the newest SELECTIONS_KEPT that are not uniform draws."""
        with self._draws_lock:
            self._recorded_since_prune += 1
            if self._recorded_since_prune < PRUNE_EVERY:
                return
            self._recorded_since_prune = 0
        draws = [name for name, entry in STRATEGIES.items() if entry.uniform]
        try:
            gone = self.state.prune_selections(SELECTIONS_KEPT, draws)
        except Exception as e:  # history only: a full disk must not fail the Select that was recorded
            if (stored := storage_problem(e)) is None:
                raise
            log.warning("old selection records not pruned: %s", stored.message)
            return
        if gone:
            log.info("pruned %d old selection records (the newest %d and every uniform draw are kept)", gone,
                     SELECTIONS_KEPT)

    def _why_nothing(self, where: Mapping[str, str], left_out: int = 0, behind: int = 0, rows: int = 0) -> str:
        """Why a Select has no candidate: an empty pool, a where filter nothing unlabelled matches, every
        sample labelled, or (``left_out`` > 0) every unlabelled sample left is byte-identical to a labelled one.
        ``behind``: stored samples the serving version has not embedded yet (``not_embedded``), of which the
        candidates are none; ``rows``: the samples it has embedded."""
        if self.state.count() == 0:
            return "the pool is empty: ingest samples first"
        shown = ", ".join(f"{k}={v}" for k, v in sorted(where.items()))
        if behind:
            are = "s are" if behind != 1 else " is"
            waiting = (f"{behind:,} stored sample{are} not embedded yet ({IN_BACKGROUND}) and not candidates until "
                       f"then; {ASK_AGAIN}")
            if rows == 0:
                return f"nothing is embedded yet: {waiting}"
            if where:
                return f"no unlabelled embedded sample matches where {shown}; {waiting}"
            if left_out:
                return (f"every unlabelled embedded sample ({left_out}) has the exact bytes of a labelled sample; "
                        f"{waiting}")
            return f"every embedded sample is labelled; {waiting}"
        if left_out:
            matching = " matching the where filter" if where else ""
            return (f"every unlabelled sample{matching} ({left_out}) has the exact bytes of a labelled sample "
                    "(one label covers byte-identical images): nothing is left to select")
        if where:
            return (f"no unlabelled sample matches where {shown} (keys and values must equal a sample's metadata "
                    "exactly; see ListSamples)")
        return "every sample is labelled: nothing is left to select"

    # ---- PriorLabels -----------------------------------------------------------------------------
    def prior_labels(self, method: str, ids: Sequence[str], params: Mapping[str, str],
                     token: cancel.CancelToken | None = None) -> Iterator[PriorResult]:
        """Checks and computes at the call (errors raise here; in an admission slot, cancelled through
        ``token``, or from the cache for a repeated identical request), then yields one result per row:
        the reply streams, it is never built whole."""
        check_count(ids, self.limits.max_ids_per_request, "max_ids_per_request", "ids")
        problem = metadata_problem(params, self.limits, "params")
        if problem is not None:
            raise InvalidArgument(problem)
        fn = get_prior_method(method)
        fn.check(params)
        serving = self.manager.current
        if serving is None:
            raise FailedPrecondition(no_model_message(self.models, prior=True,
                                                        refused=self.manager.refused_only()))
        # the audit draws only for a calibrated prior: its temperature is fitted on the audit labels once
        # there are enough; uncalibrated, no method reads them (and the cache key below then omits them)
        stored = self.state.count()  # before the view: a sample ingested in between is in both
        pool, seqs = self.model_pool(serving, {}, audit=calibrate_flag(params))
        behind = self.not_embedded(serving.version, stored, int(np.count_nonzero(seqs)))
        row_of = np.full(int(seqs.max(initial=0)) + 1, -1, np.int64)  # seq -> row under this version, -1 = none
        row_of[seqs] = np.arange(len(seqs))
        if ids:
            self.check_read_ids(ids, "PriorLabels")
            recs = [self.state.lookup(i) for i in ids]
            missing = [r.id for r in recs if r is not None and (r.seq >= len(row_of) or row_of[r.seq] < 0)]
            if missing:
                raise FailedPrecondition(f"{len(missing)} sample(s) not embedded yet by {serving.version} "
                                         f"(e.g. {quoted(missing[0])}); {ASK_AGAIN}")
            rows = np.array([row_of[r.seq] for r in recs if r is not None], np.int64)
        else:
            rows = pool.candidates
        if pool.num_classes == 0 or len(pool.labeled) == 0:
            if behind and self.state.labeled_count():
                raise FailedPrecondition(
                    f"none of the {self.state.labeled_count():,} labelled samples is embedded yet by "
                    f"{serving.version} ({len(seqs):,} of {stored:,} stored samples are; {IN_BACKGROUND}): {ASK_AGAIN}")
            raise FailedPrecondition("no labelled samples yet: submit labels (`shortlist label FILE.csv`) "
                                     "before asking for prior labels")
        if len(rows) == 0:
            return iter(())
        # the audit draws too (empty when uncalibrated): the calibration fits its temperature on the audit
        # labels once there are enough
        key = ("prior", serving.version, len(pool.embeddings),
               fingerprint(pool.labeled, pool.labels, rows, pool.audit, pool.accepted), method, frozen(params))
        cached = self.prior_cache.get(key)
        if cached is None:
            token = token or cancel.CancelToken()
            lane = self.light_prior_work if fn.is_light(len(rows)) else self.work
            rng = state_rng(0, self.labelled_ids())
            size = fn.work_size(len(pool.embeddings), len(pool.labeled), pool.num_classes, len(rows), params)
            pri = lane.run(token, lambda: fn(pool, rows, rng, dict(params)), f"PriorLabels {quoted(method)}", size=size)
            cached = (np.asarray(pri.probs), np.asarray(pri.confidence), pri.calibration)
            self.prior_cache.put(key, cached, weight=len(rows))
        fit = cached[2]
        if fit is not None and fit.fitting_set != "off":
            fit = replace(fit, open_classes=not self.state.closed)
            self._note_prior_fit(method, fit)
        probs, confidence = self._with_twin_labels(rows, seqs, cached[0], cached[1], pool.classes)
        return self._iter_priors(rows, seqs, probs, confidence, fit, pool.classes, serving.version, behind)

    def _with_twin_labels(self, rows: np.ndarray, seqs: np.ndarray, probs: np.ndarray, confidence: np.ndarray,
                          classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """PriorLabels' ``probs`` and ``confidence`` of ``rows`` (pool rows; ``seqs``: every row's state seq),
        with each unlabelled row whose payload is byte-identical to labelled samples that all carry one label
        given that label, one-hot, confidence 1, as a labelled row is; where those twins carry different labels,
        the prior method's answer stays (it saw each of them as a labelled sample). Computed after the method:
        its calibration fit is the same with or without twins. Unchanged arrays when no twin is labelled."""
        groups = self.state.payload_groups()
        if groups is None or len(rows) == 0:
            return probs, confidence
        every = self.state.labels_by_seq()
        n = min(len(groups), len(every))
        names = list(self.state.classes)
        pool_index = {c: i for i, c in enumerate(classes)}
        to_pool = np.array([pool_index.get(c, -1) for c in names] + [-1], np.int64)  # state class -> pool class
        labels = np.where(every[:n] >= 0, to_pool[np.where(every[:n] >= 0, every[:n], len(names))], -1)
        lab = np.flatnonzero(labels >= 0)
        if len(lab) == 0:
            return probs, confidence
        low = np.full(n, np.iinfo(np.int64).max, np.int64)
        high = np.full(n, -1, np.int64)
        np.minimum.at(low, groups[lab], labels[lab])
        np.maximum.at(high, groups[lab], labels[lab])
        agreed = np.where(low == high, high, -1)  # by group: the one label its labelled samples carry, -1 none
        row_seqs = seqs[rows]
        inside = row_seqs < n
        twin = np.full(len(rows), -1, np.int64)
        twin[inside] = agreed[groups[row_seqs[inside]]]
        own = np.full(len(rows), -1, np.int64)
        own[inside] = labels[row_seqs[inside]]
        hit = np.flatnonzero((twin >= 0) & (own < 0))
        if len(hit) == 0:
            return probs, confidence
        probs, confidence = np.array(probs, copy=True), np.array(confidence, copy=True)
        probs[hit] = 0.0
        probs[hit, twin[hit]] = 1.0
        confidence[hit] = 1.0
        return probs, confidence

    def _iter_priors(self, rows: np.ndarray, seqs: np.ndarray, probs: np.ndarray, confidence: np.ndarray,
                     calibration: TemperatureFit | None, classes: list[str], version: str,
                     not_embedded: int = 0) -> Iterator[PriorResult]:
        for i, (r, p, c) in enumerate(zip(rows, probs, confidence, strict=True)):
            k = int(np.argmax(p))
            rec = self.state.lookup_seq(int(seqs[r]))
            if rec is None:  # deleted since the request began
                continue
            yield PriorResult(rec.id, classes[k], float(c),
                              {name: float(v) for name, v in zip(classes, p, strict=True)}, version,
                              calibration if i == 0 else None, not_embedded if i == 0 else 0)

    # ---- GetMap ----------------------------------------------------------------------------------
    def _serving_view(self) -> tuple[str, IndexView] | None:
        serving = self.manager.current
        return None if serving is None else (serving.version, serving.index.view())

    def get_map(self, offset: int, limit: int, chunk: int) -> tuple[MapStatus, Iterator[list[MapPointRow]]]:
        """The map's header and its points ``offset`` .. ``offset + limit`` (all when ``limit`` is 0) as
        (id, x, y, current label or "") rows, ``chunk`` per list (0: MAP_CHUNK). Answered from memory:
        the map is made by the background thread (agent/pool_map.py), which this call wakes so samples
        ingested since are placed within seconds."""
        if offset < 0 or limit < 0:
            raise InvalidArgument(f"offset and limit must be >= 0 (got offset {offset}, limit {limit})")
        if not 0 <= chunk <= MAX_MAP_CHUNK:
            raise InvalidArgument(f"chunk must be between 1 and {MAX_MAP_CHUNK:,} points (0: {MAP_CHUNK:,}); "
                                  f"got {chunk}")
        self.map.wake()
        st = self.map.status()
        m = self.map.snapshot(st.shown) if st.shown else None  # the previous version's while this one's computes
        if m is None:
            return st, iter(())
        stop = m.n if limit == 0 else min(m.n, offset + limit)
        return st, self._iter_map(m.seqs, m.xy, offset, stop, chunk or MAP_CHUNK)

    def _iter_map(self, seqs: np.ndarray, xy: np.ndarray, start: int, stop: int,
                  chunk: int) -> Iterator[list[MapPointRow]]:
        classes = list(self.state.classes)
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            labels = self.state.labels_by_seq()  # fresh per chunk: a label given meanwhile shows up
            part = []
            for q, (x, y) in zip(seqs[a:b].tolist(), xy[a:b].tolist(), strict=True):
                rec = self.state.lookup_seq(q)
                if rec is None:  # deleted (DeleteSamples) since the map was made
                    continue
                lab = int(labels[q]) if q < len(labels) else -1
                part.append((rec.id, x, y, classes[lab] if 0 <= lab < len(classes) else ""))
            yield part

    # ---- Status / listing ------------------------------------------------------------------------
    def status(self) -> AgentStatus:
        serving, pending_version, pending = self.manager.progress()  # one consistent view of the swap
        audit = self.auditor.report()
        classes = self.pool_classes(self.state.labels_by_seq())[0]
        return AgentStatus(
            samples=self.state.count(), labeled=self.state.labeled_count(),
            embedded=0 if serving is None else serving.index.live,
            model_version="" if serving is None else serving.version,
            strategies=sorted(STRATEGIES), prior_methods=sorted(PRIOR_METHODS),
            classes=classes,
            pending_model_version=pending_version,
            pending_embedded=0 if pending is None else pending.live,
            pending_embed_rate=self.manager.pending_rate() if pending is not None else 0.0,
            audit=audit,
            warnings=[w for w in [self.registry_warning(), *storage_warnings(self.data_dir, self.config.min_free_bytes),
                                  *self.manager.warnings(), *self.map.warnings(), self.class_warning(classes),
                                  self.calibration_warning(), self.payload_warning()]
                      if w],
            classes_open=not self.state.closed, label_events=self.state.label_event_count(),
            samples_deleted=self.state.samples_deleted(),
            agent_version=self.version[0], agent_commit=self.version[1], schema_version=self.state.schema_version())

    def payload_warning(self) -> str:
        """GetStatus's warning about samples whose payload file was found missing at start or unreadable since
        (``BlobStore.unreadable``: noticed by work done anyway, nothing hashed here); "" when none."""
        if self.blobs is None:
            return ""
        named = [(rec, why) for digest, why in sorted(self.blobs.unreadable().items())
                 if (rec := self.state.lookup_payload(digest)) is not None]
        if not named:
            return ""
        rec, why = named[0]
        return (f"{len(named)} stored payload(s) are missing or damaged in {self.data_dir / 'blobs'} (e.g. sample "
                f"{quoted(rec.id)}: {why}): `shortlist check --data-dir {self.data_dir}` lists every one; re-ingesting "
                "the same files under the same ids repairs them, or restore the folder from a backup")

    def calibration_warning(self) -> str:
        """GetStatus's hint while prior confidences cannot be trusted ("" otherwise, and before any
        calibrated PriorLabels was answered). Computes no prior: it reads what the last calibrated PriorLabels
        recorded (``last_prior_fit``, kept across restarts), with the audit labels now (``uniform_labelled``,
        counted only once there is such a fit):
        - it rested on few held-out labels or on labels strategies chose (``TemperatureFit.few``, ``.chosen``):
          its warning, with the labels still to give, until uniform draws labelled since then bring them to
          AUDIT_MIN_LABELS (the next PriorLabels then fits on them, or says why not: a class's only audit
          label cannot be held out, so 20 labelled may not be 20 counted);
        - it rested on audit labels, but retractions left fewer than AUDIT_MIN_LABELS: the next PriorLabels
          will not fit on them, so say that already.
        Whether it asks to declare the classes follows the class list now (``State.closed``), not the one that
        PriorLabels saw."""
        last = self.last_prior_fit
        if last is None:
            return ""
        method, fit = last
        uniform_labelled = self.uniform_labelled()
        head = f"prior {method} (last PriorLabels): "
        if fit.few or fit.chosen:
            if uniform_labelled >= AUDIT_MIN_LABELS and uniform_labelled > fit.audit_labels:
                return ""
            # The class list as it is now, not as it was at that PriorLabels: a restart with --classes closes
            # it, and the stored fit's "declare every class" would then ask for what was done.
            return head + replace(fit, audit_labels=uniform_labelled, open_classes=not self.state.closed).warning()
        if fit.fitting_set == "audit" and uniform_labelled < AUDIT_MIN_LABELS:
            return (head + f"confidences calibrated on {fit.samples} audit labels, but only {uniform_labelled} "
                    f"uniformly drawn label{' is' if uniform_labelled == 1 else 's are'} left (labels were retracted): "
                    + audit_todo(uniform_labelled))
        return ""

    def registry_warning(self) -> str:
        """Why the registry folder cannot hold models now, or looks like another folder given by mistake (a
        training run folder, a folder of images: ``registry_mistake``); "" for a folder that holds versions or
        nothing yet. The agent still starts and serves the first version published there: a folder made later
        is picked up by the poll."""
        until = (f"the agent stores ingested samples and answers model-free strategies "
                 f"({', '.join(sorted(MODEL_FREE))}) until a version is published there")
        if self.models.is_dir():
            mistake = registry_mistake(self.models)
            return f"--models {mistake}; {until}" if mistake else ""
        what = "is not a folder" if self.models.exists() else "does not exist"
        return (f"model registry {self.models} {what}: {until} (`shortlist export` writes {self.models}/vNNNN/); "
                "check --models if you expected a model")

    def list_labels(self, history: bool, after: int = 0, limit: int = 0) -> Iterator[LabelEvent]:
        """Every label (``history``) or each labelled sample's current one, oldest first, streamed; only rows
        numbered above ``after`` (LabelEvent.row), at most ``limit`` of them (0: all). InvalidArgument for a
        negative one, FailedPrecondition for an ``after`` past every row ever numbered (raised here, before the
        stream starts)."""
        if after < 0:
            raise InvalidArgument(f"after_seq {after} is negative: give 0 (from the first record) or the seq of the "
                                  "last record received")
        if limit < 0:
            raise InvalidArgument(f"limit {limit} is negative: give 0 (no limit) or how many records to send")
        # A cursor past every row this folder ever numbered was another folder's: this one was restored from an
        # older backup (its next rows take numbers the cursor has passed: they would be skipped silently) or is
        # another agent's. Checked before the stream starts.
        if after > (high := self.state.label_rows_high()):
            raise FailedPrecondition(
                f"after_seq {after} is past this agent's last label row ({high}): its data folder was restored from "
                "a backup, or is another agent's; sync again from 0 (after_seq 0)")
        return self.state.label_events(history, after=after, limit=limit)

    def list_samples(self, labeled_only: bool, include_payload: bool,
                     ids: Sequence[str] = ()) -> Iterator[tuple[SampleRecord, str, bytes]]:
        """(record, label or "", payload blob or b"") for every sample, in ingest order; with ``ids``, for those
        samples only, in their order (NotFound for an unknown one). The labels are a snapshot taken when this
        is called (``list_samples_at``)."""
        rows = self.list_samples_at(labeled_only, include_payload, ids)[1]
        return ((rec, label, data) for rec, label, data, _ in rows)

    def list_samples_at(self, labeled_only: bool, include_payload: bool, ids: Sequence[str] = ()
                        ) -> tuple[int, Iterator[tuple[SampleRecord, str, bytes, LabelGiver | None]]]:
        """``list_samples`` and the label revision (Status.label_events) its labels are at: they are read in
        one snapshot now, before anything streams, so labels given, changed or taken back meanwhile show for
        no sample (the payloads and records do not change). Each row also has who gave its label, when and how
        (``LabelGiver``, as ListLabels without history; None when unlabelled), from the same snapshot."""
        if include_payload and self.blobs is None:
            raise FailedPrecondition("payloads are not kept (the agent runs with --no-blobs); "
                                     "list without include_payload")
        if ids:
            check_count(ids, self.limits.max_ids_per_request, "max_ids_per_request", "ids")
            self.check_read_ids(ids, "ListSamples")
        events, seqs, labels, last_row = self.state.label_snapshot(labeled_only and not ids)
        names = list(self.state.classes)
        return events, self._iter_samples(labeled_only, include_payload, ids, (seqs, labels), names, last_row)

    def _records(self, labeled_only: bool, ids: Sequence[str],
                 snapshot: tuple[np.ndarray, np.ndarray]) -> Iterator[tuple[SampleRecord, int]]:
        if not ids:
            yield from self.state.iter_records(labeled_only, snapshot=snapshot)
            return
        labels = snapshot[1]
        for i in ids:  # the snapshot is of every seq 1..end, so seq q is at q - 1
            rec = self.state.lookup(i)
            lab = int(labels[rec.seq - 1]) if rec is not None and rec.seq - 1 < len(labels) else -1
            if rec is not None and (not labeled_only or lab >= 0):
                yield rec, lab

    def _iter_samples(self, labeled_only: bool, include_payload: bool, ids: Sequence[str],
                      snapshot: tuple[np.ndarray, np.ndarray], names: list[str], last_row: int
                      ) -> Iterator[tuple[SampleRecord, str, bytes, LabelGiver | None]]:
        records = self._records(labeled_only, ids, snapshot)
        # who gave the labels: one query per chunk of samples (label rows up to the snapshot's last one)
        while chunk := list(itertools.islice(records, 1024)):
            givers = self.state.label_givers([rec.seq for rec, lab in chunk if lab >= 0], last_row)
            for rec, lab in chunk:
                name = names[lab] if lab >= 0 else ""
                given = givers.get(rec.seq) if lab >= 0 else None
                data = b""
                if include_payload and self.blobs is not None:
                    try:
                        data = self.blobs.get(rec.sha256)
                    except OSError as e:  # missing or corrupt: flag this sample, keep the stream going
                        why = "payload file missing" if isinstance(e, FileNotFoundError) else str(e)
                        log.error("ListSamples: sample %r has no readable payload: %s", rec.id, why)
                        rec = SampleRecord(rec.seq, rec.id, rec.uri, {**rec.metadata, PAYLOAD_ERROR_KEY: why},
                                           rec.kind, rec.sha256)
                yield rec, name, data, None if given is None else LabelGiver(*given)
