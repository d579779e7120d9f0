"""Prior-label methods: plain functions ``(pool, rows, rng, params) -> Priors`` in one registry.

Adding a method = one function declared with ``@prior_method(name, Param...)`` (agent/params.py) and one
line in ``PRIOR_METHODS``; loops that can run long call ``agent.cancel.checkpoint()``."""

from __future__ import annotations

from agent.params import PriorEntry
from agent.pool import InvalidArgument
from agent.priors.as3l import as3l_prior
from agent.priors.knn import knn_prior
from agent.priors.llgc import llgc_prior

PRIOR_METHODS: dict[str, PriorEntry] = {
    "knn": knn_prior,  # weighted k-nearest-neighbour vote over the labelled samples
    "as3l": as3l_prior,  # AS3L constrained seed k-means, C runs
    "llgc": llgc_prior,  # label spreading over the sparse kNN graph
}


def get_prior_method(name: str) -> PriorEntry:
    """The prior-label method called ``name``; InvalidArgument listing the valid names otherwise."""
    try:
        return PRIOR_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(PRIOR_METHODS)) or "none"
        raise InvalidArgument(f"unknown prior method {name!r}; valid: {valid}") from None
