"""What an SDK's HTTP request asks for, and how to send it again on a pool key (pure).

Theory of operation: `keysched._integrations` puts the pool under an SDK's httpx client.  For
each request the SDK builds, `route` says whether the pool schedules it (a model call it knows:
which dialect, which method, which models it may use, whether it streams) or passes it through.
`Route.url` and `Route.body` give an attempt's URL and body for the model the core chose,
`attempt_headers` the SDK's headers with the pool key put in, and `Route.classify` reads the
answer with the same wire rules as `KeyedClient.generate`.  Nothing here does I/O.

Decisions where the issue was silent:

- Scheduled native calls (``/v1``, ``/v1beta``, ``/v1alpha``, after any prefix of the base URL):
  ``models/{m}:generateContent``, ``:streamGenerateContent``, ``:countTokens``,
  ``:embedContent`` and ``:batchEmbedContents``.  OpenAI-compatible calls (``/v1beta/openai/``):
  ``chat/completions`` (streamed when the body says ``"stream": true``) and ``embeddings``.
  Everything else (file uploads, operations, model listing, cached contents, batch jobs,
  ``:predict``) and any call for a model outside the pool passes through.
- Fallback: a generation call for a model of the pool's list may be served by that model or
  any model after it in the list (the order `generate` falls back in); a call for the first
  model may use them all.  ``fallback=False`` (per transport) or the request header
  ``x-keysched-fallback: off`` pins it to the model it named.  countTokens and embeddings
  never fall back: their answer depends on the model.
- A key in the URL (``?key=``) is dropped; ``x-goog-api-key``, ``Authorization`` and any
  ``x-keysched-*`` header of the caller are replaced.  The native API gets the pool key in
  ``x-goog-api-key``, the OpenAI-compatible one in ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from keysched._outcomes import Outcome, OutcomeKind
from keysched._wire import (
    Classified,
    _model_path,
    classify,
    classify_json_response,
    estimate_tokens,
    parse_count_tokens,
    parse_embeddings,
    tokens_for_chars,
)

__all__ = ["FALLBACK_HEADER", "Route", "attempt_headers", "openai_tokens", "response_headers",
           "route"]

FALLBACK_HEADER = "x-keysched-fallback"
"""Request header: ``off`` (or ``0``, ``false``, ``no``) pins a call to the model it named."""

_NATIVE = re.compile(r"/(?:v1|v1beta|v1alpha)/(models|tunedModels)/([^/:]+):([A-Za-z]+)$")
_OPENAI = re.compile(r"/(?:v1|v1beta)/openai/(chat/completions|embeddings)$")
_SCHEDULED = frozenset({"generateContent", "streamGenerateContent", "countTokens",
                        "embedContent", "batchEmbedContents"})
_GENERATION = frozenset({"generateContent", "streamGenerateContent", "chat/completions"})
_OFF = frozenset({"off", "0", "false", "no"})
# Hop-by-hop headers and those httpx sets itself; the caller's credentials; our own controls.
_DROPPED = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                      "x-goog-api-key", "authorization"})
# A body we return was decoded by httpx already; its length is set anew.
_DROPPED_ANSWER = frozenset({"content-encoding", "content-length", "transfer-encoding",
                             "connection", "keep-alive"})


class Route(NamedTuple):
    """A model call the pool schedules.

    Attributes:
        openai: the OpenAI-compatible dialect (key in ``Authorization: Bearer``; the model in
            the body), else the native one (the model in the path).
        method: ``generateContent``, ``streamGenerateContent``, ``countTokens``,
            ``embedContent``, ``batchEmbedContents``, ``chat/completions`` or ``embeddings``.
        models: the models it may use, best first (the one it named first).
        stream: whether the answer is a stream of server-sent events.
        tokens: the estimated input tokens.
        spends_quota: False for countTokens (it is not counted against generation quotas).
    """

    openai: bool
    method: str
    models: tuple[str, ...]
    stream: bool
    tokens: int
    spends_quota: bool
    path_head: str
    path_tail: str
    query: str
    json: Any

    def url(self, base: str, model: str) -> str:
        """The attempt's URL for `model` (`base` is the request's scheme and authority)."""
        path = self.path_head + (self.path_tail if self.openai
                                 else f"{_model_path(model)}:{self.method}")
        return f"{base}{path}{'?' + self.query if self.query else ''}"

    def body(self, raw: bytes, model: str) -> bytes:
        """The attempt's body for `model`: the caller's, with the model renamed if it names it."""
        if not self.openai or model == self.models[0]:
            return raw
        return json.dumps({**self.json, "model": model}).encode()

    def classify(self, status: int, raw: bytes, headers: Mapping[str, str]) -> Classified:
        """A whole answer (or a stream's non-200 answer), by the wire rules of `KeyedClient`."""
        if self.method in ("generateContent", "streamGenerateContent"):
            return classify(status, raw, headers, input_tokens=self.tokens)
        parse = _PARSERS[self.method]
        classified, value = classify_json_response(status, raw, headers, parse=parse)
        if self.method == "chat/completions" and value is not None:
            usage = value.get("usage") if isinstance(value.get("usage"), dict) else {}
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            classified = classified._replace(outcome=Outcome(
                kind=OutcomeKind.SUCCESS,
                input_tokens=prompt if isinstance(prompt, int) and prompt >= 0 else None,
                output_tokens=completion if isinstance(completion, int) and completion >= 0
                else None))
        return classified


def _with_choices(json_value: Any) -> dict[str, Any] | None:
    ok = isinstance(json_value, dict) and isinstance(json_value.get("choices"), list)
    return json_value if ok else None


def _with_data(json_value: Any) -> dict[str, Any] | None:
    ok = isinstance(json_value, dict) and isinstance(json_value.get("data"), list)
    return json_value if ok else None


def _embedding(json_value: Any) -> Any:
    return json_value.get("embedding") if isinstance(json_value, dict) else None


_PARSERS: dict[str, Any] = {
    "countTokens": parse_count_tokens, "batchEmbedContents": parse_embeddings,
    "embedContent": _embedding, "chat/completions": _with_choices, "embeddings": _with_data,
}


def openai_tokens(body: Mapping[str, Any]) -> int:
    """Characters of text in ``messages`` (chat) or ``input`` (embeddings), as tokens (the
    fake server counts an OpenAI-compatible request's input with this too)."""
    def chars(value: object) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, list):
            return sum(chars(item) for item in value)
        if isinstance(value, dict):
            return chars(value.get("content")) + chars(value.get("text"))
        return 0

    return tokens_for_chars(chars(body.get("messages")) + chars(body.get("input")))


