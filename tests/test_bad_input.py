"""Bad input from either side: hostile configurations and arguments, and hostile response bodies.

The config classes on their own are covered by ``test_config.py``, and the wire layer's
"classify never raises" by ``test_wire.py`` / ``test_sse.py``; these tests go through the public
`KeyedClient`, where a bad value must still end as a documented error (`ConfigurationError` or
`UsageError`, both `KeyschedError`) or, for a bad body, as a result or a typed `ServiceError`.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import random
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from helpers import FLASH, LITE, body
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_wire import bodies, header_maps
from virtual_clock import VirtualClock

from keysched import (
    ConfigurationError,
    GenerateResult,
    Key,
    KeyedClient,
    KeyschedError,
    Limit,
    RetryPolicy,
    ServiceError,
    UsageError,
)

CANARY = "AIzaCANARYbadinput0123456789abcdefghij"

weird_numbers = st.sampled_from([
    math.nan, math.inf, -math.inf, -1, -1.0, 0, 0.0, 1e-300, 1e308, 10**400, -(10**400), True,
    "5", b"5", None, [], {}, datetime.timedelta(seconds=-1), datetime.timedelta(days=10**8),
]) | st.floats() | st.integers()
weird_strings = st.sampled_from(["", " ", "\n", "models/", "gemini-nope", "models/../x", "a" * 5000,
                                 "gemini-2.5-flash\x00", "?key=leak#", None, 0, b"x", [], {}])
weird_keys = st.lists(
    st.sampled_from([CANARY, CANARY + " ", CANARY + "\n", "\u2018" + CANARY + "\u2019", "",
                     None, 7, b"bytes", object(),
                     Key(secret=CANARY, label="canary"), "ok-key-1", "ok-key-2"]),
    max_size=4) | st.sampled_from([CANARY, None, 5, {"a": CANARY}, b"key"])
weird_models = (st.lists(weird_strings | st.sampled_from([FLASH, LITE]), max_size=3)
                | weird_strings)
weird_anything = (weird_numbers | weird_strings | st.just(object())
                  | st.sampled_from([RetryPolicy(), Limit(model=FLASH), [Limit(model="nope")]]))

CLIENT_ARGS = {
    "keys": weird_keys, "models": weird_models, "base_url": weird_strings
    | st.sampled_from(["http://127.0.0.1:1", "ftp://x", "https://x/?key=" + CANARY]),
    "timeout": weird_numbers, "max_in_flight_per_key": weird_numbers,
    "embedding_model": weird_strings, "retry": weird_anything, "limits": weird_anything,
}


def texts_of(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def ok_transport() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, content=body(
        "200_success.json")))


def test_a_key_outside_ascii_is_a_configuration_error_that_never_shows_it() -> None:
    """A key pasted with curly quotes cannot go in an HTTP header: the client refuses it when
    built (not at the first call, in the HTTP library's words, which quote the key)."""
    with pytest.raises(ConfigurationError) as caught:
        KeyedClient(keys=["\u2018" + CANARY + "\u2019"], models=[FLASH])
    assert caught.value.field == "keys[0]"
    assert all(CANARY not in text for text in texts_of(caught.value))


@settings(max_examples=150)
@given(st.fixed_dictionaries({}, optional=CLIENT_ARGS))
def test_hostile_client_configuration_raises_only_documented_errors(kwargs: dict[str, Any]
                                                                    ) -> None:
    """Any mix of bad constructor arguments builds a client or raises a KeyschedError."""
    kwargs.setdefault("keys", ["ok-key-1"])
    error: KeyschedError | None = None
    try:
        client = KeyedClient(transport=ok_transport(), **kwargs)
    except KeyschedError as exc:
        error = exc
    if error is not None:
        assert isinstance(error, ConfigurationError | UsageError)
        for text in texts_of(error):
            assert CANARY not in text
    else:
        assert CANARY not in repr(client)
        asyncio.run(client.aclose())


def call_args() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "models": weird_models, "timeout": weird_numbers, "deadline": weird_numbers,
        "generation_config": weird_anything | st.dictionaries(st.text(max_size=3), weird_numbers),
        "system_instruction": weird_anything, "safety_settings": weird_anything,
        "tools": weird_anything,
    })


contents = (st.text(max_size=20) | weird_anything
            | st.lists(st.fixed_dictionaries({"parts": st.lists(
                st.fixed_dictionaries({"text": st.text(max_size=5)}), max_size=2)})
                | weird_anything, max_size=2))


async def run_call(method: str, what: Any, kwargs: dict[str, Any]) -> object:
    vc = VirtualClock()
    async with KeyedClient(keys=["ok-key-1", Key(secret=CANARY, label="canary")],
                           models=[FLASH, LITE], transport=ok_transport(), clock=vc.clock,
                           sleep=vc.sleep, wall_clock=vc.wall, rng=random.Random(1)) as client:
        return await call_method(client, method, what, kwargs)


