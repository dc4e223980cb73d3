"""The fake server's error bodies, fetched over a loopback socket, against the reference's own.

`tests/test_server.py` checks that every body the world renders is classified by
`keysched._wire.classify` as the world meant it.  This module closes the other half: for each
error class, the server's body and the *verbatim* body quoted by ``reference/gemini-api.md``
(``tests/fixtures/gemini``) have the same HTTP status, Google status, detail types and quota id,
and the client's classifier puts both in the same class.  The server runs on an injected clock,
so each case is answered at an exact virtual time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from keysched import OutcomeKind
from keysched._wire import classify
from sim.bodies import Body
from sim.scenario import parse_scenario
from sim.server import SimApp, make_app, serve
from sim.world import World

K = OutcomeKind
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
PROMPT = {"contents": [{"parts": [{"text": "x" * 400}]}]}  # 100 tokens
BIG = {"contents": [{"parts": [{"text": "y" * 4000}]}]}  # 1,000 tokens: over what TPM leaves


class Clock:
    """A clock the test sets; sleeping moves it (the server never waits for real)."""

    def __init__(self) -> None:
        self.now = 7_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _app(clock: Clock) -> SimApp:
    scenario = parse_scenario({
        "description": "bodies", "start": "2026-05-12T10:00:00-07:00", "duration": 3600,
        "models": [{"name": FLASH}, {"name": PRO}],
        "quotas": {FLASH: {"rpm": 2, "tpm": 1000}, PRO: 0},
        "projects": [{"name": "alpha", "keys": 3}, {"name": "beta"},
                     {"name": "daily", "quotas": {FLASH: {"rpd": 1}}}, {"name": "gamma"},
                     {"name": "delta"}],
        "faults": [
            {"kind": "key_revoked", "key": "alpha-2"},
            {"kind": "key_leaked", "key": "alpha-3"},
            {"kind": "project_disabled", "project": "beta"},
            {"kind": "overloaded", "start": 1000, "end": 1100},
            {"kind": "shared_429", "start": 1100, "end": 1200},
            {"kind": "server_error", "start": 1200, "end": 1300},
            {"kind": "deadline_exceeded", "start": 1300, "end": 1400},
            {"kind": "key_type_unsupported", "key": "gamma-1"},
            {"kind": "project_denied", "project": "delta"},
            {"kind": "file_denied", "start": 1400, "end": 1500},
            {"kind": "proxy_refused", "start": 1500, "end": 1600, "code": 403},
            {"kind": "proxy_refused", "start": 1600, "end": 1700, "code": 401},
        ]}, source="<bodies>")
    return make_app(World(scenario, seed=2), clock=clock, sleep=clock.sleep, time_scale=1.0)


# (virtual time, key label or "" for none, model, prompt, fixture, expected class)
CASES: list[tuple[str, float, str, str, dict[str, Any], str, OutcomeKind]] = [
    ("revoked", 10, "alpha-2", FLASH, PROMPT, "400_api_key_invalid.json", K.KEY_INVALID),
    ("leaked", 10, "alpha-3", FLASH, PROMPT, "403_leaked.json", K.KEY_LEAKED),
    ("disabled", 10, "beta-1", FLASH, PROMPT, "403_service_disabled.json", K.PROJECT_DISABLED),
    ("no key", 10, "", FLASH, PROMPT, "403_unregistered_callers.json", K.KEY_FORBIDDEN),
    ("model", 10, "alpha-1", "gemini-9", PROMPT, "404_model.json", K.MODEL_NOT_FOUND),
    ("limit 0", 10, "alpha-1", PRO, PROMPT, "429_limit_zero_message.json", K.QUOTA_ZERO),
    ("rpd", 10, "daily-1", FLASH, PROMPT, "429_daily_cap_2026.json", K.RATE_LIMITED_DAY),
    ("rpm", 130, "alpha-1", FLASH, PROMPT, "429_per_minute_tpm.json", K.RATE_LIMITED_MINUTE),
    ("tpm", 190, "alpha-1", FLASH, BIG, "429_per_minute_tpm.json", K.RATE_LIMITED_MINUTE),
    ("bare 429", 1150, "alpha-1", FLASH, PROMPT, "429_bare.json", K.SHARED_CAPACITY),
    ("503", 1050, "alpha-1", FLASH, PROMPT, "503_overloaded.json", K.OVERLOADED),
    ("500", 1250, "alpha-1", FLASH, PROMPT, "500_internal.json", K.SERVER_ERROR),
    ("504", 1350, "alpha-1", FLASH, PROMPT, "504_deadline.json", K.TIMEOUT),
    ("key type", 10, "gamma-1", FLASH, PROMPT, "401_access_token_type_unsupported.json",
     K.KEY_TYPE_UNSUPPORTED),
    ("project denied", 10, "delta-1", FLASH, PROMPT, "403_project_denied.json",
     K.PROJECT_DISABLED),
    ("file denied", 1450, "alpha-1", FLASH, PROMPT, "403_file_permission.json",
     K.REQUEST_ERROR),
]
# A proxy's bare refusal is no Google error: its page is compared by class only.
PROXY_CASES = [(1550, 403, "403_proxy.html"), (1650, 401, "401_proxy.json")]
# Requests that set the stage (spend quota) before the case is asked, at these virtual times.
SETUP: dict[str, list[tuple[float, str, dict[str, Any]]]] = {
    "rpd": [(5, "daily-1", PROMPT)],
    "rpm": [(121, "alpha-1", PROMPT), (122, "alpha-1", PROMPT)],
    "tpm": [(181, "alpha-1", PROMPT)],
}


def _types(error: dict[str, Any]) -> set[str]:
    return {d["@type"] for d in error.get("details", [])}


def _reasons(error: dict[str, Any]) -> set[str]:
    return {d["reason"] for d in error.get("details", []) if "reason" in d}


def _quota_ids(error: dict[str, Any]) -> set[str]:
    return {v["quotaId"] for d in error.get("details", []) for v in d.get("violations", [])}


@pytest.mark.parametrize(("name", "virtual", "label", "model", "prompt", "fixture", "kind"),
                         CASES, ids=[case[0] for case in CASES])
async def test_server_body_matches_the_verbatim_reference_body(
        name: str, virtual: float, label: str, model: str, prompt: dict[str, Any], fixture: str,
        kind: OutcomeKind) -> None:
    """Over loopback, each error's status, Google status, details and class match the reference's."""
    clock = Clock()
    app = _app(clock)
    tokens = len(prompt["contents"][0]["parts"][0]["text"]) // 4
    async with serve(app) as server, httpx.AsyncClient(base_url=server.base_url) as http:

        async def ask(at: float, who: str, body: dict[str, Any]) -> httpx.Response:
            clock.now = app.started + at
            headers = {"x-goog-api-key": f"fake-{who}"} if who else {}
            return await http.post(f"/v1beta/models/{model}:generateContent", json=body,
                                   headers=headers)

        for at, who, body in SETUP.get(name, []):
            assert (await ask(at, who, body)).status_code == 200
        response = await ask(virtual, label, prompt)
    reference = (FIXTURES / fixture).read_bytes()
    ours = response.json()["error"]
    theirs = json.loads(reference)["error"]
    assert response.status_code == theirs["code"] == ours["code"]
    assert ours["status"] == theirs["status"]
    got = classify(response.status_code, response.content, dict(response.headers),
                   input_tokens=tokens)
    expected = classify(theirs["code"], reference, {}, input_tokens=tokens)
    assert got.outcome.kind is expected.outcome.kind is kind
    assert (got.status, got.google_status) == (expected.status, expected.google_status)
    if name == "limit 0":
        # The reference quotes only the message; ours carries the full 2026 details too.
        assert "limit: 0" in ours["message"]
        return
    if name == "rpm":
        # No verbatim body quotes an RPM-only 429: compare the shape with the TPM one, and the
        # quota id with the per-minute request violation of the several-violations body.
        several = json.loads((FIXTURES / "429_several_violations.json").read_bytes())["error"]
        assert _quota_ids(ours) < _quota_ids(several)
        assert _types(ours) == _types(theirs)
        assert got.outcome.retry_after == pytest.approx(60.0 - (virtual % 60.0), abs=1e-6)
        return
    assert _types(ours) == _types(theirs)
    assert _quota_ids(ours) == _quota_ids(theirs)
    assert _reasons(ours) == _reasons(theirs)  # ErrorInfo: API_KEY_INVALID, SERVICE_DISABLED
    if kind in (K.RATE_LIMITED_MINUTE, K.RATE_LIMITED_DAY):
        assert got.outcome.retry_after is not None
        assert expected.outcome.retry_after is not None


def test_every_error_body_of_the_server_has_a_reference_case() -> None:
    """Every `Body` the world can send (but the generic 400) is checked against a reference body."""
    bodies_by_fixture = {
        "400_api_key_invalid.json": Body.KEY_INVALID, "403_leaked.json": Body.KEY_LEAKED,
        "403_service_disabled.json": Body.SERVICE_DISABLED,
        "403_unregistered_callers.json": Body.UNREGISTERED, "404_model.json": Body.MODEL_NOT_FOUND,
        "429_limit_zero_message.json": Body.QUOTA_ZERO,
        "429_daily_cap_2026.json": Body.QUOTA_RPD, "429_per_minute_tpm.json": Body.QUOTA_TPM,
        "429_bare.json": Body.BARE_429,
        "503_overloaded.json": Body.OVERLOADED, "500_internal.json": Body.INTERNAL,
        "504_deadline.json": Body.DEADLINE_EXCEEDED,
        "401_access_token_type_unsupported.json": Body.KEY_TYPE_UNSUPPORTED,
        "403_project_denied.json": Body.PROJECT_DENIED,
        "403_file_permission.json": Body.FILE_DENIED}
    checked = {case[0] for case in CASES}
    assert {case[5] for case in CASES} == set(bodies_by_fixture)
    assert {*bodies_by_fixture.values(), Body.QUOTA_RPM, Body.PROXY_401, Body.PROXY_403} == (
        set(Body) - {Body.BAD_REQUEST})
    assert {code for _, code, _ in PROXY_CASES} == {401, 403}
    assert "rpm" in checked  # the RPM body, compared with the TPM one's shape


@pytest.mark.parametrize(("virtual", "code", "fixture"), PROXY_CASES)
async def test_a_proxy_refusal_is_a_bare_page_classified_like_the_reference(
        virtual: float, code: int, fixture: str) -> None:
    """The server's proxy page has the status and no Google error object; the client reads it,
    and the reference's proxy body, as ``ACCESS_REFUSED`` (the key is cooled, not disabled)."""
    clock = Clock()
    app = _app(clock)
    async with serve(app) as server, httpx.AsyncClient(base_url=server.base_url) as http:
        clock.now = app.started + virtual
        response = await http.post(f"/v1beta/models/{FLASH}:generateContent", json=PROMPT,
                                   headers={"x-goog-api-key": "fake-alpha-1"})
    assert response.status_code == code
    assert not response.headers["content-type"].startswith("application/json")
    got = classify(code, response.content, dict(response.headers))
    expected = classify(code, (FIXTURES / fixture).read_bytes())
    assert got.outcome.kind is expected.outcome.kind is K.ACCESS_REFUSED
