"""The model breaker in simulated runs: noise never trips it, a storm trips it within its window.

Independent random 503s below the breaker's threshold are noise: over a long run of a busy model
(5 or more requests per second, so a 10 s window holds 50 outcomes or more), the model is never
taken out of rotation once its first window has passed, and every request is answered.  A
sustained storm trips it within the breaker's window.  (At a trickle of traffic, five 503s out
of ten can happen by chance at 5%; it then costs one cooldown, during which the model is still
probed once per second.)
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from keysched import Policy
from sim.engine import simulate
from sim.metrics import compute
from sim.scenario import parse_scenario


def _scenario(rate: float, p: float, seed: int, storm: tuple[float, float] | None) -> Any:
    faults: list[dict[str, Any]] = [{"kind": "overloaded", "model": "m", "probability": p}]
    if storm is not None:
        faults.insert(0, {"kind": "overloaded", "model": "m", "probability": 0.9,
                          "start": storm[0], "end": storm[1]})
    return parse_scenario({
        "description": "breaker", "start": "2026-08-11T09:00:00-07:00", "duration": 300,
        "seed": seed,
        "models": [{"name": "m", "latency_median": 0.2, "latency_sigma": 0.3,
                    "output_tokens": [10, 20]}],
        "projects": [{"name": "paid", "tier": "paid", "keys": 10}],
        "workload": [{"rate": rate, "input_tokens": [10, 100], "deadline": 60}],
        "faults": faults,
    })


@settings(max_examples=20, deadline=None)
@given(rate=st.sampled_from([5.0, 10.0, 30.0]), p=st.sampled_from([0.01, 0.03, 0.05]),
       seed=st.integers(0, 10_000))
@example(rate=30.0, p=0.05, seed=95)
def test_random_503s_below_the_threshold_never_cool_the_model(rate: float, p: float,
                                                              seed: int) -> None:
    result = simulate(_scenario(rate, p, seed, None), "least-loaded")
    # Within the first window it holds only the first few outcomes: at 30 requests/s and 5%,
    # seed 95 sees five 503s among its first outcomes (retries included) and trips at 0.55 s,
    # as five of ten is a storm by the breaker's rule.  Once a window is full, never.
    full = Policy().overload_window
    assert [e.time for e in result.events if e.kind == "model_cooled" and e.time >= full] == []
    metrics = compute(result)
    assert metrics.successes == metrics.requests
    assert metrics.attempts_per_success is not None
    assert metrics.attempts_per_success < 1 + 2 * p  # a retry per 503, nothing more


@settings(max_examples=10, deadline=None)
@given(rate=st.sampled_from([5.0, 10.0]), seed=st.integers(0, 10_000))
def test_a_sustained_storm_cools_the_model_within_the_window(rate: float, seed: int) -> None:
    window = Policy().overload_window
    result = simulate(_scenario(rate, 0.01, seed, (100.0, 200.0)), "least-loaded")
    cooled = [e.time for e in result.events if e.kind == "model_cooled"]
    assert cooled
    assert 100.0 <= cooled[0] <= 100.0 + window