async def call_method(client: KeyedClient, method: str, what: Any,
                      kwargs: dict[str, Any]) -> object:
    """``client.<method>(what, **kwargs)``, with only the arguments that method takes."""
    if method == "generate":
        return await client.generate(what, **kwargs)
    if method == "stream":
        return [chunk async for chunk in client.stream(what, **kwargs)]
    allowed = {k: v for k, v in kwargs.items() if k in ("timeout", "deadline")}
    if method == "count_tokens":
        return await client.count_tokens(what, model=kwargs.get("models"), **allowed)
    return await client.embed(what, model=kwargs.get("models"), **allowed)


@settings(max_examples=200)
@given(st.sampled_from(["generate", "stream", "count_tokens", "embed"]), contents, call_args())
# A timedelta deadline was converted by the check and then passed on unconverted (issue 14).
@example("generate", "hi", {"deadline": datetime.timedelta(seconds=30)})
@example("stream", "hi", {"deadline": datetime.timedelta(seconds=30)})
@example("count_tokens", "hi", {"deadline": datetime.timedelta(seconds=30),
                                "timeout": datetime.timedelta(seconds=5)})
@example("embed", ["a"], {"deadline": datetime.timedelta(seconds=30)})
def test_hostile_call_arguments_raise_only_documented_errors(method: str, what: Any,
                                                             kwargs: dict[str, Any]) -> None:
    """Bad prompts, models, timeouts and options raise ConfigurationError or UsageError only."""
    error: KeyschedError | None = None
    try:
        asyncio.run(run_call(method, what, kwargs))
    except KeyschedError as exc:
        error = exc
    # A ServiceError is fine: the fake answer does not fit every method (a stream of one JSON
    # object, say).  Anything not a KeyschedError fails the test by itself.
    if error is not None and not isinstance(error, ServiceError):
        assert isinstance(error, ConfigurationError | UsageError), repr(error)
        for text in texts_of(error):
            assert CANARY not in text


@pytest.mark.parametrize("method", ["generate", "stream", "count_tokens", "embed"])
def test_a_timedelta_deadline_is_seconds_on_every_call(method: str) -> None:
    """``deadline=timedelta(...)`` works on each call and bounds it like the same float: against
    a server that keeps answering 500, the call fails once its deadline has passed."""
    async def run() -> float:
        vc = VirtualClock()
        failing = httpx.MockTransport(lambda request: httpx.Response(500, content=body(
            "500_internal.json")))
        async with KeyedClient(keys=["k-1"], models=[FLASH], transport=failing,
                               retry=RetryPolicy(max_attempts=1000), clock=vc.clock,
                               sleep=vc.sleep, wall_clock=vc.wall,
                               rng=random.Random(1)) as client:
            what = ["a"] if method == "embed" else "hi"
            with pytest.raises(ServiceError) as caught:
                await call_method(client, method, what,
                                  {"deadline": datetime.timedelta(seconds=3)})
            assert type(caught.value).__name__ == "CapacityError", repr(caught.value)
            return vc.now - vc.start

    assert asyncio.run(run()) <= 3.0  # not the default deadline of 120 s


def scripted(answers: list[tuple[int, bytes, dict[str, str] | None]]
             ) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        status, raw, headers = answers[min(len(answers) - 1, respond.n)]  # type: ignore[attr-defined]
        respond.n += 1  # type: ignore[attr-defined]
        # Only what could arrive over HTTP: header names and values are ASCII.
        sendable = {k: v for k, v in (headers or {}).items() if k.isascii() and v.isascii()}
        return httpx.Response(status, content=raw, headers=sendable)

    respond.n = 0  # type: ignore[attr-defined]
    return respond


answers = st.lists(st.tuples(st.integers(100, 599), bodies, header_maps), min_size=1,
                   max_size=4)
sse_bodies = st.one_of(
    st.binary(max_size=200),
    st.lists(bodies, max_size=3).map(lambda parts: b"".join(b"data: " + p + b"\r\n\r\n"
                                                            for p in parts)),
)


@settings(max_examples=150)
@given(st.sampled_from(["generate", "stream", "count_tokens", "embed"]), answers, sse_bodies)
def test_hostile_response_bodies_end_as_a_result_or_a_service_error(
        method: str, script: list[tuple[int, bytes, dict[str, str] | None]],
        stream_body: bytes) -> None:
    """Any status, any bytes, any JSON from the server: a result or a typed ServiceError."""
    if method == "stream":
        script = [(200, stream_body, {"content-type": "text/event-stream"}), *script]

    async def run() -> object:
        vc = VirtualClock()
        async with KeyedClient(
                keys=["k-1", "k-2"], models=[FLASH, LITE],
                transport=httpx.MockTransport(scripted(script)),
                retry=RetryPolicy(max_attempts=3, jitter=0.0), clock=vc.clock,
                sleep=vc.sleep, wall_clock=vc.wall, rng=random.Random(1)) as client:
            try:
                if method == "generate":
                    return await client.generate("hi")
                if method == "stream":
                    return [chunk async for chunk in client.stream("hi")]
                if method == "count_tokens":
                    return await client.count_tokens("hi")
                return await client.embed(["a", "b"])
            finally:
                snap = client.snapshot()
                assert (snap.in_flight, snap.waiting) == (0, 0)

    result: object
    try:
        result = asyncio.run(run())
    except ServiceError as exc:
        result = exc
    if isinstance(result, ServiceError):
        assert result.attempts or result.status is None
    else:
        assert isinstance(result, GenerateResult | list | int)
