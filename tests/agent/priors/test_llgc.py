"""agent/priors/llgc.py: label spreading against its closed form, and its temperature's likelihood switch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from agent.priors import PRIOR_METHODS
from agent.priors.llgc import knn_affinity, spread
from tests.agent.priors.blobs import LABELED, X, Y
from tests.agent.strategies.pools import make_pool


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


def test_llgc_fits_the_top_label_from_20_held_out_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's settings reach the fit: each method's temperature is fitted with its entry's
    ``fit.top_label_from`` (llgc's 20: its multiclass fit came out too sharp, docs/benchmarks.md; None, the
    module's rule, for the others)."""
    from agent.priors import calibration

    seen: dict[str, int | None] = {}
    fit = calibration.fit_temperature

    def spy(held: list[tuple[np.ndarray, np.ndarray, np.ndarray]], default: float, balance: bool = False,
            weights: np.ndarray | None = None, top_label_from: int | None = None) -> float:
        seen[current] = top_label_from  # the method being called (the loop below)
        return fit(held, default, balance, weights, top_label_from)

    monkeypatch.setattr(calibration, "fit_temperature", spy)
    pool = make_pool(X, Y, np.r_[LABELED, LABELED + 1])  # two labels per class: held-out samples count
    for current in sorted(PRIOR_METHODS):
        PRIOR_METHODS[current](pool, pool.candidates, np.random.default_rng(0), {})
    assert seen == {name: entry.fit.top_label_from for name, entry in PRIOR_METHODS.items()}
    assert PRIOR_METHODS["llgc"].fit.top_label_from == 20
