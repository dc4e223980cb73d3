"""`keysched._routes`: which SDK requests the pool schedules, on which models, with which key."""

from __future__ import annotations

import json

import pytest

from keysched._outcomes import OutcomeKind
from keysched._routes import attempt_headers, response_headers, route

GEN = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite")
POOL = (*GEN, "gemini-embedding-001")
BODY = json.dumps({"contents": [{"parts": [{"text": "x" * 40}]}]}).encode()


def native(path: str, body: bytes = BODY, query: str = "", **headers: str) -> object:
    return route("POST", path, query, body, headers, GEN, POOL, fallback=True)


@pytest.mark.parametrize(("model", "models"), [
    ("gemini-2.5-pro", GEN),
    ("gemini-2.5-flash", GEN[1:]),
    ("gemini-2.5-flash-lite", GEN[2:]),
])
def test_a_generation_call_falls_back_only_to_the_models_after_its_own(
        model: str, models: tuple[str, ...]) -> None:
    call = route("POST", f"/v1beta/models/{model}:generateContent", "", BODY, {}, GEN, POOL,
                 fallback=True)
    assert call is not None
    assert call.models == models
    assert call.tokens == 10
    assert not call.stream
    assert not call.openai


def test_fallback_off_per_transport_or_per_request_pins_the_model() -> None:
    path = "/v1beta/models/gemini-2.5-pro:generateContent"
    off = route("POST", path, "", BODY, {}, GEN, POOL, fallback=False)
    assert off is not None
    assert off.models == ("gemini-2.5-pro",)
    for value in ("off", "0", "False", " no "):
        pinned = route("POST", path, "", BODY, {"x-keysched-fallback": value}, GEN, POOL,
                       fallback=True)
        assert pinned is not None
        assert pinned.models == ("gemini-2.5-pro",)


def test_counting_and_embedding_never_fall_back_and_counting_spends_no_quota() -> None:
    count = native("/v1beta/models/gemini-2.5-pro:countTokens")
    assert count is not None
    assert count.models == ("gemini-2.5-pro",)
    assert not count.spends_quota
    embed = native("/v1/models/gemini-embedding-001:batchEmbedContents",
                   json.dumps({"requests": []}).encode())
    assert embed is not None
    assert embed.models == ("gemini-embedding-001",)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1beta/models", b""),  # listing models
    ("GET", "/v1beta/operations/abc", b""),
    ("POST", "/upload/v1beta/files", b"{}"),  # a file upload
    ("POST", "/v1beta/cachedContents", b"{}"),
    ("POST", "/v1beta/models/gemini-2.5-pro:batchGenerateContent", BODY),  # a batch job
    ("POST", "/v1beta/models/imagen-4:predict", BODY),
    ("POST", "/v1beta/models/gemini-9-ultra:generateContent", BODY),  # not a pool model
    ("POST", "/v1beta/models/gemini-2.5-pro:generateContent", b"not json"),
    ("GET", "/v1beta/openai/models", b""),
    ("POST", "/v1beta/openai/chat/completions", b'{"model": "gpt-5", "messages": []}'),
])
def test_what_the_pool_does_not_schedule_passes_through(method: str, path: str,
                                                        body: bytes) -> None:
    assert route(method, path, "", body, {}, GEN, POOL, fallback=True) is None


def test_a_path_prefix_and_the_stream_query_are_kept_and_a_key_in_the_query_dropped() -> None:
    call = native("/proxy/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                  query="alt=sse&key=CALLER")
    assert call is not None
    assert call.stream
    assert call.url("http://h:1", "gemini-2.5-flash-lite") == (
        "http://h:1/proxy/gemini/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent"
        "?alt=sse")


def test_openai_chat_renames_the_model_in_the_body_per_attempt() -> None:
    body = json.dumps({"model": "models/gemini-2.5-flash", "stream": True,
                       "messages": [{"role": "user", "content": "y" * 80}]}).encode()
    call = route("POST", "/v1beta/openai/chat/completions", "", body, {}, GEN, POOL,
                 fallback=True)
    assert call is not None
    assert (call.openai, call.stream, call.models, call.tokens) == (True, True, GEN[1:], 20)
    assert call.body(body, "gemini-2.5-flash") == body
    assert json.loads(call.body(body, "gemini-2.5-flash-lite"))["model"] == "gemini-2.5-flash-lite"
    assert call.url("https://g", "gemini-2.5-flash-lite") == (
        "https://g/v1beta/openai/chat/completions")


def test_openai_answers_are_classified_by_the_same_wire_rules() -> None:
    body = b'{"model": "gemini-2.5-flash", "messages": []}'
    call = route("POST", "/v1beta/openai/chat/completions", "", body, {}, GEN, POOL,
                 fallback=True)
    assert call is not None
    ok = call.classify(200, json.dumps({"choices": [{"message": {"content": "hi"}}],
                                        "usage": {"prompt_tokens": 3,
                                                  "completion_tokens": 4}}).encode(), {})
    assert (ok.outcome.kind, ok.outcome.input_tokens, ok.outcome.output_tokens) == (
        OutcomeKind.SUCCESS, 3, 4)
    wrapped = b'[{"error": {"code": 400, "message": "API key not valid. Please pass a valid' \
              b' API key.", "status": "INVALID_ARGUMENT"}}]'
    assert call.classify(400, wrapped, {}).outcome.kind is OutcomeKind.KEY_INVALID
    assert call.classify(503, b"", {}).outcome.kind is OutcomeKind.OVERLOADED
    assert call.classify(200, b'{"object": "nothing"}', {}).outcome.kind is (
        OutcomeKind.BAD_RESPONSE)


def test_attempt_headers_replace_the_callers_credentials_with_the_pool_key() -> None:
    caller = [("X-Goog-Api-Key", "CALLER"), ("Authorization", "Bearer CALLER"),
              ("x-keysched-fallback", "off"), ("Content-Length", "9"), ("user-agent", "sdk/1"),
              ("x-goog-api-client", "genai/3")]
    native_headers = attempt_headers(caller, "POOLKEY", bearer=False)
    assert native_headers == {"user-agent": "sdk/1", "x-goog-api-client": "genai/3",
                              "x-goog-api-key": "POOLKEY"}
    openai_headers = attempt_headers(caller, "POOLKEY", bearer=True)
    assert openai_headers["authorization"] == "Bearer POOLKEY"
    assert "x-goog-api-key" not in openai_headers


def test_an_answers_headers_are_redacted_and_decoded_body_headers_dropped() -> None:
    """Every header value goes through the redaction; Content-Encoding goes (httpx decoded)."""
    headers = response_headers([("X-Echo", "SECRET"), ("Content-Encoding", "gzip"),
                                ("content-type", "application/json")],
                               lambda value: value.replace("SECRET", "k-1"),
                               {"x-keysched-key": "k-1"})
    assert headers == [("X-Echo", "k-1"), ("content-type", "application/json"),
                       ("x-keysched-key", "k-1")]
