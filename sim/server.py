"""The fake Gemini server: the world model behind Gemini's HTTP wire format, as an ASGI app.

Endpoints (``reference/gemini-api.md`` section 1): ``POST /v1beta/models/{model}:generateContent``,
``:streamGenerateContent`` (``?alt=sse`` for SSE, else one JSON array), ``:countTokens``,
``:batchEmbedContents``, ``GET /v1beta/models`` and ``GET /v1beta/models/{model}``; the same
under ``/v1`` (the version google-genai 3.x calls by default); the OpenAI-compatible dialect
under ``/v1beta/openai/`` (`sim.openai_compat`).  The key is read from ``x-goog-api-key``, else
``?key=``, else ``Authorization: Bearer``.  Outside the API: ``GET /_sim/counters`` (the world's
per key and model counters as JSON) and ``GET /_sim/state`` (scenario and virtual time).

Time: virtual time is ``(clock() - started) * time_scale``, ``started`` being the clock when the
app was made; latencies are slept back at ``latency / time_scale`` with the injected ``sleep``,
so tests drive the whole server on a fake clock.

Decisions where the issue was silent:

- Input tokens are estimated as the client does (`keysched.wire.estimate_tokens`: text
  characters / 4), so the quotas the server enforces match what a client budgets.
- A streamed answer's latency is spread evenly over its chunks; a cut or a mid-stream error
  comes one interval after the last chunk delivered.
- ``reset`` answers after the error latency and ``timeout`` after the scenario's ``timeout``
  (both virtual), then drop the connection without a response by raising
  `SimulatedDisconnect` (an `httpx.ReadError`; the socket server turns it into a TCP reset).
  Through `httpx.ASGITransport` the body is buffered, so a cut stream fails the whole call.
- ``countTokens`` and ``ListModels`` check the key (revoked, leaked, disabled) but spend no
  quota and are not counted.  ``batchEmbedContents`` is one attempt on the world, its input
  tokens the sum of the batch's, when the scenario declares the model; an embedding model
  (``*embedding*``) it does not declare is served in every scenario, key checked, no quota.
  Vectors are stable pseudo-random values of ``outputDimensionality`` (default 8) from a hash
  of each text.
- A body that is not a JSON object with ``contents`` is a 400 ``INVALID_ARGUMENT`` (not sent to
  the world, not counted); so is a body over Google's 4 MiB limit or a batch over 100 items.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from keysched.wire import estimate_tokens
from sim import bodies, openai_compat
from sim.bodies import Body
from sim.httpserver import ASGIApp, SimServer, SimulatedDisconnect
from sim.world import Reply, World

__all__ = ["SimApp", "SimulatedDisconnect", "make_app", "serve"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

_MAX_PAYLOAD = 4_194_304
_API_PREFIXES = ("/v1beta/models", "/v1/models")
_MAX_BATCH = 100
_JSON = [(b"content-type", b"application/json; charset=UTF-8"),
         (b"vary", b"Origin, X-Origin, Referer")]
_SSE = [(b"content-type", b"text/event-stream"), (b"vary", b"Origin, X-Origin, Referer")]


class SimApp:
    """The ASGI app (see the module docstring).  Build it with `make_app`."""

    def __init__(self, world: World, *, clock: Callable[[], float], sleep: Sleep,
                 time_scale: float | None) -> None:
        self.world = world
        self.clock = clock
        self.sleep = sleep
        self.time_scale = world.scenario.time_scale if time_scale is None else time_scale
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale!r}")
        self.started = clock()

    def now(self) -> float:
        """Virtual seconds since the scenario start."""
        return (self.clock() - self.started) * self.time_scale

    async def _wait(self, virtual_seconds: float) -> None:
        if virtual_seconds > 0:
            await self.sleep(virtual_seconds / self.time_scale)

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        bearer = headers.get("authorization", "")
        secret = (headers.get("x-goog-api-key") or query.get("key", [""])[0]
                  or (bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""))
        await self._route(scope["method"], scope["path"], query, secret, body, send)

    async def _route(self, method: str, path: str, query: dict[str, list[str]], secret: str,
                     body: bytes, send: Send) -> None:
        if path.startswith("/_sim/"):
            await self._sim_endpoint(method, path, send)
            return
        if path.startswith(openai_compat.PREFIXES):
            await openai_compat.handle(self, method, path, secret, body, send)
            return
        # /v1beta is what keysched and older SDKs call; google-genai 3.x calls /v1 by default.
        prefix = next((p for p in _API_PREFIXES if path.startswith(p)), None)
        if prefix is None:
            await _send(send, 404, _JSON, _not_found(f"{path} was not found."))
            return
        rest = path.removeprefix(prefix).lstrip("/")
        if method == "GET":
            await self._models(rest, query, secret, send)
            return
        model, _, rpc = rest.partition(":")
        if method != "POST" or not model or not rpc:
            await _send(send, 404, _JSON, _not_found(f"{path} was not found."))
            return
        if len(body) > _MAX_PAYLOAD:
            await self._bad_request(send, "Request payload size exceeds the limit: "
                                          f"{_MAX_PAYLOAD} bytes.")
            return
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            await self._bad_request(send, "Invalid JSON payload received. Unexpected token.")
            return
        if rpc in ("generateContent", "streamGenerateContent"):
            if not isinstance(payload.get("contents"), list):
                await self._bad_request(send, "* GenerateContentRequest.contents: contents is "
                                              "not specified\n")
                return
            stream = rpc == "streamGenerateContent"
            reply = self.world.attempt(self.now(), secret, model, estimate_tokens(payload),
                                       stream=stream)
            sse = query.get("alt", [""])[0] == "sse"
            if stream and reply.status == 200:
                await self._stream(reply, send, sse=sse)
            else:
                # A stream without alt=sse is one JSON array, its errors too (reference 1.6).
                await self._answer(reply, send, array=stream and not sse)
        elif rpc == "countTokens":
            await self._count_tokens(model, secret, payload, send)
        elif rpc == "batchEmbedContents":
            await self._embed(model, secret, payload, send)
        else:
            await _send(send, 404, _JSON, _not_found(f"Method {rpc} was not found."))

    # -- generation -----------------------------------------------------------------------------

    async def _answer(self, reply: Reply, send: Send, *, array: bool = False) -> None:
        await self._wait(reply.latency)
        if reply.fault in ("reset", "timeout"):
            raise SimulatedDisconnect(f"simulated {reply.fault}: connection dropped")
        status, headers, body = reply.render()
        if array and reply.body not in bodies.PROXY_BODIES:  # a proxy's page is not Google's
            body = b"[" + body + b"\n]"
        await _send(send, status, headers, body)

    async def _stream(self, reply: Reply, send: Send, *, sse: bool) -> None:
        events = reply.stream_events()
        # Chunks delivered before a failure, plus one interval for the failure itself.
        steps = reply.chunks if reply.fault is None else (reply.cut_after or 0) + 1
        interval = reply.latency / max(steps, 1)
        await send({"type": "http.response.start", "status": 200,
                    "headers": _SSE if sse else _JSON})
        for index, event in enumerate(events):
            # Every event (chunk or trailing error) comes one interval after the previous one.
            await self._wait(interval)
            part = event if sse else _as_array_part(event, first=index == 0)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        if reply.fault == "cut":
            await self._wait(interval)
            raise SimulatedDisconnect("simulated stream cut: connection dropped")
        await send({"type": "http.response.body", "body": b"" if sse else b"]",
                    "more_body": False})

    # -- other methods ---------------------------------------------------------------------------

    async def _key_refused(self, secret: str, send: Send) -> bool:
        refusal = self.world.check_key(self.now(), secret)
        if refusal is None:
            return False
        await self._answer(refusal, send)
        return True

    async def _count_tokens(self, model: str, secret: str, payload: dict[str, Any],
                            send: Send) -> None:
        if await self._key_refused(secret, send):
            return
        if model not in self.world.scenario.models_best_first:
            await _send(send, 404, _JSON, bodies.pretty(bodies.error_object(
                Body.MODEL_NOT_FOUND, model=model, method="countTokens")))
            return
        await self._wait(self.world.scenario.error_latency)
        await _send(send, 200, _JSON, bodies.pretty({"totalTokens": estimate_tokens(payload)}))

    async def _embed(self, model: str, secret: str, payload: dict[str, Any], send: Send) -> None:
        requests = payload.get("requests")
        if not isinstance(requests, list) or not requests:
            await self._bad_request(send, "* BatchEmbedContentsRequest.requests: requests is "
                                          "not specified\n")
            return
        if len(requests) > _MAX_BATCH:
            await self._bad_request(send, "* BatchEmbedContentsRequest.requests: at most 100 "
                                          "requests can be in one batch\n")
            return
        if not await self.embedding_served(model, secret, estimate_tokens(payload), send):
            return
        embeddings = [{"values": _vector(item)} for item in requests]
        await _send(send, 200, _JSON, bodies.pretty({"embeddings": embeddings}))

    async def embedding_served(self, model: str, secret: str, tokens: int, send: Send,
                               *, array: bool = False) -> bool:
        """Decide an embedding call: True once its latency has passed, False if an error was
        sent (`array`: wrapped as the OpenAI-compatible dialect wraps errors).

        An embedding model the scenario does not declare is served without quota, its key
        checked (as for countTokens), so that embeddings work in every scenario.
        """
        if "embedding" in model and model not in self.world.scenario.models_best_first:
            refusal = self.world.check_key(self.now(), secret)
            if refusal is not None:
                await self._answer(refusal, send, array=array)
                return False
            await self._wait(self.world.scenario.error_latency)
            return True
        reply = self.world.attempt(self.now(), secret, model, tokens)
        if reply.status != 200 or reply.fault is not None:
            await self._answer(reply, send, array=array and reply.status != 200)
            return False
        await self._wait(reply.latency)
        return True

    async def _models(self, rest: str, query: dict[str, list[str]], secret: str,
                      send: Send) -> None:
        if await self._key_refused(secret, send):
            return
        items = [_model_item(name) for name in self.world.models]
        if rest:
            found = [item for item in items if item["name"] == f"models/{rest}"]
            if not found:
                await _send(send, 404, _JSON, bodies.pretty(bodies.error_object(
                    Body.MODEL_NOT_FOUND, model=rest, method="GetModel")))
                return
            await _send(send, 200, _JSON, bodies.pretty(found[0]))
            return
        try:
            size = min(max(int(query.get("pageSize", ["50"])[0]), 1), 1000)
            offset = int(query.get("pageToken", ["0"])[0] or 0)
        except ValueError:
            await self._bad_request(send, "Invalid pageSize or pageToken.")
            return
        page: dict[str, Any] = {"models": items[offset:offset + size]}
        if offset + size < len(items):
            page["nextPageToken"] = str(offset + size)
        await _send(send, 200, _JSON, bodies.pretty(page))

    async def _bad_request(self, send: Send, message: str) -> None:
        await _send(send, 400, _JSON, bodies.pretty(bodies.error_object(Body.BAD_REQUEST,
                                                                        message=message)))

    async def _sim_endpoint(self, method: str, path: str, send: Send) -> None:
        if method == "GET" and path == "/_sim/counters":
            await _send(send, 200, _JSON, json.dumps(self.world.counters()).encode())
        elif method == "GET" and path == "/_sim/state":
            scenario = self.world.scenario
            state = {"scenario": scenario.name, "virtual_time": self.now(),
                     "time_scale": self.time_scale, "start": scenario.start.isoformat()}
            await _send(send, 200, _JSON, json.dumps(state).encode())
        else:
            await _send(send, 404, _JSON, _not_found(f"{path} was not found."))


def _not_found(message: str) -> bytes:
    return bodies.pretty({"error": {"code": 404, "message": message, "status": "NOT_FOUND"}})


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _as_array_part(event: bytes, *, first: bool) -> bytes:
    """An SSE event (or a bare error) re-framed as one element of the non-SSE JSON array."""
    text = event.removeprefix(b"data: ").rstrip(b"\r\n")
    return (b"[" if first else b",\r\n") + text


def _vector(item: object) -> list[float]:
    dims = 8
    if isinstance(item, dict) and isinstance(item.get("outputDimensionality"), int):
        dims = min(max(item["outputDimensionality"], 1), 3072)
    seed = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).digest()
    values = []
    for i in range(dims):
        byte = seed[i % len(seed)] ^ (i * 37 & 0xFF)
        values.append(round(byte / 127.5 - 1.0, 6))
    return values


def _model_item(name: str) -> dict[str, Any]:
    return {"name": f"models/{name}", "version": "001", "displayName": name,
            "description": f"Simulated {name}", "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 65_536,
            "supportedGenerationMethods": (["embedContent", "batchEmbedContents"]
                                           if "embedding" in name
                                           else ["generateContent", "countTokens"]),
            "temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2, "thinking": True}


def make_app(world: World, *, clock: Callable[[], float] = time.monotonic,
             sleep: Sleep = asyncio.sleep, time_scale: float | None = None) -> SimApp:
    """The fake Gemini server for `world`, as a plain ASGI callable.

    Args:
        world: the world model that decides every answer.
        clock: wall-clock seconds (monotonic); virtual time starts at its value now.
        sleep: how the app waits (``asyncio.sleep``; tests pass one that advances a fake clock).
        time_scale: virtual seconds per clock second (defaults to the scenario's).
    """
    return SimApp(world, clock=clock, sleep=sleep, time_scale=time_scale)


def serve(app_or_world: ASGIApp | World, host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """A real HTTP server for an app (or a `World`, wrapped with `make_app`) on loopback.

    Not started yet: ``async with serve(world) as server:`` runs it in the current loop,
    ``with serve(world) as server:`` in a background thread; ``server.base_url`` then gives
    ``http://127.0.0.1:<port>``.
    """
    app = make_app(app_or_world) if isinstance(app_or_world, World) else app_or_world
    return SimServer(app, host, port)
