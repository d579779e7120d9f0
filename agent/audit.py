"""The audit of the prior methods: how often each one names the right class, measured on labels of a
uniform random sample of the unlabelled pool, with a confidence interval.

Why a separate sample. The labels a team gives through the other strategies were chosen (typical,
diverse, uncertain samples), so a prior's accuracy on them says little about its accuracy on the rest
of the pool. Select strategy ``audit`` (agent/strategies/audit.py) draws a uniform random sample of the
samples unlabelled at that moment and the agent records the draw (agent/state.py, table ``audit``).
Once a drawn sample is labelled, by anyone and through any tool, its label is an *audit label*, counted
in the dense stretches of its draw in the order drawn: its start, and any run of 10 or more labelled picks
from any pick on (agent/core.py ``counted_labels``: labels picked here and there out of a large draw are
not a uniform sample, and stay ordinary labels, i.e. seeds).

The estimator (docs/app.md, "How good are the priors?"):

1. The prior being audited is computed as if the audit labels did not exist: its seeds are the labels of
   every non-audit sample, and the audit samples are unlabelled rows of its pool (its rng too is seeded by
   the non-audit labelled set, as a PriorLabels call in that state would be). An audit label used as a
   seed would be predicted from itself (kNN finds the sample itself at distance 0) and the estimate
   would read near 100%.
2. Each labelled audit sample is one Bernoulli trial: "the prior's top class equals its label". They
   were drawn uniformly (without replacement) from the unlabelled samples and were not seeds, so the
   fraction right is an unbiased estimate of the prior's accuracy on the samples unlabelled at the draw,
   and the count right is binomial (the pool is large next to the sample, so the finite-population
   correction is ignored; it would only narrow the interval).
3. The interval is a binomial proportion interval from scipy (``binomtest(k, n).proportion_ci``): Wilson's
   score interval by default, Clopper-Pearson ("exact") on request. Per class: the same on the audit
   samples of each true class (that class's recall), for classes with at least ``min_per_class`` of them.

PriorLabels uses the audit labels for more than seeds: once ``AUDIT_MIN_LABELS`` of them count, its
calibration temperature is fitted on them, cross-fitted (agent/priors/calibration.py, ``audit_held_out``).
The audited prior is calibrated on the labelled set alone (``audited_pool`` knows no draws).

What it does not claim: PriorLabels itself uses the audit labels as seeds too, so the served prior has a
few more seeds than the audited one and is usually a little better (the estimate is conservative).
Labels given after the draw through other strategies shrink the unlabelled pool in a non-random way;
when they are many, draw a fresh audit. Audit samples left unlabelled are not counted; an annotator who
skips the hard ones biases the estimate upwards, so GetStatus reports drawn and labelled counts side by side.

Accepted priors are not scored. A drawn sample whose current label is an accepted prior (source
``prior:METHOD``, e.g. "Accept" on the web app's Review priors page; ``State.accepted_prior_seqs``) was
labelled by taking a method's top class: scored, it measured the prior against itself (and the person
anchored on the suggestion), as the calibration's fit, which leaves such labels out too
(agent/priors/calibration.py, "Accepted priors"). It is left out of the estimate and counted apart
(``AuditReport.left_out``, PriorAudit.left_out), and is a seed like any other label.

The computation runs prior methods over the whole pool (seconds at 50,000 samples), so GetStatus never
runs it: it reports the last estimate, and starts a recomputation in the background (one at a time, in
the heavy admission lane, cancelled at shutdown) when the labels, the audit draws or the model changed.
A recomputation has a deadline (``AuditConfig.max_seconds``, its wait for a slot included): past it, it
stops at its next checkpoint and frees the lane, the report keeps the last estimate with a note, and no
new one starts before as long again has passed and what it depends on has changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agent import cancel
from agent.admission import Admission
from agent.cache import fingerprint
from agent.cancel import DeadlineExceeded
from agent.config import AuditConfig
from agent.errors import AgentError
from agent.lazy import deferred
from agent.pool import Pool, state_rng
from agent.priors import PRIOR_METHODS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    accuracy: float
    low: float
    high: float


def accuracy(correct: int, total: int, config: AuditConfig) -> Accuracy:
    """``correct`` out of ``total`` with its binomial confidence interval (scipy)."""
    if total == 0:
        return Accuracy(0, 0, 0.0, 0.0, 1.0)
    binomtest = deferred("scipy.stats").binomtest  # on first use: scipy.stats is slow to import (agent/lazy.py)

    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=config.confidence_level,
                                                            method=config.interval)
    return Accuracy(int(correct), int(total), correct / total, float(ci.low), float(ci.high))


@dataclass
class MethodAccuracy:
    method: str
    overall: Accuracy | None = None
    per_class: list[tuple[str, Accuracy]] = field(default_factory=list)
    mean_confidence: float = 0.0
    error: str = ""


@dataclass
class AuditReport:
    drawn: int = 0
    labelled: int = 0
    current: bool = True
    model_version: str = ""
    confidence_level: float = 0.95
    interval_method: str = "wilson"
    methods: list[MethodAccuracy] = field(default_factory=list)
    computed_at: float = 0.0
    error: str = ""
    left_out: int = 0  # counted audit labels that are accepted priors, not scored (module docstring)


def audited_pool(pool: Pool, audit_rows: np.ndarray) -> Pool:
    """``pool`` as if the samples at ``audit_rows`` had no labels: they leave the seeds and join the
    unlabelled candidates. It knows no audit draws either, so the calibration of the prior being audited
    is fitted on the labelled set, never on the audit labels it is scored on."""
    keep = ~np.isin(pool.labeled, audit_rows)
    labeled = pool.labeled[keep]
    n = len(pool.embeddings)
    unlabelled = np.ones(n, bool)
    unlabelled[labeled] = False
    return replace(pool, labeled=labeled, labels=pool.labels[keep], candidates=np.flatnonzero(unlabelled),
                   audit=np.zeros(0, np.int64))


def measure(pool: Pool, audit_rows: np.ndarray, truth: np.ndarray, seed_ids: Sequence[str],
            methods: Sequence[str], config: AuditConfig) -> list[MethodAccuracy]:
    """Accuracy of each prior method on the labelled audit rows (``truth``: their class indices), with
    the prior computed from ``audited_pool`` (seeds: the non-audit labels, whose sample ids are
    ``seed_ids``)."""
    seeded = audited_pool(pool, audit_rows)
    out: list[MethodAccuracy] = []
    for name in methods:
        res = MethodAccuracy(name)
        out.append(res)
        if len(seeded.labeled) == 0:
            res.error = ("no labels outside the audit: the prior has no seeds (label some samples through the "
                         "other strategies)")
            continue
        try:
            pri = PRIOR_METHODS[name](seeded, audit_rows, state_rng(0, seed_ids), {})
        except AgentError as e:
            res.error = str(e)
            continue
        pred = np.argmax(np.asarray(pri.probs), axis=1)
        right = pred == truth
        res.overall = accuracy(int(right.sum()), len(truth), config)
        res.mean_confidence = float(np.mean(pri.confidence)) if len(truth) else 0.0
        for c in np.unique(truth):
            of_c = truth == c
            if of_c.sum() >= config.min_per_class:
                res.per_class.append((pool.classes[int(c)], accuracy(int(right[of_c].sum()), int(of_c.sum()), config)))
    return out


# The pool under the serving version, the seq of each of its rows and the version; None before any model.
PoolSource = Callable[[], tuple[Pool, np.ndarray, str] | None]


class PriorAuditor:
    """Keeps the last audit estimate and recomputes it (in the background, or at once with
    ``background=False``) when what it depends on changed."""

    def __init__(self, config: AuditConfig, audit_seqs: Callable[[], np.ndarray],
                 labels_by_seq: Callable[[], np.ndarray], pool_source: PoolSource, id_of: Callable[[int], str],
                 version: Callable[[], str],
                 work: Admission, background: bool = True,
                 counted: Callable[[], np.ndarray] | None = None,
                 accepted: Callable[[], np.ndarray] | None = None) -> None:
        self.config = config
        self._audit_seqs = audit_seqs
        # the labelled draws whose labels count (agent/core.py ``Agent.audit_counted``: the dense stretches of
        # each draw, in the order drawn); None: every labelled draw
        self._counted = counted
        self._labels_by_seq = labels_by_seq
        # the seqs whose current label is an accepted prior (``State.accepted_prior_seqs``): not scored
        self._accepted = accepted
        self._pool_source = pool_source
        self._id_of = id_of
        self._version = version
        self._work = work
        self._background = background
        self._lock = threading.Lock()
        self._last: AuditReport | None = None
        self._last_key: object = None
        self._running_key: object = None
        self._token = cancel.CancelToken()  # cancelled by stop(): no more runs
        self._run_token: cancel.CancelToken | None = None  # the running recomputation's (its deadline)
        self._cut: tuple[object, float] | None = None  # (key, time.monotonic()) of the last run cut by its deadline
        self._not_before = 0.0  # time.monotonic() before which no run starts (the lane's retry hint when it refused)
        self._thread: threading.Thread | None = None

    def _methods(self) -> list[str]:
        return [m for m in (self.config.methods or sorted(PRIOR_METHODS)) if m in PRIOR_METHODS]

    def report(self) -> AuditReport:
        """The latest estimate (cheap: never computes on the caller's thread unless background is off)."""
        audit = self._audit_seqs()
        base = AuditReport(drawn=len(audit), confidence_level=self.config.confidence_level,
                           interval_method=self.config.interval)
        if len(audit) == 0:
            return base
        labels = self._labels_by_seq()
        audit = audit[audit < len(labels)]
        counted, base.left_out = self._labelled(audit, labels)
        base.labelled = len(counted)
        if base.labelled == 0:
            return base
        key = (self._version(), fingerprint(labels, audit, counted))
        with self._lock:
            if key == self._last_key and self._last is not None:
                return replace(self._last, current=True)
            if not self._background:
                compute_now = True
            else:
                compute_now = False
                if self._running_key is None and not self._token.cancelled and not self._backing_off(key):
                    self._running_key = key
                    self._thread = threading.Thread(target=self._run, args=(key,), name="prior-audit", daemon=True)
                    self._thread.start()
            last = self._last
            cut = self._cut_note() if self._cut is not None and self._cut[0] == key else ""
        if compute_now:
            rep = self._compute()
            with self._lock:
                self._last, self._last_key = rep, key
            return rep
        if last is None:
            return replace(base, current=False, error=cut or base.error)
        return replace(last, current=False, drawn=base.drawn, labelled=base.labelled, left_out=base.left_out,
                       error=cut or last.error)

    def _labelled(self, audit: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
        """The seqs of the audit labels the estimate scores (``counted`` when given, else every labelled draw)
        but the accepted priors among them, and how many accepted priors were left out."""
        counted = audit[labels[audit] >= 0] if self._counted is None else np.intersect1d(self._counted(), audit)
        if self._accepted is None:
            return counted, 0
        accepted = np.isin(counted, self._accepted())
        return counted[~accepted], int(accepted.sum())

    def _backing_off(self, key: object) -> bool:
        """No new run before the heavy lane's retry hint after it refused one; after a run cut by its
        deadline, none for the same key, nor within max_seconds (lock held)."""
        if time.monotonic() < self._not_before:
            return True
        if self._cut is None or self.config.max_seconds is None:
            return False
        cut_key, at = self._cut
        return key == cut_key or time.monotonic() - at < self.config.max_seconds

    def _cut_note(self) -> str:
        return (f"the newest recomputation took longer than its limit of {self.config.max_seconds:g} s "
                "(AuditConfig.max_seconds) and was stopped; it is tried again once the labels change")

    def _run(self, key: object) -> None:
        token = cancel.CancelToken.within(self.config.max_seconds)
        with self._lock:
            if self._token.cancelled:
                self._running_key = None
                return
            self._run_token = token
        try:
            rep = self._work.run(token, self._compute, "the prior audit")
        except DeadlineExceeded:
            log.warning("prior audit stopped: %s", self._cut_note())
            with self._lock:
                self._running_key, self._run_token, self._cut = None, None, (key, time.monotonic())
            return
        except AgentError as e:  # busy or shutting down: a GetStatus after the lane's retry hint tries again
            hint = max(getattr(e, "retry_after_s", None) or 0.0, self.config.busy_backoff_s)
            log.info("prior audit not computed now (tried again in %.0f s at the earliest): %s", hint, str(e))
            with self._lock:
                self._running_key, self._run_token = None, None
                self._not_before = time.monotonic() + hint
            return
        except Exception:
            log.exception("prior audit failed")
            rep = AuditReport(error="the audit estimate failed (see the agent's log)")
        with self._lock:
            self._last, self._last_key, self._running_key, self._run_token = rep, key, None, None

    def _compute(self) -> AuditReport:
        cfg = self.config
        rep = AuditReport(confidence_level=cfg.confidence_level, interval_method=cfg.interval, computed_at=time.time())
        audit = self._audit_seqs()
        labels = self._labels_by_seq()
        audit = audit[audit < len(labels)]
        rep.drawn = len(audit)
        counted, rep.left_out = self._labelled(audit, labels)
        rep.labelled = len(counted)
        got = self._pool_source()
        if got is None:
            rep.error = "no model is served yet: the priors are measured once one is published"
            return rep
        pool, seqs, version = got
        rep.model_version = version
        label_of_row = np.full(len(seqs), -1, np.int64)
        label_of_row[pool.labeled] = pool.labels
        labelled_audit = np.flatnonzero(np.isin(seqs, counted))
        labelled_audit = labelled_audit[label_of_row[labelled_audit] >= 0]
        if len(labelled_audit) == 0:
            rep.error = f"no labelled audit sample is embedded by {version} yet"
            return rep
        truth = label_of_row[labelled_audit]
        # the seeds: every label but the counted audit labels (a drawn sample labelled out of the draw's order,
        # or by accepting its prior, is a label like any other), as ``audited_pool`` leaves them
        counted_set = set(counted.tolist())
        seed_ids = [self._id_of(int(seqs[r])) for r in pool.labeled if int(seqs[r]) not in counted_set]
        rep.methods = measure(pool, labelled_audit, truth, seed_ids, self._methods(), cfg)
        return rep

    def stop(self) -> None:
        with self._lock:
            self._token.cancel("the agent is shutting down", cancel.ShuttingDown)
            if self._run_token is not None:
                self._run_token.cancel("the agent is shutting down", cancel.ShuttingDown)
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
