"""Every row of the classification table (reference section 2.4), through `KeyedClient`.

Each case answers the first attempt with a verbatim fixture body and every later attempt with a
success, then checks what the client did next and what the pool remembers.
"""

from __future__ import annotations

import attrs
import httpx
import pytest
from helpers import FLASH, LITE, Server, body, fixture, make_client, secret, success
from virtual_clock import VirtualClock

from keysched import RequestError, RetryPolicy
from keysched._outcomes import OutcomeKind
from keysched._snapshot import LaneState

K = OutcomeKind


@attrs.frozen
class Row:
    file: str
    status: int
    kind: OutcomeKind
    then: str
    """``return``, ``fail``, ``other_key_now``, ``other_project_now``, ``later`` or ``other_model``."""
    effect: str = "none"
    """``none``, ``key_disabled``, ``project_disabled``, ``group_cooling``, ``group_midnight``,
    ``group_unavailable``, ``model_cooling`` or ``model_unavailable``."""
    retry_after: float | None = None


ROWS = [
    Row("200_success.json", 200, K.SUCCESS, "return"),
    Row("200_blocked_prompt.json", 200, K.BLOCKED, "return"),
    Row("200_safety_finish.json", 200, K.BLOCKED, "return"),
    Row("200_empty.json", 200, K.EMPTY, "other_key_now"),
    Row("200_thought_only.json", 200, K.EMPTY, "other_key_now"),
    Row("200_truncated.txt", 200, K.BAD_RESPONSE, "later"),
    Row("400_invalid_argument.json", 400, K.REQUEST_ERROR, "fail"),
    Row("400_token_count.json", 400, K.REQUEST_ERROR, "fail"),
    Row("400_batch_limit.json", 400, K.REQUEST_ERROR, "fail"),
    Row("400_api_key_invalid.json", 400, K.KEY_INVALID, "other_key_now", "key_disabled"),
    Row("400_api_key_not_found.json", 400, K.KEY_INVALID, "other_key_now", "key_disabled"),
    Row("403_leaked.json", 403, K.KEY_LEAKED, "other_key_now", "key_disabled"),
    Row("403_unregistered_callers.json", 403, K.KEY_FORBIDDEN, "other_key_now", "key_disabled"),
    Row("401_credentials_missing.json", 401, K.KEY_FORBIDDEN, "other_key_now", "key_disabled"),
    Row("400_region.json", 400, K.KEY_FORBIDDEN, "other_key_now", "key_disabled"),
    Row("403_service_disabled.json", 403, K.PROJECT_DISABLED, "other_project_now",
        "project_disabled"),
    Row("429_per_minute_tpm.json", 429, K.RATE_LIMITED_MINUTE, "other_project_now",
        "group_cooling", 26.0),
    Row("429_paid_tpm_compact.json", 429, K.RATE_LIMITED_MINUTE, "other_project_now",
        "group_cooling", 47.0),
    Row("429_several_violations.json", 429, K.RATE_LIMITED_DAY, "other_project_now",
        "group_midnight", 47.0),
    Row("429_daily_cap_2026.json", 429, K.RATE_LIMITED_DAY, "other_project_now",
        "group_midnight", 39.0),
    Row("429_limit_zero_message.json", 429, K.QUOTA_ZERO, "other_project_now",
        "group_unavailable"),
    Row("429_no_free_quota_tier.json", 429, K.QUOTA_ZERO, "other_project_now",
        "group_unavailable"),
    Row("429_bare.json", 429, K.SHARED_CAPACITY, "other_project_now",
        "group_brief"),
    Row("429_bare_2026.json", 429, K.SHARED_CAPACITY, "other_project_now",
        "group_brief"),
    Row("list_wrapped_429.json", 429, K.SHARED_CAPACITY, "other_project_now",
        "group_brief"),
    # One 503 is noise: another key of the same model at once; the breaker's own tests trip it.
    Row("503_overloaded.json", 503, K.OVERLOADED, "other_key_now"),
    Row("503_high_demand.json", 503, K.OVERLOADED, "other_key_now"),
    Row("500_internal.json", 500, K.SERVER_ERROR, "later"),
    Row("502_html.html", 502, K.SERVER_ERROR, "later"),
    Row("504_deadline.json", 504, K.TIMEOUT, "later"),
    Row("404_model.json", 404, K.MODEL_NOT_FOUND, "other_model", "model_unavailable"),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{row.status}-{row.file}" for row in ROWS])
async def test_classification_row_through_the_client(row: Row) -> None:
    """The client classifies the fixture, acts on it as the table says, and the pool remembers."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(row.status, row.file) if n == 0 else success())
    async with make_client(server, vc) as client:
        if row.then == "fail":
            with pytest.raises(RequestError) as caught:
                await client.generate("hi")
            error = caught.value
            assert len(server.requests) == 1
            assert error.status == row.status
            assert error.key == "key#1"
            assert [a.outcome for a in error.attempts] == [row.kind]
            return
        result = await client.generate("hi")
        first = result.attempts[0]
        assert first.outcome is row.kind
        assert first.status == row.status
        assert first.key == "key#1"
        assert first.model == FLASH
        if row.retry_after is not None:
            assert first.retry_after == row.retry_after
        if row.then == "return":
            assert len(result.attempts) == 1
            assert len(server.requests) == 1
            assert result.blocked is (row.kind is K.BLOCKED)
        else:
            second = result.attempts[1]
            assert len(result.attempts) == 2
            assert second.outcome is K.SUCCESS
            assert (result.key, result.model) == (second.key, second.model)
            if row.then == "other_key_now":
                assert second.key != "key#1"
                assert second.model == FLASH
                assert second.started == first.ended
            elif row.then == "other_project_now":
                assert second.key == "key#3"
                assert second.model == FLASH
                assert second.started == first.ended
            elif row.then == "later":
                assert second.key != "key#1"  # the retry prefers a key that has not failed it
                assert second.started == first.ended + 0.5  # backoff_base, no jitter
            elif row.then == "other_model":
                assert second.model == LITE
                assert second.started == first.ended
        _check_effect(client.snapshot(), row, first.ended)


def _check_effect(snap: object, row: Row, t: float) -> None:
    from keysched._snapshot import PoolSnapshot

    assert isinstance(snap, PoolSnapshot)
    lane = snap.lane
    group = {(g.project, g.model): g for g in snap.groups}
    p1 = group[("p1", FLASH)]
    if row.effect == "none":
        assert all(lane_.state is LaneState.AVAILABLE for lane_ in snap.lanes)
    elif row.effect == "key_disabled":
        assert lane("key#1", FLASH).state is LaneState.DISABLED
        assert lane("key#1", LITE).state is LaneState.DISABLED
        assert lane("key#2", FLASH).state is LaneState.AVAILABLE
    elif row.effect == "project_disabled":
        for key in ("key#1", "key#2"):
            assert lane(key, FLASH).state is LaneState.DISABLED
        assert lane("key#3", FLASH).state is LaneState.AVAILABLE
    elif row.effect == "group_cooling":
        assert row.retry_after is not None
        assert p1.cooldown_until == t + row.retry_after
        assert lane("key#2", FLASH).cooldown_until == t + row.retry_after
        assert lane("key#1", LITE).state is LaneState.AVAILABLE
        assert group[("p2", FLASH)].cooldown_until is None
    elif row.effect == "group_brief":
        # Shared capacity: the project backs off briefly; no key is blamed or disabled.
        brief = RetryPolicy().shared_capacity_cooldown
        assert (p1.cooldown_until, p1.reason) == (t + brief, "shared_capacity")
        assert lane("key#1", FLASH).state is LaneState.COOLING
        assert lane("key#1", LITE).state is LaneState.AVAILABLE
        assert group[("p2", FLASH)].cooldown_until is None
    elif row.effect == "group_midnight":
        # The virtual wall clock starts at 2025-12-31 16:00 Pacific: midnight is 8 hours on.
        assert p1.cooldown_until == vc_epoch() + 8 * 3600
        assert group[("p2", FLASH)].cooldown_until is None
    elif row.effect == "group_unavailable":
        assert p1.unavailable
        assert lane("key#1", FLASH).state is LaneState.UNAVAILABLE
        assert lane("key#1", LITE).state is LaneState.AVAILABLE
    elif row.effect == "model_cooling":
        assert lane("key#3", FLASH).state is LaneState.COOLING
        assert lane("key#3", FLASH).cooldown_until == t + RetryPolicy().overload_cooldown
        assert lane("key#3", LITE).state is LaneState.AVAILABLE
    elif row.effect == "model_unavailable":
        assert all(lane(f"key#{n}", FLASH).state is LaneState.UNAVAILABLE for n in (1, 2, 3))
    else:  # pragma: no cover
        raise AssertionError(row.effect)


def vc_epoch() -> float:
    return VirtualClock().start


async def test_too_large_for_quota_falls_to_the_next_model() -> None:
    """A TPM 429 for a request bigger than the quota itself moves it to the next model, no cooling."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(429, "429_per_minute_tpm.json") if n == 0
                    else success())
    async with make_client(server, vc) as client:
        result = await client.generate("x" * 1_000_100)  # about 250,025 tokens > 250,000
        assert [a.outcome for a in result.attempts] == [K.TOO_LARGE_FOR_QUOTA, K.SUCCESS]
        assert result.model == LITE
        assert all(g.cooldown_until is None for g in client.snapshot().groups)


