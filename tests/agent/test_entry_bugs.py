"""A registry entry that breaks its contract, over gRPC: a strategy's invalid selection and a prior method's
invalid answer (probs not summing to 1, a confidence above 1) are INTERNAL with one message naming that entry
as the bug; a prior method's answer is checked with calibrate=false too, where it would reach clients."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np
import pytest

from agent import client
from agent.params import prior_method, strategy
from agent.pool import Pool, Priors, Selection
from agent.priors import PRIOR_METHODS
from agent.priors.calibration import calibrated
from agent.strategies import STRATEGIES
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples


@strategy("repeats", needs="nothing")
def repeats(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Picks the first candidate twice."""
    rows = np.repeat(pool.candidates[:1], 2)
    return Selection(rows=rows, scores=np.ones(len(rows)))


@prior_method("overconfident")
def overconfident(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """Uniform probabilities summing to 0.5, confidence 2.78."""
    probs = np.full((len(rows), pool.num_classes), 0.5 / pool.num_classes, np.float32)
    return Priors(probs=probs, confidence=np.full(len(rows), 2.78, np.float32))


def test_a_strategy_bug_is_internal_naming_the_strategy(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, "repeats", repeats)
    client.ingest(running.stub, make_samples(10, labels=3))
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Select(agent_pb2.SelectRequest(budget=2, strategy="repeats"))
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert e.value.details() == (
        'strategy "repeats" returned an invalid answer (its rows must be distinct candidates, at most the budget, '
        "with one score each): this is a bug in that strategy, not in the request; please report it with the "
        "agent's log")


@pytest.mark.parametrize("calibrate", ["true", "false"])
def test_a_prior_method_bug_is_internal_naming_the_method(running: Running, monkeypatch: pytest.MonkeyPatch,
                                                          calibrate: str) -> None:
    monkeypatch.setitem(PRIOR_METHODS, "overconfident", calibrated(overconfident))
    client.ingest(running.stub, make_samples(30, labels=6))
    with pytest.raises(grpc.RpcError) as e:
        list(running.stub.PriorLabels(agent_pb2.PriorLabelsRequest(method="overconfident",
                                                                   params={"calibrate": calibrate})))
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert e.value.details().startswith('prior method "overconfident" returned an invalid answer (a row of probs '
                                        "sums to 0.5, not 1): this is a bug in that prior method, not in the request")
    assert "bug in the agent" not in e.value.details()
