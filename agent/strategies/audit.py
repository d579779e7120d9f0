"""The audit draw: a uniform random sample of the unlabelled pool, labelled to measure the priors.

The agent records every sample this strategy returns (agent/state.py's ``audit`` table) and keeps their
labels out of the seeds of the prior it audits (agent/audit.py), so the labels measure the prior methods
on a sample that no strategy chose. Same draw as ``random``; what differs is what the agent does with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.params import ALWAYS_LIGHT, strategy
from agent.pool import Pool, Selection

AUDIT = "audit"


@strategy(AUDIT, needs="nothing", light_budget=ALWAYS_LIGHT, uniform=True)
def audit_strategy(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """Uniform random sample of the unlabelled pool, recorded as audit draws: once labelled, GetStatus
    reports each prior method's accuracy on them with a confidence interval. Refuses a where filter (the
    estimate is for the whole pool). Needs no model and no labels."""
    take = min(budget, len(pool.candidates))
    rows = rng.choice(pool.candidates, size=take, replace=False) if take else pool.candidates[:0]
    return Selection(rows=np.asarray(rows, np.int64), scores=np.ones(take))
