"""Selection strategies: plain functions ``(pool, budget, rng, params) -> Selection`` in one registry.

Adding a strategy = writing one function, declaring its name, params and what it needs with
``@strategy(name, Param..., needs=...)`` (agent/params.py: each param's default and valid range, checked
before the function runs; ``needs``: "nothing", "model" or "classifier", from which MODEL_FREE and
LABEL_FREE follow) and adding it to ``STRATEGIES`` (one line; the registry keys it by its declared name).
Loops that can run long call ``agent.cancel.checkpoint()`` (only a one-pass strategy declared
``light_budget=ALWAYS_LIGHT`` has none). A strategy whose cost grows with the k-means it fits says so in
the same decorator (``kmeans``: the k and fits a call's params, labelled count and budget give, the
function using the same), and may declare a prior of its CPU seconds per unit of work size
(``cpu_per_unit``), which admission expects of its first call before it has measured one
(agent/params.py StrategyEntry, agent/admission.py "Size-aware estimates").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.params import ALWAYS_LIGHT, StrategyEntry, registry, strategy
from agent.pool import InvalidArgument, Pool, Selection, quoted
from agent.strategies.as3l import as3l
from agent.strategies.audit import audit_strategy
from agent.strategies.clustering import kmedoids, typiclust
from agent.strategies.coverage import coreset, probcover
from agent.strategies.uncertainty import badge, das, diverse_margin, entropy, least_confidence, margin, qbc


@strategy("random", needs="nothing", light_budget=ALWAYS_LIGHT, uniform=True)
def random_strategy(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Uniform random sample of the candidates, without replacement. Needs no model and no labels. Declared
    ``uniform``: without a where filter its picks are a uniform draw of the unlabelled pool, whose labels
    calibrate the priors as audit labels do (agent/priors/calibration.py)."""
    take = min(budget, len(pool.candidates))
    rows = rng.choice(pool.candidates, size=take, replace=False) if take else pool.candidates[:0]
    return Selection(rows=np.asarray(rows, np.int64), scores=np.ones(take))


STRATEGIES: dict[str, StrategyEntry] = registry(
    random_strategy,
    # Uncertainty (need the model's logits head or >= 2 labelled classes).
    entropy,
    margin,
    least_confidence,
    diverse_margin,
    badge,
    qbc,
    das,
    # Diversity / representativeness (work from zero labels; take labelled rows into account).
    coreset,
    kmedoids,
    typiclust,
    probcover,
    as3l,
    # A uniform random sample recorded as audit draws: measures the priors (agent/audit.py).
    audit_strategy,
)

# Both follow each entry's ``needs`` (agent/params.py Needs), declared in its decorator.
# Strategies that need no model at all (the agent answers them before the first model is published).
MODEL_FREE: frozenset[str] = frozenset(n for n, e in STRATEGIES.items() if e.needs == "nothing")
# Strategies that work from zero labels (named in the error when an uncertainty strategy has too few).
LABEL_FREE: frozenset[str] = frozenset(n for n, e in STRATEGIES.items() if e.needs != "classifier")


def get_strategy(name: str) -> StrategyEntry:
    """The strategy called ``name``; InvalidArgument listing the valid names otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InvalidArgument(f"unknown strategy {quoted(name)}; valid: {', '.join(sorted(STRATEGIES))}") from None
