"""Prior-label methods: plain functions ``(pool, rows, rng, params) -> Priors`` in one registry."""

from __future__ import annotations

from agent.pool import InvalidArgument, PriorMethod

PRIOR_METHODS: dict[str, PriorMethod] = {}


def get_prior_method(name: str) -> PriorMethod:
    """The prior-label method called ``name``; InvalidArgument listing the valid names otherwise."""
    try:
        return PRIOR_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(PRIOR_METHODS)) or "none"
        raise InvalidArgument(f"unknown prior method {name!r}; valid: {valid}") from None
