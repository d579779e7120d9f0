"""Coverage strategies: coreset (k-center greedy) and ProbCover (greedy max coverage of delta-balls)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.pool import Pool, Selection, check_params, param_float, param_int
from agent.strategies._common import CHUNK, assign, cosine_to_l2, fit_kmeans, rows_matrix


def coreset(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Core-set selection by k-center greedy (Sener & Savarese, "Active Learning for Convolutional Neural
    Networks: A Core-Set Approach", ICLR 2018, Sec. 4.2 and Algorithm 1): repeatedly pick the candidate
    u = argmax_i min_j Delta(x_i, x_j) farthest from the labelled-or-picked set (the 2-approximation
    of the k-center problem, their Eq. 3/4). Delta is the Euclidean distance between the L2-normalised
    embeddings. With no labels the first centre is a random candidate (seeded).

    Cost O((L + budget) * M * D): blocked dot products, one matrix-vector product per pick.
    No params. Score: the pick's distance to the set at the time it was picked.
    """
    check_params(params, set(), "coreset")
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    x = rows_matrix(pool.embeddings, cand)  # MxD
    # Cosine similarity to the nearest centre; Euclidean distance of unit vectors = sqrt(2 - 2 cos).
    best_sim = np.full(len(cand), -np.inf, np.float32)
    if len(pool.labeled):
        labelled_x = pool.embeddings[pool.labeled]
        for start in range(0, len(cand), CHUNK):
            sim = x[start:start + CHUNK] @ labelled_x.T  # BxL
            best_sim[start:start + CHUNK] = sim.max(axis=1)
    rows: list[int] = []
    scores: list[float] = []
    picked = np.zeros(len(cand), bool)
    for _ in range(take):
        if np.isneginf(best_sim).all():
            i = int(rng.integers(len(cand)))
            score = float("inf")
        else:
            masked = np.where(picked, np.inf, best_sim)
            i = int(np.argmin(masked))  # lowest similarity = farthest; argmin breaks ties by lowest index
            score = float(cosine_to_l2(1.0 - masked[i]))
        rows.append(int(cand[i]))
        scores.append(score)
        picked[i] = True
        np.maximum(best_sim, x @ x[i], out=best_sim)
    return Selection(rows=np.asarray(rows, np.int64), scores=np.asarray(scores, np.float64))


# ProbCover defaults (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022): purity threshold alpha = 0.95,
# k-means with as many clusters as classes for the purity estimate.
PROBCOVER_ALPHA = 0.95
# The delta-ball graph is truncated to each point's nearest PROBCOVER_KNN neighbours (hnswlib), and
# built over a uniform sample of at most PROBCOVER_ROWS points to cover (an unbiased estimate of the
# covered probability mass), so a 1M-row pool needs 20k index queries, not 1M range searches.
PROBCOVER_KNN = 50
PROBCOVER_ROWS = 20_000


def purity_delta(dist: np.ndarray, nbr_cluster: np.ndarray, own_cluster: np.ndarray, alpha: float) -> float:
    """ProbCover's delta heuristic (Yehuda et al. 2022, Sec. 4 "choosing delta"): the largest delta whose
    ball purity -- the fraction of points whose delta-ball holds a single k-means cluster -- is >= alpha.

    A point's ball {x : ||x - u|| < delta} is pure exactly when delta <= r_u, its distance to the nearest
    neighbour of another cluster, so purity(delta) = mean(r_u >= delta): with r sorted ascending and
    m = floor((1 - alpha) S), the answer is r_(m) (0-based). Points with no other-cluster neighbour among
    the k use their k-th distance (a lower bound on r_u, so the estimate errs towards smaller balls).

    Args: dist SxK ascending Euclidean distances, nbr_cluster SxK and own_cluster S cluster ids.
    """
    other = nbr_cluster != own_cluster[:, None]
    first = np.where(other.any(axis=1), other.argmax(axis=1), dist.shape[1] - 1)
    radius = np.sort(dist[np.arange(len(dist)), first])
    m = min(int(np.floor((1.0 - alpha) * len(radius) + 1e-9)), len(radius) - 1)
    return float(radius[m])


