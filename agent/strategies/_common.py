"""Building blocks shared by the strategies and prior methods: k-means that scales, nearest-centre
assignment, deterministic top-k, and the "least-covered cluster first" picking loop.

Everything works on L2-normalised embeddings (Pool.embeddings); numpy / scikit-learn only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from agent.cancel import checkpoint
from agent.lazy import deferred
from agent.pool import Pool, Selection
from agent.threads import limited

# k-means is fitted on at most this many rows (a uniform sample) and then every row is assigned to its
# nearest centre. Lloyd's centres from a uniform sample of 20k rows estimate the full-data centres well
# for k <= a few hundred (the same trick MiniBatchKMeans uses), and keep Select on 1M rows within seconds.
KMEANS_FIT_ROWS = 20_000
# ... and on no more than this many rows per centre (at least KMEANS_MIN_ROWS): 50 sample rows per centre
# estimate its mean well, and k-means' cost is rows x k, so a 50,000-row pool at k = 120 fits on 6,000
# rows instead of 20,000 (Select at 50,000 rows in docs/reliability.md).
KMEANS_ROWS_PER_CENTRE = 50
KMEANS_MIN_ROWS = 5_000
# k-means restarts (best inertia kept): one k-means++ start too often puts two centres in one blob and
# merges two others, which costs a whole class at budget = #classes.
KMEANS_INIT = 3
# Lloyd iterations per start. Structured embeddings converge in tens; structureless ones (the 1M random
# vectors of the scale benchmark) would run sklearn's 300 without changing what a strategy picks much.
KMEANS_MAX_ITER = 50
# Lloyd iterations per uninterruptible scikit-learn call (a cancellation checkpoint between calls).
KMEANS_STEP_ITER = 10
# Up to this many centres k-means++ is sklearn's greedy variant (2 + ln k candidate centres tried per
# pick, the best kept); beyond, the plain k-means++ of Arthur & Vassilvitskii ("k-means++: The Advantages
# of Careful Seeding", SODA 2007, Sec. 2.2: one D^2-weighted draw per centre), whose O(log k)
# guarantee is the same: at k = 500 the greedy seeding cost over twice the CPU for a final inertia barely
# lower (docs/reliability.md, "Measured", k-means at many centres).
KMEANS_GREEDY_MAX_K = 128
# Rows per block in blocked matrix products, so a 1M-row pool never needs an NxK float64 temporary.
CHUNK = 65_536
# Elements (rows x columns) of one block of a pairwise-similarity product: ~32 MB of float32.
BLOCK_ELEMENTS = 8_000_000
# Cap on k-means clusters for the cluster strategies (TypiClust's max_clusters); with thousands of labels
# labelled + budget clusters would make k-means the whole cost of a request.
MAX_CLUSTERS = 500
# Prior CPU seconds per unit of work size (rows x min(labelled + budget, MAX_CLUSTERS)) of the k-means
# strategies (typiclust, kmedoids, as3l), which admission expects of a first call before any of theirs is
# measured (agent/admission.py, "Size-aware estimates"; @strategy's cpu_per_unit). 5e-7 is above what
# typiclust and as3l took per unit on the load's 50,000-row pool, and a first call at the cap (50,000 x 500:
# 12.5 CPU s) is still admitted alone within a 30 s deadline (twice its prior). Not an upper bound for every
# pool: k-means iterations depend on the data, and random blobs cost several times more per unit. Figures:
# docs/reliability.md, Load, the paragraph on KMEANS_CPU_PER_UNIT.
KMEANS_CPU_PER_UNIT = 5e-7
# Greedy strategies with one matrix-vector product over the candidates per pick (coreset, badge) are
# light work (agent/params.py StrategyEntry.light_budget) up to this budget: one product a pick is cheap at
# 50,000 x 256.
LIGHT_GREEDY_BUDGET = 200
# Prior CPU seconds per unit of the greedy strategies' work size (coreset: rows x (labelled + budget); badge:
# rows x (budget + 1); one pass of a matrix-vector product, a mask and an argmin over the pool per pick),
# which admission expects of a first call before any of theirs is measured: the loop's cost at D = 512 when
# the pool does not fit in the CPU cache and other processes share memory bandwidth (the pass is
# memory-bound, and thread CPU time counts the stalls), the most it measured; a pool in cache costs several
# times less (scripts/experiments/greedy_cost.py; figures in docs/reliability.md, "Greedy strategies declare
# their work"). So a big-budget call is refused at once under a short deadline instead of being admitted at
# the lane's mean and cut off by DEADLINE_EXCEEDED.
GREEDY_CPU_PER_UNIT = 2e-7


def greedy_work(rows: int, picks: int) -> float:
    """A greedy strategy's work size: ``picks`` passes over the pool's ``rows`` (StrategyEntry.work_size)."""
    return float(max(1, rows) * max(1, picks))


def one_blas_thread() -> AbstractContextManager[object]:
    """A context in which BLAS runs single-threaded. For scikit-learn's k-means (its Lloyd loop is already
    parallel with OpenMP, and k-means++ makes hundreds of thin products) and small logistic-regression
    fits: multi-threaded BLAS on such products costs several times the CPU (threads spinning), and far
    more wall time when other requests share the cores (measured with sklearn.cluster.kmeans_plusplus,
    k = 120 on 6,000 x 256 rows, under load)."""
    return limited(1, "blas")  # threadpool_limits(limits=1, user_api="blas"), without its scan of the libraries


def block_rows(columns: int) -> int:
    """Rows per block of a (rows x ``columns``) product so one block holds about BLOCK_ELEMENTS values."""
    return max(1, BLOCK_ELEMENTS // max(columns, 1))


def seed_of(rng: np.random.Generator) -> int:
    """A 31-bit integer seed drawn from ``rng``, for libraries that take ``random_state``."""
    return int(rng.integers(0, 2**31 - 1))


def rows_matrix(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``embeddings[rows]`` (RxD float32), without a copy when ``rows`` is all rows in order."""
    if len(rows) == len(embeddings) and (len(rows) == 0 or (rows[0] == 0 and np.all(np.diff(rows) == 1))):
        return embeddings
    return embeddings[rows]


