"""Representative (cluster-based) strategies that need no labels: kmedoids and typiclust.

Both cluster every embedded row (the whole pool's structure, labelled rows included) and pick only
candidates. With labels already present they cluster into (labelled + budget) groups and fill the
clusters without labels first, so a second call complements the first instead of repeating it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.pool import Pool, Selection, check_params, param_int
from agent.strategies._common import (
    MAX_CLUSTERS,
    assign,
    candidate_clusters,
    fit_kmeans,
    pick_from_clusters,
    rows_matrix,
)


def _cluster_members(labels_all: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by cluster: (order N int64, starts K+1) with cluster c's rows order[starts[c]:starts[c+1]]."""
    order = np.argsort(labels_all, kind="stable")
    starts = np.searchsorted(labels_all[order], np.arange(k + 1))
    return order, starts


def kmedoids(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """k-medoids selection, the representative baseline of AS3L's experiments (Wen et al., Tables 4/5): k-means
    with k = budget (+ the labelled count), then the medoid of each cluster, largest uncovered cluster
    first.

    The medoid under squared Euclidean distance is the member nearest the cluster mean, because
    sum_i ||x_i - m||^2 = n ||m - mu||^2 + const (the k-means objective, MacQueen 1967);
    so no O(n^2) PAM swap is needed. Params: ``k`` (clusters; default labelled + budget, at most 500).
    Score: the cluster's share of the pool (0..1).
    """
    check_params(params, {"k"}, "kmedoids")
    take = min(budget, len(pool.candidates))
    k = param_int(params, "k", min(len(pool.labeled) + budget, MAX_CLUSTERS), minimum=1)
    if take == 0:
        return Selection(rows=pool.candidates[:0], scores=np.zeros(0))
    centres = fit_kmeans(pool.embeddings, k, rng)
    labels_all, sq = assign(pool.embeddings, centres)
    k = len(centres)
    sizes, labelled, has = candidate_clusters(pool, labels_all, k)
    cand = pool.candidates
    # Candidates grouped by cluster, nearest the centre first.
    order = np.lexsort((cand, sq[cand], labels_all[cand]))
    starts = np.searchsorted(labels_all[cand][order], np.arange(k + 1))
    share = sizes / len(pool.embeddings)

    def rank(c: int) -> tuple[np.ndarray, np.ndarray]:
        rows = cand[order[starts[c]:starts[c + 1]]]
        return rows, np.full(len(rows), share[c])

    return pick_from_clusters(sizes, labelled, has, rank, take)


# TypiClust defaults from the paper and its reference code (github.com/avihu111/TypiClust).
TYPICLUST_KNN = 20
TYPICLUST_MAX_CLUSTERS = MAX_CLUSTERS
TYPICLUST_MIN_CLUSTER_SIZE = 5
# Per cluster, typicality is estimated from at most this many members (uniform sample, exact distances).
TYPICLUST_SAMPLE = 1000


def typicality(points: np.ndarray, reference: np.ndarray, k: int, self_in_reference: bool) -> np.ndarray:
    """Typicality (Hacohen et al. 2022, the "typicality" equation of the TypiClust section):
    Typicality(x) = (1/K sum_{x_i in K-NN(x)} ||x - x_i||_2)^-1, over the ``k`` nearest ``reference`` rows.
    ``points`` PxD, ``reference`` RxD; returns P float64. With ``self_in_reference`` the zero
    distance of each point to itself is skipped."""
    if len(points) == 0:
        return np.zeros(0)
    skip = 1 if self_in_reference else 0
    k = max(1, min(k, len(reference) - skip))
    sq = (np.einsum("pd,pd->p", points, points)[:, None] + np.einsum("rd,rd->r", reference, reference)[None, :]
          - 2.0 * points @ reference.T)  # PxR squared distances
    dist = np.sqrt(np.maximum(sq, 0.0))
    if dist.shape[1] <= skip:
        return np.ones(len(points))
    nearest = np.partition(dist, min(k + skip, dist.shape[1]) - 1, axis=1)[:, : k + skip]
    nearest.sort(axis=1)
    mean = nearest[:, skip:skip + k].mean(axis=1)
    return 1.0 / (mean + 1e-12)


def typiclust(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High
    and Low Budgets", ICML 2022; the TypiClust section and its algorithm box).

    Cluster the pool into min(labelled + budget, max_clusters) k-means clusters; repeatedly take the
    cluster with the fewest labelled-or-picked members (ties: the largest; clusters under
    ``min_cluster_size`` last) and pick its most typical candidate, typicality being the inverse mean
    distance to the ``knn`` nearest neighbours (see ``typicality``). As in the authors' code the
    neighbours are searched among the cluster's members; clusters larger than 1000 rows use a uniform
    sample of 1000 members as the reference set, so a 1M-row pool costs a few dense products per pick.
    Params: ``knn`` (20), ``max_clusters`` (500), ``min_cluster_size`` (5). Score: typicality.
    """
    check_params(params, {"knn", "max_clusters", "min_cluster_size"}, "typiclust")
    knn = param_int(params, "knn", TYPICLUST_KNN, minimum=1)
    max_clusters = param_int(params, "max_clusters", TYPICLUST_MAX_CLUSTERS, minimum=1)
    min_size = param_int(params, "min_cluster_size", TYPICLUST_MIN_CLUSTER_SIZE, minimum=1)
    take = min(budget, len(pool.candidates))
    if take == 0:
        return Selection(rows=pool.candidates[:0], scores=np.zeros(0))
    emb = pool.embeddings
    centres = fit_kmeans(emb, min(len(pool.labeled) + budget, max_clusters), rng)
    labels_all, _ = assign(emb, centres)
    k = len(centres)
    sizes, labelled, has = candidate_clusters(pool, labels_all, k)
    members, starts = _cluster_members(labels_all, k)
    is_candidate = np.zeros(len(emb), bool)
    is_candidate[pool.candidates] = True

    def rank(c: int) -> tuple[np.ndarray, np.ndarray]:
        rows = members[starts[c]:starts[c + 1]]
        ref = rows if len(rows) <= TYPICLUST_SAMPLE else np.sort(rng.choice(rows, TYPICLUST_SAMPLE, replace=False))
        cand = rows[is_candidate[rows]]
        if len(cand) > TYPICLUST_SAMPLE:
            cand = np.sort(rng.choice(cand, TYPICLUST_SAMPLE, replace=False))
        in_ref = np.isin(cand, ref)
        score = np.empty(len(cand))
        ref_x = rows_matrix(emb, ref).astype(np.float64)
        for mask, self_in in ((in_ref, True), (~in_ref, False)):
            score[mask] = typicality(emb[cand[mask]].astype(np.float64), ref_x, knn, self_in)
        order = np.lexsort((cand, -score))
        return cand[order], score[order]

    return pick_from_clusters(sizes, labelled, has, rank, take, min_cluster_size=min_size)
