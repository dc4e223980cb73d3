"""A canary key over real loopback HTTP never shows up anywhere but its own request header.

``test_secrets_client.py`` proves this at the transport seam; here the same paths run against
the fake Gemini server on 127.0.0.1, through both HTTP backends: success, every error class the
server can produce, streams cut and broken, cancellation mid-request, with DEBUG logging on for
keysched and the HTTP libraries.  The server side is checked too: its answers, its counters and
its state endpoint name keys by label and never echo the key, and no request carries a key (or
anything at all) in its query string except ``alt=sse``.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

import httpx
import pytest
from reliability_support import FLASH, SCALE, Tap, make_client

from keysched import Key, KeyedClient, PoolConfig, RetryPolicy, Scheduler
from sim.scenario import Scenario, parse_scenario
from sim.server import make_app, serve
from sim.world import World

CANARY = "AIzaSyCANARYloopback0123456789abcdefgh"
HEALTHY = "AIzaSyHEALTHYloopback012345678abcdefgh"
FAULTS: list[dict[str, Any]] = [
    {}, {"kind": "shared_429"}, {"kind": "overloaded"}, {"kind": "server_error"},
    {"kind": "timeout"}, {"kind": "deadline_exceeded"}, {"kind": "reset"},
    {"kind": "truncated_body"}, {"kind": "garbage_body"}, {"kind": "key_revoked"},
    {"kind": "key_leaked"}, {"kind": "project_disabled", "project": "canary"},
    {"kind": "stream_cut", "after_chunks": 1}, {"kind": "stream_error", "after_chunks": 1},
    {"kind": "slow", "factor": 50.0},
]


def scenario(fault: dict[str, Any], *, rpm: int | None = None) -> Scenario:
    faults = []
    if fault:
        faults.append({"key": "canary-1", **fault} if fault["kind"] != "project_disabled"
                      else fault)
    quotas = {"quotas": {FLASH: {"rpm": rpm}}} if rpm else {}
    return parse_scenario({
        "description": "canary", "start": "2026-05-12T10:00:00-07:00", "duration": 1e9,
        "time_scale": SCALE, "timeout": 300.0,
        "models": [{"name": FLASH, "latency_median": 2.0, "stream_chunks": 3},
                   {"name": "gemini-embedding-001", "latency_median": 1.0}],
        "projects": [{"name": "canary", "keys": [{"label": "canary-1", "secret": CANARY}],
                      **quotas},
                     {"name": "healthy", "keys": [{"label": "healthy-1", "secret": HEALTHY}]}],
        "faults": faults,
    }, source="<canary>")


class Evidence:
    """Every text a secret could leak into."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def value(self, value: object) -> None:
        self.texts += [repr(value), str(value)]

    def error(self, exc: BaseException) -> None:
        self.texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        for name in ("attempts", "service_message", "key", "model"):
            self.texts.append(repr(getattr(exc, name, None)))


async def exercise(client: KeyedClient, evidence: Evidence) -> None:
    """Every public call, its result or error, and the client's public views."""
    evidence.value(client)
    calls = (lambda: client.generate("hi", deadline=2_000.0),
             lambda: client.count_tokens("hi", deadline=2_000.0),
             lambda: client.embed(["a", "b"], deadline=2_000.0))
    for call in calls:
        try:
            evidence.value(await call())
        except Exception as exc:
            evidence.error(exc)
    try:
        chunks = [chunk async for chunk in client.stream("hi", deadline=2_000.0)]
        evidence.value(chunks)
        evidence.texts += [repr(chunk.raw) for chunk in chunks]
    except Exception as exc:
        evidence.error(exc)
    # A caller cancelled mid-request.
    task = asyncio.create_task(client.generate("to be cancelled"))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except BaseException as exc:
        evidence.error(exc)
    snapshot = client.snapshot()
    evidence.value(snapshot)
    evidence.texts += [repr(lane) for lane in snapshot.lanes]


async def run_everything(evidence: Evidence, taps: list[Tap],
                         server_texts: list[str]) -> None:
    cases = [(fault, None) for fault in FAULTS] + [({}, 1)]  # rpm 1: 429s with details
    for fast in (False, True):
        for fault, rpm in cases:
            sc = scenario(fault, rpm=rpm)
            tap = Tap(make_app(World(sc)))
            taps.append(tap)
            async with serve(tap) as server:
                for keys in ([Key(secret=CANARY, label="canary-1", project="canary")],
                             sc.pool_keys()):
                    async with make_client(sc, server.base_url, fast=fast, timeout=0.1,
                                           keys=keys, models=[FLASH],
                                           embedding_model="gemini-embedding-001",
                                           retry=RetryPolicy(max_attempts=2,
                                                             deadline=2_000.0)) as client:
                        await exercise(client, evidence)
                async with httpx.AsyncClient(base_url=server.base_url) as http:
                    for path in ("/_sim/counters", "/_sim/state"):
                        server_texts.append((await http.get(path)).text)
    config = PoolConfig(keys=[CANARY, Key(secret=HEALTHY, label="h")], models=[FLASH])
    evidence.value(config)
    evidence.value(Scheduler(config, rng=__import__("random").Random(1)))
    evidence.value(Key(secret=CANARY))


async def test_canary_key_never_leaks_over_loopback(caplog: pytest.LogCaptureFixture) -> None:
    """No log, repr, error, traceback, URL or server answer ever contains the canary key."""
    for name in ("", "keysched", "httpx", "httpcore", "aiohttp", "asyncio", "sim"):
        caplog.set_level(logging.DEBUG, logger=name)
    evidence = Evidence()
    taps: list[Tap] = []
    server_texts: list[str] = []
    await run_everything(evidence, taps, server_texts)

    requests = [request for tap in taps for request in tap.requests]
    keyed = [r for r in requests if r[0].startswith("/v1beta/")]
    assert len(keyed) > 200
    # The key travels in its header, and only there.
    for path, query, headers in keyed:
        assert query in (b"", b"alt=sse"), query
        assert dict(headers)[b"x-goog-api-key"] in (CANARY.encode(), HEALTHY.encode())
        assert CANARY not in path
    answers = [b"".join(parts) for tap in taps for parts in tap.responses]
    answer_headers = [repr(headers) for tap in taps for headers in tap.response_headers]
    assert any(b"API_KEY_INVALID" in answer for answer in answers)
    logged = [caplog.text]
    for record in caplog.records:
        logged += [record.getMessage(), repr(record.args), str(record.__dict__)]
        if record.exc_info and record.exc_info[1] is not None:
            logged.append("".join(traceback.format_exception(record.exc_info[1])))
    assert any("key disabled" in text for text in logged)
    assert any("canary-1" in text for text in server_texts)  # counters are keyed by label
    for text in [*evidence.texts, *logged, *server_texts, *answer_headers,
                 *(a.decode("utf-8", "replace") for a in answers)]:
        assert CANARY not in text
        assert CANARY[6:] not in text
        assert HEALTHY not in text
