"""A deliberately slow strategy and prior method for the cancellation, admission and shutdown tests:
they work for ``seconds`` (a param) in small steps, calling ``agent.cancel.checkpoint()`` between steps
as every real algorithm does in its loops; and a "stuck" strategy that works ``seconds`` in one step
with no checkpoint (a long BLAS call, say). ``register()`` adds them to the registries (a subprocess
agent imports this module and calls it before ``shortlist serve``)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from agent.cancel import checkpoint
from agent.params import Param, prior_method, strategy
from agent.pool import Pool, Priors, Selection
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES

SECONDS = Param("seconds", "float", 0.0, "how long to work", 0.0, 600.0)
STEP_S = 0.01


def _work(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        checkpoint()
        time.sleep(STEP_S)


@strategy("slow", SECONDS, needs="model")
def slow_strategy(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Works ``seconds`` then picks the first candidates."""
    _work(SECONDS.get_float(params))
    rows = pool.candidates[:budget]
    return Selection(rows=np.asarray(rows, np.int64), scores=np.ones(len(rows)))


@strategy("stuck", SECONDS, needs="model")
def stuck_strategy(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Works ``seconds`` in one step, without a checkpoint, then picks the first candidates."""
    time.sleep(SECONDS.get_float(params))
    checkpoint()
    rows = pool.candidates[:budget]
    return Selection(rows=np.asarray(rows, np.int64), scores=np.ones(len(rows)))


@prior_method("slow", SECONDS)
def slow_prior(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """Works ``seconds`` then answers uniform probabilities."""
    _work(SECONDS.get_float(params))
    c = max(pool.num_classes, 1)
    return Priors(probs=np.full((len(rows), c), 1.0 / c, np.float32), confidence=np.zeros(len(rows), np.float32))


def register() -> None:
    STRATEGIES["slow"] = slow_strategy
    STRATEGIES["stuck"] = stuck_strategy
    PRIOR_METHODS["slow"] = slow_prior


if __name__ == "__main__":  # python -m tests.agent.slow serve ...: the CLI with the slow strategy registered
    import sys

    from shortlist.cli import app

    register()
    sys.argv[0] = "shortlist"
    app()
