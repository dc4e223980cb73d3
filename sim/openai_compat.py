"""The fake server's OpenAI-compatible dialect: ``/v1beta/openai/`` over the same world model.

Endpoints (``reference/gemini-api.md`` sections 5 and 7.6; ai.google.dev/gemini-api/docs/openai):
``POST chat/completions`` (plain, and ``"stream": true`` as SSE), ``POST embeddings`` and
``GET models``.  The key comes in ``Authorization: Bearer <key>``.  A generation is one attempt
on the world, exactly as a native ``generateContent`` is, so quotas, faults and counters are
shared by both dialects.

Decisions where the reference is silent or unconfirmed:

- Errors are the native Google ``Status`` bodies, with the native status codes, wrapped in a
  one-element JSON array (as observed in n4ze3m/page-assist#406 and atomic-agent PR #271).
- A stream sends ``chat.completion.chunk`` events and ends with ``data: [DONE]`` (what OpenAI
  sends; whether Google does is unconfirmed).  Usage rides on the last chunk.  An error after
  the stream started is sent as ``data: {"error": {...}}``, the connection faults (``cut``,
  ``reset``, ``timeout``) drop the connection as on the native path.
- A body that is not a JSON object with ``model`` (and ``messages`` or ``input``) is a 400
  ``INVALID_ARGUMENT`` in the same array wrapping, not sent to the world.
- Model ids are listed as ``models/<name>``, as the native ``ListModels`` names them; a request
  may name its model with or without the ``models/`` prefix.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from keysched.wire import openai_tokens
from sim import bodies
from sim.bodies import Body
from sim.httpserver import SimulatedDisconnect

if TYPE_CHECKING:
    from sim.server import SimApp
    from sim.world import Reply

__all__ = ["PREFIXES", "handle"]

PREFIXES = ("/v1beta/openai/", "/v1/openai/")
"""Paths under which the OpenAI-compatible dialect is served."""

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json"), (b"vary", b"Origin, X-Origin, Referer")]
_SSE = [(b"content-type", b"text/event-stream"), (b"vary", b"Origin, X-Origin, Referer")]


async def handle(app: SimApp, method: str, path: str, secret: str, body: bytes,
                 send: Send) -> None:
    """Answer one request whose path starts with one of `PREFIXES`."""
    rest = path.split("/openai/", 1)[1].strip("/")
    if method == "GET" and rest == "models":
        await _models(app, secret, send)
        return
    if method != "POST" or rest not in ("chat/completions", "embeddings"):
        await _send(send, 404, _array(_status(404, "NOT_FOUND", f"{path} was not found.")))
        return
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    field = "messages" if rest == "chat/completions" else "input"
    model = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(model, str) or not model or field not in payload:
        await _send(send, 400, _array(bodies.error_object(
            Body.BAD_REQUEST, message=f"Invalid JSON payload: expected 'model' and '{field}'.")))
        return
    model = model.removeprefix("models/")
    tokens = openai_tokens(payload)
    if rest == "embeddings":
        await _embeddings(app, secret, model, payload["input"], tokens, send)
    else:
        await _chat(app, secret, model, tokens, stream=payload.get("stream") is True, send=send)


async def _chat(app: SimApp, secret: str, model: str, tokens: int, *, stream: bool,
                send: Send) -> None:
    reply = app.world.attempt(app.now(), secret, model, tokens, stream=stream)
    if reply.status != 200 or reply.fault in ("reset", "timeout", "garbage", "truncated"):
        # The native rendering of the error (or the broken answer), wrapped as this dialect does.
        await app._answer(reply, send, array=reply.status != 200)
        return
    created = int(app.world.scenario.start_epoch + app.now())
    text = bodies.success_object(model=model, serial=reply.serial, seed=reply.seed,
                                 input_tokens=reply.input_tokens,
                                 output_tokens=reply.output_tokens)["candidates"][0]
    words = text["content"]["parts"][0]["text"]
    rid = bodies.response_id(reply.seed, reply.serial)
    usage = {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
             "total_tokens": reply.input_tokens + reply.output_tokens}
    if not stream:
        await app._wait(reply.latency)
        await _send(send, 200, json.dumps({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words},
                         "finish_reason": "stop"}],
            "usage": usage}).encode())
        return
    await _stream(app, reply, rid, created, words, usage, send)


async def _stream(app: SimApp, reply: Reply, rid: str, created: int, words: str,
                  usage: dict[str, int], send: Send) -> None:
    chunks = reply.chunks
    sent = chunks if reply.cut_after is None else min(reply.cut_after, chunks)
    steps = chunks if reply.fault is None else sent + 1
    interval = reply.latency / max(steps, 1)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    for i in range(sent):
        last = i == chunks - 1
        chunk: dict[str, Any] = {
            "id": rid, "object": "chat.completion.chunk", "created": created,
            "model": reply.model,
            "choices": [{"index": 0, "delta": {
                "role": "assistant", "content": words[len(words) * i // chunks:
                                                      len(words) * (i + 1) // chunks]},
                "finish_reason": "stop" if last else None}]}
        if last:
            chunk["usage"] = usage
        await app._wait(interval)
        await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
    if reply.fault == "cut":
        await app._wait(interval)
        raise SimulatedDisconnect("simulated stream cut: connection dropped")
    if reply.fault == "midstream":
        await app._wait(interval)
        await send({"type": "http.response.body", "body": _event(reply.error_object()),
                    "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _embeddings(app: SimApp, secret: str, model: str, inputs: object, tokens: int,
                      send: Send) -> None:
    from sim.server import _vector

    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        await _send(send, 400, _array(bodies.error_object(
            Body.BAD_REQUEST, message="Invalid JSON payload: 'input' must be text or a list.")))
        return
    if not await app.embedding_served(model, secret, tokens, send, array=True):
        return
    data = [{"object": "embedding", "index": i,
             "embedding": _vector({"content": {"parts": [{"text": text}]}})}
            for i, text in enumerate(texts)]
    await _send(send, 200, json.dumps({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode())


async def _models(app: SimApp, secret: str, send: Send) -> None:
    refusal = app.world.check_key(app.now(), secret)
    if refusal is not None:
        await app._answer(refusal, send, array=True)
        return
    data = [{"id": f"models/{spec.name}", "object": "model", "owned_by": "google"}
            for spec in app.world.scenario.models]
    await _send(send, 200, json.dumps({"object": "list", "data": data}).encode())


def _status(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _array(error: dict[str, Any]) -> bytes:
    return b"[" + bodies.pretty(error) + b"\n]"


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _send(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": body, "more_body": False})
