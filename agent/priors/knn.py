"""k-nearest-neighbour vote over the labelled rows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.cancel import checkpoint
from agent.params import Param, prior_method
from agent.pool import Pool, Priors
from agent.priors._common import normalise_rows, require_labels, with_known_labels
from agent.strategies._common import block_rows

KNN_K = 20
KNN_TEMPERATURE = 0.07
# While R x L (requested x labelled rows) stays under this, the vote searches the labelled rows exactly
# (blocked dot products, ~1 s per 1e9 on two cores); beyond, the pool's hnswlib index is asked for
# enough neighbours to expect k labelled ones among them.
EXACT_WORK = 2e9
KNN_PARAMS = (
    Param("k", "int", KNN_K, "labelled neighbours that vote", 1, 200),
    Param("temperature", "float", KNN_TEMPERATURE, "tau of the vote weights exp(s / tau)", 1e-4, 100.0),
)


def _labelled_neighbours(pool: Pool, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, up to k nearest labelled rows: (class ids RxK, cosine similarities RxK; -inf = none)."""
    if len(rows) * len(pool.labeled) <= EXACT_WORK:
        lab_x = pool.embeddings[pool.labeled]
        k = min(k, len(pool.labeled))
        cls = np.empty((len(rows), k), np.int64)
        sim_out = np.empty((len(rows), k), np.float32)
        step = block_rows(len(lab_x))
        for start in range(0, len(rows), step):
            checkpoint()
            sim = pool.embeddings[rows[start:start + step]] @ lab_x.T  # BxL
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.argsort(-sim, axis=1)
            cls[start:start + step] = pool.labels[top]
            sim_out[start:start + step] = np.take_along_axis(sim, top, axis=1)
        return cls, sim_out
    label_of = np.full(len(pool.embeddings), -1, np.int64)
    label_of[pool.labeled] = pool.labels
    ask = int(min(len(pool.embeddings), max(4 * k, np.ceil(4 * k * len(pool.embeddings) / len(pool.labeled)))))
    nbr, dist = pool.knn(pool.embeddings[rows], min(ask, 2048))
    found = label_of[nbr]
    sim = np.where(found >= 0, 1.0 - dist, -np.inf)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.maximum(np.take_along_axis(found, top, axis=1), 0), np.take_along_axis(sim, top, axis=1)


@prior_method("knn", *KNN_PARAMS)
def knn_prior(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """Weighted k-nearest-neighbour vote (Wu et al., "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR 2018, its weighted kNN classifier, as used by DINO):
    each of the k most similar labelled rows votes for its class with weight exp(s_i / tau), s_i the
    cosine similarity; probs are the normalised votes. Params: ``k`` (20), ``temperature`` (0.07).
    Confidence: the winning class's share of the vote.
    """
    k = KNN_PARAMS[0].get_int(params)
    tau = KNN_PARAMS[1].get_float(params)
    require_labels(pool, "knn")
    rows = np.asarray(rows, np.int64)
    cls, sim = _labelled_neighbours(pool, rows, k)
    # exp((s - 1) / tau): the same weights up to a per-row constant, without overflow at small tau.
    weight = np.where(np.isfinite(sim), np.exp((sim - 1.0) / tau), 0.0)
    votes = np.zeros((len(rows), pool.num_classes))
    at = np.arange(len(rows))
    for j in range(cls.shape[1]):  # one column at a time: no repeated (row, class) pair within a column
        votes[at, cls[:, j]] += weight[:, j]
    probs = normalise_rows(votes)
    return with_known_labels(pool, rows, Priors(probs=probs, confidence=probs.max(axis=1)))
