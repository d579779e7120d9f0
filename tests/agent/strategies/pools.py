"""Small hand-built pools for the strategy and prior tests: Gaussian blobs on the unit sphere and an
exact (brute-force numpy) kNN with the same contract as the agent's hnswlib one."""

from __future__ import annotations

import numpy as np

from agent.pool import KnnFn, Pool


def exact_knn(embeddings: np.ndarray) -> KnnFn:
    """Brute-force cosine kNN over ``embeddings`` (NxD, unit rows): (rows QxK int64, 1 - cos QxK float32)."""

    def knn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(embeddings))
        dist = 1.0 - np.asarray(queries, np.float64) @ embeddings.T.astype(np.float64)  # QxN
        rows = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return rows.astype(np.int64), np.take_along_axis(dist, rows, axis=1).astype(np.float32)

    return knn


def blobs(clusters: int = 10, per_cluster: int = 40, dim: int = 16, spread: float = 0.05,
          seed: int = 0, sizes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated unit-norm blobs: (embeddings NxD float32, true cluster N int64).
    Centres are random unit vectors (nearly orthogonal in ``dim`` >= 16); ``sizes`` overrides per_cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    counts = sizes if sizes is not None else [per_cluster] * clusters
    y = np.repeat(np.arange(clusters), counts)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.int64)


def make_pool(x: np.ndarray, y: np.ndarray, labeled: np.ndarray | None = None,
              candidates: np.ndarray | None = None, logits: np.ndarray | None = None,
              pretext_loss: np.ndarray | None = None) -> Pool:
    """A Pool over x with the true labels of ``labeled`` rows known; candidates default to the rest."""
    labeled = np.zeros(0, np.int64) if labeled is None else np.asarray(labeled, np.int64)
    if candidates is None:
        candidates = np.setdiff1d(np.arange(len(x)), labeled)
    classes = [f"c{i}" for i in range(int(y.max()) + 1)]
    return Pool(embeddings=x, labeled=labeled, labels=y[labeled], classes=classes,
                candidates=np.asarray(candidates, np.int64), knn=exact_knn(x), logits=logits,
                pretext_loss=pretext_loss)
