"""The recorder over real loopback HTTP: the right fields, and a disk that fails loses no call.

The client runs against the fake Gemini server on a `virtual_loop.VirtualTimeLoop` (scale 1), so
429s, retry delays and the per-minute quota play out in virtual time whatever the machine's
load.  The slow and failing sinks are file objects whose ``write`` blocks on an event or raises
``OSError``, as a full or hung disk does.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import virtual_loop
from e2e_support import ScenarioTime, running_server, scenario_client

from keysched import ConfigurationError, GenerateResult, KeyschedError, RetryPolicy, UsageError
from keysched._recorder import Recorder
from keysched.trace import AttemptLine, RequestLine, Trace, TraceHeader, load, pseudonym
from sim.scenario import Scenario, parse_scenario
from sim.server import SimApp

FLASH = "gemini-2.5-flash"


def scenario(*, revoked: bool = False) -> Scenario:
    """One project with an RPM quota of 2 on flash; with `revoked`, a second project whose key
    the server refuses (400 API_KEY_INVALID) from the start."""
    projects: list[dict[str, Any]] = [{"name": "p1"}]
    faults: list[dict[str, Any]] = []
    if revoked:
        projects.append({"name": "p2"})
        faults.append({"kind": "key_revoked", "key": "p2-1", "start": 0})
    return parse_scenario({
        "description": "recorder", "start": "2026-05-12T10:00:00-07:00", "duration": 600,
        "time_scale": 1.0, "error_latency": 0.05, "limits_known": False,
        "models": [{"name": FLASH, "latency_median": 0.5, "latency_sigma": 0.0}],
        "quotas": {FLASH: {"rpm": 2}}, "projects": projects, "faults": faults,
    }, source="<recorder>")


async def calls(client: Any, count: int, *, stream_first: bool = False,
                ) -> list[GenerateResult | KeyschedError | int]:
    """`count` concurrent calls; the first streamed (its result: the chunks it delivered)."""

    async def one(index: int) -> GenerateResult | KeyschedError | int:
        try:
            if index == 0 and stream_first:
                return len([chunk async for chunk in client.stream("tell me")])
            return await client.generate(f"call {index}")  # type: ignore[no-any-return]
        except KeyschedError as error:
            return error

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def run(main: Any) -> Any:
    return virtual_loop.run(main)


def test_the_trace_holds_what_each_attempt_came_back_with(tmp_path: Path) -> None:
    """Status, retry delay and quota of a 429, a revoked key's 400, tokens, streams, requests."""
    path = tmp_path / "outcomes.jsonl"

    async def main() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(revoked=True), seed=1, time_scale=1.0,
                                  clock=loop.time) as (server, _):
            assert isinstance(server.app, SimApp)
            epoch = ScenarioTime(server.app).epoch
            async with scenario_client(server, record=path, timeout=10.0,
                                       retry=RetryPolicy(deadline=400.0)) as client:
                results = await calls(client, 5, stream_first=True)
        return results, epoch

    results, epoch = run(main)
    assert all(not isinstance(r, KeyschedError) for r in results), results
    trace = load(path)
    header = trace.header
    assert (header.source, header.start) == ("client", epoch)
    assert header.pool is not None
    assert [(k.label, k.project) for k in header.pool.keys] == [("p1-1", "p1"), ("p2-1", "p2")]
    assert header.pool.models[0] == FLASH
    attempts = trace.attempts
    # Every attempt the calls report is in the trace, with its status and retry delay.
    reported = sorted((a.key, a.outcome.value, a.status or None, a.retry_after)
                      for r in results if isinstance(r, GenerateResult) for a in r.attempts)
    recorded = sorted((a.key, a.outcome, a.status, a.retry_delay)
                      for a in attempts if not a.stream)
    assert recorded == reported
    limited = [a for a in attempts if a.outcome == "rate_limited_minute"]
    assert limited, "an RPM of 2 and five calls: the server must have said 429"
    for line in limited:
        assert line.status == 429
        assert line.retry_delay is not None
        assert line.retry_delay > 0
        assert [(v.dimension, v.value) for v in line.violations] == [("rpm", 2)]
        assert "PerMinute" in line.violations[0].quota_id
    revoked = [a for a in attempts if a.key == "p2-1"]
    assert revoked
    assert {(a.outcome, a.status, a.retry_delay, a.project) for a in revoked} == {
        ("key_invalid", 400, None, "p2")}
    answered = [a for a in attempts if a.outcome == "success"]
    assert len(answered) == 5
    for line in answered:
        assert (line.status, line.project, line.model) == (200, "p1", FLASH)
        assert line.tokens_in is not None
        assert line.tokens_in > 0
        assert line.tokens_out is not None
        assert line.tokens_out > 0
        assert line.latency > 0
    streamed = [a for a in attempts if a.stream]
    assert streamed
    assert streamed[-1].outcome == "success"
    assert len({a.request for a in streamed}) == 1
    # One request line per call, answered, counting the attempt lines written for it.
    requests = trace.requests
    assert len(requests) == 5
    for request in requests:
        mine = [a for a in attempts if a.request == request.request]
        assert (request.ok, request.reason, request.attempts) == (True, None, len(mine))
        assert request.submitted <= min(a.t - a.latency for a in mine) + 1e-6
        assert request.t >= max(a.t for a in mine)
        assert [a.attempt for a in mine] == list(range(1, len(mine) + 1))
    times = [line.t for line in trace.lines]
    assert times == sorted(times)


