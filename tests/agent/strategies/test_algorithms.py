"""Hand-built cases where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from agent.pool import FailedPrecondition, InvalidArgument
from agent.strategies import STRATEGIES
from agent.strategies._common import top_k
from agent.strategies.as3l import consensus_groups, fit_linear_map
from agent.strategies.clustering import index_typicality, typicality
from agent.strategies.coverage import impurity_radii, purity_delta
from agent.strategies.uncertainty import entropy_of, margin_of, vote_entropy
from tests.agent.strategies.pools import blobs, make_pool


@pytest.mark.parametrize("name", ["kmedoids", "typiclust", "probcover", "as3l", "coreset"])
def test_ten_picks_cover_ten_blobs(name: str) -> None:
    # Unequal sizes: uniform random picks would often miss the small blobs.
    x, y = blobs(clusters=10, dim=16, spread=0.05, sizes=[80, 60, 50, 40, 30, 30, 25, 20, 20, 15], seed=1)
    for seed in range(3):
        sel = STRATEGIES[name](make_pool(x, y), 10, np.random.default_rng(seed), {})
        assert len(np.unique(y[sel.rows])) == 10, (name, seed, y[sel.rows])


@pytest.mark.parametrize("name", ["kmedoids", "typiclust", "probcover", "as3l", "coreset"])
def test_labelled_blobs_are_complemented(name: str) -> None:
    x, y = blobs(clusters=10, per_cluster=30, dim=16, spread=0.05, seed=2)
    labeled = np.flatnonzero(y < 4)[::30]  # one labelled sample in each of blobs 0-3
    sel = STRATEGIES[name](make_pool(x, y, labeled), 6, np.random.default_rng(0), {})
    assert sorted(set(y[sel.rows].tolist())) == [4, 5, 6, 7, 8, 9]


def test_typiclust_picks_the_dense_centre() -> None:
    # One blob: a tight core around the centre and a loose halo; the most typical point is in the core.
    rng = np.random.default_rng(0)
    core = rng.normal(scale=0.02, size=(50, 8)) + np.eye(8)[0]
    halo = rng.normal(scale=0.3, size=(50, 8)) + np.eye(8)[0]
    x = np.concatenate([core, halo])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.zeros(len(x), np.int64)
    sel = STRATEGIES["typiclust"](make_pool(x, y), 1, np.random.default_rng(0), {})
    assert sel.rows[0] < 50


def test_typicality_hand_computed() -> None:
    pts = np.array([[0.0], [1.0], [3.0]])
    # k=1 with self in reference: nearest other distances 1, 1, 2 -> typicality 1, 1, 0.5.
    np.testing.assert_allclose(typicality(pts, pts, 1, True), [1.0, 1.0, 0.5], rtol=1e-6)
    # k=2: mean of two nearest others: (1+3)/2=2, (1+2)/2=1.5, (2+3)/2=2.5.
    np.testing.assert_allclose(typicality(pts, pts, 2, True), [1 / 2, 1 / 1.5, 1 / 2.5], rtol=1e-6)


def test_index_typicality_equals_exact_typicality_over_the_pool() -> None:
    x, y = blobs(clusters=3, per_cluster=40, dim=8, spread=0.2, seed=3)
    pool = make_pool(x, y)
    rows = np.array([0, 5, 41, 100])
    expect = typicality(x[rows].astype(np.float64), x.astype(np.float64), 20, self_in_reference=True)
    np.testing.assert_allclose(index_typicality(pool, rows, 20), expect, rtol=1e-4)


@pytest.mark.parametrize("neighbours", ["index", "cluster"])
def test_typiclust_sets_small_clusters_aside(neighbours: str) -> None:
    # Two big blobs and a 3-point one: with 4 clusters for 4 picks, the big blobs get two picks each
    # before the tiny cluster (<= min_cluster_size members) gets any, as in the authors' code.
    x, y = blobs(clusters=3, dim=16, spread=0.05, sizes=[60, 60, 3], seed=6)
    sel = STRATEGIES["typiclust"](make_pool(x, y), 4, np.random.default_rng(0),
                                  {"max_clusters": "3", "neighbours": neighbours})
    assert sorted(y[sel.rows].tolist()) == [0, 0, 1, 1]
    sel = STRATEGIES["typiclust"](make_pool(x, y), 4, np.random.default_rng(0),
                                  {"max_clusters": "3", "min_cluster_size": "0", "neighbours": neighbours})
    assert sorted(set(y[sel.rows].tolist())) == [0, 1, 2]


def test_typiclust_rejects_unknown_neighbours() -> None:
    x, y = blobs(clusters=2, per_cluster=10, dim=8, seed=0)
    with pytest.raises(InvalidArgument, match="index, cluster"):
        STRATEGIES["typiclust"](make_pool(x, y), 2, np.random.default_rng(0), {"neighbours": "faiss"})


def test_coreset_picks_farthest_point_first() -> None:
    x = np.array([[1, 0], [0.99, 0.141], [0, 1], [-1, 0]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.zeros(4, np.int64)
    sel = STRATEGIES["coreset"](make_pool(x, y, np.array([0])), 2, np.random.default_rng(0), {})
    assert sel.rows.tolist() == [3, 2]  # opposite of the labelled row, then the orthogonal one
    assert sel.scores[0] == pytest.approx(2.0, abs=1e-5)  # Euclidean distance between antipodes


def test_probcover_purity_delta() -> None:
    pts = np.array([[0.0], [1.0], [3.0], [3.5]])
    own = np.array([0, 0, 1, 1])
    radius = impurity_radii(pts, own, pts, own)
    np.testing.assert_allclose(radius, [3.0, 2.0, 2.0, 2.5])
    # Sorted radii 2, 2, 2.5, 3: alpha=0.5 allows (1-0.5)*4 = 2 impure points -> r_(2) = 2.5.
    assert purity_delta(radius, alpha=0.5) == pytest.approx(2.5)
    assert purity_delta(radius, alpha=1.0) == pytest.approx(2.0)
    assert purity_delta(np.array([np.inf, np.inf]), alpha=0.95) == pytest.approx(2.0)  # one cluster: any ball


def naive_max_coverage(x: np.ndarray, labeled: np.ndarray, delta: float, budget: int) -> tuple[list[int], list[int]]:
    """Greedy max coverage straight from the definition (full NxN distance matrix): picks and gains."""
    inside = np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=2) < delta  # ball v, point u
    covered = inside[labeled].any(axis=0)
    picks: list[int] = []
    gains: list[int] = []
    for _ in range(budget):
        gain = (inside & ~covered[None, :]).sum(axis=1)
        gain[labeled] = -1
        gain[picks] = -1
        v = int(np.argmax(gain))
        picks.append(v)
        gains.append(int(gain[v]))
        covered |= inside[v]
    return picks, gains


@pytest.mark.parametrize(("delta", "budget", "biggest"), [(0.3, 6, 5), (0.8, 6, 120), (1.2, 5, 170)])
def test_probcover_is_exact_greedy_max_coverage(delta: float, budget: int, biggest: int) -> None:
    # Overlapping blobs, balls from a handful of points to 170: the greedy must count every ball
    # exactly (a k-nearest-neighbour graph would truncate the big ones and stop being greedy).
    x, y = blobs(clusters=6, dim=8, spread=0.3, sizes=[200, 150, 100, 60, 30, 10], seed=7)
    labeled = np.array([0, 5])
    picks, gains = naive_max_coverage(x, labeled, delta, budget)
    assert gains[0] == biggest and min(gains) > 0
    sel = STRATEGIES["probcover"](make_pool(x, y, labeled), budget, np.random.default_rng(0), {"delta": str(delta)})
    assert sel.scores.tolist() == gains
    assert sel.rows.tolist() == picks


def test_probcover_puts_each_point_in_its_own_ball_at_any_delta() -> None:
    """(below delta 3.5e-4 the cutoff rounded to cos 1 in float32: no ball held a point, every score was 0 and
    the picks were the random fill's)"""
    x, y = blobs(clusters=3, dim=8, spread=0.3, sizes=[20, 20, 10], seed=1)
    for delta in (1e-4, 1e-6):
        sel = STRATEGIES["probcover"](make_pool(x, y), 5, np.random.default_rng(0), {"delta": str(delta)})
        assert sel.scores.tolist() == [1.0] * 5 and sel.rows.tolist() == [0, 1, 2, 3, 4]  # ties: the lowest rows
        assert float(sel.details["covered"]) == pytest.approx(5 / 50)


def test_a_lone_row_is_scored_without_nan() -> None:
    x, y = blobs(clusters=1, dim=4, spread=0.1, sizes=[1], seed=0)
    for name in ("typiclust", "probcover"):
        sel = STRATEGIES[name](make_pool(x, y), 1, np.random.default_rng(0), {})
        assert sel.rows.tolist() == [0] and np.isfinite(sel.scores).all()
        assert "warning" not in sel.details  # (probcover warned of a median neighbour distance of inf)


def test_probcover_reports_delta_and_warns_when_balls_hold_one_point() -> None:
    x, y = blobs(clusters=4, per_cluster=30, dim=16, spread=0.05, seed=3)
    pool = make_pool(x, y)
    wide = STRATEGIES["probcover"](pool, 4, np.random.default_rng(0), {"delta": "0.6"})
    assert wide.details["delta"] == "0.6000" and wide.details["delta_from"] == "params"
    assert float(wide.details["covered"]) == 1.0 and "warning" not in wide.details  # a ball per blob
    nn = float(wide.details["median_nn_distance"])
    assert 0.05 < nn < 0.6
    tiny = STRATEGIES["probcover"](pool, 4, np.random.default_rng(0), {"delta": f"{nn / 2:.4f}"})
    assert float(tiny.details["covered"]) == pytest.approx(4 / len(x), abs=0.02)
    assert "median nearest-neighbour distance" in tiny.details["warning"]
    assert "Pass a larger delta" in tiny.details["warning"]
    # Separated blobs: the purity radius is cluster-sized, larger than the occupancy one, and wins.
    auto = STRATEGIES["probcover"](pool, 4, np.random.default_rng(0), {})
    assert auto.details["delta_from"].startswith("purity heuristic (alpha=0.95")
    occ = STRATEGIES["probcover"](pool, 4, np.random.default_rng(0), {"delta_from": "occupancy"})
    assert occ.details["delta_from"].startswith("ball occupancy")
    assert float(occ.details["delta"]) < float(auto.details["delta"])
    with pytest.raises(InvalidArgument, match="auto, occupancy, purity"):
        STRATEGIES["probcover"](pool, 4, np.random.default_rng(0), {"delta_from": "median"})


@pytest.mark.parametrize("share", [0.02, 0.1])
def test_probcover_default_delta_gives_balls_of_the_asked_occupancy(share: float) -> None:
    # Whatever the embedding's scale (tight or loose blobs), the median ball holds about ``share`` of the pool.
    for spread in (0.02, 0.3):
        x, y = blobs(clusters=5, per_cluster=80, dim=16, spread=spread, seed=4)
        sel = STRATEGIES["probcover"](make_pool(x, y), 3, np.random.default_rng(0),
                                      {"ball_share": str(share), "delta_from": "occupancy"})
        delta = float(sel.details["delta"])
        dist = np.sqrt(np.maximum(2 - 2 * (x @ x.T), 0))
        in_ball = (dist < delta).sum(axis=1) - 1  # other points in each point's ball
        assert abs(np.median(in_ball) / len(x) - share) <= 0.01, (spread, np.median(in_ball))
        assert float(sel.details["covered"]) > 3 * share * 0.5


def test_uncertainty_scores_hand_computed() -> None:
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.7, 0.3]])
    np.testing.assert_allclose(entropy_of(p), [np.log(2), 0.0, -(0.7 * np.log(0.7) + 0.3 * np.log(0.3))])
    np.testing.assert_allclose(margin_of(p), [0.0, 1.0, 0.4])
    votes = np.array([[0, 0, 0, 0], [0, 1, 0, 1], [0, 1, 2, 2]])
    np.testing.assert_allclose(vote_entropy(votes, 3), [0.0, np.log(2), -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))])