async def test_request_error_is_raised_after_one_attempt() -> None:
    """A 400 for the request itself is a RequestError after exactly one attempt, on one key."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(400, "400_invalid_argument.json"))
    async with make_client(server, vc) as client:
        with pytest.raises(RequestError) as caught:
            await client.generate("hi")
        assert len(server.requests) == 1
        assert caught.value.google_status == "INVALID_ARGUMENT"
        assert caught.value.service_message == "Request contains an invalid argument."
        assert "Request contains an invalid argument." in str(caught.value)
        snap = client.snapshot()
        assert snap.in_flight == 0
        assert snap.requests_failed == 1


async def test_server_errors_fall_back_after_two_on_one_model() -> None:
    """Two 500s on one model move the request to the next model."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(500, "500_internal.json") if n < 2 else success())
    async with make_client(server, vc) as client:
        result = await client.generate("hi")
    assert server.models == [FLASH, FLASH, LITE]
    assert result.model == LITE


def test_fixture_bytes_are_sent_verbatim() -> None:
    """The fixture helper hands the body over unchanged (no re-serialisation)."""
    response = fixture(429, "429_per_minute_tpm.json")
    assert response.content == body("429_per_minute_tpm.json")
    assert isinstance(response, httpx.Response)
    assert secret(1) != secret(2)
