"""Shared helpers for the KeyedClient tests: fixtures, a scripted MockTransport, a client factory."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from virtual_clock import VirtualClock

from keysched import KeyedClient
from keysched._config import Key, RetryPolicy

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"
MODELS = (FLASH, LITE)


def body(name: str) -> bytes:
    """The verbatim bytes of a fixture body."""
    return (FIXTURES / name).read_bytes()


def fixture(status: int, name: str) -> httpx.Response:
    """A response with a fixture body, as Google sends it."""
    return httpx.Response(status, content=body(name),
                          headers={"content-type": "application/json; charset=UTF-8"})


def success() -> httpx.Response:
    return fixture(200, "200_success.json")


def key_of(request: httpx.Request) -> str:
    return request.headers["x-goog-api-key"]


def model_of(request: httpx.Request) -> str:
    return request.url.path.rsplit("/", 1)[-1].split(":", 1)[0]


def secret(n: int) -> str:
    return f"AIzaSyTEST{n:03d}-abcdefghijklmnopqrstuvw"


Respond = Callable[[httpx.Request, int], Any]


class Server:
    """A MockTransport handler: records every request and answers with ``respond(request, n)``.

    `n` counts requests from 0.  ``respond`` may return an `httpx.Response` or a coroutine.
    """

    def __init__(self, respond: Respond | None = None) -> None:
        self.respond = respond or (lambda request, n: success())
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        n = len(self.requests)
        self.requests.append(request)
        answer = self.respond(request, n)
        if hasattr(answer, "__await__"):
            answer = await answer
        assert isinstance(answer, httpx.Response)
        return answer

    @property
    def keys(self) -> list[str]:
        return [key_of(request) for request in self.requests]

    @property
    def models(self) -> list[str]:
        return [model_of(request) for request in self.requests]

    def bodies(self) -> list[Any]:
        return [json.loads(request.content) for request in self.requests]


def script(*answers: Callable[[], httpx.Response]) -> Respond:
    """Answer the n-th request with ``answers[n]``, and every later one with the last."""
    return lambda request, n: answers[min(n, len(answers) - 1)]()


def three_keys() -> list[Key]:
    """key#1 and key#2 share project p1; key#3 is alone in p2."""
    return [Key(secret=secret(1), label="key#1", project="p1"),
            Key(secret=secret(2), label="key#2", project="p1"),
            Key(secret=secret(3), label="key#3", project="p2")]


def make_client(server: Server, vc: VirtualClock, *, keys: Sequence[str | Key] | None = None,
                models: Sequence[str] = MODELS, retry: RetryPolicy | None = None,
                **kwargs: Any) -> KeyedClient:
    """A client on a MockTransport, in virtual time, with deterministic (jitter-free) backoff."""
    return KeyedClient(
        keys=three_keys() if keys is None else keys, models=models,
        retry=retry or RetryPolicy(jitter=0.0), transport=httpx.MockTransport(server),
        clock=vc.clock, sleep=vc.sleep, wall_clock=vc.wall, rng=random.Random(7), **kwargs)
