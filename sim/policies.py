"""The policies the simulator compares, all as `keysched.Policy` objects run by the same core.

- ``least-loaded``: keysched's default (`keysched.Policy()`); it budgets the known limits when
  the scenario hands them over (``limits_known``), and otherwise learns them from 429s.
- ``told-limits``: the default policy handed the scenario's limits whatever ``limits_known``
  says: what a user who configured ``limits=`` gets, the bar learning is held to.
- ``no-learning``: the default policy as it was before it learned limits: it benches a group
  for the retry delay and floods it when the delay ends.
- ``one-503-trips``: the default policy with the model breaker as it was before it weighed
  evidence: any 503 takes the model out of rotation, and nothing probes it while it cools.
- ``round-robin`` / ``random``: naive rotation.  Every failure retries at once on the next key
  (or a random one); nothing is cooled, disabled or budgeted; a request error still fails.
- ``router-like``: modelled on LiteLLM's router: shuffle among deployments, cool a deployment
  (a (key, model) lane) for a fixed 5 s after any failure, honour only a ``Retry-After`` header
  (Gemini sends none, so: never), never disable a key for good, and fail at once when every
  deployment is cooling.  No budgets.
- ``strike-three``: modelled on key-rotation proxies (gemini-balance, gpt-load): rotate, count
  every error as a strike against the key, disable it at the third, no cooldown.  No budgets.

Decisions where the issue was silent: every baseline keeps the default rows for answers
(success and blocked return) and fails request errors at once, as those tools do; the
baselines' in-flight cap, attempt bound and deadline are the core's defaults, the same for all.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from keysched.driver import (
    Action,
    Effect,
    Next,
    OutcomeKind,
    Policy,
    RandomChoice,
    RoundRobin,
    Selector,
)

__all__ = ["GIVEN_LIMITS", "POLICIES", "POLICY_NAMES", "get_policy", "naive_actions"]

_ANSWERS = (OutcomeKind.SUCCESS, OutcomeKind.BLOCKED)
_RETURN = Action(effect=Effect.NONE, next=Next.RETURN)


def _table(failure: Action, request_error: Action) -> dict[OutcomeKind, Action]:
    table = dict.fromkeys(OutcomeKind, failure)
    for kind in _ANSWERS:
        table[kind] = _RETURN
    table[OutcomeKind.REQUEST_ERROR] = request_error
    return table


def naive_actions() -> dict[OutcomeKind, Action]:
    """Every failure retries at once on another key; a request error fails."""
    return _table(Action(effect=Effect.NONE, next=Next.RETRY_NOW),
                  Action(effect=Effect.NONE, next=Next.FAIL))


def _round_robin(n_keys: int, n_models: int, rng: random.Random) -> Selector:
    return RoundRobin(n_keys, n_models)


def _random(n_keys: int, n_models: int, rng: random.Random) -> Selector:
    return RandomChoice(n_keys, rng)


LEAST_LOADED = Policy()
TOLD_LIMITS = Policy(name="told-limits")
NO_LEARNING = Policy(name="no-learning", learns_limits=False)
ONE_503_TRIPS = Policy(name="one-503-trips", overload_trip=1, overload_rate=1e-9,
                       probe_interval=3600.0)  # any 503 trips it; no probing while it cools
ROUND_ROBIN = Policy(name="round-robin", selector=_round_robin, actions=naive_actions(),
                     budgets_limits=False)
RANDOM = Policy(name="random", selector=_random, actions=naive_actions(), budgets_limits=False)
ROUTER_LIKE = Policy(
    name="router-like", selector=_random,
    actions=_table(Action(effect=Effect.COOL_LANE, seconds=5.0, next=Next.RETRY_NOW),
                   Action(effect=Effect.NONE, next=Next.FAIL)),
    waits_for_capacity=False, budgets_limits=False)
STRIKE_THREE = Policy(
    name="strike-three", selector=_round_robin,
    actions=_table(Action(effect=Effect.STRIKE, strikes=3, next=Next.RETRY_NOW),
                   Action(effect=Effect.STRIKE, strikes=3, next=Next.FAIL)),
    budgets_limits=False)

POLICIES: Mapping[str, Policy] = {p.name: p for p in (
    LEAST_LOADED, TOLD_LIMITS, NO_LEARNING, ONE_503_TRIPS, ROUND_ROBIN, RANDOM, ROUTER_LIKE, STRIKE_THREE)}
"""Every policy the simulator knows, by name (the default first)."""

GIVEN_LIMITS = frozenset({TOLD_LIMITS.name})
"""Policies handed the scenario's limits even when ``limits_known`` is false."""

POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def get_policy(name: str) -> Policy:
    """The policy called `name`.

    Raises:
        KeyError: no such policy; the message lists the known ones.
    """
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}") from None
