"""agent.pool.PoolMemo: what strategies keep across requests under one model version gives the answer a
fresh computation gives, while labels and rows are added (coreset's similarity to the labelled set,
the knn prior's embedding mean, its spread's sample moments, llgc's whole-pool kNN graph and the fitted
calibration temperature)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from agent.pool import KnnFn, PoolMemo
from agent.priors import get_prior_method
from agent.strategies import get_strategy
from agent.strategies._common import embedding_mean, labelled_similarity, pool_knn_graph
from tests.agent.strategies.pools import blobs, make_pool


def fresh_similarity(x: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    return (x @ x[labeled].T).max(axis=1) if len(labeled) else np.full(len(x), -np.inf, np.float32)


def test_labelled_similarity_is_brought_up_to_date_as_labels_and_rows_arrive() -> None:
    x, y = blobs(clusters=6, per_cluster=60, dim=16, spread=0.3, seed=3)
    memo = PoolMemo()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    # (rows the version has, labelled rows): labels trickle in, rows are added, a label changes class,
    # and a request with fewer labels (a calibration fold) comes between.
    steps = [(200, order[:0]), (200, order[:5]), (250, order[:9]), (300, order[:9]), (360, order[:30]),
             (360, order[:12]), (360, order[:31])]
    for n, labeled in steps:
        labeled = labeled[labeled < n]
        pool = make_pool(x[:n], y[:n], labeled=labeled)
        pool = replace(pool, memo=memo)
        got = labelled_similarity(pool)
        np.testing.assert_allclose(got, fresh_similarity(x[:n], labeled), rtol=0, atol=1e-6)
        assert not got.flags.writeable
        np.testing.assert_allclose(embedding_mean(pool), x[:n].mean(axis=0), atol=1e-6)
    n0, lab0, _ = memo.get("labelled_similarity")
    assert n0 == 360 and len(lab0) == 31  # the fold with fewer labels did not replace the newest


def test_coreset_and_knn_prior_answer_the_same_with_a_memo() -> None:
    x, y = blobs(clusters=5, per_cluster=50, dim=16, spread=0.3, seed=4)
    memo = PoolMemo()
    coreset = get_strategy("coreset")
    knn = get_prior_method("knn")
    for labelled in (np.array([0, 50, 100]), np.array([0, 50, 100, 150, 7]), np.array([0, 50, 100, 150, 7, 200])):
        plain = make_pool(x, y, labeled=labelled)
        kept = replace(plain, memo=memo)
        a = coreset(plain, 10, np.random.default_rng(1), {})
        b = coreset(kept, 10, np.random.default_rng(1), {})
        np.testing.assert_array_equal(a.rows, b.rows)
        rows = plain.candidates[:20]
        pa = knn(plain, rows, np.random.default_rng(2), {})
        pb = knn(kept, rows, np.random.default_rng(2), {})
        np.testing.assert_allclose(pa.probs, pb.probs, atol=1e-5)


def test_the_whole_pool_knn_graph_is_queried_once_per_row_count_and_k() -> None:
    """A calibrated llgc call (its fold runs and the answer) queries the index for the whole pool once, and
    answers exactly as a pool without a memo; more rows or another k query it again."""
    x, y = blobs(clusters=5, per_cluster=60, dim=16, spread=0.4, seed=7)
    lab = np.random.default_rng(7).choice(len(x), 30, replace=False)
    plain = make_pool(x, y, labeled=lab)
    queries: list[int] = []

    def counted(knn: KnnFn) -> KnnFn:
        def query(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            queries.append(len(q))
            return knn(q, k)
        return query

    memo = PoolMemo()
    kept = replace(plain, knn=counted(plain.knn), memo=memo)
    llgc = get_prior_method("llgc")
    a = llgc(plain, plain.candidates[:40], np.random.default_rng(2), {})
    b = llgc(kept, kept.candidates[:40], np.random.default_rng(2), {})
    np.testing.assert_array_equal(a.probs, b.probs)
    assert b.calibration is not None and b.calibration.fitting_set == "labelled"  # the folds ran
    assert queries == [len(x)]
    llgc(kept, kept.candidates[:5], np.random.default_rng(3), {})  # other rows, other labels: still kept
    assert queries == [len(x)]
    llgc(kept, kept.candidates[:5], np.random.default_rng(3), {"k": "5"})
    assert queries == [len(x)] * 2
    fewer = make_pool(x[:250], y[:250], labeled=lab[lab < 250])
    fewer = replace(fewer, knn=counted(fewer.knn), memo=memo)
    nbr, dist = pool_knn_graph(fewer, 6)
    assert queries == [len(x)] * 2 + [250] and nbr.shape == dist.shape == (250, 6)
    assert not nbr.flags.writeable and not dist.flags.writeable


def test_the_fitted_temperature_is_kept_per_labelled_set_and_answers_as_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PriorLabels for other rows under the same labels reuses the temperature (no calibration folds)
    and answers exactly as a pool without a memo; a new label fits it again."""
    import agent.priors.calibration as calibration

    x, y = blobs(clusters=5, per_cluster=60, dim=16, spread=0.4, seed=5)
    lab = np.random.default_rng(5).choice(len(x), 40, replace=False)
    memo = PoolMemo()
    knn = get_prior_method("knn")
    fits: list[int] = []
    real = calibration.held_out

    def counted(*args: Any) -> Any:
        fits.append(1)
        return real(*args)

    monkeypatch.setattr(calibration, "held_out", counted)
    memo_fitted = []
    new_label = next(i for i in range(len(x)) if i not in lab)
    for labelled in (lab, lab.copy(), np.append(lab, new_label)):
        plain = make_pool(x, y, labeled=labelled)
        kept = replace(plain, memo=memo)
        for rows in (plain.candidates[:20], plain.candidates[20:50]):
            a = knn(plain, rows, np.random.default_rng(2), {})
            n = len(fits)
            b = knn(kept, rows, np.random.default_rng(2), {})
            memo_fitted.append(len(fits) - n)
            np.testing.assert_array_equal(a.probs, b.probs)
            np.testing.assert_array_equal(a.confidence, b.confidence)
    # the memo fitted for the first request of each labelled set only (the second set equals the first)
    assert memo_fitted == [1, 0, 0, 0, 1, 0]
    # other params or another generator: another temperature
    kept = replace(make_pool(x, y, labeled=lab), memo=memo)
    n = len(fits)
    knn(kept, kept.candidates[:5], np.random.default_rng(3), {})
    knn(kept, kept.candidates[:5], np.random.default_rng(2), {"k": "5"})
    assert len(fits) - n == 2


