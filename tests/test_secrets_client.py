"""A canary key sent through every failure path never shows up in logs, reprs, errors or URLs."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from helpers import FIXTURES, FLASH, Server, fixture, make_client, success
from test_client import CHUNK_A, sse
from virtual_clock import VirtualClock

from keysched import ConfigurationError, KeyedClient
from keysched._config import Key

CANARY = "AIzaCANARY0123456789abcdefghijklmnopqrs"
OTHER = "AIzaSyOTHER0123456789abcdefghijklmnopq"
ERROR_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in {".json", ".html", ".txt"})


def status_of(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 429


class Evidence:
    """Everything a secret could leak into."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def error(self, exc: BaseException) -> None:
        self.texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        for name in ("attempts", "service_message", "key", "model"):
            self.texts.append(repr(getattr(exc, name, None)))

    def value(self, value: object) -> None:
        self.texts.append(repr(value))
        self.texts.append(str(value))


async def run_paths(evidence: Evidence, urls: list[str]) -> None:
    def answer(respond: Callable[[httpx.Request, int], Any]) -> Server:
        def recording(request: httpx.Request, n: int) -> Any:
            urls.append(str(request.url))
            assert request.headers["x-goog-api-key"] in {CANARY, OTHER}
            return respond(request, n)

        return Server(recording)

    def raising(exc_type: type[httpx.RequestError]) -> Callable[[httpx.Request, int], Any]:
        def respond(request: httpx.Request, n: int) -> httpx.Response:
            raise exc_type(f"failed for {request.url}", request=request)

        return respond

    keys_sets: list[list[Any]] = [[CANARY], [Key(secret=CANARY, label="canary", project="p"),
                                            Key(secret=OTHER, label="other", project="p")]]
    servers: list[Server] = []
    for name in ERROR_FILES:
        servers.append(answer(lambda r, n, name=name: fixture(status_of(name), name)))
        servers.append(answer(lambda r, n, name=name: fixture(status_of(name), name) if n == 0
                              else success()))
    servers.append(answer(raising(httpx.ReadTimeout)))
    servers.append(answer(raising(httpx.ConnectError)))
    servers.append(answer(raising(httpx.RemoteProtocolError)))
    for server in servers:
        for keys in keys_sets:
            vc = VirtualClock()
            async with make_client(server, vc, keys=keys, models=[FLASH]) as client:
                evidence.value(client)
                for call in (lambda: client.generate("hi", deadline=30.0),
                             lambda: client.count_tokens("hi", deadline=30.0),
                             lambda: client.embed(["a"], deadline=30.0)):
                    try:
                        evidence.value(await call())
                    except Exception as exc:
                        evidence.error(exc)
                try:
                    evidence.value([chunk async for chunk in client.stream("hi", deadline=30.0)])
                except Exception as exc:
                    evidence.error(exc)
                evidence.value(client.snapshot())

    # Streams: before the first chunk, mid-stream, abandoned.
    broken = sse(CHUNK_A) + (FIXTURES / "503_overloaded.json").read_bytes()
    for respond in (lambda r, n: httpx.Response(200, content=broken),
                    lambda r, n: httpx.Response(200, content=b"data: {not json\r\n\r\n"),
                    raising(httpx.ReadError)):
        async with make_client(answer(respond), VirtualClock(), keys=[CANARY]) as client:
            try:
                evidence.value([chunk async for chunk in client.stream("hi", deadline=30.0)])
            except Exception as exc:
                evidence.error(exc)
            evidence.value(client.snapshot())

    # Cancellation mid-flight.
    never = asyncio.Event()

    async def hang(request: httpx.Request, n: int) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    async with make_client(answer(hang), VirtualClock(), keys=[CANARY]) as client:
        task = asyncio.create_task(client.generate("hi"))
        for _ in range(10):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as exc:
            evidence.error(exc)
        evidence.value(client.snapshot())

    # Configuration errors that involve the canary.
    for bad in ([CANARY, CANARY], [CANARY + " "], [CANARY + "\n"]):
        try:
            KeyedClient(keys=bad)
        except ConfigurationError as exc:
            evidence.error(exc)
        else:  # pragma: no cover
            raise AssertionError(f"accepted {len(bad)} bad keys")
    try:
        KeyedClient.from_env({"GEMINI_API_KEYS": f"{CANARY},{CANARY}"})
    except ConfigurationError as exc:
        evidence.error(exc)
    evidence.value(Key(secret=CANARY, label="canary"))
    evidence.value(Key(secret=CANARY))


async def test_canary_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    """No log record, repr, error text, traceback or URL ever contains the canary key."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="keysched")
    caplog.set_level(logging.DEBUG, logger="httpx")
    evidence = Evidence()
    urls: list[str] = []
    await run_paths(evidence, urls)
    assert len(urls) > 100
    assert caplog.records, "logging at DEBUG should have recorded something"
    assert any(r.name == "keysched" for r in caplog.records)
    logged = [caplog.text]
    for record in caplog.records:
        logged += [record.getMessage(), repr(record.args), str(record.__dict__)]
        if record.exc_info and record.exc_info[1] is not None:
            logged.append("".join(traceback.format_exception(record.exc_info[1])))
    for text in [*evidence.texts, *logged, *urls]:
        assert CANARY not in text
        assert CANARY[4:] not in text
        assert OTHER not in text
