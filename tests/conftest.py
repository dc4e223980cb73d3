"""Shared test configuration: Hypothesis profiles (select with HYPOTHESIS_PROFILE=dev|ci)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    print_blob=True)
# Debugging a failure: no shrinking, stop at the first bug.
settings.register_profile(
    "debug", max_examples=200, deadline=None, report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The Redis fixtures (the machine's server, a server of a test's own, a pool per test).
from redis_support import own_redis, pool_name, shared_redis  # noqa: E402, F401
