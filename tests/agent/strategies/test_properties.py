"""Properties every registered strategy must keep, checked over the whole registry."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from agent.params import registry, strategy
from agent.pool import FailedPrecondition, InvalidArgument, Pool, Selection
from agent.strategies import LABEL_FREE, MODEL_FREE, STRATEGIES, get_strategy
from tests.agent.strategies.pools import blobs, make_pool

X, Y = blobs(clusters=6, per_cluster=30, dim=16, spread=0.2, seed=3)
LOSS = np.random.default_rng(0).random(len(X)).astype(np.float32)
LABELED = np.array([0, 1, 30, 31, 60, 95])
# Candidates: a `where`-like subset that leaves some unlabelled rows out.
CANDIDATES = np.setdiff1d(np.arange(0, len(X), 1), np.concatenate([LABELED, np.arange(150, 165)]))


def pool_for(name: str):
    return make_pool(X, Y, LABELED, candidates=CANDIDATES, pretext_loss=LOSS)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("budget", [1, 7])
def test_budget_subset_no_labelled_no_duplicates_deterministic(name: str, budget: int) -> None:
    pool = pool_for(name)
    sel = STRATEGIES[name](pool, budget, np.random.default_rng(5), {})
    again = STRATEGIES[name](pool, budget, np.random.default_rng(5), {})
    assert len(sel.rows) == budget
    assert sel.rows.dtype == np.int64 and len(sel.scores) == len(sel.rows)
    assert set(sel.rows.tolist()) <= set(CANDIDATES.tolist())
    assert not set(sel.rows.tolist()) & set(LABELED.tolist())
    assert len(np.unique(sel.rows)) == len(sel.rows)
    np.testing.assert_array_equal(sel.rows, again.rows)
    np.testing.assert_allclose(sel.scores, again.scores)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_budget_beyond_candidates_returns_what_is_left(name: str) -> None:
    few = CANDIDATES[:5]
    pool = make_pool(X, Y, LABELED, candidates=few, pretext_loss=LOSS)
    sel = STRATEGIES[name](pool, 50, np.random.default_rng(0), {})
    assert sorted(sel.rows.tolist()) == sorted(few.tolist())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_unknown_param_lists_valid_ones(name: str) -> None:
    with pytest.raises(InvalidArgument, match="does not take param"):
        STRATEGIES[name](pool_for(name), 3, np.random.default_rng(0), {"bogus": "1"})


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - LABEL_FREE))
def test_needs_labels_fails_precondition_naming_label_free(name: str) -> None:
    for labeled in (np.zeros(0, np.int64), np.array([0, 1, 2])):  # none, and one class only
        pool = make_pool(X, Y, labeled, pretext_loss=LOSS)
        with pytest.raises(FailedPrecondition) as err:
            STRATEGIES[name](pool, 3, np.random.default_rng(0), {})
        for free in LABEL_FREE:
            assert free in str(err.value)


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - LABEL_FREE))
def test_a_one_class_model_head_fails_precondition_naming_label_free(name: str) -> None:
    """A model fine-tuned on one labelled class has a one-column logits head for the agent's one class: every
    probability is 1, so every score would tie and the picks be the first rows. Refused as having no
    classifier is, saying that the model knows one class."""
    one_class = np.zeros(len(X), np.int64)
    logits = np.full((len(X), 1), 4.0, np.float32)
    for labeled in (np.zeros(0, np.int64), np.array([0, 1, 2])):  # none, and that one class labelled
        pool = make_pool(X, one_class, labeled, logits=logits, pretext_loss=LOSS)
        with pytest.raises(FailedPrecondition) as err:
            STRATEGIES[name](pool, 3, np.random.default_rng(0), {})
        assert "knows only one class (\"c0\")" in str(err.value)
        for free in LABEL_FREE:
            assert free in str(err.value)


@pytest.mark.parametrize("name", sorted(LABEL_FREE))
def test_label_free_strategies_cold_start(name: str) -> None:
    pool = make_pool(X, Y, None)
    sel = STRATEGIES[name](pool, 6, np.random.default_rng(0), {})
    assert len(sel.rows) == 6 and len(np.unique(sel.rows)) == 6


def test_uncertainty_uses_model_logits_without_labels() -> None:
    logits = np.zeros((len(X), 6), np.float32)
    logits[:, 0] = 5.0
    logits[[40, 70], :] = 0.0  # two rows where the model is completely unsure
    pool = make_pool(X, Y, None, logits=logits)
    for name in ("entropy", "margin", "least_confidence"):
        sel = STRATEGIES[name](pool, 2, np.random.default_rng(0), {})
        assert sorted(sel.rows.tolist()) == [40, 70]


def test_das_without_pretext_loss_fails_precondition() -> None:
    pool = make_pool(X, Y, LABELED)
    with pytest.raises(FailedPrecondition, match="rotation"):
        STRATEGIES["das"](pool, 3, np.random.default_rng(0), {})


def test_registry_names() -> None:
    assert MODEL_FREE <= LABEL_FREE <= set(STRATEGIES)
    assert {"random", "entropy", "margin", "least_confidence", "coreset", "kmedoids", "typiclust", "probcover",
            "as3l", "badge", "qbc", "das"} <= set(STRATEGIES)
    with pytest.raises(InvalidArgument, match=r"valid: .*typiclust"):
        get_strategy("nope")


def test_what_each_strategy_needs_is_declared_on_its_entry() -> None:
    """MODEL_FREE and LABEL_FREE follow each entry's declared ``needs``, and each key is the entry's own name."""
    for name, entry in STRATEGIES.items():
        assert entry.name == name
        assert (name in MODEL_FREE) == (entry.needs == "nothing"), name
        assert (name in LABEL_FREE) == (entry.needs in ("nothing", "model")), name
    # The built-in ones as before the declaration (a new strategy may join any of the three).
    built_in = {"random": "nothing", "audit": "nothing", "coreset": "model", "kmedoids": "model",
                "typiclust": "model", "probcover": "model", "as3l": "model", "entropy": "classifier",
                "margin": "classifier", "least_confidence": "classifier", "badge": "classifier",
                "qbc": "classifier", "das": "classifier"}
    assert {name: STRATEGIES[name].needs for name in built_in} == built_in


def _first(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    rows = pool.candidates[:budget]
    return Selection(rows=np.asarray(rows, np.int64), scores=np.ones(len(rows)))


def test_a_strategy_must_declare_what_it_needs_and_a_name_of_its_own() -> None:
    with pytest.raises(TypeError, match="needs"):
        strategy("toy")(_first)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="strategy toy: needs='labels'; valid: nothing, model, classifier"):
        strategy("toy", needs="labels")  # type: ignore[arg-type]
    toy = strategy("toy", needs="model")(_first)
    assert list(registry(STRATEGIES["random"], toy)) == ["random", "toy"]
    clash = strategy("random", needs="nothing")(_first)
    with pytest.raises(ValueError, match="two strategy entries are named 'random'"):
        registry(STRATEGIES["random"], clash)


def test_bad_param_value_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="integer"):
        STRATEGIES["as3l"](pool_for("as3l"), 3, np.random.default_rng(0), {"runs": "six"})
    with pytest.raises(InvalidArgument, match=r'lambda="-1" .*\[0, 1000\]'):
        STRATEGIES["das"](pool_for("das"), 3, np.random.default_rng(0), {"lambda": "-1"})


@pytest.mark.parametrize("name", sorted(n for n, e in STRATEGIES.items() if e.uniform))
def test_a_strategy_declared_uniform_draws_every_candidate_equally_often(name: str) -> None:
    """``uniform=True`` lets the calibration fit on the picks' labels as on audit labels, so it must hold: over
    400 draws of 7 on the clustered pool, each candidate's count is binomial (chi-square, p > 0.001)."""
    from scipy.stats import chisquare

    pool = pool_for(name)
    counts = np.zeros(len(X), np.int64)
    for seed in range(400):
        np.add.at(counts, STRATEGIES[name](pool, 7, np.random.default_rng(seed), {}).rows, 1)
    assert counts[np.setdiff1d(np.arange(len(X)), CANDIDATES)].sum() == 0
    assert chisquare(counts[CANDIDATES]).pvalue > 1e-3
    assert not STRATEGIES["typiclust"].uniform and not STRATEGIES["coreset"].uniform
