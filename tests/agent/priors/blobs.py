"""The data the prior-method tests share: 5 tight blobs of 40 rows in 16-d (the first row of each labelled), and
blobs squeezed around one direction (an encoder with concentrated similarities)."""

from __future__ import annotations

import numpy as np

from tests.agent.strategies.pools import blobs

X, Y = blobs(clusters=5, per_cluster=40, dim=16, spread=0.05, seed=7)
LABELED = np.flatnonzero(np.r_[True, Y[1:] != Y[:-1]])  # the first row of each blob


def concentrated_blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 blobs x 100 squeezed around one shared direction: normalise(mean + 0.05 (centre_y + 0.25 noise)),
    so every cosine similarity is about 0.99 (issue 15's encoder had a mean of 0.96)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=64)
    mean /= np.linalg.norm(mean)
    centres = rng.normal(size=(10, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(10), 100)
    x = mean + 0.05 * (centres[y] + 0.25 * rng.normal(size=(len(y), 64)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y
