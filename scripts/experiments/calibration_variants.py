"""Temperature-fit variants for the few-label prior calibration, compared offline (docs/benchmarks.md,
"Class-balanced cross-fit (2026-12-05)": its tables' counts and "What else was tried").

``tables`` reads the ``bench strategies`` runs before/after (results.json of PREFIX-raw, PREFIX-main,
PREFIX-new) and prints the section's tables and counts. The rest works on cached predictions, in two
steps. ``collect`` simulates, per (strategy, budget, seed), the labelled set that ``bench strategies``
picks (same seeds and generators), and runs every prior method (knn, llgc, as3l) once on the unlabelled
rows and once per cross-fit fold, each fold run predicting its held-out labelled samples AND the
unlabelled rows (folds dealt as agent.priors.calibration.held_out dealt them at f7e05f9: stratified, five
folds, a child generator per fold), from the generator the calibration wrapper gets. One pickle per cell,
``OUT/NAME_STRATEGY_BUDGET_SEED.pkl``: picked rows, unlabelled rows and their true classes (R), the step 2
mass on classes without a label (``unlabelled_class_mass``, R), and per method the raw probabilities (RxC)
and the folds. The analyses read those pickles and fit the temperature T in several ways, applying it as
the calibration did at f7e05f9 (tempered over the covered classes, then an even share of the unlabelled
class mass over the classes without a label); ECE is bench.metrics' (15 bins); the goal is <= 0.10 at
10-20 labels and <= 0.05 at 40.

- ``variants``: mean ECE over the (data set, strategy, budget, method) cells (each the mean of its seeds)
  and cells missing the goal, per variant: main (MAP, prior weight 2), class-balanced weights,
  flattened to the power 0.5, no prior, prior weight 1, weights summing to the number of classes, and
  posterior-averaged T (grid over log T), plain and class-balanced.
- ``matching``: T that matches the held-out mean confidence to a Beta-shrunk held-out accuracy.
- ``oracle``: the best single T per seed cell (chosen on the truth), and the methods' agreement.
- ``folds``: how often a fold prior agrees with the full prior on the unlabelled rows.
- ``typicality``: how much more typical (log inverse mean cosine distance to 20 neighbours) the picks are
  than the pool, and the slope of a logistic density ratio on that score.
- ``heldout``: held-out accuracy, plain and class-balanced, against the prior's accuracy on the pool's
  rows of covered classes.
- ``knn-t``: knn's fitted T, plain and class-balanced.

Inputs: the embeddings and labels given to ``bench strategies`` and its --out folders (docs/benchmarks.md
gives how they were made). The docs' commands (``cif`` CIFAR-10, ``dig`` scikit-learn's digits)::

    S="nice -n 10 .venv/bin/python scripts/experiments/calibration_variants.py"; C=/tmp/ece/cells
    $S tables /tmp/ece/cif /tmp/ece/dig
    $S collect cif /tmp/ece/emb/pool_x.npy /tmp/ece/emb/pool_y.npy $C
    $S collect dig /tmp/ece/dig_x.npy /tmp/ece/dig_y.npy $C
    $S variants $C/*.pkl
    $S matching $C/cif_random_10_*.pkl $C/cif_random_20_{0,1}.pkl $C/dig_random_10_{0,1}.pkl
    $S oracle $C/*.pkl
    $S folds $C/cif_random_10_{0,1}.pkl
    $S typicality /tmp/ece/emb/pool_x.npy $C/cif_typiclust_10_*.pkl
    $S typicality /tmp/ece/dig_x.npy $C/dig_typiclust_10_*.pkl
    $S heldout $C/cif_random_20_*.pkl
    $S heldout $C/*_10_*.pkl
    $S knn-t $C/*_random_40_*.pkl
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import pickle
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize, minimize_scalar
from scipy.special import expit

from agent.pool import Pool, PriorMethod, state_rng
from agent.priors import calibration as cal
from agent.priors.as3l import as3l_prior
from agent.priors.knn import knn_prior
from agent.priors.llgc import llgc_prior
from bench.metrics import expected_calibration_error as ece
from bench.strategies import CachedKnn, SimPool, Variant, hnsw_index, make_pool, normalise, row_ids, simulate

METHODS: dict[str, PriorMethod] = {"knn": knn_prior, "llgc": llgc_prior, "as3l": as3l_prior}
T0 = {"knn": 1.0, "as3l": 1.0, "llgc": 0.1}  # the methods' default temperatures (agent.priors.PRIOR_METHODS)
LO, HI = np.log(0.02), np.log(50.0)  # log T range
Held = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per fold: probs RxC, true classes R, covered C


# ---- collect ------------------------------------------------------------------------------------------

def held_out_plus(pool: Pool, method: PriorMethod, rng: np.random.Generator,
                  seed_singletons: bool = False) -> list[dict[str, Any]]:
    """The cross-fit of calibration.held_out at f7e05f9, but each fold run also predicts the unlabelled
    rows: per fold, held-out probs (HxC float64), their classes (H), ``keep`` (H bools: the class keeps a
    label outside the fold), covered (C bools) and the unlabelled rows' probs (UxC float32)."""
    n_lab = len(pool.labeled)
    classes, counts = np.unique(pool.labels, return_counts=True)
    dealt = np.isin(pool.labels, classes[counts >= 2]) if seed_singletons else np.ones(n_lab, bool)
    folds = min(cal.CALIBRATION_FOLDS, n_lab)
    fold = np.full(n_lab, -1, np.int64)
    for c in np.unique(pool.labels[dealt]):
        members = rng.permutation(np.flatnonzero((pool.labels == c) & dealt))
        fold[members] = (int(rng.integers(folds)) + np.arange(len(members))) % folds
    out = []
    for f in range(folds):
        hidden = fold == f
        rest = pool.labels[~hidden]
        keep = hidden & np.isin(pool.labels, rest)
        cand = np.zeros(len(pool.embeddings), bool)
        cand[pool.candidates] = True
        cand[pool.labeled[hidden]] = True
        sub = replace(pool, labeled=pool.labeled[~hidden], labels=rest, candidates=np.flatnonzero(cand))
        child = np.random.default_rng(int(rng.integers(2**63)))
        ask = np.concatenate([pool.labeled[hidden], pool.candidates])
        probs = method(sub, ask, child, {}).probs
        covered = np.zeros(pool.num_classes, bool)
        covered[rest] = True
        nh = int(hidden.sum())
        out.append(dict(hidden_probs=np.asarray(probs[:nh], np.float64), hidden_labels=pool.labels[hidden],
                        keep=keep[hidden], covered=covered, pool_probs=np.asarray(probs[nh:], np.float32)))
    return out