def fit_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, fit_rows: int = KMEANS_FIT_ROWS,
               n_init: int = KMEANS_INIT, max_iter: int = KMEANS_MAX_ITER) -> np.ndarray:
    """Lloyd's k-means (scikit-learn, k-means++ init, best of ``n_init`` starts) on ``x`` (NxD), fitted on
    a uniform sample of at most ``fit_rows`` rows (and at most KMEANS_ROWS_PER_CENTRE per centre, at least
    KMEANS_MIN_ROWS). Returns the KxD float32 centres; k is clipped to the
    number of rows.

    The starts run one at a time, and each start's Lloyd iterations in steps of KMEANS_STEP_ITER
    (every step resumes from the previous step's centres, which is what one longer run does), with a
    cancellation checkpoint between steps: one uninterruptible scikit-learn call is at most
    KMEANS_STEP_ITER iterations (or the k-means++ init) on at most ``fit_rows`` rows."""
    n = len(x)
    k = max(1, min(k, n))
    fit_rows = min(fit_rows, max(KMEANS_ROWS_PER_CENTRE * k, KMEANS_MIN_ROWS))
    sample = x if n <= fit_rows else x[np.sort(rng.choice(n, size=fit_rows, replace=False))]
    # k-means++ in float64 on purpose: sklearn's k-means++ computes float32 distances through a slow
    # chunked upcast (a much slower init), and the sample is small. Lloyd's iterations run in float32
    # (sklearn keeps the input's dtype): cheaper, for the same inertia to a few digits (docs/reliability.md,
    # "Measured", k-means at many centres).
    cluster = deferred("sklearn.cluster")  # imported on first use (agent/lazy.py)
    KMeans, kmeans_plusplus = cluster.KMeans, cluster.kmeans_plusplus

    data64 = np.asarray(sample, np.float64)
    data = np.asarray(sample, np.float32)
    trials = None if k <= KMEANS_GREEDY_MAX_K else 1
    best: tuple[float, np.ndarray] | None = None
    for seed in rng.integers(0, 2**31 - 1, size=max(1, n_init)):
        checkpoint()
        with one_blas_thread():
            centres, _ = kmeans_plusplus(data64, k, random_state=int(seed), n_local_trials=trials)
        done = 0
        while True:  # Lloyd in steps, resumed from the previous step's centres, until converged or max_iter
            checkpoint()
            step = min(KMEANS_STEP_ITER, max_iter - done)
            with one_blas_thread():
                km = KMeans(n_clusters=k, init=np.asarray(centres, np.float32), n_init=1, max_iter=step).fit(data)
            done += int(km.n_iter_)
            centres = km.cluster_centers_
            if done >= max_iter or km.n_iter_ < step:
                break
        if best is None or float(km.inertia_) < best[0]:
            best = (float(km.inertia_), km.cluster_centers_)
    assert best is not None
    return np.asarray(best[1], np.float32)


