"""k-nearest-neighbour vote over the labelled rows, with a temperature that follows the embedding's scale."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.cancel import checkpoint
from agent.errors import InvalidArgument
from agent.params import Param, prior_method
from agent.pool import Pool, Priors
from agent.priors._common import normalise_rows, require_labels, with_known_labels
from agent.strategies._common import block_rows, embedding_mean
from shortlist.vectors import unit_rows

KNN_K = 20
# Default: similarities are measured after centring (SimpleShot's CL2N) and the temperature is this
# fraction of their spread (the standard deviation of the centred cosine similarities between pool rows
# and labelled rows), so the vote is as sharp on an encoder whose cosines all sit close to 1 as on one
# whose cosines spread over [-1, 1]. Chosen on concentrated synthetic blobs and on scikit-learn's digits,
# where it was level with the smaller fractions at few labels and ahead at the most (the figures:
# docs/strategies.md, "knn prior: a temperature that follows the embedding's scale").
KNN_RELATIVE_TEMPERATURE = 0.3
# Rows of the pool (an even stride) whose similarities to the labelled rows estimate the spread, and at
# most this many labelled rows (an even stride): 2000 x 500 similarities estimate one standard deviation
# well, and the cost no longer grows with the labelled set.
SPREAD_ROWS = 2000
SPREAD_LABELLED = 500
# While R x L (requested x labelled rows) stays under this, the vote searches the labelled rows exactly
# (blocked dot products); beyond, the pool's hnswlib index is asked for
# enough neighbours to expect k labelled ones among them, and those are re-ranked by the centred cosine.
EXACT_WORK = 2e9
# PriorLabels knn for at most this many rows is light work (its own admission lane): an exact vote over
# the labelled rows (its cost for 16 ids at 50,000 rows: docs/reliability.md, Load), not k-means.
KNN_LIGHT_ROWS = 1000
KNN_PARAMS = (
    Param("k", "int", KNN_K, "labelled neighbours that vote", 1, 200),
    Param("relative_temperature", "float", KNN_RELATIVE_TEMPERATURE,
          "tau as a fraction of the centred similarities' spread", 1e-4, 100.0),
    Param("temperature", "float", None, "a fixed tau on the raw cosine instead (Wu et al.'s vote as is)", 1e-4,
          100.0, default_doc="unset (relative_temperature is used)"),
)


class _Space:
    """Cosine similarity after subtracting ``centre`` and re-normalising (``centre`` = 0: the raw cosine)."""

    def __init__(self, pool: Pool, centre: np.ndarray) -> None:
        self.pool = pool
        self.centre = centre.astype(np.float32)
        self.lab = self.rows(pool.labeled)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return unit_rows(self.pool.embeddings[rows] - self.centre)


def _labelled_neighbours(space: _Space, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, up to k most similar labelled rows in ``space``: (class ids RxK, similarities RxK;
    -inf = none)."""
    pool = space.pool
    if len(rows) * len(pool.labeled) <= EXACT_WORK:
        lab_x = space.lab
        k = min(k, len(pool.labeled))
        cls = np.empty((len(rows), k), np.int64)
        sim_out = np.empty((len(rows), k), np.float32)
        step = block_rows(len(lab_x))
        for start in range(0, len(rows), step):
            checkpoint()
            sim = space.rows(rows[start:start + step]) @ lab_x.T  # BxL
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.argsort(-sim, axis=1)
            cls[start:start + step] = pool.labels[top]
            sim_out[start:start + step] = np.take_along_axis(sim, top, axis=1)
        return cls, sim_out
    pos_of = np.full(len(pool.embeddings), -1, np.int64)
    pos_of[pool.labeled] = np.arange(len(pool.labeled))
    ask = int(min(len(pool.embeddings), max(4 * k, np.ceil(4 * k * len(pool.embeddings) / len(pool.labeled)))))
    nbr, _ = pool.knn(pool.embeddings[rows], min(ask, 2048))
    found = pos_of[nbr]  # RxA positions in pool.labeled, -1 = unlabelled neighbour
    sim = np.einsum("rd,rad->ra", space.rows(rows), space.lab[np.maximum(found, 0)])
    sim = np.where(found >= 0, sim, -np.inf)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    cls = pool.labels[np.maximum(np.take_along_axis(found, top, axis=1), 0)]
    return cls, np.take_along_axis(sim, top, axis=1)


