"""Quota learning over loopback HTTP: the default client against the fake server, limits unknown.

The issue's run: 10 keys, each its own project, 5 requests per window per key; calls offered at
twice the capacity; the default `KeyedClient` (no ``limits=``).  Over real HTTP against the fake
Gemini server (a sliding minute, a fixed minute, a per-day limit), in the scenario's virtual time
(see `e2e_support`): at most one 429 per group and limit, none sent while a retry delay the
server announced is running, no call failed before its deadline, and answers within 2% of what
the quota allows.  With the limits configured: no 429 at all.

The run is on a `virtual_loop.VirtualTimeLoop` (time scale 1): the server, the clients and the
arrivals share its virtual clock, so a busy machine makes the test slower, never moves an
arrival or an attempt in scenario time.  The clients are the default in every way, their quota
margin included (on the wall clock at a compressed scale, the real delays of a loaded machine,
multiplied by the scale, used to eat into it).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import virtual_loop
from e2e_support import ScenarioTime, running_server, scenario_client

from keysched import (
    AttemptRecord,
    CapacityError,
    GenerateResult,
    KeyschedError,
    OutcomeKind,
)
from sim.scenario import Scenario, parse_scenario
from sim.server import SimApp

FLASH = "gemini-2.5-flash"
KEYS = 10
_429 = (OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY)


def quota_scenario(*, window: str = "sliding", rpm: int | None = 5, rpd: int | None = None,
                   start: str = "2026-05-12T10:00:00-07:00") -> Scenario:
    quota: dict[str, int] = {}
    if rpm is not None:
        quota["rpm"] = rpm
    if rpd is not None:
        quota["rpd"] = rpd
    return parse_scenario({
        "description": "quota learning", "start": start, "duration": 600, "time_scale": 1.0,
        "quota_window": window, "error_latency": 0.05,
        "models": [{"name": FLASH, "latency_median": 0.5, "latency_sigma": 0.0}],
        "quotas": {FLASH: quota},
        "projects": [{"name": f"p{i:02}"} for i in range(KEYS)],
    }, source="<quota-e2e>")


async def offer(client: Any, time: ScenarioTime, *, calls: int, spacing: float,
                deadline: float) -> list[GenerateResult | KeyschedError]:
    """`calls` calls, one every `spacing` virtual seconds, each with `deadline`."""

    async def one(index: int) -> GenerateResult | KeyschedError:
        await time.until(index * spacing)
        try:
            return await client.generate(f"call {index}", deadline=deadline)  # type: ignore[no-any-return]
        except KeyschedError as error:
            return error

    return list(await asyncio.gather(*(one(i) for i in range(calls))))


def attempts_of(outcomes: list[GenerateResult | KeyschedError]) -> list[AttemptRecord]:
    found: list[AttemptRecord] = []
    for outcome in outcomes:
        found.extend(outcome.attempts)
    return found


def sent_inside_a_retry_delay(attempts: list[AttemptRecord]) -> int:
    """Attempts started on a key while a retry delay announced to that key was still running."""
    by_key: dict[str, list[AttemptRecord]] = defaultdict(list)
    for a in attempts:
        by_key[a.key].append(a)
    inside = 0
    for mine in by_key.values():
        for refused in (a for a in mine if a.outcome in _429 and a.retry_after):
            assert refused.retry_after is not None
            inside += sum(1 for a in mine
                          if refused.ended < a.started < refused.ended + refused.retry_after)
    return inside


async def run(scenario: Scenario, *, calls: int, spacing: float, deadline: float,
              configured: bool = False) -> list[GenerateResult | KeyschedError]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, virtual_loop.VirtualTimeLoop)
    async with running_server(scenario, time_scale=1.0, clock=loop.time) as (server, _), \
            scenario_client(server, limits_known=configured, timeout=30.0) as client:
        assert isinstance(server.app, SimApp)
        return await offer(client, ScenarioTime(server.app), calls=calls, spacing=spacing,
                           deadline=deadline)


def check_learning(outcomes: list[GenerateResult | KeyschedError], capacity: int) -> None:
    answers = [o for o in outcomes if isinstance(o, GenerateResult)]
    failures = [o for o in outcomes if not isinstance(o, GenerateResult)]
    attempts = attempts_of(outcomes)
    refusals = Counter(a.key for a in attempts if a.outcome in _429)
    assert max(refusals.values(), default=0) <= 1, refusals  # one 429 per group and limit
    assert sent_inside_a_retry_delay(attempts) == 0
    # Every failure is a call whose deadline passed while it waited for quota.
    assert all(isinstance(f, CapacityError) for f in failures), failures[:3]
    assert len(answers) >= 0.98 * capacity, (len(answers), capacity)
    assert len(answers) <= capacity


def check_configured(outcomes: list[GenerateResult | KeyschedError], capacity: int) -> None:
    attempts = attempts_of(outcomes)
    assert [a for a in attempts if a.outcome in _429] == []
    assert sum(isinstance(o, GenerateResult) for o in outcomes) >= 0.98 * capacity


def check_per_day(outcomes: list[GenerateResult | KeyschedError]) -> None:
    """Day one: each group answers 5 and is refused once (benched to midnight, whatever the
    short retry delay says); day two: 5 more each, without a single 429."""
    attempts = attempts_of(outcomes)
    day_two = [a for a in attempts if a.started >= 120.0]
    assert [a for a in day_two if a.outcome in _429] == []
    refusals = Counter(a.key for a in attempts if a.outcome in _429)
    assert max(refusals.values(), default=0) <= 1, refusals
    assert sum(isinstance(o, GenerateResult) for o in outcomes) == 2 * 5 * KEYS
    assert all(isinstance(o, GenerateResult | CapacityError) for o in outcomes)


def test_quota_learning_over_http() -> None:
    """The four runs side by side (each on its own server; they only sleep, so together they
    take the time of the longest):

    - limits unknown, a sliding minute, and a fixed one: 200 calls over 120 s against 10 x 5
      per minute, each waiting up to 60 s.  The quota allows three windows of 50 answers
      before the last deadline: 150.
    - the same with the limits configured: no 429 at all.
    - 5 requests per day per key, no per-minute limit; midnight Pacific falls at t = 120.
    """
    async def all_four() -> tuple[list[GenerateResult | KeyschedError], ...]:
        return tuple(await asyncio.gather(
            run(quota_scenario(window="sliding"), calls=200, spacing=0.6, deadline=60.0),
            run(quota_scenario(window="fixed"), calls=200, spacing=0.6, deadline=60.0),
            run(quota_scenario(), calls=200, spacing=0.6, deadline=60.0, configured=True),
            run(quota_scenario(rpm=None, rpd=5, window="fixed",
                               start="2026-05-12T23:58:00-07:00"),
                calls=150, spacing=1.2, deadline=100.0)))

    sliding, fixed, configured, per_day = virtual_loop.run(all_four)
    check_learning(sliding, capacity=150)
    check_learning(fixed, capacity=150)
    check_configured(configured, capacity=150)
    check_per_day(per_day)
