"""Prior-label methods: plain functions ``(pool, rows, rng, params) -> Priors`` in one registry.

Adding a method = one function declared with ``@prior_method(name, Param...)`` (agent/params.py) and one
line in ``PRIOR_METHODS`` (the registry keys it by its declared name); loops that can run long call
``agent.cancel.checkpoint()``. A method whose cost grows with its params or the pool says how in the same
decorator (``work``: its work size for a call, which admission scales a measured run's estimate by;
agent/params.py PriorEntry.work_size).
Every registered method is wrapped by ``calibrated`` (agent/priors/calibration.py): calibration is on by
default and ``calibrate=false`` turns it off, for a new method too (the wrapper declares that param).
"""

from __future__ import annotations

from agent.params import FitSettings, PriorEntry, registry
from agent.pool import InvalidArgument, quoted
from agent.priors.as3l import as3l_prior
from agent.priors.calibration import calibrated
from agent.priors.knn import knn_prior
from agent.priors.llgc import llgc_prior

PRIOR_METHODS: dict[str, PriorEntry] = registry(
    calibrated(knn_prior),  # weighted k-nearest-neighbour vote over the labelled samples
    calibrated(as3l_prior),  # AS3L constrained seed k-means, C runs
    # label spreading over the sparse kNN graph; flat probabilities, hence the low default temperature. Its
    # temperature fits the top-label likelihood from 20 held-out samples (others: from 200): with the
    # multiclass one it came out too sharp after 40 picks on CIFAR-10 embeddings (docs/benchmarks.md,
    # "llgc's temperature on the top-label likelihood").
    calibrated(llgc_prior, FitSettings(default_temperature=0.1, top_label_from=20)),
)


def get_prior_method(name: str) -> PriorEntry:
    """The prior-label method called ``name``; InvalidArgument listing the valid names otherwise."""
    try:
        return PRIOR_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(PRIOR_METHODS)) or "none"
        raise InvalidArgument(f"unknown prior method {quoted(name)}; valid: {valid}") from None
