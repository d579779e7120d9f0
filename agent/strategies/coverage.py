"""Coverage strategies: coreset (k-center greedy) and ProbCover (greedy max coverage of delta-balls)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.cancel import checkpoint
from agent.params import Param, strategy
from agent.pool import Pool, Selection
from agent.strategies._common import (
    GREEDY_CPU_PER_UNIT,
    KMEANS_MAX_ITER,
    KMEANS_MIN_ROWS,
    KMEANS_ROWS_PER_CENTRE,
    LIGHT_GREEDY_BUDGET,
    MAX_CLUSTERS,
    assign,
    block_rows,
    cosine_to_l2,
    fit_kmeans,
    greedy_work,
    labelled_similarity,
    rows_matrix,
)

# The least 1 - cos(u, v) a ProbCover ball's cutoff keeps below 1 (a radius of sqrt(2e-5) = 0.0045 at least):
# float32 products of unit vectors are off by about 1e-6, so a point always lies in its own ball.
MIN_BALL_COS_GAP = 1e-5


def coreset_work(params: Mapping[str, str], rows: int, labelled: int, budget: int, classes: int) -> float:
    """coreset's work size for a call (StrategyEntry.work_size): one pass over the pool per pick and per
    labelled row (D-dimensional dot products), rows x (labelled + budget): a budget-5000 call is 25 times a
    budget-200 one, and admission's estimate grows with it."""
    return greedy_work(rows, labelled + budget)


@strategy("coreset", needs="model", light_budget=LIGHT_GREEDY_BUDGET, work=coreset_work,
          cpu_per_unit=GREEDY_CPU_PER_UNIT)