def collect(name: str, x_path: Path, y_path: Path, out: Path, strategies: list[str], budgets: list[int],
            seeds: int, seed_singletons: bool = False) -> None:
    """Write one pickle per (strategy, budget, seed) cell to ``out`` (existing ones are kept).
    ``seed_singletons`` (--seed-singletons): a class's only label is never hidden, so every fold run
    competes among all labelled classes."""
    out.mkdir(parents=True, exist_ok=True)
    x = normalise(np.load(x_path))
    y = np.asarray(np.load(y_path), np.int64)
    num_classes = int(y.max()) + 1
    knn = CachedKnn(x, hnsw_index(x))
    for strategy in strategies:
        for budget in budgets:
            for seed in range(seeds):
                path = out / f"{name}_{strategy}_{budget}_{seed}.pkl"
                if path.exists():
                    continue
                t0 = time.time()
                picked, _, _, _ = simulate(Variant(strategy), budget, seed, SimPool(x, y, knn, num_classes))
                pool = make_pool(x, y, picked, knn, num_classes, None)
                rows = pool.candidates
                cell: dict[str, Any] = dict(picked=picked, rows=rows, y=y[rows], C=num_classes,
                                            m=cal.unlabelled_class_mass(pool, rows))
                for mname, fn in METHODS.items():
                    rng = state_rng(0, row_ids(picked))
                    fit_rng = copy.deepcopy(rng)  # the wrapper fits T on a copy of the method's generator
                    cell[mname] = dict(raw=np.asarray(fn(pool, rows, rng, {}).probs, np.float32),
                                       folds=held_out_plus(pool, fn, fit_rng, seed_singletons))
                path.write_bytes(pickle.dumps(cell))
                print(path, round(time.time() - t0, 1), flush=True)