def _sample_moments(space: _Space) -> tuple[int, np.ndarray, np.ndarray]:
    """Of the even-stride sample of SPREAD_ROWS pool rows in ``space`` (A, SxD): (S, the column sums of A
    (D float64), A^T A (DxD float64)); kept in the pool's memo per (rows, centre), since neither changes
    with the labels (a calibration fold, a new label and another request reuse it)."""
    pool = space.pool
    n = len(pool.embeddings)
    tag = (n, space.centre.tobytes())
    kept = pool.memo.get("knn_spread_moments") if pool.memo is not None else None
    if kept is not None and kept[0] == tag:
        return kept[1]
    a = space.rows(np.arange(0, n, max(1, n // SPREAD_ROWS))).astype(np.float64)
    moments = (len(a), a.sum(axis=0), a.T @ a)
    if pool.memo is not None:
        pool.memo.put("knn_spread_moments", (tag, moments))
    return moments


def similarity_spread(space: _Space) -> float:
    """Standard deviation of the similarities between an even-stride sample of SPREAD_ROWS pool rows and
    of SPREAD_LABELLED labelled rows (a function of the pool and its labels, not of the rows requested):
    one float, in cosine-similarity units (of ``space``'s rows: centred and re-normalised by default).

    Shortlist's own (not from a paper): ``knn_prior`` multiplies it by ``relative_temperature`` to get its
    tau, so the vote's sharpness follows how spread the encoder's similarities are instead of Wu et al.'s
    fixed tau (docs/strategies.md, "knn prior: a temperature that follows the embedding's scale", measures
    the choice).

    Computed from second moments instead of the SxL similarity matrix: with A the sample (SxD) and B the
    labelled rows (LxD), the mean similarity is (sum of A's rows) . (sum of B's rows) / (S L) and the
    mean squared similarity is <A^T A, B^T B> / (S L) (Frobenius product of two DxD matrices), in float64;
    A's moments are kept per model version (_sample_moments). The same number as the standard deviation of
    A @ B.T up to rounding, at O(L D^2) instead of O(S L D) per call."""
    lab = space.lab[::max(1, len(space.lab) // SPREAD_LABELLED)].astype(np.float64)
    s, a_sum, a_gram = _sample_moments(space)
    count = s * len(lab)
    if count == 0:
        return 0.0
    mean = float(a_sum @ lab.sum(axis=0)) / count
    mean_sq = float(np.sum(a_gram * (lab.T @ lab))) / count
    return float(np.sqrt(max(mean_sq - mean * mean, 0.0)))


@prior_method("knn", *KNN_PARAMS, light_rows=KNN_LIGHT_ROWS)
def knn_prior(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """Weighted k-nearest-neighbour vote (Wu et al., "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR 2018, its weighted kNN classifier, as used by DINO): each of the k most
    similar labelled rows votes for its class with weight exp(s_i / tau); probs are the normalised votes.

    Citation: Wu, Xiong, Yu & Lin, CVPR 2018, Sec. 3.4, "Weighted k-Nearest Neighbor Classifier" (section
    number from memory; equation number not checked: paper not in shared/papers). k = 20 is DINO's
    evaluation's (Wu et al. use k = 200).

    A fixed tau (0.07 there) assumes cosine similarities spread over much of [-1, 1]; on an encoder whose
    cosines concentrate near 1 every weight is about equal and the vote is near chance (measured on issue
    15's digits pool: docs/strategies.md, "knn prior: a temperature that follows the embedding's scale").
    So by default (ours, deviating from Wu et al. to make it scale-free):
    - s_i is the cosine after centring: every embedding minus the pool's mean embedding, re-normalised
      (CL2N of Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor
      Classification for Few-Shot Learning", arXiv 1911.04623, Sec. 3), which removes the direction all
      rows share;
    - tau = ``relative_temperature`` (0.3) x the standard deviation of those similarities between pool
      rows and labelled rows, so a neighbour one spread closer weighs e^(1/0.3) ~ 28 times more.
    Giving ``temperature`` restores the fixed-tau vote on the raw cosine (Wu et al.'s classifier as is).
    Params: ``k`` (20), ``relative_temperature`` (0.3), ``temperature`` (unset).
    Confidence: the winning class's share of the vote.
    """
    p_k, p_relative, p_tau = KNN_PARAMS
    k = p_k.get_int(params)
    tau = p_tau.get_float_or_none(params)
    relative = p_relative.get_float(params)
    if tau is not None and params.get("relative_temperature"):
        raise InvalidArgument("knn: give temperature (a fixed tau on the raw cosine) or relative_temperature "
                              "(a fraction of the centred similarities' spread), not both")
    require_labels(pool, "knn")
    rows = np.asarray(rows, np.int64)
    d = pool.embeddings.shape[1]
    space = _Space(pool, np.zeros(d, np.float32) if tau is not None else embedding_mean(pool))
    if tau is None:
        tau = relative * max(similarity_spread(space), 1e-6)
    cls, sim = _labelled_neighbours(space, rows, k)
    # exp((s - max_j s_j) / tau): the same weights up to a per-row constant, without overflow at small tau.
    best = np.max(np.where(np.isfinite(sim), sim, -np.inf), axis=1, keepdims=True) if sim.size else sim
    weight = np.where(np.isfinite(sim), np.exp((sim - np.where(np.isfinite(best), best, 0.0)) / tau), 0.0)
    votes = np.zeros((len(rows), pool.num_classes))
    at = np.arange(len(rows))
    for j in range(cls.shape[1]):  # one column at a time: no repeated (row, class) pair within a column
        votes[at, cls[:, j]] += weight[:, j]
    probs = normalise_rows(votes)
    return with_known_labels(pool, rows, Priors(probs=probs, confidence=probs.max(axis=1)))
