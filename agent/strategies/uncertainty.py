"""Strategies that need a classifier: entropy, margin, least_confidence, diverse_margin, badge, qbc, das.

The classifier is the model's own ``logits`` head when its classes match the agent's (Pool.logits) and
are at least two, else a multinomial logistic regression fitted on the labelled embeddings. With neither
(no such head and fewer than two labelled classes) there is nothing to be uncertain about:
FailedPrecondition (``_need_labels``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

from agent.cancel import checkpoint
from agent.lazy import deferred
from agent.params import ALWAYS_LIGHT, Param, strategy
from agent.pool import FailedPrecondition, Pool, Selection, quoted
from agent.strategies._common import (
    CHUNK,
    GREEDY_CPU_PER_UNIT,
    KMEANS_CPU_PER_UNIT,
    LIGHT_GREEDY_BUDGET,
    assign,
    fit_kmeans,
    greedy_work,
    one_blas_thread,
    rows_matrix,
    seed_of,
    top_k,
)

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

# Inverse L2 strength of the fitted head. The embeddings are unit vectors, so at sklearn's default C=1
# the weights (and logits) stay tiny and every probability is close to uniform; C=10 gives a head whose
# probabilities separate confident from ambiguous rows.
HEAD_C = 10.0


def _need_labels(what: str, pool: Pool, committee: bool = False) -> FailedPrecondition:
    """The refusal when no classifier of at least 2 classes exists: no usable logits head
    (``usable_logits``) and fewer than 2 labelled classes. ``committee``: the strategy fits its own heads
    on the labelled rows whatever the model has (qbc), so, unless the model knows one class only (said first,
    as for every strategy that needs class probabilities), the labels alone are the reason."""
    from agent.strategies import LABEL_FREE  # the registry imports this module

    n = len(np.unique(pool.labels))
    free = ", ".join(sorted(LABEL_FREE))
    if pool.logits is not None and not usable_logits(pool):  # a head for the agent's one class (cycle on one)
        known = ", ".join(quoted(c) for c in pool.classes)
        return FailedPrecondition(
            f"strategy {quoted(what)} needs class probabilities over at least 2 classes: the serving model's "
            f"classifier knows only one class ({known}) and {n} class(es) are labelled (at least 2 needed), so "
            "every probability is 1. Label samples of another class (then train a new model with `shortlist "
            f"cycle`), or use a strategy that works without a classifier: {free}")
    if committee:
        return FailedPrecondition(
            f"strategy {quoted(what)} fits its committee on the labelled samples, and {n} class(es) are labelled (at "
            "least 2 needed; the model's own classifier would be one member, not a committee). Label samples "
            f"of at least 2 classes, or use a strategy that works without a classifier: {free}")
    return FailedPrecondition(
        f"strategy {quoted(what)} needs a classifier: the model has no logits head for the agent's classes and "
        f"{n} class(es) are labelled (at least 2 needed). Label a first batch chosen by a strategy that "
        f"works from zero labels: {free}")


def usable_logits(pool: Pool) -> bool:
    """Whether the model's logits head (Pool.logits) can rank uncertainty: it exists and has at least 2
    classes. A one-class head gives every row probability 1, so every score would tie at 0 and the picks
    would be the first rows in ingest order."""
    return pool.logits is not None and pool.logits.shape[1] >= 2


def fit_head(x: np.ndarray, y: np.ndarray, seed: int) -> LogisticRegression:
    """Multinomial logistic regression (L-BFGS, C = HEAD_C) on x (LxD) / y (L int)."""
    with one_blas_thread():
        LogisticRegression = deferred("sklearn.linear_model").LogisticRegression  # on first use
        return LogisticRegression(C=HEAD_C, max_iter=500, random_state=seed).fit(x, y)


def predict_proba(head: LogisticRegression, x: np.ndarray) -> np.ndarray:
    """head.predict_proba in blocks of CHUNK rows: MxC' float32 over head.classes_."""
    out = np.empty((len(x), len(head.classes_)), np.float32)
    for start in range(0, len(x), CHUNK):
        checkpoint()
        out[start:start + CHUNK] = head.predict_proba(x[start:start + CHUNK])
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of MxC logits (float32, max-shifted for stability)."""
    return np.asarray(special.softmax(np.asarray(logits, np.float32), axis=1), np.float32)


def candidate_probs(pool: Pool, what: str, rng: np.random.Generator) -> np.ndarray:
    """Class probabilities MxC' of the candidates: softmax(Pool.logits) when the model has a matching
    head of at least 2 classes, else a logistic-regression head fitted on the labelled rows;
    FailedPrecondition otherwise."""
    logits = pool.logits if usable_logits(pool) else None
    if logits is not None:
        return softmax(logits[pool.candidates])
    if len(np.unique(pool.labels)) < 2:
        raise _need_labels(what, pool)
    head = fit_head(pool.embeddings[pool.labeled], pool.labels, seed_of(rng))
    return predict_proba(head, rows_matrix(pool.embeddings, pool.candidates))


def entropy_of(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of MxC probabilities: -sum_c p log p."""
    p = np.clip(probs, 1e-12, 1.0)
    return -np.sum(probs * np.log(p), axis=1)


