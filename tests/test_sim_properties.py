"""Properties of simulated runs over random small scenarios."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sim.engine import simulate
from sim.metrics import compute
from sim.policies import POLICY_NAMES
from sim.scenario import Scenario, parse_scenario
from sim.workload import generate_arrivals

MODELS = ("m-best", "m-lite")


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A small scenario: 1-3 projects of 1-3 keys, 1-2 models, known or unknown quotas, faults."""
    n_models = draw(st.integers(1, 2))
    models = [{"name": MODELS[i], "latency_median": draw(st.floats(0.2, 3.0)),
               "latency_sigma": draw(st.floats(0.0, 0.5))} for i in range(n_models)]
    quotas = {m["name"]: {"rpm": draw(st.integers(1, 30)), "tpm": draw(st.integers(5000, 50000)),
                          "rpd": draw(st.integers(5, 500))} for m in models}
    projects = [{"name": f"p{i}", "keys": draw(st.integers(1, 3))}
                for i in range(draw(st.integers(1, 3)))]
    labels = [f"{p['name']}-{k}" for p in projects for k in range(1, p["keys"] + 1)]
    duration = draw(st.integers(20, 120))
    faults: list[dict[str, Any]] = []
    for label in draw(st.lists(st.sampled_from(labels), max_size=2, unique=True)):
        faults.append({"kind": draw(st.sampled_from(["key_revoked", "key_leaked"])),
                       "key": label, "start": draw(st.integers(0, duration))})
    if draw(st.booleans()):
        start = draw(st.integers(0, duration - 1))
        faults.append({"kind": draw(st.sampled_from(["overloaded", "server_error", "shared_429",
                                                     "reset"])),
                       "model": MODELS[0], "start": start, "end": start + draw(st.integers(1, 60)),
                       "probability": draw(st.floats(0.1, 1.0))})
    data = {
        "description": "random", "start": draw(st.sampled_from([
            "2026-03-07T23:59:30-08:00", "2026-05-12T10:00:17-07:00"])),
        "duration": duration, "seed": draw(st.integers(0, 2**16)),
        "limits_known": draw(st.booleans()), "models": models, "quotas": quotas,
        "projects": projects, "faults": faults,
        "workload": [{"rate": draw(st.floats(0.05, 3.0)), "input_tokens": [100, 2000],
                      "deadline": draw(st.integers(5, 90))}],
    }
    return parse_scenario(data)


@given(scenarios(), st.sampled_from(POLICY_NAMES))
def test_no_request_lost_and_metrics_in_range(scenario: Scenario, policy: str) -> None:
    """Every arrival ends exactly once, and every metric lies in its range."""
    result = simulate(scenario, policy)
    arrivals = generate_arrivals(scenario, random.Random(scenario.seed))
    assert result.lost == 0
    assert len(result.requests) == len(arrivals)
    assert len({r.id for r in result.requests}) == len(arrivals)
    m = compute(result)
    assert m.successes + sum(m.failures.values()) == m.requests
    assert m.attempts == len(result.attempts) >= m.successes
    assert m.wasted_total == m.attempts - m.successes
    assert m.rate_limited <= m.wasted_total
    for share in (m.best_model_share, m.fairness, m.utilisation):
        assert share is None or 0.0 <= share <= 1.0 + 1e-12
    for p in (m.latency, m.queueing):
        values = [v for v in (p.p50, p.p95, p.p99) if v is not None]
        assert all(v >= 0 for v in values)
        assert values == sorted(values)
    assert m.recovery_time is None or m.recovery_time >= 0
    assert 0 <= m.after_revocation_max_per_key <= m.after_revocation <= m.attempts


@given(scenarios())
def test_default_policy_respects_revocations_and_known_limits(scenario: Scenario) -> None:
    """The default sends no attempt to a revoked key once its first refusal came back (so at
    most one unless several were already in flight), and with known quotas receives no 429 for
    a limit it was told about."""
    result = simulate(scenario, "least-loaded")
    m = compute(result)
    assert m.after_revocation_known == 0
    assert m.after_revocation_max_per_key <= max(1, m.after_revocation - m.after_revocation_known)
    if scenario.limits_known:
        told = {"rate_limited_minute", "rate_limited_day"}
        assert not [a for a in result.attempts if a.outcome in told]