def coreset(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Core-set selection by k-center greedy (Sener & Savarese, "Active Learning for Convolutional Neural
    Networks: A Core-Set Approach", ICLR 2018, Sec. 4, Algorithm 1 "k-Center-Greedy"): repeatedly pick the candidate
    u = argmax_i min_j Delta(x_i, x_j) farthest from the labelled-or-picked set (the 2-approximation
    of the k-center problem). Delta is the Euclidean distance between the L2-normalised
    embeddings. With no labels the first centre is a random candidate (seeded).

    Cost O((L + budget) * M * D): blocked dot products, one matrix-vector product per pick; the L part
    only for labels added since the last Select under the same model version (labelled_similarity).
    No params. Score: the pick's distance to the set at the time it was picked.
    """
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    x = rows_matrix(pool.embeddings, cand)  # MxD
    # Cosine similarity to the nearest centre; Euclidean distance of unit vectors = sqrt(2 - 2 cos).
    # The labelled rows' part is kept up to date across requests (labelled_similarity).
    best_sim = np.array(labelled_similarity(pool)[cand], np.float32)
    rows: list[int] = []
    scores: list[float] = []
    picked = np.zeros(len(cand), bool)
    for _ in range(take):
        checkpoint()
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
# Scaling: the points to cover are a uniform sample of at most PROBCOVER_ROWS rows (their covered
# fraction estimates the covered probability mass, the quantity ProbCover maximises) and the ball
# centres considered a uniform sample of at most PROBCOVER_CENTRES candidates. Ball membership is exact
# (blocked dot products): the hnswlib index answers k nearest neighbours, not "everything within
# delta", and a k-truncated graph undercounts every ball holding more than k points, after which the
# greedy is no longer greedy (docs/benchmarks.md, "ProbCover's radius on these embeddings", has the case).
# The cost is at most 2 x centres x rows x D multiply-adds, ~5e10 at D = 256 (10k each: at 20k each the
# first ball count was most of ProbCover's time, docs/reliability.md, "Select at 50,000 rows").
PROBCOVER_ROWS = 10_000
PROBCOVER_CENTRES = 10_000
# The purity radii are measured exactly against a uniform reference sample of this many rows.
PURITY_REFERENCE = 5_000
# The purity rule's k-means: fitted on at most this many rows, best of this many starts (a blob split in two
# would shrink delta a lot; k is small, so 10k rows suffice).
PURITY_KMEANS_ROWS = 10_000
PURITY_KMEANS_INIT = 5
# Rows whose nearest-neighbour distance is measured for ProbCover's warning (index queries).
NN_PROBE_ROWS = 1_000
# ProbCover's default radius (ours, issue 15): the delta at which the median ball holds this share of the
# pool. The purity heuristic gives about the nearest-neighbour distance on CPU encoders' features (empty
# balls, below random); a radius defined by ball occupancy is non-trivial on any encoder and does not
# change with the pool's size. docs/strategies.md, "ProbCover's radius", has the measurements.
PROBCOVER_BALL_SHARE = 0.02
# Rows whose distance to their k-th nearest sample point sets that radius (exact, blocked).
BALL_PROBE_ROWS = 1_000
DELTA_FROM = ("auto", "occupancy", "purity")
PROBCOVER_PARAMS = (
    Param("delta", "float", None, "ball radius (Euclidean distance between unit vectors)", 0.0, 2.0,
          default_doc="from delta_from"),
    Param("delta_from", "choice", DELTA_FROM[0], "rule for the default radius", choices=DELTA_FROM),
    Param("ball_share", "float", PROBCOVER_BALL_SHARE, "share of the pool the median ball holds (occupancy rule)",
          1e-6, 1.0),
    Param("alpha", "float", PROBCOVER_ALPHA, "purity the purity rule's delta keeps", 0.0, 1.0),
    Param("clusters", "int", None, "k-means clusters of the purity rule", 2, MAX_CLUSTERS,
          default_doc=f"the class count (at most {MAX_CLUSTERS}), 10 with fewer than 2 classes"),
)


def probcover_clusters(params: Mapping[str, str], classes: int) -> int:
    """The purity rule's k-means clusters: the ``clusters`` param, else the class count (at most
    MAX_CLUSTERS), else 10 with fewer than 2 classes."""
    return PROBCOVER_PARAMS[4].get_int(params, min(classes, MAX_CLUSTERS) if classes >= 2 else 10)


def probcover_rules(params: Mapping[str, str]) -> tuple[bool, bool]:
    """Which default-radius rules a call runs: (purity, occupancy); neither when ``delta`` is given."""
    if PROBCOVER_PARAMS[0].get_float_or_none(params) is not None:
        return False, False
    rule = PROBCOVER_PARAMS[1].get_choice(params)
    return rule in ("auto", "purity"), rule in ("auto", "occupancy")


def probcover_work(params: Mapping[str, str], rows: int, labelled: int, budget: int, classes: int) -> float:
    """ProbCover's work size for a call (StrategyEntry.work_size), in D-dimensional dot products, at most, as
    ``probcover`` computes them from the same params (``probcover_clusters``, ``probcover_rules``): the
    balls' counts, 2 x centres x sample points S (the first counts, and their updates, which pass each
    point once as it gets covered), one pass over the sample points per pick and per labelled row; for a
    radius from the purity rule its k-means (PURITY_KMEANS_INIT starts of at most KMEANS_MAX_ITER Lloyd
    iterations over its fit rows x ``clusters``), the assignments and the impurity radii (S x
    PURITY_REFERENCE); for the occupancy rule BALL_PROBE_ROWS x S. At 50,000 rows and the default 10
    clusters that is ~2.7e8, with ``clusters`` = 500 ~1.5e9 (the k-means then dominates), and with a given
    ``delta`` ~2.0e8 (neither rule runs)."""
    s = min(rows, PROBCOVER_ROWS)
    centres = min(max(rows - labelled, 1), PROBCOVER_CENTRES)
    work = 2.0 * centres * s + (budget + labelled) * s
    purity, occupancy = probcover_rules(params)
    if purity:
        k = max(1, min(probcover_clusters(params, classes), rows))
        fit = min(rows, PURITY_KMEANS_ROWS, max(KMEANS_ROWS_PER_CENTRE * k, KMEANS_MIN_ROWS))
        reference = min(s, PURITY_REFERENCE)
        work += PURITY_KMEANS_INIT * fit * k * KMEANS_MAX_ITER + (s + reference) * k + s * reference
    if occupancy:
        work += min(s, BALL_PROBE_ROWS) * s
    return work


def occupancy_delta(xs: np.ndarray, share: float, rng: np.random.Generator) -> float:
    """The median, over up to BALL_PROBE_ROWS rows of ``xs`` (SxD unit rows), of the Euclidean distance to
    their k-th nearest other row, k = max(1, round(share x S)): a ball of that radius around a typical
    point holds about ``share`` of the points."""
    k = min(max(1, round(share * len(xs))), len(xs) - 1)
    probe = np.arange(len(xs)) if len(xs) <= BALL_PROBE_ROWS else rng.choice(len(xs), BALL_PROBE_ROWS,
                                                                               replace=False)
    kth = np.empty(len(probe))
    step = block_rows(len(xs))
    for start in range(0, len(probe), step):
        checkpoint()
        sim = xs[probe[start:start + step]] @ xs.T  # BxS; the row itself is its own first neighbour
        kth[start:start + step] = -np.partition(-sim, k, axis=1)[:, k]
    return float(np.median(np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))))


def impurity_radii(points: np.ndarray, own: np.ndarray, reference: np.ndarray, ref_cluster: np.ndarray) -> np.ndarray:
    """r_u: Euclidean distance from each point (PxD, clusters ``own`` P) to the nearest ``reference``
    row (RxD) of another cluster (``ref_cluster`` R); inf when there is none. Exact, in blocks."""
    out = np.full(len(points), np.inf)
    ref_sq = np.einsum("rd,rd->r", reference, reference)
    step = block_rows(len(reference))
    for start in range(0, len(points), step):
        checkpoint()
        block = points[start:start + step]
        sq = np.einsum("bd,bd->b", block, block)[:, None] + ref_sq[None, :] - 2.0 * block @ reference.T
        sq[own[start:start + step, None] == ref_cluster[None, :]] = np.inf
        out[start:start + step] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
    return out


def purity_delta(radius: np.ndarray, alpha: float) -> float:
    """ProbCover's delta heuristic (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering
    Lens", NeurIPS 2022: the ball purity pi(delta) the paper defines to choose delta; section and equation
    numbers not checked: paper not in shared/papers; the alpha = 0.95 / k-means-with-#classes-clusters rule
    as scikit-activeml implements it, the official code takes delta as given): the largest delta whose ball
    purity -- the fraction of points whose delta-ball holds a single k-means cluster -- is >= alpha.

    A point's ball {x : ||x - u|| < delta} is pure exactly when delta <= r_u (``impurity_radii``), so
    purity(delta) = mean(r_u >= delta); with r sorted ascending and m = floor((1 - alpha) S) the answer
    is r_(m) (0-based). radius: S values (inf = no other cluster seen).
    """
    r = np.sort(np.asarray(radius, np.float64))
    m = min(int(np.floor((1.0 - alpha) * len(r) + 1e-9)), len(r) - 1)
    finite = r[np.isfinite(r)]
    return float(r[m]) if np.isfinite(r[m]) else float(finite.max() if len(finite) else 2.0)


@strategy("probcover", *PROBCOVER_PARAMS, needs="model", work=probcover_work)
def probcover(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """ProbCover (Yehuda et al., "Active Learning Through a Covering Lens", NeurIPS 2022, its greedy
    algorithm): build the directed graph with an edge v -> u when ||x_u - x_v|| < delta; mark every point
    within delta of a labelled point covered; then repeatedly pick the candidate whose ball covers the
    most uncovered points (greedy max coverage, a (1 - 1/e) approximation of the max-coverage
    objective) and mark its ball covered. The greedy pick is deterministic (ties: lowest row), as in
    the authors' code. When no candidate's ball holds an uncovered point the rest is picked at random
    (ours; the authors' code has no such rule). See PROBCOVER_* for how this scales to 1M rows.

    Citation: Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022, the paper's greedy ProbCover algorithm for
    its Max Probability Cover objective; section, algorithm and equation numbers not checked: paper not in
    shared/papers; the steps above follow the authors' code (docs/strategies.md, "Provenance of the
    algorithms"). Deviations (ours, not the paper's): the random fill above; the balls' centres and the
    points to cover are uniform samples of a large pool (PROBCOVER_*); the default delta
    (``delta_from=auto``), below.

    Params: ``delta`` (Euclidean, on unit vectors), else ``delta_from``: ``purity`` (the paper's
    heuristic, ``purity_delta`` with ``alpha`` = 0.95 and ``clusters`` k-means clusters, default the class
    count, else 10), ``occupancy`` (ours: ``occupancy_delta``, the radius at which the median ball holds
    ``ball_share`` = 0.02 of the pool) or ``auto`` (default, ours: the larger of the two, so separated
    clusters keep the paper's cluster-sized balls and features whose clusters overlap, where purity
    gives about the nearest-neighbour distance, still get balls that hold points).
    Score: sample points the pick's ball newly covered. Details: ``delta``, ``delta_from``, ``covered``
    (fraction of the pool within delta of the labelled rows and the picks), ``median_nn_distance``, and
    a ``warning`` when delta is not above that distance (at least half the balls then hold only their
    centre, and greedy coverage degenerates to picking the densest spots).
    """
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    emb = pool.embeddings
    n = len(emb)
    sample = np.arange(n) if n <= PROBCOVER_ROWS else np.sort(rng.choice(n, PROBCOVER_ROWS, replace=False))
    xs = rows_matrix(emb, sample).astype(np.float32)  # SxD, the points to cover
    delta, delta_from = _probcover_delta(pool, xs, sample, params, rng)
    centre_rows = cand if len(cand) <= PROBCOVER_CENTRES else np.sort(rng.choice(cand, PROBCOVER_CENTRES,
                                                                                  replace=False))
    xc = emb[centre_rows].astype(np.float32)  # CxD, the balls' centres
    # ||u - v|| < delta <=> cos(u, v) > 1 - delta^2 / 2 for unit vectors (open balls, as purity_delta). At
    # most 1 - MIN_BALL_COS_GAP: float32 products cannot tell cosines nearer 1 apart, and a cutoff rounded to 1
    # left each point out of its own ball (no ball held a point below delta 3.5e-4; the picks were the fill's).
    cos_min = np.float32(min(1.0 - delta * delta / 2.0, 1.0 - MIN_BALL_COS_GAP))
    covered = np.zeros(len(sample), bool)
    step = block_rows(len(xs))
    for start in range(0, len(pool.labeled), step):
        checkpoint()
        covered |= (xs @ emb[pool.labeled[start:start + step]].T > cos_min).any(axis=1)
    picks, scores = _greedy_cover(xc, xs, covered, cos_min, take)  # ties: lowest row (centre_rows is sorted)
    rows = [int(centre_rows[v]) for v in picks]
    if len(rows) < take:  # every ball's points are covered: the rest at random
        rest = np.setdiff1d(cand, np.asarray(rows, np.int64))
        extra = rng.choice(rest, size=min(take - len(rows), len(rest)), replace=False)
        rows.extend(int(r) for r in extra)
        scores.extend([0.0] * len(extra))
    nn = median_nn_distance(pool, sample if len(sample) <= NN_PROBE_ROWS
                            else np.sort(rng.choice(sample, NN_PROBE_ROWS, replace=False)))
    return Selection(rows=np.asarray(rows, np.int64), scores=np.asarray(scores, np.float64),
                     details=_probcover_details(delta, delta_from, float(covered.mean()), nn))


def _probcover_delta(pool: Pool, xs: np.ndarray, sample: np.ndarray, params: Mapping[str, str],
                     rng: np.random.Generator) -> tuple[float, str]:
    """ProbCover's ball radius and where it came from (the ``delta_from`` detail): the ``delta`` param,
    else the purity rule, the occupancy rule or (``auto``) the larger of the two. ``xs``: the ``sample``
    rows' embeddings (SxD), the points to cover."""
    p_delta, p_rule, p_share, p_alpha, _ = PROBCOVER_PARAMS
    delta_param = p_delta.get_float_or_none(params)
    if delta_param is not None:
        return delta_param, "params"
    alpha = p_alpha.get_float(params)
    share = p_share.get_float(params)
    rule = p_rule.get_choice(params)
    purity, occupancy = probcover_rules(params)
    delta, delta_from = np.inf, ""
    emb = pool.embeddings
    if purity:
        clusters = probcover_clusters(params, pool.num_classes)
        centres = fit_kmeans(emb, clusters, rng, fit_rows=PURITY_KMEANS_ROWS, n_init=PURITY_KMEANS_INIT)
        ref = sample if len(sample) <= PURITY_REFERENCE else np.sort(rng.choice(sample, PURITY_REFERENCE,
                                                                                 replace=False))
        own, _ = assign(xs, centres)
        ref_cluster, _ = assign(emb[ref], centres)
        delta = purity_delta(impurity_radii(xs, own, emb[ref], ref_cluster), alpha)
        delta_from = f"purity heuristic (alpha={alpha:g}, {clusters} k-means clusters)"
    if occupancy:
        occupied = occupancy_delta(xs, share, rng) if len(xs) > 1 else 2.0
        if rule == "occupancy" or occupied > delta:
            delta = occupied
            delta_from = f"ball occupancy (median ball holds {share:g} of the pool)"
    return delta, delta_from


def _ball_counts(xc: np.ndarray, points: np.ndarray, cos_min: np.float32) -> np.ndarray:
    """C: how many of ``points`` (PxD) lie in each centre's ball (``xc``, CxD), in blocks of centres."""
    out = np.zeros(len(xc), np.int64)
    block = block_rows(len(points))
    for start in range(0, len(xc), block):
        checkpoint()
        out[start:start + block] = (xc[start:start + block] @ points.T > cos_min).sum(axis=1)
    return out


def _greedy_cover(xc: np.ndarray, xs: np.ndarray, covered: np.ndarray, cos_min: np.float32,
                  take: int) -> tuple[list[int], list[float]]:
    """ProbCover's greedy max coverage: up to ``take`` centres (indices into ``xc``, CxD), each the one
    whose ball holds the most uncovered points of ``xs`` (SxD; ties: lowest index), and the points each
    newly covered. Stops early when no ball holds an uncovered point. Updates ``covered`` (S bool)."""
    gain = _ball_counts(xc, xs[~covered], cos_min)  # C: uncovered sample points in each ball
    picks: list[int] = []
    scores: list[float] = []
    while len(picks) < take:
        checkpoint()
        v = int(np.argmax(gain))
        if gain[v] <= 0:
            break
        newly = ~covered & (xc[v:v + 1] @ xs.T > cos_min)[0]
        picks.append(v)
        scores.append(float(newly.sum()))
        covered |= newly
        gain -= _ball_counts(xc, xs[newly], cos_min)
        gain[v] = -1  # picked
    return picks, scores


def _probcover_details(delta: float, delta_from: str, covered: float, nn: float) -> dict[str, str]:
    """ProbCover's details, with a ``warning`` when delta is not above the median nearest-neighbour
    distance ``nn``. ``covered``: the fraction of the pool covered."""
    details = {"delta": f"{delta:.4f}", "delta_from": delta_from, "covered": f"{covered:.4f}",
               "median_nn_distance": f"{nn:.4f}"}
    if delta <= nn < np.inf:  # (inf: a lone row, which has no neighbour)
        details["warning"] = (
            f"delta {delta:.3f} is not above the median nearest-neighbour distance {nn:.3f}: most balls hold "
            f"only their own centre, so the picks follow density, not coverage "
            f"({100 * covered:.1f}% of the pool covered). "
            + ("The purity heuristic gives so small a delta when k-means clusters are not separated in this "
               "feature space; typiclust or as3l suit such features better, or pass a larger delta."
               if delta_from.startswith("purity") else "Pass a larger delta."))
    return details


def median_nn_distance(pool: Pool, rows: np.ndarray) -> float:
    """Median Euclidean distance from ``rows`` (R int64) to their nearest other pool row (index kNN);
    inf for a one-row pool. The scale a ball radius is compared with."""
    if len(pool.embeddings) < 2 or len(rows) == 0:
        return float("inf")
    _, cos_d = pool.knn(pool.embeddings[rows], 2)
    return float(np.median(cosine_to_l2(cos_d[:, 1])))
