"""Representative (cluster-based) strategies that need no labels: kmedoids and typiclust.

Both cluster every embedded row (the whole pool's structure, labelled rows included) and pick only
candidates. With labels already present they cluster into (labelled + budget) groups and fill the
clusters without labels first, so a second call complements the first instead of repeating it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.cancel import checkpoint
from agent.params import KMeansWork, Param, strategy
from agent.pool import Pool, Selection
from agent.strategies._common import (
    KMEANS_CPU_PER_UNIT,
    MAX_CLUSTERS,
    assign,
    candidate_clusters,
    cosine_to_l2,
    fit_kmeans,
    pick_from_clusters,
)


def _cluster_members(labels_all: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by cluster: (order N int64, starts K+1) with cluster c's rows order[starts[c]:starts[c+1]]."""
    order = np.argsort(labels_all, kind="stable")
    starts = np.searchsorted(labels_all[order], np.arange(k + 1))
    return order, starts


KMEDOIDS_K = Param("k", "int", None, "k-means clusters", 1, MAX_CLUSTERS,
                   default_doc=f"labelled + budget, at most {MAX_CLUSTERS}")


def kmedoids_kmeans(params: Mapping[str, str], labelled: int, budget: int) -> KMeansWork:
    """kmedoids' k-means (one fit): k = the ``k`` param, else labelled + budget, at most MAX_CLUSTERS."""
    return KMeansWork(KMEDOIDS_K.get_int(params, min(labelled + budget, MAX_CLUSTERS)))


