"""What selection strategies and prior-label methods see: the pool under one model version.

This is the contract between the service (agent/service.py and friends, which build a ``Pool`` from
SQLite, the embeddings and the hnswlib index) and the algorithms (agent/strategies, agent/priors,
which are plain functions of a ``Pool``). No torch here: the agent runs with onnxruntime alone.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import AgentError, FailedPrecondition, InvalidArgument, quoted

if TYPE_CHECKING:  # agent.priors.calibration imports this module
    from agent.priors.calibration import TemperatureFit

__all__ = ["EntryBug", "FailedPrecondition", "InvalidArgument", "KnnFn", "Pool", "PoolMemo", "PriorMethod", "Priors",
           "Selection", "Strategy", "check_priors", "quoted", "state_rng"]

class EntryBug(AgentError):
    """A registry entry (a Select strategy, a prior method) returned an answer that breaks its contract
    (``Selection``, ``Priors``): INTERNAL (``AgentError.code``), with a message that names the entry as the
    bug, not the request and not the agent's own code (a plain exception's INTERNAL says "a bug in the
    agent")."""

    def __init__(self, kind: str, name: str, what: str) -> None:
        super().__init__(f"{kind} {quoted(name)} returned an invalid answer ({what}): this is a bug in that {kind}, "
                         "not in the request; please report it with the agent's log")


# (queries QxD float32 L2-normalised, k) -> (rows QxK int64 into Pool.embeddings, distances QxK float32,
# cosine distance 1 - cos, ascending). A query that is itself in the pool finds itself first.
KnnFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class PoolMemo:
    """What algorithms derive from one model version's embeddings and may reuse across requests: a few
    named entries (e.g. the similarity of every row to the labelled set, kept up to date as labels and
    rows are added), each replaced as a whole. Rows of a version never change, only grow, so an entry
    computed over the first n rows stays true of them. The agent keeps one per serving version
    (agent/index.py); a Pool without one (tests, benchmarks) computes everything afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        with self._lock:
            return self._items.get(name)

    def put(self, name: str, value: Any) -> None:
        with self._lock:
            self._items[name] = value


@dataclass
class Pool:
    """The pool as one model version sees it. Rows index every embedded sample, labelled or not.

    Attributes:
        embeddings: NxD float32, each row L2-normalised (the index uses cosine distance).
        labeled: L int64 rows of labelled samples.
        labels: L int64 class indices into ``classes``, aligned with ``labeled``.
        classes: the agent's class names, in index order (C of them).
        candidates: M int64 rows a strategy may pick: unlabelled and matching the request's ``where``.
        knn: exact-enough nearest neighbours over all N rows (hnswlib, cosine).
        logits: NxC float32 from the model's ``logits`` output when its classes equal ``classes``, else None.
        pretext_loss: N float32 per-sample pretext-task loss (RotNet 4-way rotation cross-entropy, nats)
            when the model has a ``rotation_logits`` head, else None.
        memo: derived arrays of this version's embeddings shared across requests (PoolMemo), or None.
        audit: A int64 rows drawn uniformly from the unlabelled pool, ascending: by Select strategy
            ``audit`` (agent/audit.py) or another uniform strategy (``random``) without a where filter
            (``StrategyEntry.uniform``); those in ``labeled`` carry *audit labels* (a uniform random sample
            of the pool), on which the calibration fits its temperature once there are enough
            (agent/priors/calibration.py). The agent gives only the labelled picks that count (the dense
            stretches of each draw, in the order drawn: agent/core.py ``counted_labels``); simulations, every draw;
            empty when there are none, the caller does not know them (tests, benchmarks) or the call does
            not read them (Select, an uncalibrated PriorLabels, the auditor: agent/core.py ``model_pool``).
        accepted: rows ascending (int64) whose current label is an accepted prior (source ``prior:METHOD``):
            a prior's own output confirmed by a person who saw it, picked for its high confidence. They seed
            every method like any label, but the calibration never holds them out (agent/priors/calibration.py,
            "Accepted priors"); filled when ``audit`` is (agent/core.py ``model_pool``), empty otherwise.
    """

    embeddings: np.ndarray
    labeled: np.ndarray
    labels: np.ndarray
    classes: list[str]
    candidates: np.ndarray
    knn: KnnFn
    logits: np.ndarray | None = None
    pretext_loss: np.ndarray | None = None
    memo: PoolMemo | None = None
    audit: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    accepted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Selection:
    """A strategy's answer: ``rows`` (B int64, a subset of Pool.candidates, no repeats, B <= budget)
    in the order they should be labelled, one ``scores`` value per row (higher = more wanted), and
    ``details``: what the strategy chose or measured itself (SelectReply.details), e.g. a radius."""

    rows: np.ndarray
    scores: np.ndarray
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class Priors:
    """A prior-label method's answer for the requested rows: ``probs`` RxC float32 (rows sum to 1) and
    ``confidence`` R float32 in [0, 1] (how much to trust the row; not always max(probs)). ``calibration``:
    how the confidences were calibrated (set by the ``calibrated`` wrapper, agent/priors/calibration.py,
    "off" when ``calibrate=false``; None from a method called unwrapped)."""

    probs: np.ndarray
    confidence: np.ndarray
    calibration: TemperatureFit | None = None


# Slack for float32 rounding in ``check_priors``: a row of probabilities normalised in float32 sums to 1
# within about 1e-6 per class.
PROBS_SUM_TOLERANCE = 1e-3
CONFIDENCE_TOLERANCE = 1e-5


def check_priors(name: str, priors: Priors, rows: int, classes: int) -> None:
    """EntryBug naming prior method ``name`` unless ``priors`` keeps the ``Priors`` contract for ``rows``
    rows and ``classes`` classes: ``probs`` (rows x classes) finite, >= 0, each row summing to 1 (within
    PROBS_SUM_TOLERANCE), ``confidence`` (rows) finite and in [0, 1] (within CONFIDENCE_TOLERANCE). Run on
    every method's own answer, before calibration (which renormalises and would hide a wrong sum)."""
    probs, confidence = np.asarray(priors.probs), np.asarray(priors.confidence)
    problem = ""
    if probs.shape != (rows, classes):
        problem = f"probs has shape {probs.shape}, not ({rows}, {classes}): one row per asked row, one column per class"
    elif confidence.shape != (rows,):
        problem = f"confidence has shape {confidence.shape}, not ({rows},)"
    elif not (np.isfinite(probs).all() and np.isfinite(confidence).all()):
        problem = "probs or confidence holds NaN or infinity"
    elif (probs < 0).any():
        problem = f"probs has a negative value ({float(probs.min()):.3g})"
    elif rows and classes and np.abs(probs.sum(axis=1) - 1.0).max() > PROBS_SUM_TOLERANCE:
        sums = probs.sum(axis=1)
        far = int(np.argmax(np.abs(sums - 1.0)))
        problem = f"a row of probs sums to {float(sums[far]):.6g}, not 1"
    elif rows and ((confidence < -CONFIDENCE_TOLERANCE).any() or (confidence > 1 + CONFIDENCE_TOLERANCE).any()):
        problem = f"confidence {float(confidence[np.argmax(np.abs(confidence - 0.5))]):.6g} is outside [0, 1]"
    if problem:
        raise EntryBug("prior method", name, problem)