def probcover(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """ProbCover (Yehuda et al., "Active Learning Through a Covering Lens", NeurIPS 2022, Sec. 4, Alg. 1):
    build the directed graph with an edge u -> v when ||x_u - x_v|| <= delta; mark every point within
    delta of a labelled point covered; then repeatedly pick the candidate whose ball covers the most
    uncovered points (greedy max coverage, the (1 - 1/e) approximation of their Eq. 2) and mark its
    ball covered. When everything is covered the rest is picked at random, as in the paper.

    Params: ``delta`` (Euclidean, on unit vectors; default from ``purity_delta`` with ``alpha``),
    ``alpha`` (0.95), ``clusters`` (k-means clusters for purity; default the class count, else 10),
    ``knn`` (50). Score: uncovered points (of the sample) the pick's ball covered.
    """
    check_params(params, {"delta", "alpha", "clusters", "knn"}, "probcover")
    alpha = param_float(params, "alpha", PROBCOVER_ALPHA, minimum=0.0, maximum=1.0)
    assert alpha is not None
    delta_param = param_float(params, "delta", None, minimum=0.0)
    knn = param_int(params, "knn", PROBCOVER_KNN, minimum=1)
    clusters = param_int(params, "clusters", pool.num_classes if pool.num_classes >= 2 else 10, minimum=2)
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    n = len(pool.embeddings)
    sample = np.arange(n) if n <= PROBCOVER_ROWS else np.sort(rng.choice(n, PROBCOVER_ROWS, replace=False))
    k = min(knn, n)
    # The query point itself comes back first at distance 0: a ball covers its own centre.
    nbr, cos_d = pool.knn(rows_matrix(pool.embeddings, sample), k)
    nbr = np.asarray(nbr, np.int64)
    dist = cosine_to_l2(cos_d)  # SxK
    if delta_param is None:
        centres = fit_kmeans(pool.embeddings, clusters, rng)
        used = np.unique(np.concatenate([nbr.ravel(), sample]))
        lab, _ = assign(pool.embeddings[used], centres)
        cluster_of = np.full(n, -1, np.int64)
        cluster_of[used] = lab
        delta = purity_delta(dist, cluster_of[nbr], cluster_of[sample], alpha)
    else:
        delta = delta_param
    src = np.repeat(np.arange(len(sample)), k)  # edge: sample point src is inside the ball of row dst
    dst = nbr.ravel()
    inside = dist.ravel() < delta  # open balls, matching purity_delta
    src, dst = src[inside], dst[inside]
    covered = np.zeros(len(sample), bool)
    if len(pool.labeled):
        is_labelled = np.zeros(n, bool)
        is_labelled[pool.labeled] = True
        covered[np.unique(src[is_labelled[dst]])] = True
    is_candidate = np.zeros(n, bool)
    is_candidate[cand] = True
    live = is_candidate[dst] & ~covered[src]
    src, dst = src[live], dst[live]
    rows: list[int] = []
    scores: list[float] = []
    chosen = np.zeros(n, bool)
    while len(rows) < take and len(src):
        gain = np.bincount(dst, minlength=n)
        v = int(np.argmax(gain))  # ties: lowest row
        rows.append(v)
        scores.append(float(gain[v]))
        chosen[v] = True
        covered[src[dst == v]] = True
        live = ~covered[src]
        src, dst = src[live], dst[live]
    if len(rows) < take:  # everything (in the sample) is covered: the rest at random
        rest = cand[~chosen[cand]]
        extra = rng.choice(rest, size=min(take - len(rows), len(rest)), replace=False)
        rows.extend(int(r) for r in extra)
        scores.extend([0.0] * len(extra))
    return Selection(rows=np.asarray(rows, np.int64), scores=np.asarray(scores, np.float64))