# ---- calibration as at f7e05f9, and the T fits --------------------------------------------------------

def load(paths: list[Path]) -> Iterator[tuple[tuple[str, str, int, int], dict[str, Any]]]:
    """(data set, strategy, budget, seed) and the cell, per pickle, in sorted order."""
    for p in sorted(paths):
        ds, strategy, budget, seed = p.stem.split("_")
        yield (ds, strategy, int(budget), int(seed)), pickle.loads(p.read_bytes())


def held_of(mc: dict[str, Any]) -> Held:
    """The held-out samples that count (their class keeps a label outside the fold), per fold."""
    return [(f["hidden_probs"][f["keep"]], f["hidden_labels"][f["keep"]], f["covered"])
            for f in mc["folds"] if f["keep"].any()]


def covered_of(mc: dict[str, Any]) -> np.ndarray:
    """Classes with a label (C bools): the union of the folds' covered classes."""
    return np.asarray(np.logical_or.reduce([f["covered"] for f in mc["folds"]]))


def calibrate(probs: np.ndarray, covered: np.ndarray, m: np.ndarray, ts: np.ndarray,
              ws: np.ndarray) -> np.ndarray:
    """sum_k ws[k] tempered(probs, T = ts[k]) (RxC), then step 2: mass m (R) spread evenly over the classes
    without a label, capped so that none exceeds a covered class's top probability."""
    c, s = len(covered), int(covered.sum())
    q = sum(w * cal.tempered(probs, covered, float(t)) for t, w in zip(ts, ws, strict=True))
    q = np.asarray(q)
    if s < c:
        room = (c - s) * q.max(axis=1)
        mm = np.minimum(m, room / (1 + room) * (1 - 1e-6))
        q = q * (1 - mm)[:, None]
        q[:, ~covered] = (mm / (c - s))[:, None]
    return q


def apply(probs: np.ndarray, covered: np.ndarray, m: np.ndarray, t: float) -> np.ndarray:
    """``calibrate`` at one temperature."""
    return calibrate(probs, covered, m, np.array([t]), np.array([1.0]))


