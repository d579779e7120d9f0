"""Every prior method, over the whole registry (agent.priors.PRIOR_METHODS): one label per blob labels the blob,
labelled rows come back one-hot, bad requests are errors. A new prior method is covered by registering it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from agent.params import PriorEntry, prior_method
from agent.pool import EntryBug, FailedPrecondition, InvalidArgument, Pool, Priors
from agent.priors import PRIOR_METHODS, get_prior_method
from agent.priors.calibration import calibrated
from bench.metrics import prior_accuracy
from tests.agent.priors.blobs import LABELED, X, Y
from tests.agent.strategies.pools import make_pool

# Each method runs calibrated (the default) and with calibrate=false: the calibration renormalises the
# probabilities and replaces the confidence, so only the raw run shows a method's own answer.
CALIBRATE = ["true", "false"]


@pytest.mark.parametrize("calibrate", CALIBRATE)
@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_one_label_per_blob_labels_every_blob(name: str, calibrate: str) -> None:
    pool = make_pool(X, Y, LABELED)
    rows = pool.candidates
    pr = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {"calibrate": calibrate})
    assert pr.probs.shape == (len(rows), 5) and pr.confidence.shape == (len(rows),)
    np.testing.assert_allclose(pr.probs.sum(axis=1), 1.0, rtol=1e-5)
    assert ((pr.confidence >= 0) & (pr.confidence <= 1)).all()
    assert prior_accuracy(pr.probs, Y[rows]) == 1.0
    again = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {"calibrate": calibrate})
    np.testing.assert_allclose(pr.probs, again.probs)


@pytest.mark.parametrize("calibrate", CALIBRATE)
@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_labelled_rows_come_back_one_hot_and_errors(name: str, calibrate: str) -> None:
    pool = make_pool(X, Y, LABELED)
    pr = PRIOR_METHODS[name](pool, LABELED[:2], np.random.default_rng(0), {"calibrate": calibrate})
    np.testing.assert_allclose(pr.probs, np.eye(5)[Y[LABELED[:2]]])
    np.testing.assert_allclose(pr.confidence, 1.0)
    with pytest.raises(FailedPrecondition, match="no sample is labelled"):
        PRIOR_METHODS[name](make_pool(X, Y), np.arange(3), np.random.default_rng(0), {"calibrate": calibrate})
    with pytest.raises(InvalidArgument, match="valid"):
        PRIOR_METHODS[name](pool, np.arange(3), np.random.default_rng(0), {"nope": "1", "calibrate": calibrate})


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
@pytest.mark.parametrize("calibrate", CALIBRATE)
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


def broken(fault: str) -> PriorEntry:
    """A registered-style (calibration-wrapped) prior method whose own answer breaks the contract by ``fault``:
    probs summing to 0.5, a confidence of 2.8, a NaN, a negative prob, or one row too few."""

    @prior_method("broken")
    def fn(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
        probs = np.full((len(rows), pool.num_classes), 1.0 / pool.num_classes, np.float32)
        confidence = np.full(len(rows), 0.5, np.float32)
        if fault == "sum":
            probs *= 0.5
        elif fault == "confidence":
            confidence += 2.3
        elif fault == "nan":
            probs[0, 0] = np.nan
        elif fault == "negative":
            probs[0, :2] = (-0.1, 0.1 + 2.0 / pool.num_classes)
        elif fault == "rows":
            probs, confidence = probs[1:], confidence[1:]
        return Priors(probs=probs, confidence=confidence)

    return calibrated(fn)


@pytest.mark.parametrize("calibrate", CALIBRATE)
@pytest.mark.parametrize("fault", ["sum", "confidence", "nan", "negative", "rows"])
def test_a_method_answer_that_breaks_the_contract_is_a_bug_naming_the_method(fault: str, calibrate: str) -> None:
    """The registry checks every method's own answer (before the calibration, which would renormalise a
    wrong sum and replace a wrong confidence; with calibrate=false it went to clients: confidence 2.78)."""
    pool = make_pool(X, Y, LABELED)
    with pytest.raises(EntryBug, match=r'prior method "broken" returned an invalid answer .*bug in that prior method'):
        broken(fault)(pool, pool.candidates, np.random.default_rng(0), {"calibrate": calibrate})
    assert broken("none")(pool, pool.candidates, np.random.default_rng(0), {"calibrate": calibrate}).probs.shape == (
        len(pool.candidates), 5)
