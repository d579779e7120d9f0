"""Prior-label methods on hand-built blobs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from agent.pool import FailedPrecondition, InvalidArgument
from agent.priors import PRIOR_METHODS, get_prior_method
from agent.priors.as3l import constrained_seed_kmeans
from agent.priors.llgc import knn_affinity, spread
from bench.metrics import prior_accuracy
from tests.agent.strategies.pools import blobs, make_pool

X, Y = blobs(clusters=5, per_cluster=40, dim=16, spread=0.05, seed=7)
LABELED = np.flatnonzero(np.r_[True, Y[1:] != Y[:-1]])  # the first row of each blob


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_one_label_per_blob_labels_every_blob(name: str) -> None:
    pool = make_pool(X, Y, LABELED)
    rows = pool.candidates
    pr = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {})
    assert pr.probs.shape == (len(rows), 5) and pr.confidence.shape == (len(rows),)
    np.testing.assert_allclose(pr.probs.sum(axis=1), 1.0, rtol=1e-5)
    assert ((pr.confidence >= 0) & (pr.confidence <= 1)).all()
    assert prior_accuracy(pr.probs, Y[rows]) == 1.0
    again = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {})
    np.testing.assert_allclose(pr.probs, again.probs)


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_labelled_rows_come_back_one_hot_and_errors(name: str) -> None:
    pool = make_pool(X, Y, LABELED)
    pr = PRIOR_METHODS[name](pool, LABELED[:2], np.random.default_rng(0), {})
    np.testing.assert_allclose(pr.probs, np.eye(5)[Y[LABELED[:2]]])
    np.testing.assert_allclose(pr.confidence, 1.0)
    with pytest.raises(FailedPrecondition, match="no sample is labelled"):
        PRIOR_METHODS[name](make_pool(X, Y), np.arange(3), np.random.default_rng(0), {})
    with pytest.raises(InvalidArgument, match="valid"):
        PRIOR_METHODS[name](pool, np.arange(3), np.random.default_rng(0), {"nope": "1"})


def test_unknown_method_lists_valid() -> None:
    with pytest.raises(InvalidArgument, match="as3l, knn, llgc"):
        get_prior_method("magic")


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
    pr = PRIOR_METHODS["as3l"](pool, pool.candidates, np.random.default_rng(0), {})
    d = 1.0 - (X[pool.candidates] @ X[LABELED].T).max(axis=1)
    near, far = d < np.quantile(d, 0.25), d > np.quantile(d, 0.75)
    assert pr.confidence[near].mean() > pr.confidence[far].mean()


def test_knn_vote_hand_computed() -> None:
    # Query at angle 0; labelled rows at 10 deg (class 0), 20 deg (class 1), 170 deg (class 1); k = 2.
    ang = np.deg2rad([0, 10, 20, 170])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    y = np.array([0, 0, 1, 1])
    pool = make_pool(x, y, np.array([1, 2, 3]))
    pr = PRIOR_METHODS["knn"](pool, np.array([0]), np.random.default_rng(0), {"k": "2", "temperature": "0.1"})
    w0, w1 = np.exp(np.cos(np.deg2rad(10)) / 0.1), np.exp(np.cos(np.deg2rad(20)) / 0.1)
    np.testing.assert_allclose(pr.probs[0], [w0 / (w0 + w1), w1 / (w0 + w1)], rtol=1e-5)


def test_spread_matches_closed_form() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    nbr = np.argsort(-sim, axis=1)[:, :6]
    w = knn_affinity(nbr, 1.0 - np.take_along_axis(sim, nbr, axis=1), gamma=3.0)
    assert isinstance(w, sparse.csr_matrix) and (w != w.T).nnz == 0 and w.diagonal().sum() == 0
    yy = np.zeros((30, 2))
    yy[0, 0] = yy[1, 1] = 1
    dense = w.toarray()
    d = dense.sum(axis=1)
    s = dense / np.sqrt(np.outer(d, d))
    expected = 0.01 * np.linalg.solve(np.eye(30) - 0.99 * s, yy)  # Zhou et al. 2003: (1-a)(I - aS)^-1 Y
    np.testing.assert_allclose(spread(w, yy, 0.99, iters=500), expected, atol=1e-6)
