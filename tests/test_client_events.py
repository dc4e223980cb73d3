"""`KeyedClient.events()`: the pool's recent history, for dashboards and plots."""

from __future__ import annotations

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
