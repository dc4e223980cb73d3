"""The fake server's bad-body faults: ``truncated_body`` and ``garbage_body``."""

from __future__ import annotations

import httpx
import pytest

from keysched._outcomes import OutcomeKind
from keysched._wire import classify
from sim.scenario import ScenarioError, parse_scenario
from sim.server import make_app, serve
from sim.world import World

FLASH = "gemini-2.5-flash"
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def world(kind: str, **fault: object) -> World:
    return World(parse_scenario({
        "description": "bad bodies", "start": "2026-05-12T10:00:00-07:00", "duration": 100,
        "models": [{"name": FLASH, "latency_median": 1.0}],
        "projects": [{"name": "alpha", "keys": 1}],
        "faults": [{"kind": kind, **fault}],
    }))


@pytest.mark.parametrize("kind", ["truncated_body", "garbage_body"])
def test_bad_body_faults_are_counted_as_bad_responses(kind: str) -> None:
    """A bad-body fault is a 200 the client classifies as BAD_RESPONSE, counted as such."""
    w = world(kind)
    reply = w.attempt(1.0, "fake-alpha-1", FLASH, 10)
    assert reply.outcome.kind is OutcomeKind.BAD_RESPONSE
    status, headers, body = reply.render()
    assert status == 200
    assert classify(status, body, {k.decode(): v.decode() for k, v in headers}
                    ).outcome.kind is OutcomeKind.BAD_RESPONSE
    assert w.counters() == {"alpha-1": {FLASH: {"requests": 1, "bad_response": 1}}}


def test_a_truncated_body_is_the_first_half_of_the_real_answer() -> None:
    """The truncated body is a prefix of the answer the same world would have sent whole."""
    cut = world("truncated_body").attempt(1.0, "fake-alpha-1", FLASH, 10).render()[2]
    whole = world("truncated_body", start=50.0).attempt(1.0, "fake-alpha-1", FLASH, 10)
    assert whole.outcome.kind is OutcomeKind.SUCCESS
    full = whole.render()[2]
    assert full.startswith(cut)
    assert len(cut) == len(full) // 2


@pytest.mark.parametrize("kind", ["truncated_body", "garbage_body"])
def test_bad_body_faults_leave_streams_alone(kind: str) -> None:
    """Streams are not affected by the bad-body faults (they have stream_cut and stream_error)."""
    reply = world(kind).attempt(1.0, "fake-alpha-1", FLASH, 10, stream=True)
    assert reply.outcome.kind is OutcomeKind.SUCCESS


def test_bad_body_faults_respect_probability_and_windows() -> None:
    """Probability 0.5 hits about half the attempts; outside the window none."""
    w = world("garbage_body", probability=0.5, end=50.0)
    kinds = [w.attempt(1.0, "fake-alpha-1", FLASH, 10).outcome.kind for _ in range(400)]
    assert 120 < kinds.count(OutcomeKind.BAD_RESPONSE) < 280
    assert w.attempt(60.0, "fake-alpha-1", FLASH, 10).outcome.kind is OutcomeKind.SUCCESS


def test_unknown_fault_fields_are_still_refused() -> None:
    """The new kinds are listed in the error for an unknown kind."""
    with pytest.raises(ScenarioError, match="garbage_body"):
        world("garbled")


async def test_bad_bodies_over_loopback() -> None:
    """Over a real socket the bad bodies arrive as well-formed HTTP 200 messages."""
    for kind, content_type in (("truncated_body", "application/json"), ("garbage_body",
                                                                         "text/html")):
        async with serve(make_app(world(kind), time_scale=1000.0)) as server, \
                httpx.AsyncClient(base_url=server.base_url) as http:
            response = await http.post(f"/v1beta/models/{FLASH}:generateContent", json=PROMPT,
                                       headers={"x-goog-api-key": "fake-alpha-1"})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(content_type)
            assert int(response.headers["content-length"]) == len(response.content)
            assert classify(200, response.content).outcome.kind is OutcomeKind.BAD_RESPONSE
