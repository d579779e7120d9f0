"""Calibration of every prior-label method, on by default: the registry wraps each method with
``calibrated`` (agent/priors/__init__.py), so a new method is covered by its registry line alone.

What a calibrated prior means here: among unlabelled rows whose top class has probability p, about a
fraction p is right (top-label calibration; Guo et al. 2017, "On Calibration of Modern Neural Networks",
their ECE is the measure the benchmarks report). Two corrections, in this order:

1. Temperature scaling (Guo et al. 2017, Sec. 4.2) of the method's probabilities, q = softmax(log(p + eps)
   / T) over the classes that have labels, with T fitted on held-out labelled samples: the labelled set is
   split into class-stratified folds, the method is run once per fold with that fold's labels hidden, and
   T maximises the likelihood of the hidden labels (cross-fitting, so each sample is predicted without its
   own label, as in leave-one-out, at ``CALIBRATION_FOLDS`` calls instead of one per label): from
   TOP_LABEL_MIN_HELD_OUT of them on, the likelihood of whether each one's top class is right (top-label
   calibration, what ECE measures), below it the likelihood of its class (``log_likelihoods`` says why);
   a method's ``FitSettings`` may move that switch (llgc's: from 20, agent/priors/__init__.py).
   A hidden sample counts only if its class keeps a label in the other folds: a class's only label, once
   hidden, cannot be predicted by any method, and counting it would describe "this class has no label"
   rather than this prior. With one label per class (a diverse first batch) no sample counts, so T
   rests on its prior: T is the MAP estimate under a log-normal prior centred on the method's default
   temperature with the weight of ``PRIOR_WEIGHT`` samples, which keeps few held-out samples from
   swinging it and lets many decide.
   Which held-out samples speak for the pool: each held-out sample's log-likelihood is weighted so that
   every class among them weighs the same (``class_balanced_weights``: label-shift importance weighting
   toward the uniform class prior of step 2). Unweighted, a class enters
   the fit once per label and only from its second label on, so the classes the strategy labelled most
   dominate it, and those are the classes the prior gets right most often (their seeds pull the vote);
   the held-out accuracy then overstates the pool's and T comes out too sharp (measured:
   docs/benchmarks.md, "Class-balanced cross-fit"). Audit labels are a uniform draw of the pool and are
   not reweighted.
2. Classes without any label: no method can name them, so every row of such a class is wrong whatever its
   confidence. With C classes of which S have labels, the rows of those classes are taken to be a share
   1 - S / C of the pool (a uniform class prior, the maximum-entropy guess; exact for a balanced pool), but
   not an even share of every row: a class with a label has a labelled sample in its region of the
   embedding, so a row far from every labelled sample is more likely to be of a class nobody labelled.
   Each row's mass m on the unlabelled classes comes from a logistic model in its distance to the nearest
   labelled sample (``unlabelled_class_mass``: slope ``NOVELTY_SLOPE`` per standard deviation), whose
   intercept is set so that m averages 1 - S / C over the pool (the mean posterior made equal to the class
   prior, the fixed point that Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier
   to new a priori probabilities: a simple procedure", Neural Computation 14(1):21-41, iterate to in their
   EM prior re-estimation, where the new prior is the mean of the adjusted posteriors; section and
   equation numbers not checked: paper not in shared/papers). Deviation: they estimate the new priors
   and rescale every posterior by the prior ratio; here the prior is given (1 - S / C, not estimated) and
   only the logistic model's intercept is solved for it (``novelty_fit``). The labelled classes' tempered
   probabilities are scaled by 1 - m and m is spread evenly over the unlabelled classes, capped so that a
   labelled class stays on top. With one m = 1 - S / C for every row (before), rows near a label were
   under-confident and rows far from all labels over-confident (measured before and after:
   docs/benchmarks.md, "Few-label calibration"). With an open class list (classes = those labelled so
   far) S = C and nothing changes.

Audit labels fit the temperature once there are enough of them (``AUDIT_MIN_LABELS``). The selected
samples are not a random sample of the pool: a strategy chose them for being typical or diverse, and
held out they are predicted better than the pool (docs/benchmarks.md, "Few-label calibration"), so T
comes out too sharp and the prior over-confident. Audit labels (Select strategy
``audit``: a uniform random sample of the unlabelled pool, ``Pool.audit``, agent/audit.py; and the picks of
``random`` without a where filter, which are the same draw) are not chosen, so ``audit_held_out``
cross-fits on them alone: the audit labels are dealt into the same
stratified folds, each fold's are hidden in turn (the method runs with every other label as a seed,
selected or audit) and T maximises the likelihood of the hidden audit labels (``fit_temperature``,
the same MAP fit). Each prediction is of a random sample by a prior that never saw it, as in the
audit's estimate (agent/audit.py); hiding one fold rather than every audit label (the audit's own
``audited_pool``) keeps the fitted prior close to the served one, which has all of them as seeds:
with all hidden, T is fitted to a prior seeded by the selected samples only, which measured worse than
the cross-fit (docs/benchmarks.md, "Fitting the temperature on audit labels"). Below ``AUDIT_MIN_LABELS``
counted audit labels, the cross-fit on the whole labelled set as before.

The fitted temperature is kept per model version (the pool's PoolMemo, ``cached_temperature``), keyed by
everything it depends on (pool rows, labelled set and labels, candidates, audit draws, method, params,
the request's generator state): a request for other rows under the same labels skips the folds, which
are most of a knn call's cost (docs/reliability.md, "PriorLabels knn"). Step 2's model (the novelty
slope, the reference rows' distance mean and spread, the intercept) is kept there too, per labelled set
(``cached_novelty_fit``): while a class has no label, a call computes only the requested rows' distances.

Accepted priors are never held out. A label whose source is ``prior:METHOD`` (``Pool.accepted``: a prior a
person accepted, e.g. on the web app's Review priors page, docs/app.md) is a method's own top class,
confirmed by someone who saw it, and picked for its high confidence (accept all on a page sorted by
confidence): held out, it is right far more often than the pool's rows, so T comes out sharper with every
page accepted while the pool's accuracy does not improve. That holds for any method's accepted prior,
not only the calling one's (the methods agree most on the same confident rows), and for an audit draw
accepted from a prior too (the person anchored on the suggestion). So the temperature is fitted as if the
accepted priors had never been labelled (``without_accepted``: neither held out nor seeds in the folds),
whatever the fitting set: T and the held-out count are those of the other labels alone. The served prior
still has them as seeds, and the fit says how many it left out (``TemperatureFit.left_out``). Kept as seeds
in the folds instead, T moved with the accepted set and the calibration gap came out larger in 5 of 6
measured cells (docs/strategies.md, "Accepted priors and the calibration").

Calibration changes probabilities, not the ranking within a row, and never a row's top class (a row the
method gave no vote at all, uniform over every class, goes to its first labelled class). ``confidence``
becomes the calibrated top probability. ``calibrate=false`` returns the method's own answer unchanged.

Provenance: every answer says how its confidences were calibrated (``Priors.calibration``, a
``TemperatureFit``; PriorLabels' ``Calibration`` message, docs/agent.md): the fitting set ("audit",
"labelled", "default" or "off"), the held-out predictions the fit used, the temperature, and a warning when
the confidences cannot be trusted yet, whose fix is audit labels: the temperature is the default, or rests
on fewer than ``FEW_HELD_OUT`` held-out labelled samples, where the measured calibration error misses the
goal in most cells (docs/benchmarks.md, "Class-balanced cross-fit"); or it rests on more, but chosen ones
(a labelled-set fit: fewer than AUDIT_MIN_LABELS audit labels counted), whose error depends on the
strategy that chose them (docs/benchmarks.md, "Random picks as audit labels").
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import brentq, minimize, minimize_scalar
from scipy.special import expit, softmax

from agent.cache import LruCache, fingerprint, frozen
from agent.cancel import checkpoint
from agent.config import AUDIT_MIN_LABELS
from agent.lazy import deferred
from agent.params import FitSettings, Param, PriorEntry, params_doc
from agent.pool import InvalidArgument, Pool, PriorMethod, Priors, check_priors, quoted
from agent.priors._common import nearest_labelled_distance, with_known_labels

log = logging.getLogger(__name__)

CALIBRATION_FOLDS = 5
# Held-out samples predicted per fold, at most (a random subset beyond): T is one number, and a few
# hundred held-out samples pin it down; without a cap the folds' cost grows with the labelled set, and
# at thousands of labels it was most of a PriorLabels knn call (docs/reliability.md, Load, "PriorLabels
# knn: what one call costs, and the calibration's share").
CALIBRATION_MAX_PER_FOLD = 200
# A temperature fitted on fewer held-out labelled samples than this (or the default, none counting) is
# reported as "few" (``TemperatureFit.warning``): at 10-20 labels the measured ECE misses the goal in most cells
# (docs/benchmarks.md, "Class-balanced cross-fit"); the same count as AUDIT_MIN_LABELS, the
# audit labels that replace such a fit.
FEW_HELD_OUT = AUDIT_MIN_LABELS
# From this many held-out predictions on, T maximises the top-label likelihood (``log_likelihoods``); below
# it, the multiclass likelihood. The binary outcome's noise is that of an accuracy estimated on n samples,
# sqrt(p (1 - p) / n), which drops below the ECE goal only from about this n on: with fewer, the top-label
# fit chases noise. The arithmetic and the measured ECE for each threshold (a lower one made the cells
# with the fewest labels worse, larger labelled sets gained): docs/benchmarks.md, "The threshold raised to
# 200 held-out samples".
TOP_LABEL_MIN_HELD_OUT = 200
# Added to the probabilities before the log, so a class with no vote (as3l, knn) can still gain mass.
EPS = 1e-3
# The temperature prior: log T ~ Normal(log T0, 1 / PRIOR_WEIGHT) ~ the evidence of PRIOR_WEIGHT samples.
PRIOR_WEIGHT = 2.0
T_RANGE = (0.02, 50.0)
# Classes without a label (step 2): the odds that a row belongs to one of them grow by e^slope per standard
# deviation of its distance to the nearest labelled sample; the slope is fitted on the labelled set with a
# Normal(0, NOVELTY_SLOPE_SD^2) prior (0: the distance says nothing, the even share of the earlier rule).
NOVELTY_SLOPE_SD = 2.0
# Labelled samples (an even stride) whose leave-one-out distances fit the slope, at most.
NOVELTY_FIT_LABELS = 1000
# Unlabelled pool rows (an even stride) on which the intercept is set so that their mean mass on the
# classes without a label is that share (1 - S / C): the answer does not depend on which rows are asked.
NOVELTY_ROWS = 2000
TRUE = {"", "1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def calibrate_flag(params: Mapping[str, str]) -> bool:
    """The ``calibrate`` param (default true); InvalidArgument when it is not a yes/no word."""
    raw = params.get("calibrate", "").strip().lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise InvalidArgument(f"param calibrate={quoted(params['calibrate'])} must be true or false")


def tempered(probs: np.ndarray, covered: np.ndarray, t: float) -> np.ndarray:
    """softmax(log(probs + EPS) / t) over the ``covered`` classes (C bools), zero elsewhere: RxC."""
    z = np.log(np.asarray(probs, np.float64) + EPS) / t
    return np.asarray(softmax(np.where(covered[None, :], z, -np.inf), axis=1))


def held_out(pool: Pool, method: PriorMethod, params: Mapping[str, str], rng: np.random.Generator,
             among: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cross-fitted predictions for the labelled samples: per fold, (probs RxC from the method run without
    the fold's labels, true classes R, classes covered by the other folds C bools), only for samples whose
    class keeps a label outside the fold. ``among`` (L bools over ``pool.labeled``): only these samples
    are dealt into folds and held out (the audit labels, ``audit_held_out``); the others stay seeds."""
    eligible = np.ones(len(pool.labeled), bool) if among is None else np.asarray(among, bool)
    n_lab = int(eligible.sum())
    if n_lab < 2:
        return []
    folds = min(CALIBRATION_FOLDS, n_lab)
    fold = np.full(len(pool.labeled), -1, np.int64)
    for c in np.unique(pool.labels[eligible]):  # each class dealt round-robin from a random fold: stratified
        members = rng.permutation(np.flatnonzero((pool.labels == c) & eligible))
        fold[members] = (int(rng.integers(folds)) + np.arange(len(members))) % folds
    out = []
    for f in range(folds):
        checkpoint()
        hidden = fold == f
        rest = pool.labels[~hidden]
        keep = hidden & np.isin(pool.labels, rest)
        if not keep.any():
            continue
        if keep.sum() > CALIBRATION_MAX_PER_FOLD:
            kept = rng.choice(np.flatnonzero(keep), CALIBRATION_MAX_PER_FOLD, replace=False)
            keep = np.zeros_like(keep)
            keep[kept] = True
        # candidates + the hidden rows, sorted and unique (np.union1d, without its hashing of 50,000 rows)
        cand = np.zeros(len(pool.embeddings), bool)
        cand[pool.candidates] = True
        cand[pool.labeled[hidden]] = True
        sub = replace(pool, labeled=pool.labeled[~hidden], labels=rest, candidates=np.flatnonzero(cand))
        child = np.random.default_rng(int(rng.integers(2**63)))
        pr = method(sub, pool.labeled[keep], child, params)
        covered = np.zeros(pool.num_classes, bool)
        covered[rest] = True
        out.append((np.asarray(pr.probs, np.float64), pool.labels[keep], covered))
    return out