def test_the_knn_spread_from_moments_is_the_spread_of_the_similarities() -> None:
    from agent.priors.knn import SPREAD_LABELLED, SPREAD_ROWS, _Space, similarity_spread

    x, y = blobs(clusters=6, per_cluster=700, dim=32, spread=0.5, seed=6)
    memo = PoolMemo()
    for labelled in (np.arange(0, len(x), 7), np.arange(0, len(x), 3), np.array([5])):
        pool = replace(make_pool(x, y, labeled=labelled), memo=memo)
        space = _Space(pool, embedding_mean(pool))
        sample = np.arange(0, len(x), max(1, len(x) // SPREAD_ROWS))
        lab = space.lab[::max(1, len(space.lab) // SPREAD_LABELLED)]
        direct = float(np.std(space.rows(sample) @ lab.T))
        assert similarity_spread(space) == pytest.approx(direct, rel=1e-5)
    assert memo.get("knn_spread_moments") is not None


def test_the_novelty_fit_is_kept_per_labelled_set_and_answers_as_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While a class has no label, repeated PriorLabels under the same labels reuse the unlabelled-class
    mass's model (no slope fit, no reference-row distances), whatever the rows, method or params, and
    answer exactly as a pool without a memo; a changed labelled set fits it again."""
    import agent.priors.calibration as calibration

    # 10 separated blobs: classes 0-3 with 2 labels, class 4 with 1, classes 5-9 none (as test_priors')
    x, y = blobs(clusters=10, per_cluster=60, dim=16, spread=0.05, seed=3)
    lab = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(4)] + [np.flatnonzero(y == 4)[:1]])
    memo = PoolMemo()
    fits: list[int] = []
    real = calibration.novelty_fit

    def counted(pool: Any) -> Any:
        fits.append(1)
        return real(pool)

    monkeypatch.setattr(calibration, "novelty_fit", counted)
    memo_fitted = []
    new_label = np.flatnonzero(y == 5)[0]  # a first label of class 5: classes 6-9 still have none
    calls = [(lab, "knn", {}), (lab.copy(), "knn", {"k": "5"}), (lab, "llgc", {}),
             (np.append(lab, new_label), "knn", {})]
    for labelled, name, params in calls:
        plain = make_pool(x, y, labeled=labelled)
        kept = replace(plain, memo=memo)
        assert len(np.unique(plain.labels)) < plain.num_classes
        for rows in (plain.candidates[:20], plain.candidates[20:50]):
            a = get_prior_method(name)(plain, rows, np.random.default_rng(2), params)
            n = len(fits)
            b = get_prior_method(name)(kept, rows, np.random.default_rng(2), params)
            memo_fitted.append(len(fits) - n)
            np.testing.assert_array_equal(a.probs, b.probs)
            np.testing.assert_array_equal(a.confidence, b.confidence)
    # fitted for the first call under each labelled set only (the second and third sets equal the first)
    assert memo_fitted == [1, 0, 0, 0, 0, 0, 1, 0]
    # the model really varies with the distance (the memo holds a slope, not only the even share)
    assert calibration.cached_novelty_fit(replace(make_pool(x, y, labeled=lab), memo=memo)).slope > 0.0
