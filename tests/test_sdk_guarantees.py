"""The client's guarantees hold on the SDK transport too: every secret of the pool redacted from
what the SDK gets, the response cap typed, `aclose()` ending SDK calls in flight and closing
what the transport opened; streams do not feed the late-start estimate.  Over loopback HTTP
against purpose-built misbehaving servers, on both backends (found by a review of the merge of
the SDK transport with the hardening work)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from helpers import body as fixture_body
from raw_server import BACKENDS, RawServer, Request, answer, hold, json_response

from keysched import KeyedClient, LaneState, ResponseTooLargeError, UsageError

K1 = "AIzaSECRETONE_aaaaaaaaaaaaaaaaaaaaaaaaaa"
K2 = "AIzaSECRETTWO_bbbbbbbbbbbbbbbbbbbbbbbbbb"
FLASH = "gemini-2.5-flash"
BODY = {"contents": [{"parts": [{"text": "hi"}]}]}


async def _closed_soon(server: RawServer) -> None:
    """The server sees every connection closed (a loop turn or two after the client closed it;
    the bound only guards against a connection left open for good)."""
    for _ in range(200):
        if server.open_connections() == 0:
            return
        await asyncio.sleep(0.025)
    assert server.open_connections() == 0


def _url(server: RawServer) -> str:
    return f"{server.url}/v1beta/models/{FLASH}:generateContent"


@BACKENDS
async def test_an_error_quoting_every_key_of_the_pool_reaches_the_sdk_redacted(
        fast: bool) -> None:
    async def quote_both(request: Request, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                     "message": f"bad keys {K1} and {K2}"}}).encode()
        writer.write(json_response(400, body, x_echo=f"{K1} {K2}"))
        await writer.drain()

    async with RawServer(quote_both) as server:
        async with KeyedClient([K1, K2], [FLASH], base_url=server.url + "/v1beta",
                               fast=fast) as client:
            async with httpx.AsyncClient(transport=client.transport(), timeout=None) as http:
                response = await http.post(_url(server), json=BODY)
    assert response.status_code == 400
    assert K1 not in response.text
    assert K2 not in response.text
    assert "bad keys key#1 and key#2" in response.text  # each key's label where it stood
    assert response.headers["x-echo"] == "key#1 key#2"


@BACKENDS
async def test_an_answer_over_the_cap_raises_the_typed_error_through_the_sdk(fast: bool) -> None:
    async def big(request: Request, writer: asyncio.StreamWriter) -> None:
        body = answer("x" * 5000)
        writer.write(json_response(200, body))
        await writer.drain()

    async with RawServer(big) as server:
        async with KeyedClient([K1], [FLASH], base_url=server.url + "/v1beta",
                               max_response_bytes=1000, fast=fast) as client:
            async with httpx.AsyncClient(transport=client.transport(), timeout=None) as http:
                with pytest.raises(ResponseTooLargeError):
                    await http.post(_url(server), json=BODY)
            snapshot = client.snapshot()
    assert (snapshot.requests_failed, snapshot.in_flight) == (1, 0)


@BACKENDS
async def test_aclose_ends_an_sdk_call_in_flight_and_closes_its_connection(fast: bool) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        await hold(writer, 30)

    async with RawServer(silent) as server:
        client = KeyedClient([K1], [FLASH], base_url=server.url + "/v1beta", fast=fast,
                             timeout=20.0)
        http = httpx.AsyncClient(transport=client.transport(), timeout=None)
        call = asyncio.create_task(http.post(_url(server), json=BODY))
        await asyncio.wait_for(server.arrived.wait(), 15)
        await client.aclose()
        with pytest.raises(UsageError):
            await asyncio.wait_for(call, 15)
        await _closed_soon(server)
        await http.aclose()


@BACKENDS
async def test_aclose_closes_what_a_pass_through_request_opened(fast: bool) -> None:
    async def models(request: Request, writer: asyncio.StreamWriter) -> None:
        body = b'{"models": []}'
        writer.write(json_response(200, body))
        await writer.drain()
        await hold(writer, 30)  # keep-alive: the connection stays until the client closes it

    async with RawServer(models) as server:
        client = KeyedClient([K1], [FLASH], base_url=server.url + "/v1beta", fast=fast)
        http = httpx.AsyncClient(transport=client.transport(), timeout=None)
        response = await http.get(f"{server.url}/v1beta/models")
        assert response.status_code == 200
        await client.aclose()
        await _closed_soon(server)


@BACKENDS
async def test_a_pass_through_request_refused_for_its_key_disables_it_and_goes_on(
        fast: bool) -> None:
    """A models listing (not scheduled) sent with an invalid key: the pool disables the key, as
    a generation call's refusal would, and the request goes out again with the next key.  Other
    errors reach the SDK as they came, on one key (a 404 disables nothing)."""
    seen: list[str] = []

    async def listing(request: Request, writer: asyncio.StreamWriter) -> None:
        seen.append(request.key)
        if request.key == K1:
            status, body = 400, fixture_body("400_api_key_invalid.json")
        elif "missing" in request.line:
            status, body = 404, b'{"error": {"code": 404, "status": "NOT_FOUND"}}'
        else:
            status, body = 200, b'{"models": []}'
        writer.write(json_response(status, body))
        await writer.drain()

    async with RawServer(listing) as server:
        async with KeyedClient([K1, K2], [FLASH], base_url=server.url + "/v1beta",
                               fast=fast) as client:
            async with httpx.AsyncClient(transport=client.transport(), timeout=None) as http:
                first = await http.get(f"{server.url}/v1beta/models")
                second = await http.get(f"{server.url}/v1beta/models")
                missing = await http.get(f"{server.url}/v1beta/files/missing")
            lane = client.snapshot().lane("key#1", FLASH)
            events = [e for e in client.events() if e.kind == "key_disabled"]
    assert (first.status_code, first.headers["x-keysched-key"],
            first.headers["x-keysched-attempts"]) == (200, "key#2", "2")
    assert (second.status_code, second.headers["x-keysched-attempts"]) == (200, "1")
    assert (missing.status_code, missing.headers["x-keysched-key"]) == (404, "key#2")
    assert seen == [K1, K2, K2, K2]  # the refused key is never sent again
    assert (lane.state, lane.reason) == (LaneState.DISABLED, "key_invalid")
    assert [e.key for e in events] == ["key#1"]


@BACKENDS
async def test_a_pass_through_refusal_about_the_resource_disables_nothing(fast: bool) -> None:
    """On a pass-through route a 403 PERMISSION_DENIED (another project's tuned model) or a 400
    FAILED_PRECONDITION (a batch already ended) is about the resource: it reaches the SDK as it
    came, sent once, and no key is disabled (a review found one such call disabling the whole
    pool).  When every key is invalid, the last refusal reaches the SDK, not a UsageError."""
    seen: list[str] = []

    async def refuse(request: Request, writer: asyncio.StreamWriter) -> None:
        seen.append(request.key)
        if "tunedModels" in request.line:
            status, body = 403, json.dumps({"error": {
                "code": 403, "status": "PERMISSION_DENIED",
                "message": "You do not have permission to access tunedModels/mine"}}).encode()
        elif ":cancel" in request.line:
            status, body = 400, json.dumps({"error": {
                "code": 400, "status": "FAILED_PRECONDITION",
                "message": "The batch is already in a terminal state"}}).encode()
        else:
            status, body = 400, fixture_body("400_api_key_invalid.json")
        writer.write(json_response(status, body))
        await writer.drain()

    async with RawServer(refuse) as server:
        async with KeyedClient([K1, K2], [FLASH], base_url=server.url + "/v1beta",
                               fast=fast) as client:
            async with httpx.AsyncClient(transport=client.transport(), timeout=None) as http:
                tuned = await http.get(f"{server.url}/v1beta/tunedModels/mine")
                cancel = await http.post(f"{server.url}/v1beta/batches/123:cancel")
                assert seen == [K1, K1]  # each sent once
                assert all(lane.state is not LaneState.DISABLED
                           for lane in client.snapshot().lanes)
                listing = await http.get(f"{server.url}/v1beta/models")
            states = {lane.key: lane.state for lane in client.snapshot().lanes}
    assert (tuned.status_code, cancel.status_code) == (403, 400)
    assert "API_KEY_INVALID" in listing.text  # the last refusal, as Google sent it
    assert (listing.status_code, listing.headers["x-keysched-attempts"]) == (400, "2")
    assert seen == [K1, K1, K1, K2]
    assert states == {"key#1": LaneState.DISABLED, "key#2": LaneState.DISABLED}
