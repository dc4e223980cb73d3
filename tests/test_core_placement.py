"""Selectors ask one question per lane and get a `Verdict`: serve, skip this request, or park."""

from __future__ import annotations

import math
import random

import pytest

from keysched import Key, Limit, PoolConfig, RetryPolicy
from keysched._placement import Placement
from keysched._pool import Pool
from keysched._selection import (
    BLOCKED,
    SERVES,
    SKIPS,
    LeastLoaded,
    Policy,
    RandomChoice,
    RoundRobin,
    Selector,
    Verdict,
)

T0 = 3_000_000.0


class FakeOracle:
    """A lane oracle with fixed verdicts per key, recording what the selector parks."""

    def __init__(self, verdicts: dict[int, Verdict]) -> None:
        self.verdicts = verdicts
        self.parked: list[tuple[int, int, float]] = []

    def verdict(self, key: int, model: int, now: float) -> Verdict:
        return self.verdicts.get(key, SERVES)

    def park(self, key: int, model: int, until: float) -> None:
        self.parked.append((key, model, until))


def test_least_loaded_parks_blocked_lanes_and_keeps_skipped_ones() -> None:
    """A lane that serves nobody is parked until its time; one that skips this request stays."""
    selector = LeastLoaded(3, 1)
    oracle = FakeOracle({0: Verdict.blocked_until(T0 + 5), 1: SKIPS})
    assert selector.select(oracle, 0, T0, ()) == 2
    assert oracle.parked == [(0, 0, T0 + 5)]
    # The skipped lane is asked again for the next request; the parked one is not.
    oracle = FakeOracle({1: BLOCKED})
    assert selector.select(oracle, 0, T0, ()) == 2
    assert oracle.parked == [(1, 0, math.inf)]


def test_least_loaded_uses_an_avoided_lane_only_as_a_last_resort() -> None:
    """A key that failed the request serves it only when no other lane can."""
    selector = LeastLoaded(2, 1)
    assert selector.select(FakeOracle({}), 0, T0, {0}) == 1
    assert selector.select(FakeOracle({1: SKIPS}), 0, T0, {0}) == 0


@pytest.mark.parametrize("selector", [RoundRobin(3, 1), RandomChoice(3, random.Random(1))])
def test_scanners_take_only_serving_lanes(selector: Selector) -> None:
    """The baselines pick a lane whose verdict serves, whatever else they do."""
    oracle = FakeOracle({0: SKIPS, 1: BLOCKED})
    assert selector.select(oracle, 0, T0, ()) == 2


def test_placement_verdicts_follow_the_pool() -> None:
    """A placement's verdicts: a disabled key serves nobody; a request too large for what is
    left of a token budget is skipped and woken when the tokens leave the window."""
    keys = [Key(secret="AIzaA1", label="a", project="P"), Key(secret="AIzaB1", label="b",
                                                             project="Q")]
    config = PoolConfig(keys=keys, models=["m"], limits=(Limit(model="m", tpm=100),),
                        retry=RetryPolicy(quota_margin=0.0))
    pool = Pool(config, Policy(), random.Random(0), wall_epoch=0.0, record_events=False)
    pool.disable_key("a", "key_invalid", T0)
    pool.acquire(1, 0, 80, True, T0, seq=1)
    placement = Placement(pool, 50, True)
    assert placement.find((0,), (), T0 + 1) is None
    assert placement.verdict(0, 0, T0 + 1) is BLOCKED
    assert placement.verdict(1, 0, T0 + 1) is SKIPS
    assert placement.wake_at == T0 + 60  # when the 80 tokens leave the minute
    assert Placement(pool, 20, True).find((0,), (), T0 + 1) == (1, 0)
