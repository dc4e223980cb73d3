"""A canary key never reaches the outcome trace or the metrics, even when the server quotes it.

The trace keeps one text a server chooses: a 429's ``quotaId``.  A hostile server here puts the
key it was sent there, in the message and in the status string, and answers every other case of
`test_secrets_echoed` too; the trace file, written over real loopback HTTP, and a Prometheus
scrape of the pool (issue 19, items 1 and 4) hold labels only.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from test_secrets_echoed import CANARY, FLASH, OTHER, Send, echoes

from keysched import Key, KeyedClient, RetryPolicy, ServiceError
from keysched.metrics import PoolCollector
from keysched.trace import load
from sim.server import serve


def quota_echo(secret: str) -> bytes:
    """A 429 whose quota id, message and status string quote `secret`."""
    return json.dumps({"error": {
        "code": 429, "message": f"quota exceeded for {secret}", "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                 "quotaId": f"GenerateRequestsPerMinutePerProjectPerModel-{secret}",
                 "quotaValue": "3"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.01s"}]}},
    ).encode()


class EchoEverything:
    """Answers each call with the case's body, quoting the key it got."""

    def __init__(self, case: str) -> None:
        self.case = case

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        secret = dict(scope["headers"]).get(b"x-goog-api-key", b"").decode()
        if self.case == "quota":
            status, body = 429, quota_echo(secret)
        else:
            status, body = echoes(secret)[self.case]
            if self.case == "stream":
                status, body = 500, body.split(b"\r\n\r\n", 1)[1]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("case", ["quota", *echoes("k")])
async def test_the_trace_and_metrics_never_hold_a_secret(case: str, tmp_path: Path) -> None:
    """Whatever the server quotes, the trace and a scrape name keys by label, quota ids too."""
    path = tmp_path / "outcomes.jsonl"
    keys = [Key(secret=CANARY, label="canary-1", project="a"),
            Key(secret=OTHER, label="other-1", project="b")]
    async with serve(EchoEverything(case)) as server:
        async with KeyedClient(keys=keys, models=[FLASH], base_url=server.base_url, timeout=5.0,
                               retry=RetryPolicy(max_attempts=3, backoff_base=0.01,
                                                 backoff_cap=0.01, deadline=2.0),
                               record=path) as client:
            registry = CollectorRegistry()
            registry.register(PoolCollector(client))
            with pytest.raises(ServiceError):
                await client.generate("hi")
            await client._pump.recorder.aclose()  # type: ignore[union-attr]  # the counts are in
            scraped = generate_latest(registry).decode()
    text = path.read_text(encoding="utf-8")
    assert "canary-1" in scraped
    for shown in (text, scraped):
        for secret in (CANARY, OTHER):
            assert secret not in shown
            assert secret[:10] not in shown
    trace = load(path)
    assert trace.attempts
    assert {a.key for a in trace.attempts} <= {"canary-1", "other-1"}
    if case == "quota":
        ids = {v.quota_id for a in trace.attempts for v in a.violations}
        assert ids
        assert all(i.startswith("GenerateRequestsPerMinutePerProjectPerModel-") for i in ids)
        assert ids <= {"GenerateRequestsPerMinutePerProjectPerModel-canary-1",
                       "GenerateRequestsPerMinutePerProjectPerModel-other-1"}
