"""Quota learning, measured: 429s per answer and the share of the quota used, over real HTTP.

Run with ``python -m benchmarks.bench_quota`` (``--scale`` changes the time scale).

The fake Gemini server (`sim`) enforces 5 requests per window per key on 10 keys (each its own
project) and answers Google's exact 429 bodies (``quotaId``, ``quotaValue``, ``retryDelay``).
Calls are offered at twice the capacity, each with a 60 s deadline, in the scenario's virtual
time (the server runs ``--scale`` virtual seconds per real second; the clients live on its
clock).  Compressing time also multiplies the real delays (the event loop, the loopback) by the
scale, so the keysched clients get the default 1 s quota margin in *real* time: ``--scale``
virtual seconds.  Three clients are measured in the same run, side by side, on three servers:

- ``learning``: the default `KeyedClient`, told nothing about the limits;
- ``configured``: `KeyedClient` with ``limits=`` set to the real quota;
- ``no-learning``: `KeyedClient` with ``Policy(learns_limits=False)``: the default as it was
  before it learned limits (it benches a group for the retry delay and floods it after);
- ``rotator``: a 30-line key rotator that parks a key for the announced ``retryDelay`` and fails
  a call when every key is parked (what most hand-written pools do).

For each of three servers (a sliding minute, a fixed minute, 5 requests per day with midnight
Pacific inside the run) it prints answers, failed calls, 429s, 429s per answer, the share of the
quota's capacity answered, and the attempts sent while a retry delay announced to that key was
still running.  Targets (the quota-intelligence issue): learning at most one 429 per key and
limit and within 2% of the capacity; configured: no 429.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# The loopback fixtures of the test suite (virtual-time clock, scaled timeouts) serve here too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from e2e_support import ScaledTimeouts, ScenarioTime, running_server, scenario_client

from keysched import KeyschedError, OutcomeKind, Policy, RetryPolicy
from keysched.wire import classify, endpoint_url, generate_body, request_headers
from sim.scenario import Scenario, parse_scenario

FLASH = "gemini-2.5-flash"
KEYS = 10
_429 = (OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY)


@dataclass
class Tally:
    """What one client got in one run."""

    answers: int = 0
    failed: int = 0
    refused: int = 0  # 429s
    inside_delay: int = 0  # attempts sent while a retry delay announced to the key was running
    parked: dict[str, float] = field(default_factory=dict)  # key -> end of its announced delay

    def sent(self, key: str, at: float) -> None:
        if at < self.parked.get(key, -1.0):
            self.inside_delay += 1


def scenario(window: str, *, scale: float, rpm: int | None = 5, rpd: int | None = None,
             start: str = "2026-05-12T10:00:00-07:00") -> Scenario:
    quota = {name: value for name, value in (("rpm", rpm), ("rpd", rpd)) if value is not None}
    return parse_scenario({
        "description": "bench", "start": start, "duration": 600, "time_scale": scale,
        "quota_window": window, "error_latency": 0.05,
        "models": [{"name": FLASH, "latency_median": 0.5, "latency_sigma": 0.0}],
        "quotas": {FLASH: quota}, "projects": [{"name": f"p{i:02}"} for i in range(KEYS)],
    }, source="<bench>")


async def offer(time: ScenarioTime, call: Callable[[int], Awaitable[None]], calls: int,
                spacing: float) -> None:
    async def one(index: int) -> None:
        await time.until(index * spacing)
        await call(index)

    await asyncio.gather(*(one(i) for i in range(calls)))


async def keysched_run(sc: Scenario, *, configured: bool, calls: int, spacing: float,
                       learns: bool = True) -> Tally:
    tally = Tally()
    async with running_server(sc) as (server, _), \
            scenario_client(server, limits_known=configured, timeout=30.0,
                            policy=Policy(learns_limits=learns),
                            retry=RetryPolicy(quota_margin=sc.time_scale)) as client:
        async def call(index: int) -> None:
            try:
                result = await client.generate(f"call {index}", deadline=60.0)
                tally.answers += 1
                attempts = result.attempts
            except KeyschedError as error:
                tally.failed += 1
                attempts = error.attempts  # type: ignore[attr-defined]
            for a in attempts:
                tally.sent(a.key, a.started)
                if a.outcome in _429:
                    tally.refused += 1
                    if a.retry_after:
                        tally.parked[a.key] = max(tally.parked.get(a.key, 0.0),
                                                  a.ended + a.retry_after)

        await offer(ScenarioTime(server.app), call, calls, spacing)
    return tally


async def rotator_run(sc: Scenario, *, calls: int, spacing: float) -> Tally:
    """The hand-written pool: rotate keys, park one for its retryDelay, fail when all are."""
    tally = Tally()
    async with running_server(sc) as (server, _):
        time = ScenarioTime(server.app)
        keys = [(k.label, k.secret) for k in sc.keys]
        turn = itertools.cycle(range(len(keys)))
        parked: dict[str, float] = {}
        url = endpoint_url(server.base_url, FLASH, "generateContent")
        async with httpx.AsyncClient(transport=ScaledTimeouts(time.scale)) as http:
            async def call(index: int) -> None:
                for _ in range(len(keys)):
                    label, secret = keys[next(turn)]
                    if parked.get(label, -1.0) > time.clock():
                        continue
                    tally.sent(label, time.clock())
                    response = await http.post(url, headers=request_headers(secret),
                                               json=generate_body(f"call {index}"), timeout=30.0)
                    outcome = classify(response.status_code, response.content).outcome
                    if outcome.kind is OutcomeKind.SUCCESS:
                        tally.answers += 1
                        return
                    if outcome.kind in _429:
                        tally.refused += 1
                        parked[label] = tally.parked[label] = (
                            time.clock() + (outcome.retry_after or 60.0))
                tally.failed += 1  # every key parked: fail fast

            await offer(time, call, calls, spacing)
    return tally


async def measure(scale: float) -> list[tuple[str, str, Tally, int]]:
    rows = []
    runs: list[tuple[str, Scenario, int, float, int]] = [
        ("sliding minute", scenario("sliding", scale=scale), 200, 0.6, 150),
        ("fixed minute", scenario("fixed", scale=scale), 200, 0.6, 150),
        ("5 per day", scenario("fixed", scale=scale, rpm=None, rpd=5,
                               start="2026-05-12T23:58:00-07:00"), 150, 1.2, 2 * 5 * KEYS),
    ]
    for name, sc, calls, spacing, capacity in runs:
        learning, configured, before, rotator = await asyncio.gather(
            keysched_run(sc, configured=False, calls=calls, spacing=spacing),
            keysched_run(sc, configured=True, calls=calls, spacing=spacing),
            keysched_run(sc, configured=False, calls=calls, spacing=spacing, learns=False),
            rotator_run(sc, calls=calls, spacing=spacing))
        for client, tally in (("learning", learning), ("configured", configured),
                              ("no-learning", before), ("rotator", rotator)):
            rows.append((name, client, tally, capacity))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0,
                        help="virtual seconds per real second (default 10)")
    args = parser.parse_args(argv)
    random.seed(0)
    rows = asyncio.run(measure(args.scale))
    print(f"{'server':<15} {'client':<11} {'answers':>7} {'failed':>6} {'429s':>5} "
          f"{'429s/answer':>11} {'capacity used':>13} {'sent inside retryDelay':>22}")
    for server, client, tally, capacity in rows:
        per_answer = tally.refused / tally.answers if tally.answers else float("nan")
        print(f"{server:<15} {client:<11} {tally.answers:>7} {tally.failed:>6} "
              f"{tally.refused:>5} {per_answer:>11.3f} {tally.answers / capacity:>12.1%} "
              f"{tally.inside_delay:>22}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
