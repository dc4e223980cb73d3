"""Every attempt of every kind of call ends in one `AttemptReport` to the client's observers."""

from __future__ import annotations

import httpx
import pytest
from helpers import FLASH, LITE, Server, fixture, make_client, secret, success
from virtual_clock import VirtualClock

from keysched import Policy
from keysched._outcomes import OutcomeKind, QuotaDimension
from keysched._session import AttemptReport

CHUNK = ('{"candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"}, '
         '"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, '
         '"candidatesTokenCount": 1}}')


async def test_a_call_reports_each_attempt_with_what_a_trace_needs() -> None:
    """A 429 then a success: two reports, in order, with the quota, delay, tokens and times."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(429, "429_per_minute_tpm.json") if n == 0
                    else success())
    reports: list[AttemptReport] = []
    async with make_client(server, vc) as client:
        client._pump.observers.append(reports.append)
        result = await client.generate("hi")
    assert [r.kind for r in reports] == [OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.SUCCESS]
    limited, answered = reports
    assert (limited.number, limited.key, limited.project, limited.model) == (1, "key#1", "p1",
                                                                              FLASH)
    assert (limited.status, limited.retry_after) == (429, 26.0)
    assert [v.dimension for v in limited.violations] == [QuotaDimension.TOKENS_PER_MINUTE]
    assert (answered.number, answered.key, answered.status) == (2, result.key, 200)
    assert result.usage is not None
    assert answered.input_tokens == result.usage.prompt_tokens is not None
    assert answered.output_tokens == result.usage.output_tokens is not None
    assert not limited.stream
    assert not answered.stream
    # The report and the call's own record of each attempt agree on when it ran.
    assert [(r.started, r.ended) for r in reports] == [(a.started, a.ended)
                                                       for a in result.attempts]
    assert all(r.latency == r.ended - r.started >= 0 for r in reports)


async def test_a_stream_reports_its_attempts_as_streamed() -> None:
    """A stream that fails over once: a failed report and a successful one, both `stream`."""
    vc = VirtualClock()
    answers = [lambda: fixture(503, "503_overloaded.json"),
               lambda: httpx.Response(200, content=f"data: {CHUNK}\r\n\r\n".encode())]
    server = Server(lambda request, n: answers[n]())
    reports: list[AttemptReport] = []
    async with make_client(server, vc, policy=Policy(overload_trip=1)) as client:
        client._pump.observers.append(reports.append)
        chunks = [chunk async for chunk in client.stream("hi")]
    assert [c.text for c in chunks] == ["hi"]
    assert [(r.kind, r.model, r.stream) for r in reports] == [
        (OutcomeKind.OVERLOADED, FLASH, True), (OutcomeKind.SUCCESS, LITE, True)]
    assert (reports[1].input_tokens, reports[1].output_tokens) == (3, 1)


async def test_every_observer_sees_every_attempt_and_no_secret() -> None:
    """Two observers each get one report per attempt; a report shows labels, never a key."""
    vc = VirtualClock()

    def respond(request: httpx.Request, n: int) -> httpx.Response:
        if n == 0:
            return fixture(400, "400_api_key_invalid.json")
        if request.url.path.endswith(":countTokens"):
            return httpx.Response(200, json={"totalTokens": 3})
        return success()

    server = Server(respond)
    first: list[AttemptReport] = []
    second: list[AttemptReport] = []
    async with make_client(server, vc) as client:
        client._pump.observers.extend([first.append, second.append])
        await client.generate("hi")
        await client.count_tokens("hi")
    assert first == second
    assert [r.kind for r in first] == [OutcomeKind.KEY_INVALID, OutcomeKind.SUCCESS,
                                       OutcomeKind.SUCCESS]
    assert len(server.requests) == len(first)
    for n in (1, 2, 3):
        assert all(secret(n) not in repr(report) for report in first)


@pytest.mark.parametrize("fails", [False, True])
async def test_a_client_without_observers_builds_no_report(fails: bool,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """With no observer, no report is built: the hook costs a call nothing when unused."""
    built: list[object] = []
    original = AttemptReport.__init__

    def counting(self: AttemptReport, **fields: object) -> None:
        built.append(self)
        original(self, **fields)  # type: ignore[arg-type]

    monkeypatch.setattr(AttemptReport, "__init__", counting)
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(500, "500_internal.json") if fails and n == 0
                    else success())
    async with make_client(server, vc) as client:
        await client.generate("hi")
        assert built == []
        client._pump.observers.append(lambda report: None)
        await client.generate("hi")
    assert len(built) == 1