def assign(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre for each row of ``x`` (NxD) among ``centres`` (KxD), in blocks of CHUNK rows.

    Returns (labels N int64, squared Euclidean distances N float32)."""
    n = len(x)
    labels = np.empty(n, np.int64)
    dist = np.empty(n, np.float32)
    c = np.asarray(centres, np.float32)
    half_norm = 0.5 * np.einsum("kd,kd->k", c, c)  # K: ||c||^2 / 2
    # Blocks of at most BLOCK_ELEMENTS scores (32 MB): a 65,536 x 500 block was a fresh 131 MB mapping
    # (page faults on every call, and RSS peaks) for no gain in speed.
    step = min(CHUNK, block_rows(len(c)))
    for start in range(0, n, step):
        checkpoint()
        block = np.asarray(x[start:start + step], np.float32)
        # argmin ||x - c||^2 = argmax (x.c - ||c||^2/2): one matrix product per block.
        score = block @ c.T - half_norm  # BxK
        best = np.argmax(score, axis=1)
        labels[start:start + step] = best
        sq = np.einsum("bd,bd->b", block, block) - 2.0 * score[np.arange(len(block)), best]
        dist[start:start + step] = np.maximum(sq, 0.0)
    return labels, dist


def _max_similarity(rows_x: np.ndarray, lab_x: np.ndarray, out: np.ndarray) -> None:
    """out[i] = max(out[i], max_j rows_x[i] . lab_x[j]), in blocks of BLOCK_ELEMENTS products."""
    if len(lab_x) == 0:
        return
    step = block_rows(len(lab_x))
    for start in range(0, len(rows_x), step):
        checkpoint()
        part = out[start:start + step]
        np.maximum(part, (rows_x[start:start + step] @ lab_x.T).max(axis=1), out=part)


def labelled_similarity(pool: Pool) -> np.ndarray:
    """Per pool row, the cosine similarity to its most similar labelled row (N float32, read-only; -inf
    with no labels): k-center greedy's starting distances (coreset).

    A full computation is N x L x D multiply-adds (50,000 rows x 5,000 labels x 128: seconds on two cores),
    and labels arrive a few at a time between Selects, so the answer is kept in ``pool.memo`` and brought
    up to date from the last one whose labelled rows are a subset of this pool's: only the new labelled
    rows (against every row) and the new rows (against every labelled row) are multiplied. Labels are
    only ever added or changed (a labelled row stays labelled), so under one model version the update
    is the common case; anything else computes afresh."""
    x = pool.embeddings
    n = len(x)
    lab = np.unique(pool.labeled)
    best = np.full(n, -np.inf, np.float32)
    prev = pool.memo.get("labelled_similarity") if pool.memo is not None else None
    if prev is not None and prev[0] <= n and np.isin(prev[1], lab, assume_unique=True).all():
        n0, lab0, best0 = prev
        best[:n0] = best0
        _max_similarity(x[:n0], x[np.setdiff1d(lab, lab0, assume_unique=True)], best[:n0])
        _max_similarity(x[n0:], x[lab], best[n0:])
    else:
        _max_similarity(x, x[lab], best)
    best.setflags(write=False)
    if pool.memo is not None and (prev is None or (n >= prev[0] and len(lab) >= len(prev[1]))):
        pool.memo.put("labelled_similarity", (n, lab, best))
    return best


def embedding_mean(pool: Pool) -> np.ndarray:
    """The mean of the pool's embeddings (D float32), from a running float64 sum kept in ``pool.memo``
    (rows of a version only grow: the rows added since are summed)."""
    x = pool.embeddings
    n = len(x)
    prev = pool.memo.get("embedding_sum") if pool.memo is not None else None
    if prev is not None and prev[0] <= n:
        total = prev[1] + x[prev[0]:].sum(axis=0, dtype=np.float64)
    else:
        total = x.sum(axis=0, dtype=np.float64)
    if pool.memo is not None and (prev is None or n > prev[0]):
        pool.memo.put("embedding_sum", (n, total))
    return np.asarray(total / max(n, 1), np.float32)


def pool_knn_graph(pool: Pool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``pool.knn`` of every row (rows NxK int64, cosine distances NxK float32, read-only), kept in
    ``pool.memo`` for this row count and k. The graph depends on the embeddings alone, not on the labels,
    and a calibrated prior runs its method once per fold and once more for the answer
    (agent/priors/calibration.py), so a whole-pool query of the agent's hnswlib index was most of a
    PriorLabels llgc call (docs/reliability.md, "PriorLabels as3l and llgc"). One entry, replaced as a
    whole: N x K x 12 bytes."""
    n = len(pool.embeddings)
    prev = pool.memo.get("pool_knn_graph") if pool.memo is not None else None
    if prev is not None and prev[0] == n and prev[1] == k:
        return prev[2], prev[3]
    nbr, dist = pool.knn(rows_matrix(pool.embeddings, np.arange(n)), k)
    nbr, dist = np.asarray(nbr, np.int64), np.asarray(dist, np.float32)
    nbr.setflags(write=False)
    dist.setflags(write=False)
    if pool.memo is not None:
        pool.memo.put("pool_knn_graph", (n, k, nbr, dist))
    return nbr, dist


def top_k(rows: np.ndarray, scores: np.ndarray, take: int) -> Selection:
    """The ``take`` rows with the highest scores, best first; ties go to the lower row index (so the
    answer is a function of the pool alone)."""
    take = min(take, len(rows))
    if take == 0:
        return Selection(rows=rows[:0].astype(np.int64), scores=np.zeros(0))
    scores = np.asarray(scores, np.float64)
    # argpartition keeps this O(M) on a 1M-row pool; the final lexsort orders only the winners.
    if take < len(rows):
        kth = np.argpartition(-scores, take - 1)[:take]
        threshold = scores[kth].min()
        keep = np.flatnonzero(scores >= threshold)  # every row tied at the threshold, then cut below
    else:
        keep = np.arange(len(rows))
    order = keep[np.lexsort((rows[keep], -scores[keep]))][:take]
    return Selection(rows=np.asarray(rows[order], np.int64), scores=scores[order])


def cosine_to_l2(d: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine distance ``1 - cos``: sqrt(2 d)."""
    return np.sqrt(np.maximum(2.0 * np.asarray(d, np.float64), 0.0))


# Given a cluster id, its candidate rows in preference order with their scores (higher = better).
RankCluster = Callable[[int], tuple[np.ndarray, np.ndarray]]


def pick_from_clusters(cluster_sizes: np.ndarray, labelled_per_cluster: np.ndarray,
                       has_candidates: np.ndarray, rank: RankCluster, take: int,
                       min_cluster_size: int = 0) -> Selection:
    """Pick ``take`` rows, one at a time, from the cluster that is least covered so far (fewest
    labelled + already picked), breaking ties by the largest cluster; within a cluster, the next row
    in ``rank(cluster)`` order. Clusters of at most ``min_cluster_size`` members come after every
    other cluster is exhausted (TypiClust sets them aside).

    Shortlist's own generalisation (not a paper's algorithm as such) of TypiClust's selection loop
    (Hacohen et al. 2022; the order -- fewest labelled, then largest -- is from the authors' code, which
    sorts clusters by labelled count, then size): the within-cluster ranking is a parameter, so typiclust,
    kmedoids and as3l share one loop, and each cluster is ranked once (the authors re-score a cluster after
    each pick) and its small clusters come last instead of being dropped, so a budget can always be filled.
    docs/strategies.md, "Provenance of the algorithms" (TypiClust), says where the picks can differ.
    Returns a Selection of at most ``take`` rows (int64) with their ``rank`` scores (float64), in pick order.

    Args:
        cluster_sizes: K cluster sizes over the whole pool.
        labelled_per_cluster: K counts of labelled rows per cluster.
        has_candidates: K bools, False for clusters without any candidate row.
        rank: cluster id -> (candidate rows, scores), best first; called at most once per cluster.
    """
    k = len(cluster_sizes)
    covered = labelled_per_cluster.astype(np.int64).copy()
    small = (cluster_sizes <= min_cluster_size).astype(np.int64)
    alive = has_candidates.copy()
    ranked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    next_pos = np.zeros(k, np.int64)
    rows: list[int] = []
    scores: list[float] = []
    ids = np.arange(k)
    while len(rows) < take and alive.any():
        checkpoint()
        # Lexicographic (small, covered, -size, id) over live clusters; K is at most a few hundred.
        live = ids[alive]
        order = np.lexsort((live, -cluster_sizes[live], covered[live], small[live]))
        c = int(live[order[0]])
        if c not in ranked:
            ranked[c] = rank(c)
        cand, sc = ranked[c]
        if next_pos[c] >= len(cand):
            alive[c] = False
            continue
        rows.append(int(cand[next_pos[c]]))
        scores.append(float(sc[next_pos[c]]))
        next_pos[c] += 1
        covered[c] += 1
    return Selection(rows=np.asarray(rows, np.int64), scores=np.asarray(scores, np.float64))


def candidate_clusters(pool: Pool, labels_all: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
    """Per-cluster (sizes K, labelled counts K, has-candidate K bool) for an assignment of all N rows."""
    sizes = np.bincount(labels_all, minlength=k)
    labelled = np.bincount(labels_all[pool.labeled], minlength=k) if len(pool.labeled) else np.zeros(k, np.int64)
    has = np.bincount(labels_all[pool.candidates], minlength=k) > 0
    return sizes, labelled, has
