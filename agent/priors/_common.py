"""Shared pieces of the prior-label methods."""

from __future__ import annotations

import numpy as np

from agent.cancel import checkpoint
from agent.pool import FailedPrecondition, Pool, Priors, quoted


def require_labels(pool: Pool, method: str) -> None:
    """FailedPrecondition unless at least one row is labelled (nothing to propagate otherwise)."""
    if len(pool.labeled) == 0 or pool.num_classes == 0:
        raise FailedPrecondition(
            f"prior method {quoted(method)} propagates labels, and no sample is labelled yet: label a first batch "
            "(e.g. Select with strategy typiclust, probcover or as3l, then SubmitLabels) and ask again")


def with_known_labels(pool: Pool, rows: np.ndarray, priors: Priors) -> Priors:
    """Requested rows that are labelled get their label, one-hot, with confidence 1. ``rows``: the R pool rows
    asked for (ints), ``priors``: their RxC probs and R confidences; returns the same shapes."""
    label_of = np.full(len(pool.embeddings), -1, np.int64)
    label_of[pool.labeled] = pool.labels
    known = label_of[rows]
    hit = known >= 0
    if hit.any():
        probs = priors.probs.copy()
        probs[hit] = 0.0
        probs[np.flatnonzero(hit), known[hit]] = 1.0
        confidence = priors.confidence.copy()
        confidence[hit] = 1.0
        return Priors(probs=probs, confidence=confidence)
    return priors


def normalise_rows(scores: np.ndarray) -> np.ndarray:
    """RxC non-negative scores to probabilities; an all-zero row becomes uniform."""
    scores = np.maximum(np.asarray(scores, np.float64), 0.0)
    total = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / max(scores.shape[1], 1))
    return np.where(total > 0, scores / np.where(total > 0, total, 1.0), uniform).astype(np.float32)


def nearest_labelled_distance(pool: Pool, rows: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cos) from each of ``rows`` to its nearest labelled row: R float32.
    Exact, in blocks (O(R * L * D)); the labelled set is the small side in this system."""
    from agent.strategies._common import block_rows

    lab = pool.embeddings[pool.labeled]
    out = np.empty(len(rows), np.float32)
    step = block_rows(len(lab))
    for start in range(0, len(rows), step):
        checkpoint()
        sim = pool.embeddings[rows[start:start + step]] @ lab.T
        out[start:start + step] = 1.0 - sim.max(axis=1)
    return out
