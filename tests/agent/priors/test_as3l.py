"""agent/priors/as3l.py: constrained seed k-means (Basu et al. 2002) and AS3L's prior confidence."""

from __future__ import annotations

import numpy as np

from agent.priors import PRIOR_METHODS
from agent.priors.as3l import constrained_seed_kmeans
from tests.agent.priors.blobs import LABELED, X, Y
from tests.agent.strategies.pools import blobs, make_pool


def test_constrained_seed_kmeans_keeps_seeds_in_their_class() -> None:
    # Seeds deliberately placed in the *wrong* blob: unconstrained k-means would move them; the
    # constraint keeps each seed in its seed cluster whatever the data say.
    x, _ = blobs(clusters=3, per_cluster=30, dim=8, spread=0.05, seed=1)
    seeds = np.array([0, 1, 30, 31, 60, 61])
    seed_cluster = np.array([0, 1, 1, 2, 2, 0])
    for k in (3, 6):
        _, assignment = constrained_seed_kmeans(x.astype(np.float64), seeds, seed_cluster, k,
                                                np.random.default_rng(0))
        np.testing.assert_array_equal(assignment[seeds], seed_cluster)


def test_as3l_confidence_lower_far_from_labels() -> None:
    pool = make_pool(X, Y, LABELED)
    # The method's own confidence (calibrate=false): calibrated, confidence is the calibrated top probability.
    pr = PRIOR_METHODS["as3l"](pool, pool.candidates, np.random.default_rng(0), {"calibrate": "false"})
    d = 1.0 - (X[pool.candidates] @ X[LABELED].T).max(axis=1)
    near, far = d < np.quantile(d, 0.25), d > np.quantile(d, 0.75)
    assert pr.confidence[near].mean() > pr.confidence[far].mean()
