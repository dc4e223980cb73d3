"""Quota learning in simulated runs: the property the quota-intelligence issue states.

In any simulated run with unknown limits and no bare 429s, the 429s per (project, model) are
at most one per limit value the server reports (plus one per tier change), and no answer the
quota allowed is lost.  "One" is counted from the client's side: the first 429 of a group can
only be learned from when it comes back, and attempts already in flight to the group then were
sent before anything could be known (a hypothesis run found two requests 0.07 s apart, both
past the limit, with the first 429 still on its way).  So: once a group's first 429 reporting
a value came back, no attempt sent to it is refused with that value again.  Runs are short
enough (under ``relearn_after`` after the first 429) that no learned limit is tested;
`test_quota_learning.py` covers that test on its own.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.metrics import compute
from sim.scenario import parse_scenario

_RATE_LIMITED = ("rate_limited_minute", "rate_limited_day")


def _scenario(projects: int, keys: int, rpm: int, load: float, window: str, latency: float,
              seed: int, change: int | None, better: bool = False) -> Any:
    duration = 180.0
    data: dict[str, Any] = {
        "description": "generated", "start": "2026-05-12T10:00:00-07:00", "duration": duration,
        "seed": seed, "quota_window": window,
        "models": [{"name": "m", "latency_median": latency, "latency_sigma": 0.3,
                    "output_tokens": [10, 20]}],
        "quotas": {"m": {"rpm": rpm}},
        # `better`: p0 is on a tier with four times the quota (its siblings' limit misleads it).
        "projects": [{"name": f"p{i}", "keys": keys,
                      **({"quotas": {"m": {"rpm": 4 * rpm}}} if better and i == 0 else {})}
                     for i in range(projects)],
        # Offered `load` times the pool's per-minute capacity; long deadlines: nothing times out
        # for want of patience, so every failure would be a lost answer.
        "workload": [{"rate": load * (projects + 3 * better) * rpm / 60.0,
                      "input_tokens": [10, 100],
                      "deadline": 100}],
    }
    if change is not None:
        data["quota_changes"] = [{"at": 90, "project": "p0", "model": "m", "rpm": change}]
    return parse_scenario(data)


@settings(max_examples=60, deadline=None)
@given(projects=st.integers(1, 6), keys=st.integers(1, 3), rpm=st.integers(2, 12),
       load=st.sampled_from([0.5, 1.0, 2.0, 3.0]), window=st.sampled_from(["fixed", "sliding"]),
       latency=st.sampled_from([0.05, 0.5, 2.0]), seed=st.integers(0, 1000),
       change=st.one_of(st.none(), st.integers(1, 20)), better=st.booleans())
def test_unknown_limits_cost_one_429_per_reported_value(
        projects: int, keys: int, rpm: int, load: float, window: str, latency: float, seed: int,
        change: int | None, better: bool) -> None:
    scenario = _scenario(projects, keys, rpm, load, window, latency, seed, change, better)
    own = {f"p{i}": 4 * rpm if better and i == 0 else rpm for i in range(projects)}
    result = simulate(scenario, "least-loaded")
    refused = [a for a in result.attempts if a.outcome in _RATE_LIMITED]
    for project in (f"p{i}" for i in range(projects)):
        # The value each refusal reported: the quota at the time it was sent.
        by_value: dict[int, list[Any]] = {}
        for a in refused:
            if a.project == project:
                cut = change is not None and project == "p0" and a.time >= 90
                by_value.setdefault(change if cut else own[project], []).append(a)  # type: ignore[arg-type]
        for value, mine in by_value.items():
            learned_at = min(a.end for a in mine)
            after = [a for a in mine if a.time >= learned_at]
            assert after == [], (project, value, after)
    metrics = compute(result)
    # Nothing the quota allowed was lost: no request failed for want of attempts, none was
    # dropped, and every request ended.  (Deadline failures are demand beyond the quota.)
    assert result.lost == 0
    assert set(metrics.failures) <= {"deadline"}
    if load <= 0.5 and change is None:  # well inside the quota: every request is answered
        assert metrics.successes == metrics.requests


def test_learning_answers_as_much_as_configured_limits_on_the_free_tier_scenario() -> None:
    """The built-in free-tier scenario: learning answers what configured limits answer, with
    one 429 per group, where the flooding policy of old loses answers to 429s."""
    from sim.scenario import load_scenario

    scenario = load_scenario("free-tier-unknown")
    learned = compute(simulate(scenario, "least-loaded"))
    told = compute(simulate(scenario, "told-limits"))
    flooding = compute(simulate(scenario, "no-learning"))
    groups = len(scenario.projects)
    assert learned.successes >= told.successes * 0.98
    assert learned.rate_limited <= 2 * groups  # one to learn, one test of the learned limit
    assert told.rate_limited == 0
    assert flooding.rate_limited > 50 * learned.rate_limited
    assert flooding.successes < learned.successes


def test_a_tier_upgrade_is_found_and_a_cut_is_learned() -> None:
    """The built-in tier-change scenario: two projects go from 10 to 30 per minute at t = 120, one
    drops to 4 at t = 180.  Learning finds the new values (the upgrade at the next test of the
    learned limit), with a handful of 429s per project where flooding spends thousands, and
    answers within 10% of what flooding answers."""
    from sim.scenario import load_scenario

    scenario = load_scenario("tier-change")
    result = simulate(scenario, "least-loaded")
    learned = {(e.project, e.reason.split(" ")[0]) for e in result.events
               if e.kind == "limit_learned"}
    assert {("up-1", "rpm=30"), ("up-2", "rpm=30"), ("cut", "rpm=4")} <= learned
    refusals = [a.project for a in result.attempts if a.outcome in _RATE_LIMITED]
    assert max(refusals.count(p.name) for p in scenario.projects) <= 6
    flooding = compute(simulate(scenario, "no-learning"))
    assert compute(result).successes >= 0.9 * flooding.successes
    assert flooding.rate_limited > 100 * len(refusals)
