"""agent/priors/knn.py: the weighted kNN vote, checked by hand and against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from agent.pool import InvalidArgument
from agent.priors import PRIOR_METHODS
from bench.metrics import prior_accuracy
from tests.agent.priors.blobs import concentrated_blobs
from tests.agent.strategies.pools import make_pool


def test_knn_vote_hand_computed() -> None:
    # Query at angle 0; labelled rows at 10 deg (class 0), 20 deg (class 1), 170 deg (class 1); k = 2.
    ang = np.deg2rad([0, 10, 20, 170])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    y = np.array([0, 0, 1, 1])
    pool = make_pool(x, y, np.array([1, 2, 3]))
    pr = PRIOR_METHODS["knn"](pool, np.array([0]), np.random.default_rng(0),
                              {"k": "2", "temperature": "0.1", "calibrate": "false"})
    w0, w1 = np.exp(np.cos(np.deg2rad(10)) / 0.1), np.exp(np.cos(np.deg2rad(20)) / 0.1)
    np.testing.assert_allclose(pr.probs[0], [w0 / (w0 + w1), w1 / (w0 + w1)], rtol=1e-5)


def test_knn_on_concentrated_embeddings_matches_one_nn() -> None:
    # The fixed temperature 0.07 weighs every neighbour about equally here (the vote is near chance);
    # the default, scale-free vote must do at least about as well as 1-NN on the same labels.
    x, y = concentrated_blobs(0)
    assert (x @ x.T).mean() > 0.95
    for labels in (20, 40):
        ours, one_nn, fixed = [], [], []
        for seed in range(3):
            lab = np.random.default_rng(seed).choice(len(x), labels, replace=False)
            pool = make_pool(x, y, lab)
            rows = pool.candidates
            ours.append(prior_accuracy(PRIOR_METHODS["knn"](pool, rows, np.random.default_rng(0), {}).probs, y[rows]))
            fixed.append(prior_accuracy(PRIOR_METHODS["knn"](pool, rows, np.random.default_rng(0),
                                                             {"temperature": "0.07"}).probs, y[rows]))
            one_nn.append(float(np.mean(y[lab][(x[rows] @ x[lab].T).argmax(axis=1)] == y[rows])))
        assert np.mean(ours) >= np.mean(one_nn) - 0.03, (labels, ours, one_nn)
        assert np.mean(ours) > np.mean(fixed) + 0.05, (labels, ours, fixed)


def test_knn_answer_does_not_depend_on_which_rows_are_asked() -> None:
    x, y = concentrated_blobs(1)
    pool = make_pool(x, y, np.arange(0, 1000, 50))
    rows = pool.candidates
    whole = PRIOR_METHODS["knn"](pool, rows, np.random.default_rng(0), {})
    part = PRIOR_METHODS["knn"](pool, rows[:7], np.random.default_rng(0), {})
    np.testing.assert_allclose(part.probs, whole.probs[:7], rtol=1e-5, atol=1e-7)
    with pytest.raises(InvalidArgument, match="not both"):
        PRIOR_METHODS["knn"](pool, rows, np.random.default_rng(0), {"temperature": "0.1", "relative_temperature": "1"})


def test_knn_index_path_agrees_with_exact_search(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.priors.knn as knn_module

    x, y = concentrated_blobs(2)
    pool = make_pool(x, y, np.arange(0, 1000, 25))
    rows = pool.candidates[:200]
    exact = PRIOR_METHODS["knn"](pool, rows, np.random.default_rng(0), {"k": "5"})
    monkeypatch.setattr(knn_module, "EXACT_WORK", 0)
    via_index = PRIOR_METHODS["knn"](pool, rows, np.random.default_rng(0), {"k": "5"})
    # The index ranks by the raw cosine and the vote re-ranks its labelled hits by the centred one, so
    # a few rows may see other neighbours; their top classes agree almost everywhere.
    assert np.mean(exact.probs.argmax(axis=1) == via_index.probs.argmax(axis=1)) > 0.95
