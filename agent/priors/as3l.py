"""AS3L's prior pseudo-labels (Wen, Pizarro & Williams, "Active self-semi-supervised learning for few
labeled samples", Neurocomputing (2024) 128772; arXiv 2203.04560v3; Sec. 3.3 and Sec. 4.1, checked
against the paper's text in ../shared/papers/001_972fd52aa54e2368.txt; Sec. 3.3 states its rule in words,
with no equation) by constrained seed k-means (Basu, Banerjee & Mooney, "Semi-supervised Clustering by
Seeding", ICML 2002, their Constrained-KMeans algorithm, AS3L's reference [5]; section and equation
numbers not checked: paper not in shared/papers)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import sparse

from agent.cancel import checkpoint
from agent.lazy import deferred
from agent.params import Param, prior_method
from agent.pool import Pool, Priors
from agent.priors._common import nearest_labelled_distance, normalise_rows, require_labels, with_known_labels
from agent.strategies._common import KMEANS_FIT_ROWS, assign, one_blas_thread, seed_of

AS3L_RUNS = 6  # C (Sec. 4.1): K = 1*classes, ..., 6*classes (Sec. 4.1: 10, 20, ..., 60 on CIFAR-10)
MAX_ITER = 50
AS3L_RUNS_PARAM = Param("runs", "int", AS3L_RUNS, "C, the constrained k-means runs (K = c * classes, c = 1..C)", 1, 10)


def constrained_seed_kmeans(x: np.ndarray, seed_rows: np.ndarray, seed_cluster: np.ndarray, k: int,
                            rng: np.random.Generator, max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """Constrained-KMeans (Basu, Banerjee & Mooney, "Semi-supervised Clustering by Seeding", ICML 2002, their
    "Constrained-KMeans" algorithm; section and equation numbers not checked: paper not in shared/papers),
    as AS3L Sec. 3.3 uses it (../shared/papers/001_972fd52aa54e2368.txt, "constrained seed K-Means [5]").
    Deviation: Basu et al. take K = the number of seed sets, every cluster seeded; here K may exceed S
    (AS3L's K = c x classes, Sec. 4.1) and the K - S unseeded centres start by k-means++.

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
    # One float64 copy for k-means++ and the centre sums, made once: made in every Lloyd step it was a
    # large part of the step's time (docs/reliability.md, "PriorLabels as3l and llgc").
    x64 = np.asarray(x, np.float64)
    free = np.setdiff1d(np.arange(len(x)), seed_rows) if k > s else np.empty(0, np.int64)
    if len(free):  # (none: every row is a seed, and the S seeded clusters are all there is)
        with one_blas_thread():
            kmeans_plusplus = deferred("sklearn.cluster").kmeans_plusplus  # on first use (agent.lazy)
            extra, _ = kmeans_plusplus(x64[free], n_clusters=min(k - s, len(free)),
                                       random_state=seed_of(rng))
        centres[s:s + len(extra)] = extra
        k = s + len(extra)
        centres = centres[:k]
    assignment = np.full(len(x), -1, np.int64)
    # One BLAS thread (as for k-means++; ``shortlist serve`` runs BLAS at one thread anyway, agent/threads.py,
    # so this is for library use: bench strategies, scripts): a step's products are thin (NxD by DxK), and
    # BLAS threads spin beside another busy process (docs/reliability.md, "PriorLabels as3l and llgc").
    with one_blas_thread():
        for _ in range(max_iter):
            checkpoint()
            new, _ = assign(x, centres)
            new[seed_rows] = seed_cluster  # the constraint
            if np.array_equal(new, assignment):
                break
            assignment = new
            counts = np.bincount(assignment, minlength=k)
            onehot = sparse.csr_matrix((np.ones(len(x)), (assignment, np.arange(len(x)))), shape=(k, len(x)))
            sums = np.asarray(onehot @ x64)  # KxD per-cluster sums
            alive = counts > 0  # an emptied cluster keeps its old centre
            centres[alive] = (sums[alive] / counts[alive, None]).astype(np.float32)
    return centres, assignment


def fit_rows_count(rows: int, labelled: int) -> int:
    """Rows the constrained k-means are fitted on: every labelled row and up to KMEANS_FIT_ROWS others."""
    return labelled + min(max(rows - labelled, 0), KMEANS_FIT_ROWS)


def as3l_prior_work(params: Mapping[str, str], rows: int, labelled: int, classes: int, requested: int) -> float:
    """What an as3l PriorLabels call's CPU cost grows in proportion to (at most): C constrained k-means with
    K_c = c * classes clusters (c = 1..C, C the ``runs`` param), each over the fit rows (``fit_rows_count``)
    and then assigning the ``requested`` rows: (fit rows + requested) x classes x C (C + 1) / 2."""
    runs = AS3L_RUNS_PARAM.get_int(params)
    return float(max(1, fit_rows_count(rows, labelled) + requested) * max(1, classes) * runs * (runs + 1) // 2)


@prior_method("as3l", AS3L_RUNS_PARAM, work=as3l_prior_work)
def as3l_prior(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """AS3L prior pseudo-labels (Wen et al., Sec. 3.3; K and C from Sec. 4.1): constrained seed k-means run
    C times with K_c = c * (number of classes), c = 1..C; in each run every labelled sample seeds its own cluster
    (one seed cluster per class when K_c is smaller than the labelled count), labels spread to the
    cluster's members (a cluster with no seed takes the label of the nearest seeded centre), the C
    one-hot votes are summed and normalised into probs. The extra k-means++ centres when K exceeds the
    seeds, and unseeded clusters taking the nearest seeded centre's class, are ours (Basu et al. seed
    every cluster). Sec. 3.3 instead leaves the rows of a cluster without labelled samples unpropagated
    (fewer votes, "lower confidence"); we tried it, and with class-level seeding below the labelled count
    most clusters are unseeded, which one calibration temperature cannot correct (docs/strategies.md), so
    the nearest seeded centre votes instead.

    Confidence (ours): max(probs) times a proximity factor 1 / (1 + (d / d_med)^2), d the distance to
    the nearest labelled sample and d_med its median over the pool, so rows far from every labelled
    sample are trusted less (Sec. 3.3 asks for lower confidence far from any labelled sample).
    Clustering is fitted on a uniform sample of 20k rows plus every labelled row; all requested rows are
    then assigned to the final centres. Params: ``runs`` (C = 6).
    """
    runs = AS3L_RUNS_PARAM.get_int(params)
    require_labels(pool, "as3l")
    rows = np.asarray(rows, np.int64)
    n = len(pool.embeddings)
    num_classes = pool.num_classes
    unl = np.setdiff1d(np.arange(n), pool.labeled)
    take = min(len(unl), KMEANS_FIT_ROWS)  # (as fit_rows_count)
    fit_rows = np.concatenate([pool.labeled, np.sort(rng.choice(unl, take, replace=False))])
    x_fit = pool.embeddings[fit_rows]
    seed_rows = np.arange(len(pool.labeled))  # the labelled rows come first in fit_rows
    votes = np.zeros((len(rows), num_classes))
    for c in range(1, runs + 1):
        checkpoint()
        k = c * num_classes
        if k >= len(pool.labeled):
            seed_cluster = np.arange(len(pool.labeled))  # each labelled sample seeds a cluster
            cluster_class = pool.labels.copy()
        else:
            classes, seed_cluster = np.unique(pool.labels, return_inverse=True)
            cluster_class = classes
        centres, _ = constrained_seed_kmeans(x_fit, seed_rows, seed_cluster, k, rng)
        s = len(cluster_class)
        # Unseeded clusters take the class of the nearest seeded centre.
        label_of_cluster = np.empty(len(centres), np.int64)
        label_of_cluster[:s] = cluster_class
        if len(centres) > s:
            nearest, _ = assign(centres[s:], centres[:s])
            label_of_cluster[s:] = cluster_class[nearest]
        lab, _ = assign(pool.embeddings[rows], centres)
        votes[np.arange(len(rows)), label_of_cluster[lab]] += 1.0
    probs = normalise_rows(votes)
    d = nearest_labelled_distance(pool, rows)
    d_med = max(float(np.median(nearest_labelled_distance(pool, unl[:: max(1, len(unl) // 10_000)]))
                      if len(unl) else 1.0), 1e-6)
    proximity = 1.0 / (1.0 + (d / d_med) ** 2)
    return with_known_labels(pool, rows, Priors(probs=probs, confidence=(probs.max(axis=1) * proximity)
                                                .astype(np.float32)))