# A strategy: (pool, 1 <= budget <= #candidates, seeded rng, params) -> Selection. Params are declared
# and checked by agent/params.py before it runs.
Strategy = Callable[[Pool, int, np.random.Generator, Mapping[str, str]], Selection]
# A prior method: (pool, rows R int64 to label, seeded rng, params) -> Priors.
PriorMethod = Callable[[Pool, np.ndarray, np.random.Generator, Mapping[str, str]], Priors]


def state_rng(seed: int, labelled_ids: Iterable[str]) -> np.random.Generator:
    """The generator a Select (or PriorLabels) request gets: seeded by the request's ``seed`` AND the
    selection state, the set of labelled sample ids (order does not matter).

    Seeding with ``seed`` alone made a loop that keeps one seed while its labels grow draw the same
    positions every round from a slightly shorter candidate array, so on a pool stored in class order
    cumulative random picks never left the first round's classes (issue 15). Here the sorted ids are
    hashed (SHA-256) and the digest joins the seed as entropy of a numpy ``SeedSequence`` (numpy's
    recommended way to derive independent streams from several integers): the same seed and labelled
    set give the same generator, so a request is reproducible, and any new label gives an unrelated
    stream. ``bench strategies`` derives its rounds' generators the same way (ids = pool row numbers).
    """
    digest = hashlib.sha256("\n".join(sorted(labelled_ids)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, int.from_bytes(digest[:16], "little")]))
