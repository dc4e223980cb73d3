"""The fake server's OpenAI-compatible dialect (`sim.openai_compat`), in-process on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from virtual_clock import VirtualClock

from keysched._outcomes import OutcomeKind
from keysched._routes import route
from sim.scenario import parse_scenario
from sim.server import make_app
from sim.world import World

FLASH = "gemini-2.5-flash"
EMBED = "gemini-embedding-001"
BASE = "http://sim/v1beta/openai"


def client(faults: list[dict[str, Any]] | None = None,
           quotas: dict[str, Any] | None = None) -> tuple[httpx.AsyncClient, World]:
    world = World(parse_scenario({
        "description": "openai dialect", "start": "2026-05-12T10:00:00-07:00",
        "duration": 3600, "time_scale": 10.0,
        "models": [{"name": FLASH, "latency_median": 1.0, "stream_chunks": 3},
                   {"name": EMBED, "latency_median": 0.2}],
        "quotas": quotas or {},
        "projects": [{"name": "p", "keys": [{"label": "p-1", "secret": "AIzaP1"},
                                            {"label": "p-2", "secret": "AIzaP2"}]}],
        "faults": faults or [],
    }, source="<openai>"))
    clock = VirtualClock()  # the server's latencies pass in virtual time only
    app = make_app(world, clock=clock.clock, sleep=clock.sleep)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app)), world


def chat(stream: bool = False, model: str = FLASH) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "x" * 40}],
            "stream": stream}


BEARER = {"authorization": "Bearer AIzaP1"}


async def test_chat_completion_is_one_attempt_on_the_world_with_the_bearer_key() -> None:
    http, world = client()
    async with http:
        answer = await http.post(f"{BASE}/chat/completions", json=chat(), headers=BEARER)
    body = answer.json()
    assert answer.status_code == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith(f"[{FLASH} #")
    assert body["usage"]["prompt_tokens"] == 10
    assert world.counters() == {"p-1": {FLASH: {"requests": 1, "success": 1}}}


async def test_a_stream_sends_chunks_then_done() -> None:
    http, _ = client()
    async with http:
        answer = await http.post(f"{BASE}/chat/completions", json=chat(stream=True),
                                 headers=BEARER)
    assert answer.headers["content-type"] == "text/event-stream"
    events = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" in chunks[-1]


@pytest.mark.parametrize(("faults", "quotas", "status", "kind"), [
    ([{"kind": "key_revoked", "key": "p-1"}], None, 400, OutcomeKind.KEY_INVALID),
    ([{"kind": "overloaded"}], None, 503, OutcomeKind.OVERLOADED),
    ([], {FLASH: 0}, 429, OutcomeKind.QUOTA_ZERO),
])
async def test_errors_are_google_statuses_wrapped_in_an_array(
        faults: list[dict[str, Any]], quotas: dict[str, Any] | None, status: int,
        kind: OutcomeKind) -> None:
    http, _ = client(faults, quotas)
    async with http:
        answer = await http.post(f"{BASE}/chat/completions", json=chat(), headers=BEARER)
    assert answer.status_code == status
    assert isinstance(answer.json(), list)
    assert answer.json()[0]["error"]["code"] == status
    call = route("POST", "/v1beta/openai/chat/completions", "", json.dumps(chat()).encode(),
                 {}, (FLASH,), (FLASH,), fallback=True)
    assert call is not None
    assert call.classify(answer.status_code, answer.content, answer.headers).outcome.kind is kind


async def test_a_stream_error_after_a_chunk_is_an_error_event() -> None:
    http, _ = client([{"kind": "stream_error", "after_chunks": 1}])
    async with http:
        answer = await http.post(f"{BASE}/chat/completions", json=chat(stream=True),
                                 headers=BEARER)
    events = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
    assert json.loads(events[0])["object"] == "chat.completion.chunk"
    assert json.loads(events[1])["error"]["code"] == 503


async def test_embeddings_and_models() -> None:
    http, world = client()
    async with http:
        vectors = await http.post(f"{BASE}/embeddings", json={"model": EMBED,
                                                              "input": ["a", "b"]},
                                  headers=BEARER)
        listed = await http.get(f"{BASE}/models", headers=BEARER)
        refused = await http.get(f"{BASE}/models", headers={"authorization": "Bearer nope"})
        bad = await http.post(f"{BASE}/chat/completions", json={"messages": []},
                              headers=BEARER)
    assert [item["index"] for item in vectors.json()["data"]] == [0, 1]
    assert len(vectors.json()["data"][0]["embedding"]) == 8
    assert [m["id"] for m in listed.json()["data"]] == [f"models/{FLASH}", f"models/{EMBED}"]
    assert refused.status_code == 400
    assert bad.status_code == 400
    assert bad.json()[0]["error"]["status"] == "INVALID_ARGUMENT"
    assert world.counters() == {"p-1": {EMBED: {"requests": 1, "success": 1}}}


async def test_an_undeclared_embedding_model_is_served_in_every_scenario() -> None:
    """Both dialects embed with a model the scenario lacks: key checked, no quota counted."""
    http, world = client([{"kind": "key_revoked", "key": "p-2"}])
    native = "http://sim/v1beta/models/text-embedding-004:batchEmbedContents"
    request = {"requests": [{"model": "models/text-embedding-004",
                             "content": {"parts": [{"text": "a"}]}}]}
    async with http:
        vectors = await http.post(native, json=request, headers={"x-goog-api-key": "AIzaP1"})
        compat = await http.post(f"{BASE}/embeddings", headers=BEARER,
                                 json={"model": "text-embedding-004", "input": "a"})
        refused = await http.post(native, json=request, headers={"x-goog-api-key": "AIzaP2"})
        other = await http.post("http://sim/v1beta/models/gemini-9:batchEmbedContents",
                                json=request, headers={"x-goog-api-key": "AIzaP1"})
    assert len(vectors.json()["embeddings"]) == 1
    assert len(compat.json()["data"][0]["embedding"]) == 8
    assert refused.status_code == 400
    assert other.status_code == 404  # not an embedding model: the world's answer
    assert world.counters() == {"p-1": {"gemini-9": {"requests": 1, "model_not_found": 1}}}
