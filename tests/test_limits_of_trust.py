"""Limits on what keysched takes on trust: a server's retry delay, labels, tiny timeouts.

A 429's ``retryDelay`` (or a ``Retry-After``) is believed only up to
``RetryPolicy.max_server_delay``: one absurd value must not bench a project for days.  Labels
and project names go into log lines, so control characters are refused; a timeout below a
millisecond is a typo (milliseconds given as seconds), not a bound.
"""

from __future__ import annotations

import asyncio
import datetime
import random

import httpx
import pytest
from helpers import FLASH, success

from keysched import (
    ConfigurationError,
    Dispatch,
    Key,
    KeyedClient,
    Outcome,
    OutcomeKind,
    PoolConfig,
    RetryPolicy,
    Scheduler,
)

T0 = 2_000_000.0


def _cooled_for(kind: OutcomeKind, retry: RetryPolicy) -> float:
    """How long one `kind` outcome with a retry delay of a year benches its lane."""
    core = Scheduler(PoolConfig(keys=[Key(secret="AIzaA", label="a")], models=["m"],
                                retry=retry), rng=random.Random(0))
    core.submit(T0)
    (dispatch,) = [d for d in core.poll(T0) if isinstance(d, Dispatch)]
    core.complete(dispatch.attempt, Outcome(kind=kind, retry_after=365 * 86_400.0), T0)
    until = core.snapshot(T0).lane("a", "m").cooldown_until
    assert until is not None
    return until - T0


@pytest.mark.parametrize("kind", [OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.SERVER_ERROR])
def test_a_server_delay_is_capped_by_the_retry_policy(kind: OutcomeKind) -> None:
    """A quota group (per-minute 429) or a lane (a Retry-After on a 500) is benched for at most
    `max_server_delay`: an hour by default, what the policy says otherwise."""
    assert _cooled_for(kind, RetryPolicy()) == 3600.0
    assert _cooled_for(kind, RetryPolicy(max_server_delay=90.0)) == 90.0


def test_max_server_delay_is_a_checked_duration() -> None:
    """It is a duration like the others: a timedelta works, nonsense names the field."""
    assert RetryPolicy(max_server_delay=datetime.timedelta(minutes=5)).max_server_delay == 300.0
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(max_server_delay=-1)
    assert info.value.field == "retry.max_server_delay"
    assert "-1" in str(info.value)


@pytest.mark.parametrize("value", [0.0009, 1e-9, 5e-4])
def test_a_timeout_below_a_millisecond_is_refused(value: float) -> None:
    """On the client and on a call: a ConfigurationError naming `timeout` and the value."""
    with pytest.raises(ConfigurationError) as info:
        KeyedClient(keys=["AIzaK"], models=[FLASH], timeout=value)
    assert info.value.field == "timeout"
    assert repr(value) in str(info.value)

    async def call() -> None:
        transport = httpx.MockTransport(lambda request: success())
        async with KeyedClient(keys=["AIzaK"], models=[FLASH], transport=transport) as client:
            await client.generate("hi", timeout=value)

    with pytest.raises(ConfigurationError) as info:
        asyncio.run(call())
    assert info.value.field == "timeout"
    assert repr(value) in str(info.value)
    asyncio.run(KeyedClient(keys=["AIzaK"], models=[FLASH], timeout=0.001).aclose())