def test_margin_and_entropy_pick_the_boundary() -> None:
    # Two labelled blobs on a line: the unlabelled point halfway between is the most uncertain.
    x = np.array([[1, 0.0], [1, 0.05], [1, -0.05], [0, 1.0], [0.05, 1], [-0.05, 1], [0.7, 0.7], [1, 0.02]])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    pool = make_pool(x, y, np.array([0, 1, 2, 3, 4, 5]))
    for name in ("entropy", "margin", "least_confidence", "qbc", "badge"):
        sel = STRATEGIES[name](pool, 1, np.random.default_rng(0), {})
        assert sel.rows.tolist() == [6], name


def test_diverse_margin_takes_one_frame_of_a_burst_where_margin_takes_the_burst() -> None:
    # 10 near-identical frames (a camera-trap burst) are the most uncertain rows; 50 distinct rows are a little
    # less uncertain. margin's top 5 are all the burst; diverse_margin clusters the 50 most uncertain and takes
    # one row per cluster (Zhdanov 2019), so the burst gives at most one pick.
    rng = np.random.default_rng(3)
    burst = np.tile(rng.normal(size=8), (10, 1)) + 1e-4 * rng.normal(size=(10, 8))
    x = np.concatenate([rng.normal(size=(2, 8)), burst, rng.normal(size=(50, 8))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.array([0, 1] + [0] * 60)
    gap = np.r_[5.0, -5.0, np.zeros(10), np.linspace(0.05, 0.5, 50)]  # logit gap: 0 is a coin toss
    logits = np.stack([gap / 2, -gap / 2], axis=1).astype(np.float32)
    pool = make_pool(x, y, np.array([0, 1]), logits=logits)
    in_burst = set(range(2, 12))
    plain = STRATEGIES["margin"](pool, 5, np.random.default_rng(0), {})
    assert set(plain.rows.tolist()) <= in_burst
    sel = STRATEGIES["diverse_margin"](pool, 5, np.random.default_rng(0), {"beta": "10"})
    assert len(set(sel.rows.tolist())) == 5 and len(in_burst & set(sel.rows.tolist())) <= 1
    assert np.all(np.diff(sel.scores) <= 0)  # most uncertain first


def test_qbc_without_two_labelled_classes_says_its_committee_needs_them() -> None:
    # The model has a usable 2-class head, but qbc's committee is fitted on the labels: one class is too few,
    # and the refusal must not blame a missing logits head.
    x, y = blobs(clusters=2, per_cluster=10, dim=8, seed=1)
    logits = np.stack([x[:, 0], -x[:, 0]], axis=1).astype(np.float32)
    pool = make_pool(x, y, np.array([0, 1]), logits=logits)
    assert len(np.unique(pool.labels)) == 1
    with pytest.raises(FailedPrecondition) as e:
        STRATEGIES["qbc"](pool, 2, np.random.default_rng(0), {})
    assert "committee" in str(e.value) and "1 class(es) are labelled" in str(e.value)
    assert "no logits head" not in str(e.value)


def test_das_weighs_pretext_loss() -> None:
    x, y = blobs(clusters=2, per_cluster=20, dim=8, seed=4)
    loss = np.zeros(len(x), np.float32)
    loss[[11, 33]] = 5.0  # two samples the rotation head gets badly wrong
    pool = make_pool(x, y, np.array([0, 1, 20, 21]), pretext_loss=loss)
    sel = STRATEGIES["das"](pool, 2, np.random.default_rng(0), {"lambda": "10"})
    assert sorted(sel.rows.tolist()) == [11, 33]
    plain = STRATEGIES["das"](pool, 2, np.random.default_rng(0), {"lambda": "0"})
    ent = STRATEGIES["entropy"](pool, 2, np.random.default_rng(0), {})
    assert sorted(plain.rows.tolist()) == sorted(ent.rows.tolist())


def test_as3l_building_blocks() -> None:
    # Closed-form Eq. 1: with targets an exact linear image of x, the map is recovered (tiny ridge).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    w_true = rng.normal(size=(5, 5))
    np.testing.assert_allclose(fit_linear_map(x, x @ w_true, ridge=1e-9), w_true, atol=1e-5)
    a = np.array([[0, 1], [0, 1], [0, 2], [1, 1]])
    g = consensus_groups(a)
    assert g[0] == g[1] and len({g[0], g[2], g[3]}) == 3


def test_top_k_breaks_ties_by_row() -> None:
    sel = top_k(np.array([9, 3, 7, 5]), np.array([1.0, 2.0, 2.0, 0.5]), 2)
    assert sel.rows.tolist() == [3, 7]


def test_badge_factorised_distances_match_explicit_gradient_embeddings() -> None:
    # Logits from the model: BADGE's first pick is the largest explicit gradient-embedding norm and each
    # later score is the squared distance, in the explicit C*D space, to the nearest earlier pick.
    rng = np.random.default_rng(0)
    x, y = blobs(clusters=3, per_cluster=10, dim=6, spread=0.3, seed=5)
    logits = rng.normal(size=(len(x), 3)).astype(np.float32)
    pool = make_pool(x, y, None, logits=logits)
    sel = STRATEGIES["badge"](pool, 4, np.random.default_rng(1), {})
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    a = p.copy()
    a[np.arange(len(a)), p.argmax(axis=1)] -= 1.0
    g = np.einsum("nc,nd->ncd", a, x).reshape(len(x), -1)  # explicit (p - e_y^) kron h
    assert sel.rows[0] == int(np.argmax((g * g).sum(axis=1)))
    for i in range(1, 4):
        d2 = ((g[sel.rows[i]] - g[sel.rows[:i]]) ** 2).sum(axis=1).min()
        assert sel.scores[i] == pytest.approx(d2, rel=1e-4, abs=1e-6)
