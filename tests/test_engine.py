"""The simulator's driver."""

from __future__ import annotations

import pytest

from sim.engine import simulate
from sim.scenario import parse_scenario

TINY = {
    "description": "two keys, one model, light load",
    "start": "2026-05-12T10:00:00-07:00",
    "duration": 60,
    "seed": 3,
    "models": [{"name": "m", "latency_median": 1.0, "latency_sigma": 0.2}],
    "quotas": {"m": {"rpm": 100, "tpm": 1_000_000, "rpd": 1000}},
    "projects": [{"name": "a", "keys": 2}],
    "workload": [{"rate": 0.5, "input_tokens": [100, 200], "deadline": 30}],
}


def test_every_request_ends_once_on_a_tiny_run() -> None:
    """Each arrival becomes one request record, and every success has a successful attempt."""
    scenario = parse_scenario(TINY)
    result = simulate(scenario, "least-loaded")
    assert result.lost == 0
    assert len({r.id for r in result.requests}) == len(result.requests) > 10
    assert all(r.ok for r in result.requests)
    assert sum(a.outcome == "success" for a in result.attempts) == len(result.requests)
    assert all(r.first_dispatch is not None and r.arrival <= r.first_dispatch <= r.end
               for r in result.requests)


def test_same_seed_same_run() -> None:
    """Two runs with one seed produce the same trace, event for event; another seed differs."""
    scenario = parse_scenario({**TINY, "faults": [
        {"kind": "server_error", "probability": 0.2}, {"kind": "key_revoked", "key": "a-1",
                                                        "start": 30}]})
    for policy in ("least-loaded", "router-like"):
        first = simulate(scenario, policy, seed=7)
        again = simulate(scenario, policy, seed=7)
        assert first.trace() == again.trace()
        assert simulate(scenario, policy, seed=8).trace() != first.trace()


def test_attempt_is_bounded_by_the_request_deadline() -> None:
    """An answer slower than the deadline is reported as a timeout at the deadline."""
    slow = {**TINY, "models": [{"name": "m", "latency_median": 50.0, "latency_sigma": 0.0}],
            "workload": [{"rate": 0.0, "deadline": 20, "bursts": [{"at": 1, "count": 1}]}]}
    result = simulate(parse_scenario(slow), "least-loaded")
    (request,) = result.requests
    assert not request.ok
    assert request.reason == "deadline"
    assert request.end == pytest.approx(request.arrival + 20)
    assert result.attempts[0].outcome == "timeout"


def test_unknown_policy_name_lists_the_known_ones() -> None:
    """A typo in a policy name says which names exist."""
    with pytest.raises(KeyError, match="least-loaded"):
        simulate(parse_scenario(TINY), "least-loded")
