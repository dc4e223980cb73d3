"""A canary key never reaches the shared store: every key and value a pool writes to Redis, and
every event it publishes, is scanned for it.

The client runs the loopback scenarios of ``test_secrets_e2e`` that make facts worth sharing
(a revoked key, a leaked key, 429s with details, overloads, server errors) with a Redis store,
once with labelled keys and once with a bare secret (labelled ``key#N`` by position), each
scenario on a pool of its own (a key disabled in one would be left alone in the next).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from redis_support import dump_pool
from reliability_support import FLASH, make_client
from test_secrets_e2e import CANARY, Evidence, exercise, scenario

from keysched import Key, RetryPolicy
from sim.server import make_app, serve
from sim.world import World

CASES: list[tuple[dict[str, Any], int | None]] = [
    ({"kind": "key_revoked"}, None), ({"kind": "key_leaked"}, None), ({}, 1),
    ({"kind": "overloaded"}, None), ({"kind": "server_error"}, None),
    ({"kind": "shared_429"}, None)]


async def test_canary_key_never_reaches_redis(shared_redis: str, pool_name: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """No key name, value, hash field, set member or published event holds the canary."""
    caplog.set_level(logging.DEBUG, logger="keysched")
    import redis.asyncio

    listener = redis.asyncio.Redis.from_url(shared_redis)
    pubsub = listener.pubsub()
    await pubsub.psubscribe(f"{{{pool_name}*:events")
    published: list[bytes] = []

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                published.append(message["data"])

    listening = asyncio.create_task(listen())
    evidence = Evidence()
    try:
        for case, (fault, rpm) in enumerate(CASES):
            sc = scenario(fault, rpm=rpm)
            async with serve(make_app(World(sc))) as server:
                for keys in ([Key(secret=CANARY, label="canary-1", project="canary")],
                             [CANARY, *(k for k in sc.pool_keys() if k.secret != CANARY)]):
                    async with make_client(sc, server.base_url, timeout=0.1, keys=keys,
                                           models=[FLASH], store=shared_redis,
                                           pool_name=f"{pool_name}-{case}",
                                           embedding_model="gemini-embedding-001",
                                           retry=RetryPolicy(max_attempts=2,
                                                             deadline=2_000.0)) as client:
                        await exercise(client, evidence)
                        evidence.value(client._pump.link.store if client._pump.link else None)
        await asyncio.sleep(0.2)  # the last published events
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await pubsub.aclose()
        await listener.aclose()
    stored = dump_pool(shared_redis, pool_name)
    assert len(stored) > 10  # the pool did write: leases, windows, facts
    assert any(b"key" in item for item in stored)  # a disabled key's fact, by label
    assert published  # facts were published
    secret = CANARY.encode()
    assert not [item for item in stored + published if secret in item]
    assert not [text for text in evidence.texts if CANARY in text]
    assert not [r for r in caplog.records if CANARY in r.getMessage()]