@strategy("kmedoids", KMEDOIDS_K, needs="model", kmeans=kmedoids_kmeans, cpu_per_unit=KMEANS_CPU_PER_UNIT)
def kmedoids(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """k-medoids selection, the representative baseline of AS3L's experiments (Wen et al., Tables 4/5): k-means
    with k = budget (+ the labelled count), then the medoid of each cluster, largest uncovered cluster
    first.

    The medoid under squared Euclidean distance is the member nearest the cluster mean, because
    sum_i ||x_i - m||^2 = n ||m - mu||^2 + const (the k-means objective, MacQueen 1967);
    so no O(n^2) PAM swap is needed. Params: ``k`` (clusters; default labelled + budget, at most 500).
    Score: the cluster's share of the pool (0..1).
    """
    take = min(budget, len(pool.candidates))
    k = kmedoids_kmeans(params, len(pool.labeled), budget).k
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


# TypiClust defaults from the authors' code (github.com/avihu111/TypiClust, deep-al/pycls/al/typiclust.py):
# K = 20 neighbours, at most 500 clusters, clusters of <= 5 members set aside.
TYPICLUST_KNN = 20
TYPICLUST_MAX_CLUSTERS = MAX_CLUSTERS
TYPICLUST_MIN_CLUSTER_SIZE = 5
# Per cluster, typicality is computed for at most this many candidates (a uniform sample), so a 1M-row
# pool costs at most 1000 index queries per pick; and for at most TYPICLUST_QUERIES / clusters of them, so
# a whole Select asks the index at most ~20,000 queries: the index queries were most of typiclust's time
# (measured: docs/reliability.md, "Select at 50,000 rows").
TYPICLUST_SAMPLE = 1000
TYPICLUST_QUERIES = 20_000
TYPICLUST_NEIGHBOURS = ("index", "cluster")
TYPICLUST_PARAMS = (
    Param("knn", "int", TYPICLUST_KNN, "neighbours K of the typicality", 1, 100),
    Param("max_clusters", "int", TYPICLUST_MAX_CLUSTERS, "k-means clusters at most (labelled + budget below it)",
          1, MAX_CLUSTERS),
    Param("min_cluster_size", "int", TYPICLUST_MIN_CLUSTER_SIZE, "clusters of at most this many members come last",
          0, 10_000),
    Param("neighbours", "choice", "index", "where the K neighbours come from: the pool's index, or the "
          "cluster's members (the authors' code)", choices=TYPICLUST_NEIGHBOURS),
)


def typicality(points: np.ndarray, reference: np.ndarray, k: int, self_in_reference: bool) -> np.ndarray:
    """Typicality (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High
    and Low Budgets", ICML 2022, the typicality TypiClust picks by; equation number not checked: paper not
    in shared/papers): Typicality(x) = (1/K sum_{x_i in K-NN(x)} ||x - x_i||_2)^-1, the inverse mean
    Euclidean distance to the ``k`` nearest ``reference`` rows, computed exactly. ``points`` PxD,
    ``reference`` RxD; returns P float64 (1 / distance units; 1e-12 added to the mean, so a point whose K
    neighbours coincide with it scores 1e12 instead of dividing by zero). With ``self_in_reference`` the
    zero distance of each point to itself is skipped."""
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


def index_typicality(pool: Pool, rows: np.ndarray, k: int) -> np.ndarray:
    """Typicality of ``rows`` (R int64) over their ``k`` nearest neighbours in the whole pool, from the
    pool's kNN index (hnswlib in the agent); each row's own hit is skipped. Returns R float64. The same
    formula as ``typicality`` (Hacohen et al. 2022), with the neighbours approximate (the index's) instead of
    exact and drawn from the whole pool (ours: the authors' code searches the cluster's members)."""
    if len(rows) == 0 or len(pool.embeddings) < 2:  # (a lone row has no neighbour to be typical among)
        return np.zeros(len(rows))
    k = max(1, min(k, len(pool.embeddings) - 1))
    nbr, cos_d = pool.knn(pool.embeddings[rows], k + 1)
    dist = cosine_to_l2(cos_d)  # Euclidean distance between unit vectors
    own = nbr == rows[:, None]
    # Drop the row itself; a row the index did not return as its own hit (duplicates) drops its farthest.
    own[~own.any(axis=1), -1] = True
    keep = dist[~own].reshape(len(rows), -1)[:, :k]
    return 1.0 / (keep.mean(axis=1) + 1e-12)


def typiclust_kmeans(params: Mapping[str, str], labelled: int, budget: int) -> KMeansWork:
    """typiclust's k-means (one fit): k = labelled + budget, at most the ``max_clusters`` param."""
    return KMeansWork(min(labelled + budget, TYPICLUST_PARAMS[1].get_int(params)))


@strategy("typiclust", *TYPICLUST_PARAMS, needs="model", kmeans=typiclust_kmeans, cpu_per_unit=KMEANS_CPU_PER_UNIT)
def typiclust(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High
    and Low Budgets", ICML 2022, PMLR 162:8175-8195).

    Cluster the pool into min(labelled + budget, max_clusters) k-means clusters; repeatedly take the
    cluster with the fewest labelled-or-picked members (ties: the largest) and pick its most typical
    candidate, typicality being the inverse mean Euclidean distance to the ``knn`` nearest neighbours.
    Clusters of at most ``min_cluster_size`` members are set aside, as in the authors' code, and used
    only when the other clusters have no candidates left (the authors' code drops them).

    ``neighbours=index`` (default) takes the neighbours from the pool's kNN index (hnswlib), i.e. the
    density of the whole pool around the candidate; ``neighbours=cluster`` takes them among the cluster's
    unlabelled members with K = min(knn, members // 2), as the authors' code does. Either way at most
    min(1000, 20000 / clusters) candidates per cluster (at least 100) are scored (a uniform sample), so the
    index answers at most ~20,000 queries per Select.
    Params: ``knn`` (20), ``max_clusters`` (500), ``min_cluster_size`` (5), ``neighbours`` (index).
    Score: typicality.
    """
    p_knn, _, p_min, p_neighbours = TYPICLUST_PARAMS
    knn = p_knn.get_int(params)
    min_size = p_min.get_int(params)
    neighbours = p_neighbours.get_choice(params)
    take = min(budget, len(pool.candidates))
    if take == 0:
        return Selection(rows=pool.candidates[:0], scores=np.zeros(0))
    emb = pool.embeddings
    centres = fit_kmeans(emb, typiclust_kmeans(params, len(pool.labeled), budget).k, rng)
    labels_all, _ = assign(emb, centres)
    k = len(centres)
    sizes, labelled, has = candidate_clusters(pool, labels_all, k)
    members, starts = _cluster_members(labels_all, k)
    is_candidate = np.zeros(len(emb), bool)
    is_candidate[pool.candidates] = True
    per_cluster = min(TYPICLUST_SAMPLE, max(100, TYPICLUST_QUERIES // k))

    def rank(c: int) -> tuple[np.ndarray, np.ndarray]:
        checkpoint()
        rows = members[starts[c]:starts[c + 1]]
        cand = rows[is_candidate[rows]]
        scored = cand if len(cand) <= per_cluster else np.sort(rng.choice(cand, per_cluster, replace=False))
        if neighbours == "index":
            score = index_typicality(pool, scored, knn)
        else:  # the authors' variant: neighbours among the cluster's unlabelled members
            ref = cand if len(cand) <= per_cluster else scored
            score = typicality(emb[scored].astype(np.float64), emb[ref].astype(np.float64),
                               max(1, min(knn, len(ref) // 2)), self_in_reference=True)
        order = np.lexsort((scored, -score))
        return scored[order], score[order]

    return pick_from_clusters(sizes, labelled, has, rank, take, min_cluster_size=min_size)
