"""Every prior method, over the whole registry (agent.priors.PRIOR_METHODS): one label per blob labels the blob,
labelled rows come back one-hot, bad requests are errors. A new prior method is covered by registering it."""

from __future__ import annotations

import numpy as np
import pytest

from agent.pool import FailedPrecondition, InvalidArgument
from agent.priors import PRIOR_METHODS, get_prior_method
from bench.metrics import prior_accuracy
from tests.agent.priors.blobs import LABELED, X, Y
from tests.agent.strategies.pools import make_pool


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


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
@pytest.mark.parametrize("calibrate", ["true", "false"])
def test_a_pool_with_every_row_labelled(name: str, calibrate: str) -> None:
    """(as3l asked k-means++ for 0 clusters here: INTERNAL through the agent)"""
    rows = np.arange(len(X))
    pr = PRIOR_METHODS[name](make_pool(X, Y, rows), rows, np.random.default_rng(0), {"calibrate": calibrate})
    np.testing.assert_allclose(pr.probs, np.eye(5)[Y])


def test_unknown_method_lists_valid() -> None:
    with pytest.raises(InvalidArgument, match="valid: " + ", ".join(sorted(PRIOR_METHODS)) + "$"):
        get_prior_method("magic")
    assert {"as3l", "knn", "llgc"} <= set(PRIOR_METHODS)
    assert all(entry.name == name for name, entry in PRIOR_METHODS.items())  # keyed by the declared name
