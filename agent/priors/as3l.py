"""AS3L's prior pseudo-labels (Wen, Pizarro & Williams, "Active self-semi-supervised learning for few
labeled samples", Neurocomputing (2024) 128772; arXiv 2203.04560v3; Sec. 3.3 and Sec. 4.1, checked
against the paper's text in ../shared/papers/001_972fd52aa54e2368.txt) by constrained seed k-means (Basu,
Banerjee & Mooney, "Semi-supervised Clustering by Seeding", ICML 2002)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import sparse
from sklearn.cluster import kmeans_plusplus

from agent.pool import Pool, Priors, check_params, param_int
from agent.priors._common import normalise_rows, require_labels, with_known_labels
from agent.strategies._common import KMEANS_FIT_ROWS, assign, seed_of

AS3L_RUNS = 6  # C (Sec. 4.1): K = 1*classes, ..., 6*classes (Sec. 4.1: K = 10, 20, ..., 60 for CIFAR-10)
MAX_ITER = 50


def constrained_seed_kmeans(x: np.ndarray, seed_rows: np.ndarray, seed_cluster: np.ndarray, k: int,
                            rng: np.random.Generator, max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """Constrained-KMeans (Basu et al. 2002, their "Constrained-KMeans" algorithm).

    Cluster h in [0, S) is seeded by the rows ``seed_rows`` with ``seed_cluster == h`` (its initial
    centre is their mean, the algorithm's initialisation step); the other K - S centres start by
    k-means++ over the rest. In every Lloyd step (minimising the k-means objective
    sum_h sum_{x in X_h} ||x - mu_h||^2) the seed rows keep their seed cluster -- that is the
    constraint -- and the other rows move to the nearest centre.

    Args:
        x: NxD rows to cluster.
        seed_rows: L int rows of x that are seeds; seed_cluster: L int in [0, S).
        k: clusters, raised to S if smaller.
    Returns: (centres KxD float32, assignment N int64). Seed rows are always in their seed cluster.
    """
    s = int(seed_cluster.max()) + 1
    k = max(k, s)
    d = x.shape[1]
    centres = np.zeros((k, d), np.float32)
    np.add.at(centres, seed_cluster, x[seed_rows])
    centres[:s] /= np.maximum(np.bincount(seed_cluster, minlength=s), 1)[:, None]
    if k > s:
        free = np.setdiff1d(np.arange(len(x)), seed_rows)
        extra, _ = kmeans_plusplus(x[free].astype(np.float32), n_clusters=min(k - s, len(free)),
                                   random_state=seed_of(rng))
        centres[s:s + len(extra)] = extra
        k = s + len(extra)
        centres = centres[:k]
    assignment = np.full(len(x), -1, np.int64)
    for _ in range(max_iter):
        new, _ = assign(x, centres)
        new[seed_rows] = seed_cluster  # the constraint
        if np.array_equal(new, assignment):
            break
        assignment = new
        counts = np.bincount(assignment, minlength=k)
        onehot = sparse.csr_matrix((np.ones(len(x)), (assignment, np.arange(len(x)))), shape=(k, len(x)))
        sums = np.asarray(onehot @ x.astype(np.float64))  # KxD per-cluster sums
        alive = counts > 0  # an emptied cluster keeps its old centre
        centres[alive] = (sums[alive] / counts[alive, None]).astype(np.float32)
    return centres, assignment


def as3l_prior(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """AS3L prior pseudo-labels (Wen et al., Sec. 3.3; K and C from Sec. 4.1): constrained seed k-means run
    C times with K_c = c * (number of classes), c = 1..C (10, 20, ..., 60 on CIFAR-10); in each run the
    labels of the labelled samples are propagated to the unlabelled samples of their cluster, and the
    C runs' votes are normalised into the prior.

    As Sec. 3.3 describes it, a cluster that holds no labelled sample propagates nothing: a row in such
    a cluster gets no vote from that run, so rows far from every labelled sample (uncovered at large K)
    carry "lower confidence". We normalise by C, so each run holds 1/C of the row's mass, and give an
    uncovered run's 1/C to all classes evenly (a row's probs must sum to 1; the paper does not say how it
    normalises). A cluster seeded by several classes splits its vote by their counts. Confidence is
    max(probs).

    Ours, where the paper is silent: every labelled sample seeds its own cluster when K_c is at least
    the labelled count, otherwise the seeds of one class form one cluster (Basu et al.'s seeding by
    label); the K_c - S clusters beyond the S seeded ones start by k-means++ over the other rows; K_c
    scales with the class count (the paper gives K only for CIFAR-10's 10 classes). Clustering is fitted
    on a uniform sample of 20k rows plus every labelled row; all requested rows are then assigned to the
    final centres. Params: ``runs`` (C = 6).
    """
    check_params(params, {"runs"}, "as3l")
    runs = param_int(params, "runs", AS3L_RUNS, minimum=1)
    require_labels(pool, "as3l")
    rows = np.asarray(rows, np.int64)
    n = len(pool.embeddings)
    num_classes = pool.num_classes
    unl = np.setdiff1d(np.arange(n), pool.labeled)
    take = min(len(unl), KMEANS_FIT_ROWS)
    fit_rows = np.concatenate([pool.labeled, np.sort(rng.choice(unl, take, replace=False))])
    x_fit = pool.embeddings[fit_rows]
    seed_rows = np.arange(len(pool.labeled))  # the labelled rows come first in fit_rows
    votes = np.zeros((len(rows), num_classes))
    for c in range(1, runs + 1):
        k = c * num_classes
        if k >= len(pool.labeled):
            seed_cluster = np.arange(len(pool.labeled))  # each labelled sample seeds a cluster
        else:
            _, seed_cluster = np.unique(pool.labels, return_inverse=True)  # one seed cluster per class
        centres, _ = constrained_seed_kmeans(x_fit, seed_rows, seed_cluster, k, rng)
        # Label distribution of each cluster's seeds (a row of zeros for a cluster without any).
        dist = np.zeros((len(centres), num_classes))
        np.add.at(dist, (seed_cluster, pool.labels), 1.0)
        dist /= np.maximum(dist.sum(axis=1, keepdims=True), 1.0)
        lab, _ = assign(pool.embeddings[rows], centres)
        covered = dist[lab]
        covered[covered.sum(axis=1) == 0] = 1.0 / num_classes  # nothing propagated: this run's mass spread
        votes += covered
    probs = normalise_rows(votes / runs)
    return with_known_labels(pool, rows, Priors(probs=probs, confidence=probs.max(axis=1).astype(np.float32)))