def _query_without_key(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode([(k, v) for k, v in pairs if k != "key"])


class _Target(NamedTuple):
    """The scheduled call a request's path names."""

    openai: bool
    rpc: str
    model: str
    """The model of a native call; "" for an OpenAI-compatible one, which names it in the body."""
    head: str
    tail: str


def _target(path: str) -> _Target | None:
    """Which scheduled call `path` names, if any."""
    native = _NATIVE.search(path)
    if native is not None:
        collection, name, rpc = native.groups()
        if rpc not in _SCHEDULED:
            return None
        model = urllib.parse.unquote(name)
        if collection == "tunedModels":
            model = f"tunedModels/{model}"
        return _Target(openai=False, rpc=rpc, model=model, head=path[:native.start(1)], tail="")
    openai = _OPENAI.search(path)
    if openai is None:
        return None
    rpc = openai.group(1)
    return _Target(openai=True, rpc=rpc, model="", head=path[:openai.start(1)], tail=rpc)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body) if body else {}
    except (ValueError, RecursionError):
        return None  # not ours to judge: the server's 400 reaches the caller as it is
    return value if isinstance(value, dict) else None


def _allowed_models(rpc: str, model: str, generation: Sequence[str], headers: Mapping[str, str],
                    *, fallback: bool) -> tuple[str, ...]:
    """`model` and, for a generation call that may fall back, every model after it."""
    if (rpc in _GENERATION and fallback and model in generation
            and headers.get(FALLBACK_HEADER, "").strip().lower() not in _OFF):
        return tuple(generation[list(generation).index(model):])
    return (model,)


def route(method: str, path: str, query: str, body: bytes, headers: Mapping[str, str],
          generation: Sequence[str], pool: Sequence[str], *, fallback: bool) -> Route | None:
    """The call the pool should schedule, or None to pass the request through.

    Args:
        method, path, query, body, headers: the SDK's request (`path` percent-encoded).
        generation: the pool's generation models, best first (the fallback list).
        pool: every model the pool schedules (the generation models and the embedding model).
        fallback: whether a generation call may fall back along `generation`.
    """
    target = _target(path) if method == "POST" else None
    json_value = _json_object(body) if target is not None else None
    if target is None or json_value is None:
        return None
    model = target.model
    if target.openai:
        named = json_value.get("model")
        if not isinstance(named, str):
            return None
        model = named.removeprefix("models/")
    if model not in pool:
        return None
    stream = target.rpc == "streamGenerateContent" or (target.openai and
                                                       json_value.get("stream") is True)
    tokens = openai_tokens(json_value) if target.openai else estimate_tokens(json_value)
    return Route(openai=target.openai, method=target.rpc,
                 models=_allowed_models(target.rpc, model, generation, headers,
                                        fallback=fallback),
                 stream=stream, tokens=tokens, spends_quota=target.rpc != "countTokens",
                 path_head=target.head, path_tail=target.tail, query=_query_without_key(query),
                 json=json_value)


def attempt_headers(caller: Sequence[tuple[str, str]], secret: str, *,
                    bearer: bool) -> dict[str, str]:
    """The caller's headers with its credentials and our controls dropped, the pool key put in."""
    headers = {name: value for name, value in caller
               if name.lower() not in _DROPPED and not name.lower().startswith("x-keysched-")}
    if bearer:
        headers["authorization"] = f"Bearer {secret}"
    else:
        headers["x-goog-api-key"] = secret
    return headers


def response_headers(upstream: Sequence[tuple[str, str]], redact: Callable[[str], str],
                     extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """The answer's headers for the SDK: decoded-body headers dropped, secrets `redact`ed."""
    kept = [(name, redact(value)) for name, value in upstream
            if name.lower() not in _DROPPED_ANSWER]
    return kept + list(extra.items())
