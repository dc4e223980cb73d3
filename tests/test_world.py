"""The world model: quota arithmetic by hand, faults, exact bodies, counters and determinism."""

from __future__ import annotations

import datetime
import json
import random
from typing import Any

import pytest

from keysched._outcomes import OutcomeKind
from sim.bodies import format_duration
from sim.scenario import Scenario, load_scenario, parse_scenario
from sim.workload import generate_arrivals
from sim.world import UNKNOWN_KEY, Reply, World

K = OutcomeKind
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
TYPES = "type.googleapis.com/google.rpc."


def make(start: str = "2026-05-12T10:00:00-07:00", *, quota: dict[str, Any] | None = None,
         faults: list[dict[str, Any]] | None = None, keys: int = 2,
         extra_projects: int = 0) -> Scenario:
    """A small scenario: one project `alpha` (plus `other-N` projects) and two models."""
    projects = [{"name": "alpha", "keys": keys}]
    projects += [{"name": f"other-{n}", "keys": 1} for n in range(extra_projects)]
    return parse_scenario({
        "description": "test", "start": start, "duration": 3600 * 30,
        "models": [{"name": FLASH, "latency_median": 1.0, "stream_chunks": 3},
                   {"name": PRO, "latency_median": 3.0}],
        "quotas": {FLASH: quota if quota is not None else {"rpm": 3}, PRO: 0},
        "projects": projects, "faults": faults or [],
    }, source="<test>")


def error_of(reply: Reply) -> dict[str, Any]:
    status, _, body = reply.render()
    assert status == reply.status
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def detail(error: dict[str, Any], name: str) -> dict[str, Any]:
    found = [d for d in error.get("details", []) if d["@type"] == TYPES + name]
    assert len(found) == 1, error
    entry: dict[str, Any] = found[0]
    return entry


def epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_rpm_plus_one_gets_429_with_the_delay_that_ends_the_window() -> None:
    """With R = 3 per minute, the 4th request at 14.25 s waits exactly 45.75 s, the window's end."""
    world = World(make(), seed=1)
    for t in (1.0, 2.0, 3.0):
        assert world.attempt(t, "fake-alpha-1", FLASH, 100).outcome.kind is K.SUCCESS
    reply = world.attempt(14.25, "fake-alpha-2", FLASH, 100)
    assert reply.outcome.kind is K.RATE_LIMITED_MINUTE
    assert reply.outcome.retry_after == 45.75
    assert reply.status == 429
    error = error_of(reply)
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["message"].endswith("Please retry in 45.75s.")
    assert detail(error, "RetryInfo")["retryDelay"] == "45.75s"
    violation = detail(error, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert violation["quotaValue"] == "3"
    assert violation["quotaDimensions"] == {"location": "global", "model": FLASH}
    assert world.attempt(59.999, "fake-alpha-1", FLASH, 100).outcome.kind is K.RATE_LIMITED_MINUTE
    assert world.attempt(60.0, "fake-alpha-1", FLASH, 100).outcome.kind is K.SUCCESS


def test_minute_windows_align_to_the_wall_clock_minute() -> None:
    """A scenario starting at hh:mm:20 has its first window end 40 s in, not 60 s."""
    world = World(make("2026-05-12T10:00:20-07:00", quota={"rpm": 1}), seed=1)
    assert world.attempt(5.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS
    reply = world.attempt(6.5, "fake-alpha-1", FLASH, 10)
    assert reply.outcome.retry_after == 33.5
    assert world.attempt(40.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS


def test_fractional_delays_print_with_nanoseconds() -> None:
    """Retry delays print like Google's protobuf durations, up to nine fractional digits."""
    assert format_duration(37.0) == "37s"
    assert format_duration(45.837906927) == "45.837906927s"
    assert format_duration(0.1 + 0.2) == "0.3s"
    world = World(make(quota={"rpm": 1}), seed=1)
    world.attempt(0.0, "fake-alpha-1", FLASH, 10)
    reply = world.attempt(14.162093073, "fake-alpha-1", FLASH, 10)
    assert detail(error_of(reply), "RetryInfo")["retryDelay"] == "45.837906927s"
    assert reply.outcome.retry_after == 45.837906927


def test_input_tokens_per_minute() -> None:
    """TPM counts input tokens; a request larger than the whole quota is TOO_LARGE_FOR_QUOTA."""
    world = World(make(quota={"tpm": 1000}), seed=1)
    assert world.attempt(1.0, "fake-alpha-1", FLASH, 600).outcome.kind is K.SUCCESS
    reply = world.attempt(2.0, "fake-alpha-1", FLASH, 500)
    assert reply.outcome.kind is K.RATE_LIMITED_MINUTE
    violation = detail(error_of(reply), "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    assert violation["quotaValue"] == "1000"
    assert world.attempt(3.0, "fake-alpha-1", FLASH, 400).outcome.kind is K.SUCCESS
    assert world.attempt(4.0, "fake-alpha-1", FLASH, 1001).outcome.kind is K.TOO_LARGE_FOR_QUOTA


def test_quotas_are_per_project_shared_by_its_keys() -> None:
    """Two keys of one project share its RPM; a key of another project is unaffected."""
    world = World(make(quota={"rpm": 2}, extra_projects=1), seed=1)
    assert world.attempt(1.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS
    assert world.attempt(1.0, "fake-alpha-2", FLASH, 10).outcome.kind is K.SUCCESS
    assert world.attempt(1.0, "fake-alpha-2", FLASH, 10).outcome.kind is K.RATE_LIMITED_MINUTE
    assert world.attempt(1.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.RATE_LIMITED_MINUTE
    assert world.attempt(1.0, "fake-other-0-1", FLASH, 10).outcome.kind is K.SUCCESS


def test_refused_requests_do_not_count() -> None:
    """Only admitted requests use quota: a per-minute 429 does not spend the day's budget."""
    world = World(make(quota={"rpm": 1, "rpd": 3}), seed=1)
    kinds = [world.attempt(t, "fake-alpha-1", FLASH, 10).outcome.kind
             for t in (0.0, 1.0, 2.0, 60.0, 120.0, 180.0)]
    assert kinds == [K.SUCCESS, K.RATE_LIMITED_MINUTE, K.RATE_LIMITED_MINUTE, K.SUCCESS,
                     K.SUCCESS, K.RATE_LIMITED_DAY]


def _day_case(start: str, next_midnight: str) -> None:
    world = World(make(start, quota={"rpd": 2}), seed=1)
    reset = epoch(next_midnight) - epoch(start)
    assert world.attempt(1.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS
    assert world.attempt(2.0, "fake-alpha-2", FLASH, 10).outcome.kind is K.SUCCESS
    reply = world.attempt(10.0, "fake-alpha-1", FLASH, 10)
    assert reply.outcome.kind is K.RATE_LIMITED_DAY
    # Google's per-day body carries a short delay (the minute window), not the time to midnight.
    assert reply.outcome.retry_after is not None
    assert 0 < reply.outcome.retry_after <= 60
    error = error_of(reply)
    violation = detail(error, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert violation["quotaValue"] == "2"
    assert "limit: 2, model: gemini-2.5-flash" in error["message"]
    assert world.attempt(reset - 0.5, "fake-alpha-1", FLASH, 10).outcome.kind is K.RATE_LIMITED_DAY
    assert world.attempt(reset, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS


def test_per_day_429_lasts_until_midnight_pacific() -> None:
    """RPD + 1 on 2026-03-07 at 23:00 PST is refused until 00:00 PST, one hour later."""
    _day_case("2026-03-07T23:00:00-08:00", "2026-03-08T00:00:00-08:00")


def test_per_day_429_across_the_spring_dst_change() -> None:
    """2026-03-08 is 23 hours long: its quota returns at 00:00 PDT on 03-09, 23 h after 00:00 PST."""
    _day_case("2026-03-08T00:30:00-08:00", "2026-03-09T00:00:00-07:00")
    assert epoch("2026-03-09T00:00:00-07:00") - epoch("2026-03-08T00:00:00-08:00") == 23 * 3600


def test_per_day_429_across_the_autumn_dst_change() -> None:
    """2026-11-01 is 25 hours long: its quota returns at 00:00 PST on 11-02."""
    _day_case("2026-11-01T00:10:00-07:00", "2026-11-02T00:00:00-08:00")
    assert epoch("2026-11-02T00:00:00-08:00") - epoch("2026-11-01T00:00:00-07:00") == 25 * 3600


def test_limit_zero_fails_the_first_request() -> None:
    """A model the tier lacks gets the ``limit: 0`` body on the very first request."""
    world = World(make(), seed=1)
    reply = world.attempt(0.0, "fake-alpha-1", PRO, 10)
    assert reply.outcome.kind is K.QUOTA_ZERO
    error = error_of(reply)
    values = {v["quotaValue"] for v in detail(error, "QuotaFailure")["violations"]}
    assert values == {"0"}
    assert "limit: 0, model: gemini-2.5-pro" in error["message"]


def test_paid_tier_uses_paid_quota_ids() -> None:
    """A paid project's per-minute 429 names the paid quota id and metric."""
    scenario = parse_scenario({
        "description": "paid", "start": "2026-05-12T10:00:00-07:00", "duration": 60,
        "models": [{"name": FLASH}], "quotas": {FLASH: {"rpm": 1}},
        "projects": [{"name": "corp", "tier": "paid"}]})
    world = World(scenario)
    world.attempt(0.0, "fake-corp-1", FLASH, 10)
    violation = detail(error_of(world.attempt(1.0, "fake-corp-1", FLASH, 10)),
                       "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaMetric"].endswith("/generate_requests_per_model")


def test_key_faults_answer_with_the_reference_bodies() -> None:
    """Revoked, leaked, disabled-project, unknown and missing keys get Google's exact errors."""
    scenario = make(faults=[
        {"kind": "key_revoked", "key": "alpha-1", "start": 10},
        {"kind": "key_leaked", "key": "alpha-2", "start": 20},
        {"kind": "project_disabled", "project": "other-0", "start": 30}], extra_projects=1)
    world = World(scenario, seed=1)
    assert world.attempt(5.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS
    revoked = world.attempt(10.0, "fake-alpha-1", FLASH, 10)
    assert (revoked.status, revoked.outcome.kind) == (400, K.KEY_INVALID)
    error = error_of(revoked)
    assert error["message"] == "API key not valid. Please pass a valid API key."
    assert detail(error, "ErrorInfo")["reason"] == "API_KEY_INVALID"
    assert detail(error, "LocalizedMessage")["locale"] == "en-US"
    leaked = world.attempt(25.0, "fake-alpha-2", FLASH, 10)
    assert (leaked.status, leaked.outcome.kind) == (403, K.KEY_LEAKED)
    assert error_of(leaked) == {"code": 403, "status": "PERMISSION_DENIED", "message":
                                "Your API key was reported as leaked. Please use another API key."}
    disabled = world.attempt(30.0, "fake-other-0-1", FLASH, 10)
    assert (disabled.status, disabled.outcome.kind) == (403, K.PROJECT_DISABLED)
    info = detail(error_of(disabled), "ErrorInfo")
    number = scenario.projects[1].number
    assert info["reason"] == "SERVICE_DISABLED"
    assert info["metadata"]["consumer"] == f"projects/{number}"
    assert world.attempt(1.0, "AIza-nobody", FLASH, 10).outcome.kind is K.KEY_INVALID
    missing = world.attempt(1.0, "", FLASH, 10)
    assert (missing.status, missing.outcome.kind) == (403, K.KEY_FORBIDDEN)
    not_found = world.attempt(1.0, "fake-other-0-1", "gemini-9", 10)
    assert (not_found.status, not_found.outcome.kind) == (404, K.MODEL_NOT_FOUND)
    assert error_of(not_found)["message"].startswith("models/gemini-9 is not found")


def test_capacity_faults_and_their_bodies() -> None:
    """Overload (503), internal errors (500), bare 429s and 504s come with the reference bodies."""
    cases = [("overloaded", 503, K.OVERLOADED, "The model is overloaded. Please try again later."),
             ("server_error", 500, K.SERVER_ERROR, "An internal error has occurred."),
             ("shared_429", 429, K.SHARED_CAPACITY, "Resource has been exhausted (e.g. check "
                                                    "quota)."),
             ("deadline_exceeded", 504, K.TIMEOUT, "Deadline expired before operation could "
                                                   "complete.")]
    for kind, status, outcome, message in cases:
        world = World(make(faults=[{"kind": kind, "model": FLASH, "start": 10, "end": 20}]))
        assert world.attempt(5.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS
        reply = world.attempt(15.0, "fake-alpha-1", FLASH, 10)
        assert (reply.status, reply.outcome.kind) == (status, outcome), kind
        error = error_of(reply)
        assert error["message"].startswith(message)
        assert "details" not in error
        assert world.attempt(20.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS


def test_shared_429_does_not_spend_quota_but_503_does() -> None:
    """A bare 429 is refused before the quota system; a 503 was admitted and counts."""
    world = World(make(quota={"rpm": 1}, faults=[
        {"kind": "shared_429", "end": 10}, {"kind": "overloaded", "start": 60, "end": 70}]))
    assert world.attempt(1.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SHARED_CAPACITY
    assert world.attempt(11.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.SUCCESS
    assert world.attempt(61.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.OVERLOADED
    assert world.attempt(71.0, "fake-alpha-1", FLASH, 10).outcome.kind is K.RATE_LIMITED_MINUTE


def test_network_faults_have_no_body() -> None:
    """Resets and timeouts send nothing; slow faults stretch the latency."""
    world = World(make(faults=[{"kind": "reset", "end": 10},
                               {"kind": "timeout", "start": 10, "end": 20},
                               {"kind": "slow", "start": 20, "end": 30, "factor": 1000}]))
    reset = world.attempt(1.0, "fake-alpha-1", FLASH, 10)
    assert (reset.fault, reset.outcome.kind, reset.status) == ("reset", K.CONNECTION_ERROR, 0)
    with pytest.raises(ValueError, match="reset"):
        reset.render()
    hang = world.attempt(11.0, "fake-alpha-1", FLASH, 10)
    assert (hang.fault, hang.outcome.kind, hang.latency) == ("timeout", K.TIMEOUT, 60.0)
    slow = world.attempt(21.0, "fake-alpha-1", FLASH, 10)
    assert slow.outcome.kind is K.SUCCESS
    assert slow.latency > 50


def test_stream_events_use_crlf_compact_json_and_cumulative_usage() -> None:
    """A streamed success is CRLF-framed SSE, compact JSON, cumulative usage, STOP on the last."""
    world = World(make(), seed=3)
    reply = world.attempt(1.0, "fake-alpha-1", FLASH, 42, stream=True)
    events = reply.stream_events()
    assert len(events) == 3
    counts = []
    for index, event in enumerate(events):
        assert event.startswith(b"data: {\"candidates\": [{")
        assert event.endswith(b"}\r\n\r\n")
        assert b"\n" not in event[:-4]
        assert b'"role": "model"},' in event
        chunk = json.loads(event[len(b"data: "):])
        assert chunk["usageMetadata"]["promptTokenCount"] == 42
        counts.append(chunk["usageMetadata"]["candidatesTokenCount"])
        assert ("finishReason" in chunk["candidates"][0]) == (index == 2)
        assert chunk["responseId"] == json.loads(events[0][6:])["responseId"]
    assert counts == sorted(counts)
    assert counts[-1] == reply.outcome.output_tokens
    status, headers, body = reply.render()
    assert (status, body) == (200, b"".join(events))
    assert (b"content-type", b"text/event-stream") in headers


def test_stream_cut_and_mid_stream_error() -> None:
    """A cut stream stops after k chunks; a mid-stream error appends a bare pretty-printed object."""
    world = World(make(faults=[{"kind": "stream_cut", "end": 10, "after_chunks": 1},
                               {"kind": "stream_error", "start": 10, "after_chunks": 2}]))
    cut = world.attempt(1.0, "fake-alpha-1", FLASH, 10, stream=True)
    assert (cut.fault, cut.cut_after, cut.outcome.kind) == ("cut", 1, K.CONNECTION_ERROR)
    assert len(cut.stream_events()) == 1
    plain = world.attempt(2.0, "fake-alpha-1", FLASH, 10)
    assert (plain.fault, plain.outcome.kind) == (None, K.SUCCESS)
    broken = world.attempt(11.0, "fake-alpha-1", FLASH, 10, stream=True)
    assert (broken.status, broken.fault, broken.outcome.kind) == (200, "midstream", K.OVERLOADED)
    events = broken.stream_events()
    assert len(events) == 3
    assert events[-1].startswith(b'{\n  "error": {\n    "code": 503,')
    assert json.loads(events[-1])["error"]["status"] == "UNAVAILABLE"


def test_success_body_is_a_generate_content_response() -> None:
    """A success renders as a pretty-printed GenerateContentResponse with consistent usage."""
    world = World(make(), seed=2)
    reply = world.attempt(1.0, "fake-alpha-1", FLASH, 77)
    status, headers, body = reply.render()
    assert status == 200
    assert (b"content-type", b"application/json; charset=UTF-8") in headers
    assert body.startswith(b'{\n  "candidates": [')
    parsed = json.loads(body)
    usage = parsed["usageMetadata"]
    assert usage["promptTokenCount"] == 77
    assert usage["totalTokenCount"] == 77 + usage["candidatesTokenCount"]
    assert parsed["candidates"][0]["finishReason"] == "STOP"
    assert parsed["modelVersion"] == FLASH


def test_counters_count_requests_and_each_class_per_key_and_model() -> None:
    """Counters are per key label and model: requests plus one entry per outcome kind."""
    world = World(make(quota={"rpm": 1}), seed=1)
    world.attempt(1.0, "fake-alpha-1", FLASH, 10)
    world.attempt(2.0, "fake-alpha-1", FLASH, 10)
    world.attempt(3.0, "fake-alpha-2", PRO, 10)
    world.attempt(4.0, "bogus", FLASH, 10)
    assert world.counters() == {
        "alpha-1": {FLASH: {"requests": 2, "success": 1, "rate_limited_minute": 1}},
        "alpha-2": {PRO: {"requests": 1, "quota_zero": 1}},
        UNKNOWN_KEY: {FLASH: {"requests": 1, "key_invalid": 1}},
    }


def _replay(scenario: Scenario, seed: int) -> list[Reply]:
    world = World(scenario, seed=seed)
    keys = [key.secret for key in scenario.keys]
    replies = []
    for index, arrival in enumerate(generate_arrivals(scenario, random.Random(scenario.seed))):
        replies.append(world.attempt(arrival.time, keys[index % len(keys)], arrival.models[0],
                                     arrival.input_tokens, stream=arrival.stream))
    return replies


def test_same_seed_same_replies() -> None:
    """Replaying one call sequence with one seed gives identical replies; another seed differs."""
    scenario = load_scenario("demo")
    first = _replay(scenario, 5)
    assert first == _replay(scenario, 5)
    assert first != _replay(scenario, 6)
    kinds = {reply.outcome.kind for reply in first}
    assert {K.SUCCESS, K.KEY_INVALID, K.OVERLOADED} <= kinds
