"""`KeyedClient.events()`: the pool's recent history, for dashboards and plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FLASH, LITE, Server, fixture, make_client, secret, success
from virtual_clock import VirtualClock

import keysched._client as client_module
from keysched import Policy


async def test_events_record_a_disabled_key_and_a_fallback_with_times() -> None:
    """An invalid key and an overloaded model show up as events, in order, on the client clock."""
    vc = VirtualClock()

    def respond(request: object, n: int) -> object:
        if n == 0:
            return fixture(400, "400_api_key_invalid.json")
        if n == 1:
            return fixture(503, "503_overloaded.json")
        return success()

    # A breaker that trips at one 503: the model cools, and the request falls back at once.
    async with make_client(Server(respond), vc, policy=Policy(overload_trip=1)) as client:
        result = await client.generate("hi")
        events = client.events()
    assert [a.model for a in result.attempts] == [FLASH, FLASH, LITE]
    kinds = [(e.kind, e.key, e.model) for e in events]
    assert kinds == [("key_disabled", "key#1", None), ("model_cooled", None, FLASH),
                     ("fallback", None, LITE)]
    assert all(e.time == vc.now for e in events)  # no virtual time passed: all at once
    assert all(secret(1) not in repr(e) for e in events)


async def test_history_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the most recent EVENT_HISTORY events are kept."""
    monkeypatch.setattr(client_module, "EVENT_HISTORY", 1)
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(400, "400_api_key_invalid.json") if n < 2
                    else success())
    async with make_client(server, vc) as client:
        await client.generate("hi")  # two keys disabled, then a success on the third
        [last] = client.events()
    assert (last.kind, last.key) == ("key_disabled", "key#2")


_UNCONFIGURED = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from helpers import Server, fixture, make_client, success
from virtual_clock import VirtualClock
from keysched import Policy

def respond(request, n):
    return [fixture(503, "503_overloaded.json"), fixture(429, "429_per_minute_tpm.json"),
            fixture(429, "429_bare.json"), fixture(500, "500_internal.json"),
            fixture(400, "400_api_key_invalid.json")][n] if n < 5 else success()

async def main():
    # A breaker that trips at one 503, so that the run also cools a model.
    async with make_client(Server(respond), VirtualClock(), policy=Policy(overload_trip=1)) as client:
        await client.generate("hi")
        print(sorted({{event.kind for event in client.events()}}))

asyncio.run(main())
"""


def test_with_logging_unconfigured_only_a_disabled_key_is_printed() -> None:
    """A library adds no handler, so Python's last-resort handler prints WARNING and above to
    stderr: ordinary cooldowns and fallbacks print nothing; a disabled key prints one line."""
    script = _UNCONFIGURED.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    kinds = done.stdout.strip()
    for kind in ("model_cooled", "fallback", "group_cooled", "key_disabled"):
        assert kind in kinds  # the run did go through each of them
    [line] = done.stderr.splitlines()
    assert line.startswith("key disabled key=key#")
    assert line.endswith("(key_invalid)")