def sample_weights(labels: np.ndarray, power: float = 1.0, per_class: bool = False) -> np.ndarray:
    """Class-balanced weights (R): h_c^-power for a sample of a class with h_c held-out samples, scaled
    to sum to R (or, ``per_class``, to the number of classes K; power 1 then gives each class weight 1)."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    raw = (1.0 / counts) ** power
    total = len(classes) if per_class else len(labels)
    return np.asarray((raw * total / float((raw * counts).sum()))[inverse], np.float64)


def log_posterior(held: Held, u: float, t0: float, weights: np.ndarray, prior_weight: float,
                  top_label: bool = False) -> float:
    """Weighted held-out log-likelihood at log T = u (multiclass, or ``top_label``: of whether each top
    class is right, ``calibration.log_likelihoods``) + the Normal(log t0, 1 / prior_weight) prior."""
    ll, k = 0.0, 0
    for probs, labels, cov in held:
        q = cal.tempered(probs, cov, float(np.exp(u)))
        ll += float(weights[k:k + len(labels)] @ cal.log_likelihoods(q, labels, top_label))
        k += len(labels)
    return ll - 0.5 * prior_weight * (u - np.log(t0)) ** 2


def weights_of(held: Held, balance: bool, power: float, per_class: bool) -> np.ndarray:
    labels = np.concatenate([h[1] for h in held])
    return sample_weights(labels, power, per_class) if balance else np.ones(len(labels))


def fit(held: Held, t0: float, prior_weight: float = 2.0, balance: bool = False, power: float = 1.0,
        per_class: bool = False, top_from: float = np.inf) -> float:
    """MAP temperature (t0 when nothing is held out); the top-label likelihood from ``top_from`` held-out
    samples on (the agent's rule with top_from = calibration.TOP_LABEL_MIN_HELD_OUT)."""
    if not held:
        return t0
    w = weights_of(held, balance, power, per_class)
    top = len(w) >= top_from
    r = minimize_scalar(lambda u: -log_posterior(held, u, t0, w, prior_weight, top), bounds=(LO, HI),
                        method="bounded", options={"xatol": 1e-3})
    return float(np.exp(r.x))


def posterior(held: Held, t0: float, balance: bool = False, grid: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """Posterior over T on a grid of ``grid`` log T values (prior weight 2): (T values, weights)."""
    us = np.linspace(LO, HI, grid)
    if not held:
        lp = -0.5 * 2.0 * (us - np.log(t0)) ** 2
    else:
        w = weights_of(held, balance, 1.0, False)
        lp = np.array([log_posterior(held, float(u), t0, w, 2.0) for u in us])
    ws = np.exp(lp - lp.max())
    return np.exp(us), ws / ws.sum()


def summarise(res: dict[tuple[Any, ...], list[float]], names: list[str]) -> None:
    """Per cell (data set, strategy, budget, method) the seeds' mean ECE per variant, then the mean over
    cells and the cells missing the goal."""
    keys = sorted({k[:4] for k in res})
    print("cell".ljust(34), " ".join(v.rjust(10) for v in names))
    tot: dict[str, list[float]] = collections.defaultdict(list)
    miss: collections.Counter[str] = collections.Counter()
    for k in keys:
        row = [float(np.mean(res[(*k, v)])) for v in names]
        goal = 0.05 if k[2] >= 40 else 0.10
        for v, r in zip(names, row, strict=True):
            tot[v].append(r)
            miss[v] += r > goal
        print(f"{k!s:34s}", " ".join(f"{r:10.3f}" for r in row))
    print("mean".ljust(34), " ".join(f"{np.mean(tot[v]):10.3f}" for v in names))
    print("missed".ljust(34), " ".join(f"{miss[v]:10d}" for v in names))
    for budget in sorted({k[2] for k in keys}):  # per label count: mean ECE / cells missing the goal
        at = [k for k in keys if k[2] == budget]
        goal = 0.05 if budget >= 40 else 0.10
        cells = {v: [float(np.mean(res[(*k, v)])) for k in at] for v in names}
        print(f"{budget} labels ({len(at)} cells)".ljust(34),
              " ".join(f"{np.mean(cells[v]):.3f}/{sum(c > goal for c in cells[v]):<4d}" for v in names))


# ---- analyses -----------------------------------------------------------------------------------------

MAP_VARIANTS: dict[str, dict[str, Any]] = {
    "main": {},                                          # MAP, prior weight 2
    "cb": dict(balance=True),                            # class-balanced weights (before the top-label fit)
    "cb_half": dict(balance=True, power=0.5),            # flattened to the power 0.5
    "flat": dict(prior_weight=1e-6),                     # no prior on T
    "cb_w1": dict(balance=True, prior_weight=1.0),       # class-balanced, prior weight 1
    "cb_ksum": dict(balance=True, per_class=True),       # weights summing to K
    "cb_top": dict(balance=True, top_from=0),            # class-balanced, top-label likelihood always
    "cb_top20": dict(balance=True, top_from=20),         # top-label from 20 held out (b6686f6)
    # the threshold raised (TOP_LABEL_MIN_HELD_OUT, 200 since): top-label from N held-out samples on
    **{f"cb_top{n}": dict(balance=True, top_from=n) for n in (40, 60, 100, 150, 200, 300)},
}


def variants(paths: list[Path]) -> None:
    res: dict[tuple[Any, ...], list[float]] = collections.defaultdict(list)
    for (ds, strategy, budget, _), cell in load(paths):
        y, m = cell["y"], cell["m"]
        for meth in METHODS:
            mc = cell[meth]
            probs = mc["raw"].astype(np.float64)
            covered, held = covered_of(mc), held_of(mc)
            key = (ds, strategy, budget, meth)
            res[(*key, "raw")].append(ece(probs, y))
            for v, kw in MAP_VARIANTS.items():
                res[(*key, v)].append(ece(apply(probs, covered, m, fit(held, T0[meth], **kw)), y))
            for v, balance in (("bma", False), ("bma_cb", True)):
                ts, ws = posterior(held, T0[meth], balance)
                res[(*key, v)].append(ece(calibrate(probs, covered, m, ts, ws), y))
    summarise(res, ["raw", *MAP_VARIANTS, "bma", "bma_cb"])


def matching(paths: list[Path]) -> None:
    """T that matches the held-out mean confidence to (k + a c0) / (n + a) (a = 1, 2, 4; c0 the mean
    confidence at the default T) or to (k + 1) / (n + 2) (Beta(1, 1)); k of n held-out samples right."""
    def mean_conf(held: Held, t: float) -> float:
        return float(np.mean(np.concatenate([cal.tempered(p, cov, t).max(axis=1) for p, _, cov in held])))

    def solve(held: Held, target: float) -> float:
        def gap(u: float) -> float:
            return mean_conf(held, float(np.exp(u))) - target
        if gap(LO) <= 0:
            return float(np.exp(LO))
        if gap(HI) >= 0:
            return float(np.exp(HI))
        return float(np.exp(brentq(gap, LO, HI, xtol=1e-3)))

    names = ["main", "a1", "a2", "a4", "beta11"]
    res: dict[tuple[Any, ...], list[float]] = collections.defaultdict(list)
    for (ds, strategy, budget, _), cell in load(paths):
        y, m = cell["y"], cell["m"]
        for meth in METHODS:
            mc = cell[meth]
            probs = mc["raw"].astype(np.float64)
            covered, held, t0 = covered_of(mc), held_of(mc), T0[meth]
            ts = dict.fromkeys(names, t0)
            ts["main"] = fit(held, t0)
            if held:
                n = sum(len(h[1]) for h in held)
                k = sum(int((h[0].argmax(axis=1) == h[1]).sum()) for h in held)
                c0 = mean_conf(held, t0)
                for a in (1, 2, 4):
                    ts[f"a{a}"] = solve(held, (k + a * c0) / (n + a))
                ts["beta11"] = solve(held, (k + 1) / (n + 2))
            for v, t in ts.items():
                res[(ds, strategy, budget, meth, v)].append(ece(apply(probs, covered, m, t), y))
    summarise(res, names)


def oracle(paths: list[Path]) -> None:
    """Best T per seed cell on a 120-point log grid (chosen on the truth); pairwise agreement of the
    methods' argmax on the unlabelled rows against their accuracy."""
    best: dict[tuple[str, bool], list[float]] = collections.defaultdict(list)
    agree: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    ts = np.exp(np.linspace(LO, HI, 120))
    for (ds, _, budget, _), cell in load(paths):
        y, m = cell["y"], cell["m"]
        top = {k: cell[k]["raw"].argmax(axis=1) for k in METHODS}
        for k1, k2 in (("knn", "llgc"), ("knn", "as3l"), ("llgc", "as3l")):
            agree[ds].append((float((top[k1] == top[k2]).mean()), float((top[k1] == y).mean()),
                              float((top[k2] == y).mean())))
        for meth in METHODS:
            probs = cell[meth]["raw"].astype(np.float64)
            covered = covered_of(cell[meth])
            best[(ds, budget >= 40)].append(min(ece(apply(probs, covered, m, t), y) for t in ts))
    for (ds, forty), v in sorted(best.items()):
        print(f"best T: {ds} {'40' if forty else '10-20'} labels: mean ECE {np.mean(v):.3f} max {np.max(v):.3f}")
    for ds, rows in agree.items():
        a = np.array(rows)
        ratio = a[:, 0] / a[:, 1:].mean(axis=1)
        print(f"agreement: {ds} {a[:, 0].min():.2f}-{a[:, 0].max():.2f}, accuracy {a[:, 1:].min():.2f}-"
              f"{a[:, 1:].max():.2f}, agreement / mean accuracy {ratio.min():.2f}-{ratio.max():.2f}")


def best_vs_fitted(paths: list[Path]) -> None:
    """Per seed cell and method: the ECE-best T on the truth (120-point log grid), the held-out maximum-
    likelihood T (no prior), the held-out accuracy and mean confidence at that T, and the unlabelled rows'
    accuracy and mean confidence at both Ts: whether a fit that matches the held-out samples' confidence to
    their accuracy (as a likelihood fit does) misses because the held-out accuracy is not the pool's."""
    ts = np.exp(np.linspace(LO, HI, 120))
    for (ds, strategy, budget, seed), cell in load(paths):
        y, m = cell["y"], cell["m"]
        for meth in METHODS:
            mc = cell[meth]
            probs, covered, held = mc["raw"].astype(np.float64), covered_of(mc), held_of(mc)
            if not held:
                continue
            best = ts[int(np.argmin([ece(apply(probs, covered, m, t), y) for t in ts]))]
            t_mle = fit(held, T0[meth], prior_weight=1e-6)
            h_conf = np.concatenate([cal.tempered(p, cov, t_mle).max(axis=1) for p, _, cov in held]).mean()
            h_acc = np.concatenate([p.argmax(axis=1) == lab for p, lab, _ in held]).mean()
            q_mle, q_best = apply(probs, covered, m, t_mle), apply(probs, covered, m, best)
            print(f"{ds} {strategy:9s} {budget:3d} {seed} {meth:5s} T best {best:5.2f} mle {t_mle:5.2f} | "
                  f"held out: acc {h_acc:.2f} conf {h_conf:.2f} | pool: acc {(q_mle.argmax(axis=1) == y).mean():.2f} "
                  f"conf at mle {q_mle.max(axis=1).mean():.2f} at best {q_best.max(axis=1).mean():.2f}")


def folds(paths: list[Path]) -> None:
    """Per cell and method, the mean over folds of the share of unlabelled rows where the fold prior's
    argmax is the full prior's."""
    values = []
    for key, cell in load(paths):
        for meth in METHODS:
            mc = cell[meth]
            top = mc["raw"].argmax(axis=1)
            a = float(np.mean([np.mean(f["pool_probs"].argmax(axis=1) == top) for f in mc["folds"]]))
            values.append(a)
            print(key, meth, f"fold/full agreement {a:.2f}")
    print(f"range {min(values):.2f}-{max(values):.2f}")


def density_ratio_slope(t_lab: np.ndarray, t_pool: np.ndarray, sd_prior: float = 2.0) -> float:
    """Slope (per pool SD) of a logistic regression of picked (``t_lab``) vs unlabelled (``t_pool``) on the
    score, the two sides weighted equally; slope prior Normal(0, sd_prior^2) weighted as one pick."""
    mu, sd = t_pool.mean(), t_pool.std()
    z = np.r_[(t_lab - mu) / sd, (t_pool - mu) / sd]
    yv = np.r_[np.ones(len(t_lab)), np.zeros(len(t_pool))]
    wv = np.r_[np.full(len(t_lab), len(t_pool) / len(t_lab)), np.ones(len(t_pool))]

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        sc = p[0] + p[1] * z
        r = (expit(sc) - yv) * wv
        value = float(np.sum(wv * (np.logaddexp(0, sc) - yv * sc))) / len(t_pool) \
            + 0.5 * p[1] ** 2 / sd_prior ** 2 / len(t_lab)
        grad = np.array([r.sum(), r @ z]) / len(t_pool) + np.array([0, p[1] / sd_prior ** 2 / len(t_lab)])
        return value, grad

    return float(minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B").x[1])


def typicality(x_path: Path, paths: list[Path]) -> None:
    """Per cell: the picks' mean typicality in pool standard deviations, and ``density_ratio_slope`` on
    typicality."""
    x = np.load(x_path).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    typ = -np.log((1 - np.sort(s, axis=1)[:, -20:]).mean(axis=1))  # log inverse mean distance, 20 neighbours
    for key, cell in load(paths):
        t_lab, t_pool = typ[cell["picked"]], typ[cell["rows"]]
        shift = ((t_lab - t_pool.mean()) / t_pool.std()).mean()
        print(key, f"picks' typicality {shift:.2f} SD, density-ratio slope {density_ratio_slope(t_lab, t_pool):.2f}")


def heldout(paths: list[Path]) -> None:
    """Held-out accuracy, plain and class-balanced (mean of per-class accuracies), against the prior's
    accuracy on the unlabelled rows of covered classes; which of the two is closer to it."""
    tally: collections.Counter[str] = collections.Counter()
    for key, cell in load(paths):
        y = cell["y"]
        for meth in METHODS:
            mc = cell[meth]
            held = held_of(mc)
            if not held:
                continue
            lab = np.concatenate([h[1] for h in held])
            right = np.concatenate([h[0].argmax(axis=1) == h[1] for h in held])
            classes = np.unique(lab)
            plain = float(right.mean())
            balanced = float(np.mean([right[lab == c].mean() for c in classes]))
            inc = covered_of(mc)[y]
            pool = float((mc["raw"].argmax(axis=1)[inc] == y[inc]).mean())
            dp, db = abs(plain - pool), abs(balanced - pool)
            verdict = "equal" if abs(db - dp) < 1e-9 else "closer" if db < dp else "farther"
            tally[verdict] += 1
            print(key, meth, f"held out {len(lab)} of {len(classes)} classes {np.bincount(lab)[classes]}",
                  f"plain {plain:.3f} balanced {balanced:.3f} pool {pool:.3f}: balanced {verdict}")
    print(dict(tally))


def knn_t(paths: list[Path]) -> None:
    """knn's MAP T, plain and class-balanced, and the ECE at each."""
    raised = 0
    for key, cell in load(paths):
        mc = cell["knn"]
        probs = mc["raw"].astype(np.float64)
        covered, held = covered_of(mc), held_of(mc)
        a, b = fit(held, T0["knn"]), fit(held, T0["knn"], balance=True)
        raised += b > a
        e_a = ece(apply(probs, covered, cell["m"], a), cell["y"])
        e_b = ece(apply(probs, covered, cell["m"], b), cell["y"])
        print(key, f"T {a:.2f} -> {b:.2f}, ECE {e_a:.3f} -> {e_b:.3f}")
    print(f"class-balanced T higher in {raised} cells")


def defaults(paths: list[Path]) -> None:
    """Per (data set, labels, method), at 10-40 labels: the ECE, mean confidence and accuracy with the
    method's default temperature scaled by 1-6 (the MAP fit as the agent makes it, class-balanced, the
    top-label likelihood from TOP_LABEL_MIN_HELD_OUT held-out samples): whether any constant default
    would serve every data set when few or no held-out labels count."""
    mults = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    res: dict[tuple[str, int, str, float], list[tuple[float, float, float]]] = collections.defaultdict(list)
    for (ds, _, budget, _), cell in load(paths):
        if budget > 40:
            continue
        y, m = cell["y"], cell["m"]
        for meth in METHODS:
            mc = cell[meth]
            probs, covered, held = mc["raw"].astype(np.float64), covered_of(mc), held_of(mc)
            for k in mults:
                t = fit(held, T0[meth] * k, balance=True, top_from=cal.TOP_LABEL_MIN_HELD_OUT)
                q = apply(probs, covered, m, t)
                res[(ds, budget, meth, k)].append((ece(q, y), float(q.max(axis=1).mean()),
                                                   float((q.argmax(axis=1) == y).mean())))
    print("data labels method", " ".join(f"{'x' + str(k):>20s}" for k in mults), "  (ECE conf/acc)")
    for key in sorted({k[:3] for k in res}):
        cells = [np.mean(res[(*key, k)], axis=0) for k in mults]
        print(f"{key[0]:5s} {key[1]:3d} {key[2]:5s}", " ".join(f"{e:8.3f} ({c:.2f}/{a:.2f})" for e, c, a in cells))


def bench_tables(prefixes: list[str]) -> None:
    """The docs' before/after tables from ``bench strategies`` runs: per PREFIX, PREFIX-raw, PREFIX-main and
    PREFIX-new hold the results.json of the uncalibrated, main and new runs. Prints per data set the
    markdown table (prior accuracy, classes covered, ECE raw -> main -> new, mean confidence new; the
    mean of the seeds), then over all data sets, at 10-20 and at 40 labels, the cells whose ECE (rounded
    to 3 decimals) got better, worse or stayed, the cells meeting the goal before and after, and knn's
    per-seed change after 40 random labels."""
    def results(path: str) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
        out: dict[tuple[str, int, str], list[dict[str, Any]]] = collections.defaultdict(list)
        for r in json.loads(Path(path, "results.json").read_text()):
            out[(r["strategy"], r["budget"], r["prior_method"])].append(r)
        return out

    def mean_ece(rs: list[dict[str, Any]]) -> float:
        return round(float(np.mean([r["ece"] for r in rs])), 3)

    runs = {p: [results(f"{p}-{v}") for v in ("raw", "main", "new")] for p in prefixes}
    for p, (raw, main_, new) in runs.items():
        print(f"{p}:\n")
        print("| method | labels | random: acc (classes) | random: ECE raw -> main -> new (mean conf. new) "
              "| typiclust: acc (classes) | typiclust: ECE raw -> main -> new (mean conf. new) |")
        print("|---|---|---|---|---|---|")
        for meth in METHODS:
            for budget in sorted({k[1] for k in new}):
                cells = []
                for strategy in ("random", "typiclust"):
                    k = (strategy, budget, meth)
                    acc = [r["prior_accuracy"] for r in new[k]]
                    # the three runs pick the same rows, so the prior's accuracy is the same
                    assert acc == [r["prior_accuracy"] for r in main_[k]] == [r["prior_accuracy"] for r in raw[k]], k
                    e = [mean_ece(v[k]) for v in (raw, main_, new)]
                    mark = " ✗" if e[2] > (0.05 if budget >= 40 else 0.10) else ""
                    cells += [f"{100 * np.mean(acc):.1f}% ({np.mean([r['coverage'] for r in new[k]]):.1f})",
                              f"{e[0]:.3f} -> {e[1]:.3f} -> **{e[2]:.3f}**{mark} "
                              f"({np.mean([r['mean_confidence'] for r in new[k]]):.2f})"]
                print(f"| {meth} | {budget} | " + " | ".join(cells) + " |")
        print()
    for forty in (False, True):
        count: collections.Counter[str] = collections.Counter()
        worse = []
        means: tuple[list[float], list[float]] = ([], [])
        for p, (_, main_, new) in runs.items():
            for k in main_:
                if (k[1] >= 40) != forty:
                    continue
                a, b = mean_ece(main_[k]), mean_ece(new[k])
                goal = 0.05 if forty else 0.10
                count["met main"] += a <= goal
                count["met new"] += b <= goal
                count["better" if b < a else "worse" if b > a else "unchanged"] += 1
                if b > a:
                    worse.append(f"{p} {k} {a:.3f} -> {b:.3f}")
                if forty and k[0] == "random" and k[2] == "knn":
                    change = [round(y["ece"] - x["ece"], 3) for x, y in zip(main_[k], new[k], strict=True)]
                    print(p, k, "per-seed change", change)
                means[0].append(a)
                means[1].append(b)
        print("40 labels:" if forty else "10-20 labels:", dict(count),
              f"mean ECE {np.mean(means[0]):.3f} -> {np.mean(means[1]):.3f}; worse:", worse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("name")
    c.add_argument("embeddings", type=Path)
    c.add_argument("labels", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--strategies", default="random,typiclust")
    c.add_argument("--budgets", default="10,20,40")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--seed-singletons", action="store_true",
                   help="never hide a class's only label: every fold run competes among all labelled classes")
    b = sub.add_parser("tables")
    b.add_argument("prefixes", nargs="+", help="PREFIX of PREFIX-raw, PREFIX-main, PREFIX-new (bench strategies --out)")
    t = sub.add_parser("typicality")
    t.add_argument("embeddings", type=Path)
    t.add_argument("cells", type=Path, nargs="+")
    for name in ("variants", "matching", "oracle", "best-vs-fitted", "folds", "heldout", "knn-t", "defaults"):
        sub.add_parser(name).add_argument("cells", type=Path, nargs="+")
    args = ap.parse_args()
    if args.cmd == "collect":
        collect(args.name, args.embeddings, args.labels, args.out, args.strategies.split(","),
                [int(b) for b in args.budgets.split(",")], args.seeds, args.seed_singletons)
    elif args.cmd == "tables":
        bench_tables(args.prefixes)
    elif args.cmd == "typicality":
        typicality(args.embeddings, args.cells)
    else:
        {"variants": variants, "matching": matching, "oracle": oracle, "best-vs-fitted": best_vs_fitted,
         "folds": folds, "heldout": heldout, "knn-t": knn_t, "defaults": defaults}[args.cmd](args.cells)


if __name__ == "__main__":
    main()