def margin_of(probs: np.ndarray) -> np.ndarray:
    """p_(1) - p_(2), the gap between the two most probable classes (M); 1 with a single class."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0], np.float64)


@strategy("entropy", needs="classifier", light_budget=ALWAYS_LIGHT)
def entropy(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Maximum-entropy sampling (Shannon 1948; Settles, "Active Learning Literature Survey" 2009,
    Sec. 3.1 "Uncertainty Sampling": x*_H = argmax_x -sum_y P(y|x) log P(y|x)). No params. Score: entropy (nats)."""
    probs = candidate_probs(pool, "entropy", rng)
    return top_k(pool.candidates, entropy_of(probs), budget)


@strategy("margin", needs="classifier", light_budget=ALWAYS_LIGHT)
def margin(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Smallest-margin sampling (Scheffer et al. 2001; Settles 2009, Sec. 3.1:
    x*_M = argmin_x P(y1|x) - P(y2|x)). No params. Score: 1 - margin."""
    probs = candidate_probs(pool, "margin", rng)
    return top_k(pool.candidates, 1.0 - margin_of(probs), budget)


@strategy("least_confidence", needs="classifier", light_budget=ALWAYS_LIGHT)
def least_confidence(pool: Pool, budget: int, rng: np.random.Generator,
                     params: Mapping[str, str]) -> Selection:
    """Least-confident sampling (Lewis & Gale 1994; Settles 2009, Sec. 3.1: x*_LC = argmax_x 1 - P(y^|x)).
    No params. Score: 1 - max probability."""
    probs = candidate_probs(pool, "least_confidence", rng)
    return top_k(pool.candidates, 1.0 - probs.max(axis=1), budget)


DIVERSE_BETA = 10
DIVERSE_BETA_PARAM = Param("beta", "int", DIVERSE_BETA,
                           "pre-filter: the beta x budget smallest-margin candidates are clustered", 1, 100)


def diverse_margin_work(params: Mapping[str, str], rows: int, labelled: int, budget: int, classes: int) -> float:
    """diverse_margin's work size for a call (StrategyEntry.work_size), in k-means units (rows x clusters): the
    k-means of the beta x budget pre-filtered rows into budget clusters, at least one pass over the pool."""
    pre = min(max(1, rows), DIVERSE_BETA_PARAM.get_int(params) * max(1, budget))
    return float(max(max(1, rows), pre * max(1, budget)))


@strategy("diverse_margin", DIVERSE_BETA_PARAM, needs="classifier", light_budget=LIGHT_GREEDY_BUDGET,
          work=diverse_margin_work, cpu_per_unit=KMEANS_CPU_PER_UNIT)
def diverse_margin(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Diverse mini-batch active learning (Zhdanov, "Diverse mini-Batch Active Learning", arXiv:1901.05954,
    2019, Algorithm 1): pre-filter the beta x budget candidates of smallest margin (Settles 2009, Sec. 3.1),
    cluster them into budget clusters with k-means, and take from each cluster the member nearest its centre.
    A batch of plain ``margin`` picks can be one burst of near-identical frames (the top scores sit together);
    here each pick comes from another cluster of the uncertain rows.

    Ours: the k-means is unweighted (the paper weighs each row by its informativeness); it is the agent's
    interruptible k-means (``fit_kmeans``) on the pre-filtered rows. Clusters left empty (fewer distinct rows
    than picks) are filled by the most uncertain rows not taken. Params: ``beta`` (10, the paper's choice).
    Score: 1 - margin."""
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    info = 1.0 - margin_of(candidate_probs(pool, "diverse_margin", rng))  # M
    pre = top_k(np.arange(len(cand)), info, min(len(cand), DIVERSE_BETA_PARAM.get_int(params) * take)).rows
    x = rows_matrix(pool.embeddings, cand[pre])  # PxD
    centres = fit_kmeans(x, take, rng)  # KxD, K <= take
    which, sq = assign(x, centres)  # P cluster ids, P squared distances
    order = np.lexsort((np.arange(len(pre)), sq, which))  # by cluster, nearest its centre first, then by rank
    first = order[np.r_[True, which[order][1:] != which[order][:-1]]]  # each cluster's nearest member
    chosen = list(first[np.argsort(-info[pre[first]], kind="stable")])
    if len(chosen) < take:  # empty clusters: the most uncertain rows not taken
        taken = set(chosen)
        chosen += [i for i in range(len(pre)) if i not in taken][:take - len(chosen)]
    picked = pre[np.asarray(chosen[:take], np.int64)]
    return Selection(rows=np.asarray(cand[picked], np.int64), scores=np.asarray(info[picked], np.float64))


def badge_work(params: Mapping[str, str], rows: int, labelled: int, budget: int, classes: int) -> float:
    """badge's work size for a call (StrategyEntry.work_size): the class probabilities, then one pass over the
    pool per seed (a C- and a D-dimensional dot product per row), rows x (budget + 1)."""
    return greedy_work(rows, budget + 1)


@strategy("badge", needs="classifier", light_budget=LIGHT_GREEDY_BUDGET, work=badge_work,
          cpu_per_unit=GREEDY_CPU_PER_UNIT)
def badge(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """BADGE (Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds",
    ICLR 2020, Algorithm 1): k-means++ seeding (Arthur & Vassilvitskii 2007) over the gradient
    embeddings g_x = (p(x) - e_{y^(x)}) (x) h(x) of the last layer's cross-entropy at the predicted
    label y^, the first seed being the largest gradient norm as in the authors' code.

    The CxD gradient embeddings are never materialised: for Kronecker products
    <a (x) h, b (x) h'> = <a, b><h, h'>, so each seeding step costs one M-vector of C-dim and one of
    D-dim dot products (h = the L2-normalised embedding). No params. Score: squared distance to the
    nearest earlier seed when picked (inf for the first).
    """
    probs = candidate_probs(pool, "badge", rng).astype(np.float64)  # MxC'
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    a = probs.copy()
    a[np.arange(len(a)), probs.argmax(axis=1)] -= 1.0  # p - onehot(y^), MxC'
    h = rows_matrix(pool.embeddings, cand)  # MxD
    a_sq = np.einsum("mc,mc->m", a, a)
    h_sq = np.einsum("md,md->m", h, h).astype(np.float64)
    g_sq = a_sq * h_sq  # ||g_x||^2
    first = int(np.argmax(g_sq))
    chosen = [first]
    scores = [float("inf")]
    d2 = np.full(len(cand), np.inf)
    while len(chosen) < take:
        checkpoint()
        c = chosen[-1]
        dist = g_sq + g_sq[c] - 2.0 * (a @ a[c]) * (h @ h[c]).astype(np.float64)
        np.minimum(d2, np.maximum(dist, 0.0), out=d2)
        d2[chosen] = 0.0
        total = d2.sum()
        if total <= 0.0:  # every candidate coincides with a seed: the rest uniformly
            rest = np.setdiff1d(np.arange(len(cand)), chosen)
            nxt = int(rng.choice(rest))
        else:
            nxt = int(rng.choice(len(cand), p=d2 / total))  # D^2 sampling
        scores.append(float(d2[nxt]))
        chosen.append(nxt)
    return Selection(rows=np.asarray(cand[chosen], np.int64), scores=np.asarray(scores))


QBC_MEMBERS = 5
# Each member is one logistic-regression fit on the labelled rows and one pass over the candidates.
QBC_MEMBERS_PARAM = Param("members", "int", QBC_MEMBERS, "committee size (bootstrap-resampled heads)", 2, 20)


def qbc_work(params: Mapping[str, str], rows: int, labelled: int, budget: int, classes: int) -> float:
    """qbc's work size for a call (StrategyEntry.work_size): the pool's rows times the committee's ``members``
    over the default QBC_MEMBERS (each member is one head fitted and one pass over the candidates), so a
    default call's size is the pool's rows, as for the other uncertainty strategies, and ``members=20`` 4x it."""
    return max(1, rows) * QBC_MEMBERS_PARAM.get_int(params) / QBC_MEMBERS


def vote_entropy(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """Vote entropy (Dagan & Engelson 1995; Settles 2009, Sec. 3.2 "Query-By-Committee"):
    -sum_y V(y)/|committee| log(V(y)/|committee|) for votes MxE (class index per member)."""
    members = votes.shape[1]
    counts = np.zeros((len(votes), num_classes))
    for e in range(members):
        counts[np.arange(len(votes)), votes[:, e]] += 1
    frac = counts / members
    return -np.sum(frac * np.log(np.where(frac > 0, frac, 1.0)), axis=1)


@strategy("qbc", QBC_MEMBERS_PARAM, needs="classifier", work=qbc_work)
def qbc(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Query by committee (Seung, Opper & Sompolinsky 1992) with a bagged committee (query by bagging,
    Abe & Mamitsuka 1998): ``members`` logistic-regression heads, each fitted on a bootstrap resample of
    the labelled rows (drawn within each class, so every member sees every labelled class); candidates
    ranked by vote entropy (``vote_entropy``), ties broken by the entropy of the committee's mean
    probabilities (consensus entropy, Settles 2009 Sec. 3.2) scaled to stay below one vote step.
    Needs >= 2 labelled classes (the model's logits are one member, not a committee).
    Params: ``members`` (5). Score: vote entropy (nats) + tie-break.
    """
    members = QBC_MEMBERS_PARAM.get_int(params)
    classes = np.unique(pool.labels)
    if len(classes) < 2:
        raise _need_labels("qbc", pool, committee=True)
    x_lab = pool.embeddings[pool.labeled]
    x = rows_matrix(pool.embeddings, pool.candidates)
    by_class = [np.flatnonzero(pool.labels == c) for c in classes]
    votes = np.empty((len(x), members), np.int64)
    mean_p = np.zeros((len(x), len(classes)))
    for e in range(members):
        checkpoint()
        boot = np.concatenate([rng.choice(idx, size=len(idx), replace=True) for idx in by_class])
        head = fit_head(x_lab[boot], pool.labels[boot], seed_of(rng))
        p = predict_proba(head, x)
        votes[:, e] = p.argmax(axis=1)
        mean_p += p / members
    ve = vote_entropy(votes, len(classes))
    tie = entropy_of(mean_p) / max(np.log(len(classes)), 1e-12)  # in [0, 1]
    # Different vote splits differ in vote entropy by far more than 1e-3, so the tie-break only orders ties.
    return top_k(pool.candidates, ve + 1e-3 * tie, budget)


DAS_LAMBDA = 1.0
DAS_LAMBDA_PARAM = Param("lambda", "float", DAS_LAMBDA, "weight of the rotation loss against the entropy", 0.0, 1000.0)


@strategy("das", DAS_LAMBDA_PARAM, needs="classifier", needs_pretext_loss=True, light_budget=ALWAYS_LIGHT)
def das(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Deep active sampling with self-supervised learning (Shi & Zhou, "Deep active sampling with
    self-supervised learning", Front. Comput. Sci. 2023, 17(4): 174323): the sampling metric
    I = u + lambda * v, u the downstream uncertainty and v the sample's pretext-task loss. Ours, where the
    letter is silent: u is the predictive entropy, v the RotNet rotation loss (the letter also uses
    MoCo; only the rotation variant is implemented), both scaled to [0, 1]-ish units (entropy by log C',
    the 4-way rotation cross-entropy by its chance level log 4), lambda = 1:

        s(x) = H(p(x)) / log C' + lambda * l_rot(x) / log 4;

    the top-``budget`` are picked.
    l_rot is Pool.pretext_loss, which the agent computes with the model's RotNet rotation head.
    Needs that head (FailedPrecondition without it) and a classifier (as entropy).
    Params: ``lambda`` (1.0). Score: s(x).
    """
    lam = DAS_LAMBDA_PARAM.get_float(params)
    if pool.pretext_loss is None:
        raise FailedPrecondition(
            "strategy 'das' needs the pretext-task loss, and the current model has no rotation head "
            "(rotation_logits). Publish an encoder trained with the RotNet pretext task and exported with "
            "its rotation head, or use another strategy")
    probs = candidate_probs(pool, "das", rng)
    unc = entropy_of(probs) / max(np.log(probs.shape[1]), 1e-12)
    loss = np.asarray(pool.pretext_loss, np.float64)[pool.candidates] / np.log(4.0)
    return top_k(pool.candidates, unc + lam * loss, budget)
