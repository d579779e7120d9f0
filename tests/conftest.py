"""Settings shared by the whole suite: hypothesis profiles (CI is deterministic: derandomised, no example
database, no per-example deadline; ``HYPOTHESIS_PROFILE=dev`` explores at random with more examples)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=60,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                          # no shrinking: a failing example is reported as generated, without minutes of
                          # re-running calls against the agent
                          phases=[Phase.explicit, Phase.generate])
settings.register_profile("dev", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
