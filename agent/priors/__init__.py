"""Prior-label methods: plain functions ``(pool, rows, rng, params) -> Priors`` in one registry.

Every registered method is wrapped by ``calibrated`` (agent/priors/calibration.py): calibration is on by
default and ``calibrate=false`` turns it off, for a new method too.
"""

from __future__ import annotations

from agent.pool import InvalidArgument, PriorMethod
from agent.priors.as3l import as3l_prior
from agent.priors.calibration import calibrated
from agent.priors.knn import knn_prior
from agent.priors.llgc import llgc_prior

PRIOR_METHODS: dict[str, PriorMethod] = {
    "knn": calibrated(knn_prior),  # weighted k-nearest-neighbour vote over the labelled samples
    "as3l": calibrated(as3l_prior),  # AS3L constrained seed k-means, C runs
    "llgc": calibrated(llgc_prior, default_temperature=0.1),  # label spreading over the sparse kNN graph
}


def get_prior_method(name: str) -> PriorMethod:
    """The prior-label method called ``name``; InvalidArgument listing the valid names otherwise."""
    try:
        return PRIOR_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(PRIOR_METHODS)) or "none"
        raise InvalidArgument(f"unknown prior method {name!r}; valid: {valid}") from None
