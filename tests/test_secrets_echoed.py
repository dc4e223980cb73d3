"""A server that quotes the key it was sent never makes keysched leak it (issue 14, item 2).

Proxies and hostile endpoints echo the ``x-goog-api-key`` header in error messages.  keysched
knows every secret of its pool, so everything it keeps from a response shows the key's label
instead: ``str``/``repr``/traceback of the error, ``attempts[*].message`` and
``google_status``, ``service_message``, pool events and log records.  Real loopback HTTP, both
backends; the echo comes in every place a server can put text: the message of a 400, a 403, a
401 Google body, a 429, the ``status`` string, a message cut at the 2,000-character limit in the
middle of the key, and an error inside a 200 stream.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from keysched import Key, KeyedClient, RetryPolicy, ServiceError
from sim.server import serve

CANARY = "AIzaSyECHOcanary0123456789abcdefghijkl"
OTHER = "AIzaSyECHOother98765432109876543210zyx"
FLASH = "gemini-2.5-flash"
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _error(code: int, status: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status}},
                      indent=2).encode()


def echoes(secret: str) -> dict[str, tuple[int, bytes]]:
    """Each case's answer to a request that carried `secret`."""
    pad = "x" * (2000 - len("API key ") - 10)  # the cut falls 10 characters into the key
    return {
        "400": (400, _error(400, "INVALID_ARGUMENT", f"API key not valid: {secret}.")),
        "403": (403, _error(403, "PERMISSION_DENIED", f"The key {secret} was reported as leaked.")),
        "401": (401, _error(401, "UNAUTHENTICATED", f"key={secret} rejected")),
        "429": (429, _error(429, "RESOURCE_EXHAUSTED", f"quota of {secret} exhausted")),
        "status": (400, _error(400, f"BAD_{secret}", "Request contains an invalid argument.")),
        "cut": (400, _error(400, "INVALID_ARGUMENT", f"API key {pad}{secret} is bad")),
        "stream": (200, b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\r\n\r\n'
                   + _error(500, "INTERNAL", f"upstream refused {secret}")),
    }


class EchoServer:
    """An ASGI app that answers every call with the case's body, quoting the key it got."""

    def __init__(self, case: str) -> None:
        self.case = case
        self.requests = 0

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.requests += 1
        secret = dict(scope["headers"]).get(b"x-goog-api-key", b"").decode()
        status, body = echoes(secret)[self.case]
        stream = self.case == "stream" and "stream" in scope["path"]
        kind = b"text/event-stream" if stream else b"application/json"
        if self.case == "stream" and not stream:  # the other calls get the 500 as a plain body
            status, body = 500, body.split(b"\r\n\r\n", 1)[1]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": body})


async def collect(chunks: AsyncIterator[object]) -> list[object]:
    return [chunk async for chunk in chunks]


def texts_of(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if isinstance(exc, ServiceError):
        texts += [repr(exc.attempts), str(exc.service_message), str(exc.google_status)]
        texts += [str(attempt.message) for attempt in exc.attempts]
    return texts


@pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])
@pytest.mark.parametrize("case", list(echoes("k")))
async def test_an_echoed_key_is_shown_as_its_label(case: str, fast: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the server quotes, the error and every record keysched keeps name the label."""
    caplog.set_level(logging.DEBUG)
    app = EchoServer(case)
    keys = [Key(secret=CANARY, label="canary-1", project="a"),
            Key(secret=OTHER, label="other-1", project="b")]
    errors: list[BaseException] = []
    events: list[object] = []
    calls: list[Callable[[KeyedClient], Awaitable[object]]] = [
        lambda client: client.generate("hi"), lambda client: client.count_tokens("hi"),
        lambda client: client.embed(["a"]),
        lambda client: collect(client.stream("hi"))]
    async with serve(app) as server:
        for call in calls:  # a client each: a key disabled by one call must not hide the next
            async with KeyedClient(
                    keys=keys, models=[FLASH], base_url=server.base_url, fast=fast, timeout=5.0,
                    retry=RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_cap=0.01,
                                      deadline=30.0)) as client:
                with pytest.raises(ServiceError) as caught:
                    await call(client)
                errors.append(caught.value)
                events += [client.events(), client.snapshot()]
    assert app.requests >= len(calls)
    texts = [text for error in errors for text in texts_of(error)]
    texts += [repr(events), caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    for text in texts:
        for secret in (CANARY, OTHER):
            assert secret not in text
            assert secret[:10] not in text  # nor the start of one cut off at the length limit
    messages = [attempt.message or "" for error in errors
                for attempt in getattr(error, "attempts", ())]
    statuses = [attempt.google_status or "" for error in errors
                for attempt in getattr(error, "attempts", ())]
    # The label stands where the key was, so the message still says which key was refused.
    where = statuses if case == "status" else messages
    assert any("canary-1" in text or "other-1" in text for text in where), where