def accepted_labels(pool: Pool) -> np.ndarray:
    """Whether each labelled sample's label is an accepted prior (``Pool.accepted``): L bools over
    ``pool.labeled``."""
    return np.isin(pool.labeled, pool.accepted)


def without_accepted(pool: Pool) -> Pool:
    """The pool as the temperature fit sees it: the accepted priors unlabelled again, candidates like any
    unlabelled row (module docstring, "Accepted priors"); ``pool`` itself when it has none labelled."""
    acc = accepted_labels(pool)
    if not acc.any():
        return pool
    return replace(pool, labeled=pool.labeled[~acc], labels=pool.labels[~acc],
                   candidates=np.union1d(pool.candidates, pool.labeled[acc]),
                   accepted=np.zeros(0, np.int64))


def audit_held_out(pool: Pool, method: PriorMethod, params: Mapping[str, str],
                   rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``held_out`` over the audit labels only (module docstring): each audit label predicted by the
    method without its fold of audit labels, every other label (selected or audit) a seed; [] when fewer
    than AUDIT_MIN_LABELS audit labels are labelled, or fewer than that count (their class keeps a label
    outside their fold)."""
    at = np.isin(pool.labeled, pool.audit)
    if at.sum() < AUDIT_MIN_LABELS:
        return []
    held = held_out(pool, method, params, rng, among=at)
    return held if sum(len(h[1]) for h in held) >= AUDIT_MIN_LABELS else []


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per held-out sample (R true classes), the label-shift importance weight that gives every class among
    them the same total weight, scaled so the weights sum to R: w_i = R / (K h_c) for a sample of class c,
    with h_c the held-out samples of class c and K the classes that have any (R floats).

    Why (module docstring, step 1): the held-out samples' class frequencies are the strategy's, not the
    pool's. A class gets a held-out sample per label, and only once it has two labels, so the classes the
    labelled set holds most of dominate the fit, and they are the classes the prior predicts best (their
    seeds pull the vote their way). Reweighting to the pool's class prior is the importance weighting of
    label shift, w = q(y) / p(y) (Lipton, Wang & Smola, "Detecting and Correcting for Label Shift with
    Black Box Predictors", ICML 2018, Sec. 2), with q the uniform class prior that step 2 assumes for
    the pool (maximum entropy) and p the held-out frequencies. Summing to R keeps the evidence's weight
    against the MAP prior that of R samples."""
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return np.zeros(0)
    # scikit-learn's "balanced" weights are this formula (imported on first use: agent/lazy.py)
    class_weight = deferred("sklearn.utils.class_weight")
    return np.asarray(class_weight.compute_sample_weight("balanced", labels), np.float64)


def log_likelihoods(q: np.ndarray, labels: np.ndarray, top_label: bool) -> np.ndarray:
    """Per held-out sample (RxC tempered probabilities ``q``, R true classes), its log-likelihood (R floats):
    of the true class (multiclass), or, ``top_label``, of whether the top class is right, a Bernoulli with
    the top probability as its mean.

    Why two. ECE, the measure the goal is set in, is top-label calibration: among rows whose top class has
    probability p, a fraction p right (Gupta & Ramdas, "Top-label calibration and multiclass-to-binary
    reductions", ICLR 2022, Sec. 2, who also fit a top-label calibrator on this binary event). The multiclass
    likelihood also scores the mass a wrong row gives its true class. One temperature can satisfy both only
    if the method's runner-up mass has the right shape, and a vote's does not: the knn prior gives ~0 (the
    EPS floor) to every class outside its k neighbours, so the multiclass fit flattens T to lift those,
    leaving the top class under-confident (measured: docs/benchmarks.md, "Top-label fit"). The binary
    outcome says less per sample than the true class's probability, so with few held-out samples the
    multiclass fit is the less noisy of the two, and it is kept below TOP_LABEL_MIN_HELD_OUT
    (``fit_temperature``)."""
    if top_label:
        top = np.clip(q.max(axis=1), 1e-12, 1 - 1e-12)
        return np.where(q.argmax(axis=1) == labels, np.log(top), np.log1p(-top))
    return np.log(np.maximum(q[np.arange(len(labels)), labels], 1e-12))


def top_label_likelihood(held_out: int, top_label_from: int | None = None) -> bool:
    """Whether a fit on ``held_out`` samples maximises the top-label likelihood (else the multiclass one):
    from ``top_label_from`` samples on (a method's ``FitSettings``), None: from TOP_LABEL_MIN_HELD_OUT."""
    return held_out >= (TOP_LABEL_MIN_HELD_OUT if top_label_from is None else top_label_from)


def fit_temperature(held: list[tuple[np.ndarray, np.ndarray, np.ndarray]], default: float,
                    balance: bool = False, weights: np.ndarray | None = None,
                    top_label_from: int | None = None) -> float:
    """MAP temperature: held-out negative log-likelihood + PRIOR_WEIGHT / 2 (log T - log default)^2; the
    top-label likelihood from TOP_LABEL_MIN_HELD_OUT held-out samples on, the multiclass one below
    (``log_likelihoods``). ``balance``: each sample's log-likelihood weighted by ``class_balanced_weights``
    over all of ``held`` (the labelled set's cross-fit; an audit sample is a uniform draw of the pool and is
    not reweighted). ``weights``: other per-sample weights instead (R floats in ``held``'s order, summing to
    R; e.g. scripts/experiments/shift_weights.py). ``top_label_from``: the held-out count from which the
    top-label likelihood is used (None: TOP_LABEL_MIN_HELD_OUT; a method's own, ``FitSettings``)."""
    if not held:
        return default
    u0 = np.log(default)
    all_labels = np.concatenate([labels for _, labels, _ in held])
    if weights is None:
        weights = class_balanced_weights(all_labels) if balance else np.ones(len(all_labels))
    starts = np.cumsum([0] + [len(labels) for _, labels, _ in held])
    top_label = top_label_likelihood(len(all_labels), top_label_from)

    def loss(u: float) -> float:
        nll = 0.0
        for (probs, labels, covered), start in zip(held, starts, strict=False):
            q = tempered(probs, covered, float(np.exp(u)))
            nll -= float(weights[start:start + len(labels)] @ log_likelihoods(q, labels, top_label))
        return nll + 0.5 * PRIOR_WEIGHT * (u - u0) ** 2

    res = minimize_scalar(loss, bounds=(np.log(T_RANGE[0]), np.log(T_RANGE[1])), method="bounded",
                          options={"xatol": 1e-3})
    return float(np.exp(res.x))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it was fitted on: ``fitting_set`` "audit" (audit labels,
    ``audit_held_out``), "labelled" (the labelled set's cross-fit, ``held_out``), "default" (no sample
    counted: the method's default temperature) or "off" (``calibrate=false``: no temperature applied,
    ``temperature`` 0); ``samples`` = the held-out predictions the fit used; ``audit_labels`` = the audit
    labels among the labels at the fit (labelled samples drawn uniformly, ``Pool.audit``: by Select strategy
    "audit", or "random" without a where filter);
    ``open_classes``: the agent's class list is open (no ``--classes``), so the classes are those labelled
    so far and step 2 cannot give a class nobody has labelled yet its share (set by the agent, which
    knows; the methods see only ``Pool.classes``); ``left_out``: the accepted priors among the labels
    (source ``prior:METHOD``, ``Pool.accepted``), which no fit holds out (module docstring)."""

    temperature: float
    fitting_set: str
    samples: int
    audit_labels: int = 0
    open_classes: bool = False
    left_out: int = 0

    def left_out_note(self) -> str:
        """Why the accepted priors did not count, e.g. "; 400 accepted priors (source prior:*) left out: a
        prior a person accepted is the method's own answer and would vouch for itself" ("" for none)."""
        if not self.left_out:
            return ""
        n = self.left_out
        return (f"; {n} accepted prior{'' if n == 1 else 's'} (source prior:*) left out of the held-out "
                f"labels: a prior a person accepted is the method's own answer and would vouch for itself")

    def describe(self) -> str:
        """E.g. "temperature 0.62 fitted on 25 audit labels"."""
        if self.fitting_set == "off":
            return "not calibrated (calibrate=false): the method's own confidences"
        if self.fitting_set == "default":
            return (f"temperature {self.temperature:.3g} (the method's default: no held-out label counts)"
                    f"{self.left_out_note()}")
        what = ("audit labels (audit or random draws)" if self.fitting_set == "audit"
                else "held-out labelled samples")
        return f"temperature {self.temperature:.3g} fitted on {self.samples} {what}{self.left_out_note()}"

    @property
    def few(self) -> bool:
        """The confidences cannot be trusted yet: the default temperature, or a labelled-set fit on fewer
        than FEW_HELD_OUT held-out samples (an audit fit has at least AUDIT_MIN_LABELS; "off" is asked for)."""
        return self.fitting_set == "default" or (self.fitting_set == "labelled" and self.samples < FEW_HELD_OUT)

    @property
    def chosen(self) -> bool:
        """The confidences cannot be trusted yet for another reason: a labelled-set fit on enough held-out
        samples, but fewer than AUDIT_MIN_LABELS of them drawn uniformly (else the audit fit would have
        been made); samples a strategy chose need not speak for the pool, and how far they miss depends on
        the strategy and the embeddings (docs/benchmarks.md, "Random picks as audit labels")."""
        return self.fitting_set == "labelled" and self.samples >= FEW_HELD_OUT

    def warning(self) -> str:
        """What to tell a user when ``few`` or ``chosen`` ("" otherwise), e.g. "confidences calibrated on 3
        held-out labels (few, under 20): label 20 audit samples (shortlist select --strategy audit) for
        trustworthy confidences"."""
        if not (self.few or self.chosen):
            return ""
        if self.chosen:
            basis = (f"{self.samples} held-out labels while {self.audit_labels} label"
                     f"{' was' if self.audit_labels == 1 else 's were'} drawn uniformly (audit or random picks; "
                     f"labels a strategy chose need not speak for the pool)")
        else:
            basis = ("no held-out label (the method's default temperature)" if self.fitting_set == "default"
                     else f"{self.samples} held-out label{'' if self.samples == 1 else 's'}") + \
                f" (few, under {FEW_HELD_OUT})"
        declare = ("; the class list is open, so a class nobody has labelled yet gets no share: declare every "
                   "class (shortlist serve --classes a,b,c)" if self.open_classes else "")
        return f"confidences calibrated on {basis}{self.left_out_note()}: {audit_todo(self.audit_labels)}{declare}"


def audit_todo(audit_labels: int) -> str:
    """What a calibration warning asks for with ``audit_labels`` labelled now, e.g. "label 6 audit samples
    (shortlist select --strategy audit) for trustworthy confidences" (``TemperatureFit.warning``, GetStatus)."""
    more = AUDIT_MIN_LABELS - audit_labels
    todo = (f"label {more} audit sample{'' if more == 1 else 's'}" if more > 0 else
            f"label more audit samples ({audit_labels} are labelled but fewer than {AUDIT_MIN_LABELS} "
            "count: an audit label whose class has no other label cannot be held out)")
    return f"{todo} (shortlist select --strategy audit) for trustworthy confidences"


OFF = TemperatureFit(0.0, "off", 0)


def temperature_fit(pool: Pool, method: PriorMethod, params: Mapping[str, str], rng: np.random.Generator,
                    settings: FitSettings) -> TemperatureFit:
    """T fitted on the audit labels when at least AUDIT_MIN_LABELS count, else on the labelled set's
    cross-fit (module docstring), as ``settings`` say, without the accepted priors (``without_accepted``);
    advances ``rng``."""
    left_out = int(accepted_labels(pool).sum())
    pool = without_accepted(pool)
    held = audit_held_out(pool, method, params, copy.deepcopy(rng))  # the fallback's folds as without an audit
    fitting_set = "audit"
    if not held:
        held = held_out(pool, method, params, rng)
        fitting_set = "labelled" if held else "default"
    t = fit_temperature(held, settings.default_temperature, balance=fitting_set == "labelled",
                        top_label_from=settings.top_label_from)
    return TemperatureFit(t, fitting_set, sum(len(h[1]) for h in held),
                          int(np.isin(pool.labeled, pool.audit).sum()), left_out=left_out)


# Fitted temperatures kept per model version (in the pool's PoolMemo), for requests that differ only in
# the rows they ask for (bench load's PriorLabels of 16 ids; the web app's pages of priors).
FIT_CACHE_ENTRIES = 32


def _fit_key(pool: Pool, name: str, params: Mapping[str, str], rng: np.random.Generator,
             settings: FitSettings) -> tuple[object, ...]:
    """Everything a fitted temperature depends on besides the model version (the memo is per version):
    the pool's rows, its labelled set and labels, its candidates, its audit draws and accepted priors, the
    method, its params and fit settings, and the generator's state before the call (which draws the folds)."""
    return (len(pool.embeddings), pool.num_classes,
            fingerprint(pool.labeled, pool.labels, pool.candidates, pool.audit, pool.accepted),
            name, frozen(params), repr(rng.bit_generator.state), settings)


def cached_temperature(pool: Pool, method: PriorEntry, params: Mapping[str, str], rng: np.random.Generator,
                       settings: FitSettings) -> TemperatureFit:
    """``temperature_fit(...)`` for this pool, labelled set, audit draws, method, params and generator,
    kept in ``pool.memo`` (when the pool has one): a request for other rows under the same labels gets the
    same temperature without running the method again. ``rng`` is not advanced (the fit draws from a
    copy), so the temperature does not depend on what the method drew for the rows."""
    cache: LruCache[TemperatureFit] | None = None
    key: tuple[object, ...] = ()
    if pool.memo is not None:
        cache = pool.memo.get("calibration_temperature")
        if cache is None:
            cache = LruCache(FIT_CACHE_ENTRIES, FIT_CACHE_ENTRIES)
            pool.memo.put("calibration_temperature", cache)
        key = _fit_key(pool, method.name, params, rng, settings)
        got = cache.get(key)
        if got is not None:
            return got
    fit = temperature_fit(pool, method, params, copy.deepcopy(rng), settings)
    log.debug("prior %s: %s", method.name, fit.describe())
    if cache is not None:
        cache.put(key, fit)
    return fit


def novelty_slope(pool: Pool, mean: float, sd: float) -> float:
    """The slope of ``unlabelled_class_mass``'s logistic model (one float, in logits per standard deviation of
    the distance to the nearest labelled sample). Shortlist's own (not from a paper): it says how much a
    row's distance from every label should raise its mass on the classes nobody labelled, learnt from the
    labelled set itself (docs/benchmarks.md, "Few-label calibration: the classes without a label, row by
    row", describes and measures it). Fitted by leave-one-out:
    hide one labelled sample; it is "of a class with no label" when it was its class's only label, and its
    distance is to the nearest other labelled sample (z-scored with ``mean`` and ``sd``, the pool's
    distances). MAP logistic regression (own intercept, Normal(0, NOVELTY_SLOPE_SD^2) prior on the slope);
    at least 0 (a row farther from every label is not less likely to be of an unlabelled class); 0 when
    every label is its class's only one or none is (nothing to contrast)."""
    counts = np.bincount(pool.labels, minlength=pool.num_classes)
    at = np.arange(0, len(pool.labeled), max(1, len(pool.labeled) // NOVELTY_FIT_LABELS))
    alone = (counts[pool.labels[at]] == 1).astype(np.float64)
    if alone.all() or not alone.any():
        return 0.0
    lab = pool.embeddings[pool.labeled]
    sim = pool.embeddings[pool.labeled[at]] @ lab.T  # AxL
    sim[np.arange(len(at)), at] = -np.inf  # not itself
    z = (1.0 - sim.max(axis=1).astype(np.float64) - mean) / sd

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        s = p[0] + p[1] * z
        r = expit(s) - alone  # d(-log-likelihood)/ds
        nll = float(np.sum(np.logaddexp(0.0, s) - alone * s)) + 0.5 * p[1] ** 2 / NOVELTY_SLOPE_SD ** 2
        return nll, np.array([r.sum(), float(r @ z) + p[1] / NOVELTY_SLOPE_SD ** 2])

    res = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B")
    return max(float(res.x[1]), 0.0)


@dataclass(frozen=True)
class NoveltyFit:
    """``unlabelled_class_mass``'s model for one pool and labelled set: m = expit(b + slope * (d - mean) / sd)
    with d a row's cosine distance to its nearest labelled sample; ``slope`` 0 means the even ``share``
    (1 - S / C) for every row."""

    share: float
    slope: float = 0.0
    mean: float = 0.0
    sd: float = 1.0
    b: float = 0.0


def novelty_fit(pool: Pool) -> NoveltyFit:
    """Fit ``unlabelled_class_mass``'s model (its docstring) on NOVELTY_ROWS unlabelled reference rows and
    the labelled set; a function of the pool's rows and its labelled set with labels only. Call it only
    while some class has no label (S < C)."""
    c = pool.num_classes
    share = 1.0 - len(np.unique(pool.labels)) / c
    unl = np.setdiff1d(np.arange(len(pool.embeddings)), pool.labeled)
    ref = unl[::max(1, len(unl) // NOVELTY_ROWS)]
    if len(ref) < 2:
        return NoveltyFit(share)
    d_ref = nearest_labelled_distance(pool, ref).astype(np.float64)
    mean, sd = float(d_ref.mean()), float(d_ref.std())
    slope = novelty_slope(pool, mean, sd) if np.isfinite(sd) and sd > 1e-9 else 0.0
    if slope == 0.0:
        return NoveltyFit(share)
    z_ref = slope * (d_ref - mean) / sd
    b = brentq(lambda b: float(expit(b + z_ref).mean()) - share, -60.0, 60.0, xtol=1e-6)
    return NoveltyFit(share, slope, mean, sd, float(b))


# Novelty fits kept per model version (in the pool's PoolMemo): one per labelled set, whatever the method,
# params or rows; a few sets live at once (PriorLabels' and the auditor's, which hides the audit labels).
NOVELTY_CACHE_ENTRIES = 8


def cached_novelty_fit(pool: Pool) -> NoveltyFit:
    """``novelty_fit(pool)``, kept in ``pool.memo`` (when the pool has one) under the pool's row count,
    class count and labelled set with its labels (the memo is per model version, whose rows never change):
    repeated PriorLabels under the same labels skip the reference rows' distances and the slope's fit."""
    if pool.memo is None:
        return novelty_fit(pool)
    cache: LruCache[NoveltyFit] | None = pool.memo.get("calibration_novelty")
    if cache is None:
        cache = LruCache(NOVELTY_CACHE_ENTRIES, NOVELTY_CACHE_ENTRIES)
        pool.memo.put("calibration_novelty", cache)
    key = (len(pool.embeddings), pool.num_classes, fingerprint(pool.labeled, pool.labels))
    fit = cache.get(key)
    if fit is None:
        fit = novelty_fit(pool)
        cache.put(key, fit)
    return fit


def unlabelled_class_mass(pool: Pool, rows: np.ndarray) -> np.ndarray:
    """Per requested row, the probability m that it belongs to one of the classes with no label: R floats
    in [0, 1] for R = len(rows).

    Shortlist's own (not from a paper; only its mean condition follows Saerens et al. 2002, module docstring,
    step 2): a row far from every labelled sample is likelier to be of a class nobody labelled, so it gets
    more of that mass than a row next to a label, instead of one even share for all (docs/benchmarks.md,
    "Few-label calibration: the classes without a label, row by row", describes and measures it).

    logit m = b + slope * z, z = (d - mean) / std with d the cosine distance to the nearest labelled sample
    (mean and std over NOVELTY_ROWS unlabelled pool rows), the slope from ``novelty_slope`` and b set so
    that the mean of m over those rows is 1 - S / C (module docstring, step 2). All zeros when every class
    has a label; the even share 1 - S / C for every row when the slope is 0 or the distances do not vary.
    The model (slope, mean, std, b) is kept per labelled set in the pool's memo (``cached_novelty_fit``);
    only the requested rows' distances are computed per call."""
    s = len(np.unique(pool.labels))
    if s >= pool.num_classes or len(rows) == 0:
        return np.zeros(len(rows))
    fit = cached_novelty_fit(pool)
    if fit.slope == 0.0:
        return np.full(len(rows), fit.share)
    z = fit.slope * (nearest_labelled_distance(pool, rows).astype(np.float64) - fit.mean) / fit.sd
    return np.asarray(expit(fit.b + z))


def apply_calibration(pool: Pool, rows: np.ndarray, priors: Priors, t: float) -> Priors:
    """Temper with ``t`` over the labelled classes, then give the classes without labels each row's
    ``unlabelled_class_mass``, spread evenly over them, capped so that no row's top class changes."""
    c = pool.num_classes
    covered = np.zeros(c, bool)
    covered[pool.labels] = True
    s = int(covered.sum())
    q = tempered(priors.probs, covered, t)
    if s < c:
        m = unlabelled_class_mass(pool, rows)
        # each class without a label gets m / (C - S) <= (1 - m) * max(q): the top class stays a labelled one
        room = (c - s) * q.max(axis=1)
        m = np.minimum(m, room / (1.0 + room) * (1.0 - 1e-6))
        q *= (1.0 - m)[:, None]
        q[:, ~covered] = (m / (c - s))[:, None]
    q32 = q.astype(np.float32)
    return with_known_labels(pool, rows, Priors(probs=q32, confidence=q32.max(axis=1)))


CALIBRATE_PARAM = Param("calibrate", "choice", "true", "temperature-scale the probabilities on held-out labels",
                        choices=("true", "false", "1", "0", "yes", "no", "on", "off"))


def calibrated(method: PriorEntry, settings: FitSettings = FitSettings()) -> PriorEntry:
    """``method`` with calibration on by default (module docstring) and its ``calibrate`` param (declared
    beside the method's own params), its temperature fitted as ``settings`` say (kept on the entry as
    ``fit``)."""

    def run(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
        on = calibrate_flag(params)
        own = {k: v for k, v in params.items() if k != "calibrate"}
        # The temperature is fitted first, from a copy of the generator as it came: the method's own draws
        # then match the uncalibrated call's, and the fit is the same whatever rows are asked for.
        fit = cached_temperature(pool, method, own, rng, settings) if on else OFF
        priors = method(pool, rows, rng, own)
        # The method's own answer, before the calibration renormalises it and replaces its confidence (which
        # would hide a wrong sum); calibrate=false sends it to clients as it is.
        check_priors(method.name, priors, len(rows), pool.num_classes)
        if not on:
            return replace(priors, calibration=OFF)
        return replace(apply_calibration(pool, np.asarray(rows, np.int64), priors, fit.temperature), calibration=fit)

    params = (*method.params, CALIBRATE_PARAM)
    entry = PriorEntry(name=method.name, params=params, summary=method.summary, fn=run,
                       light_rows=method.light_rows, work=method.work, fit=settings)
    object.__setattr__(entry, "__doc__", (method.fn.__doc__ or "") + params_doc(params))
    return entry