def test_a_failing_disk_loses_records_not_calls(caplog: pytest.LogCaptureFixture) -> None:
    """Every write raising OSError (disk full): every call is answered, one warning is logged."""

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    sink = FullDisk()
    recorder = Recorder(sink)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(), seed=1, time_scale=1.0, clock=loop.time) as (
                server, _), scenario_client(server, record=recorder) as client:
            return await calls(client, 4)

    caplog.set_level(logging.WARNING, logger="keysched")
    results = run(main)
    assert all(isinstance(r, GenerateResult) for r in results)
    lines = sum(len(r.attempts) for r in results) + len(results)  # attempts + request ends
    assert recorder.dropped == lines
    warnings = [r for r in caplog.records if "outcome trace" in r.getMessage()]
    assert len(warnings) == 1
    assert "No space left" in warnings[0].getMessage()


def test_a_disk_that_recovers_gets_a_dropped_line_before_the_next_record() -> None:
    """Writes failing for a while: the trace goes on, saying how many lines it lost."""

    class Flaky(io.StringIO):
        failures = 3

        def write(self, text: str) -> int:
            if text.startswith('{"kind"') and self.failures > 0:
                self.failures -= 1
                raise OSError(28, "No space left on device")
            return super().write(text)

    sink = Flaky()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(), seed=1, time_scale=1.0, clock=loop.time) as (
                server, _), scenario_client(server, record=sink) as client:
            return await calls(client, 4)

    results = run(main)
    assert all(isinstance(r, GenerateResult) for r in results)
    trace = load(io.StringIO(sink.getvalue()))
    written = len(trace.attempts) + len(trace.requests)
    assert trace.dropped == 3
    assert written + 3 == sum(len(r.attempts) for r in results) + len(results)
    assert sink.closed is False  # the caller's file object stays open


def test_a_hung_writer_holds_up_no_call() -> None:
    """The sink blocks until released: the calls end meanwhile, what did not fit is counted."""
    release = threading.Event()

    class Hung(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(timeout=60)  # a hang guard only
            return super().write(text)

    sink = Hung()
    recorder = Recorder(sink, max_pending=2)

    async def main() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(), seed=1, time_scale=1.0, clock=loop.time) as (
                server, _):
            client = scenario_client(server, record=recorder)
            try:
                results = await calls(client, 4)  # all end while the writer is stuck
                dropped = recorder.dropped
            finally:
                release.set()
                await client.aclose()
        return results, dropped

    results, dropped_while_hung = run(main)
    assert all(isinstance(r, GenerateResult) for r in results)
    total = sum(len(r.attempts) for r in results) + len(results)
    assert dropped_while_hung == total - 2  # two fit in the queue
    trace = load(io.StringIO(sink.getvalue()))
    assert len(trace.lines) == 3  # the dropped line, then the two queued records
    assert trace.dropped == total - 2


def test_a_callable_gets_the_records_and_pseudonyms_hide_labels() -> None:
    """A callable sink receives the header, then the lines; a hash key replaces every label."""
    received: list[Any] = []
    secret_key = b"trace-key"

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(), seed=1, time_scale=1.0, clock=loop.time) as (
                server, _), scenario_client(
                    server, record=Recorder(received.append, hash_key=secret_key)) as client:
            return await calls(client, 2)

    results = run(main)
    assert all(isinstance(r, GenerateResult) for r in results)
    assert isinstance(received[0], TraceHeader)
    trace = Trace(header=received[0], lines=tuple(received[1:]))
    assert all(isinstance(line, AttemptLine | RequestLine) for line in trace.lines)
    assert trace.header.pool is not None
    assert trace.header.pool.keys[0].label == pseudonym("p1-1", secret_key)
    assert {a.key for a in trace.attempts} == {pseudonym("p1-1", secret_key)}
    assert {a.project for a in trace.attempts} == {pseudonym("p1", secret_key)}
    assert "p1" not in trace.dumps()


def test_a_cancelled_call_ends_its_request_line_as_cancelled() -> None:
    """A caller that gives up while its call waits gets a request line saying so."""
    received: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(), seed=1, time_scale=1.0, clock=loop.time) as (
                server, _), scenario_client(server, record=received.append) as client:
            task = asyncio.ensure_future(client.generate("slow"))
            await asyncio.sleep(0.1)  # virtual: the attempt is in flight (latency 0.5 s)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await client.generate("after")

    run(main)
    requests = [line for line in received if isinstance(line, RequestLine)]
    assert [(r.ok, r.reason, r.attempts) for r in requests] == [
        (False, "cancelled", 0), (True, None, 1)]


@pytest.mark.parametrize("target", [42, b"bytes"])
def test_a_bad_target_is_named(target: Any) -> None:
    """Something that is no path, file or callable fails at construction, naming ``record``."""
    with pytest.raises(ConfigurationError, match="record"):
        Recorder(target)


def test_a_path_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    """A directory that does not exist fails when the client is built, not at the first call."""
    with pytest.raises(ConfigurationError, match=r"record: cannot open"):
        Recorder(tmp_path / "missing" / "outcomes.jsonl")


def test_a_recorder_serves_one_client() -> None:
    """Binding a recorder twice is a usage error (two clients in one file make no trace)."""
    recorder = Recorder(io.StringIO())

    async def main() -> None:
        from keysched import KeyedClient

        async with KeyedClient(keys=["AIzaSyA"], models=[FLASH], record=recorder,
                               retry=RetryPolicy(deadline=5.0)):
            with pytest.raises(UsageError, match="one client"):
                KeyedClient(keys=["AIzaSyB"], models=[FLASH], record=recorder)

    run(main)
