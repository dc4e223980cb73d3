"""The compared policies: their tables, and the headline result on the saturation scenario."""

from __future__ import annotations

import pytest

from keysched import Effect, FailReason, Next, OutcomeKind
from sim.engine import simulate
from sim.metrics import compute
from sim.policies import POLICIES, POLICY_NAMES, get_policy
from sim.scenario import load_scenario


def test_policy_names() -> None:
    """The policies exist under the issues' names, the default first, then its variants with
    configured limits and without learning, then the baselines."""
    assert POLICY_NAMES == ("least-loaded", "told-limits", "no-learning", "one-503-trips",
                            "round-robin", "random", "router-like", "strike-three")


def test_router_like_cools_lanes_and_fails_fast() -> None:
    """router-like cools a lane 5 s on every failure, fails request errors, never waits."""
    policy = get_policy("router-like")
    assert not policy.waits_for_capacity
    assert not policy.budgets_limits
    for kind, action in policy.actions.items():
        if kind in (OutcomeKind.SUCCESS, OutcomeKind.BLOCKED):
            assert action.next is Next.RETURN
        elif kind is OutcomeKind.REQUEST_ERROR:
            assert action.next is Next.FAIL
        else:
            assert (action.effect, action.seconds, action.next) == (Effect.COOL_LANE, 5.0,
                                                                    Next.RETRY_NOW)


def test_strike_three_strikes_every_error() -> None:
    """strike-three counts every error as a strike with a threshold of three."""
    policy = get_policy("strike-three")
    failures = [a for k, a in policy.actions.items()
                if k not in (OutcomeKind.SUCCESS, OutcomeKind.BLOCKED)]
    assert all(a.effect is Effect.STRIKE and a.strikes == 3 for a in failures)


def test_naive_rotation_never_cools_or_disables() -> None:
    """round-robin and random only retry on another key."""
    for name in ("round-robin", "random"):
        effects = {a.effect for a in POLICIES[name].actions.values()}
        assert effects == {Effect.NONE}


def test_saturation_default_policy_wins() -> None:
    """With known limits at twice capacity, the default uses >= 99% of capacity, wastes < 1%,
    and beats router-like and strike-three on both (utilisation ties at 100% count as not
    losing; router-like's 429s do not spend quota)."""
    scenario = load_scenario("saturation")
    assert scenario.limits_known
    metrics = {name: compute(simulate(scenario, name))
               for name in ("least-loaded", "router-like", "strike-three")}
    best = metrics["least-loaded"]
    assert best.utilisation is not None
    assert best.utilisation >= 0.99
    assert best.waste_ratio is not None
    assert best.waste_ratio < 0.01
    assert best.rate_limited == 0
    for name in ("router-like", "strike-three"):
        other = metrics[name]
        assert other.utilisation is not None
        assert best.utilisation >= other.utilisation
        assert other.waste_ratio is not None
        assert best.waste_ratio < other.waste_ratio
    assert metrics["strike-three"].utilisation < best.utilisation  # type: ignore[operator]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_runs_the_revoked_keys_scenario(name: str) -> None:
    """Each policy completes the revoked-keys scenario without losing a request."""
    result = simulate(load_scenario("revoked-keys"), name)
    assert result.lost == 0
    reasons = {r.reason for r in result.requests if not r.ok}
    assert reasons <= {reason.value for reason in FailReason}
