"""Tests of the pure Gemini wire layer: requests, classification, JSON answers."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysched._errors import UsageError
from keysched._outcomes import OutcomeKind, QuotaDimension, Violation
from keysched._table import DEFAULT_ACTIONS, Next
from keysched._wire import (
    API_BASE,
    EMBED_BATCH_LIMIT,
    SAFETY_FINISH_REASONS,
    Classified,
    Usage,
    batch_embed_body,
    classify,
    classify_chunk,
    classify_json_response,
    count_tokens_body,
    endpoint_url,
    estimate_tokens,
    generate_body,
    list_models_url,
    parse_count_tokens,
    parse_embeddings,
    request_headers,
)

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
K = OutcomeKind
SECRET = "AIzaSyCANARY-canary-canary-0123456789ab"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def error_json(name: str) -> dict[str, Any]:
    value = json.loads(body(name))
    return value[0] if isinstance(value, list) else value  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Requests


@pytest.mark.parametrize(("base", "model", "method", "url"), [
    (API_BASE, "gemini-2.5-flash", "generateContent",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"),
    (API_BASE + "/", "models/gemini-2.5-flash", "streamGenerateContent",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
     ":streamGenerateContent?alt=sse"),
    ("http://127.0.0.1:8080/", "gemini-2.0-flash", "countTokens",
     "http://127.0.0.1:8080/v1beta/models/gemini-2.0-flash:countTokens"),
    ("http://fake", "gemini-embedding-001", "batchEmbedContents",
     "http://fake/v1beta/models/gemini-embedding-001:batchEmbedContents"),
    ("http://fake", "tunedModels/my-model", "generateContent",
     "http://fake/v1beta/tunedModels/my-model:generateContent"),
    ("http://fake", "../x?key=y", "generateContent",
     "http://fake/v1beta/models/..%2Fx%3Fkey%3Dy:generateContent"),
])
def test_endpoint_url(base: str, model: str, method: str, url: str) -> None:
    """Each method maps to its v1beta path; slashes and prefixes are tolerated, odd names quoted."""
    assert endpoint_url(base, model, method) == url


@pytest.mark.parametrize(("model", "method"), [("gemini-2.5-flash", "embedContent"),
                                               ("", "generateContent"),
                                               ("models/", "generateContent")])
def test_endpoint_url_refuses_bad_arguments(model: str, method: str) -> None:
    """An unknown method or an empty model is a UsageError."""
    with pytest.raises(UsageError):
        endpoint_url(API_BASE, model, method)


def test_list_models_url() -> None:
    """ListModels is GET /v1beta/models, with paging parameters only when given."""
    assert list_models_url(API_BASE + "/") == f"{API_BASE}/v1beta/models"
    assert (list_models_url("http://fake", page_size=1000, page_token="a b")
            == "http://fake/v1beta/models?pageSize=1000&pageToken=a+b")


def test_request_headers_carry_the_key_only_in_its_header() -> None:
    """The key goes in x-goog-api-key, with JSON content type and a versioned user agent."""
    headers = request_headers(SECRET)
    version = importlib.metadata.version("keysched")
    assert headers == {"x-goog-api-key": SECRET, "content-type": "application/json",
                       "user-agent": f"keysched/{version}"}


@pytest.mark.parametrize("secret", ["", "a b", "abc\r\nx-evil: 1"])
def test_request_headers_refuse_a_bad_key_without_quoting_it(secret: str) -> None:
    """A key that cannot be a header value is refused, and the message does not echo it."""
    with pytest.raises(UsageError) as info:
        request_headers(secret)
    assert not secret or secret not in str(info.value)


def test_generate_body_from_a_prompt() -> None:
    """A string becomes one user turn; options use the REST camelCase names."""
    assert generate_body("Hello", generation_config={"temperature": 1.0},
                         system_instruction="Be brief.",
                         safety_settings=[{"category": "HARM_CATEGORY_HATE_SPEECH",
                                           "threshold": "BLOCK_NONE"}],
                         tools=[{"googleSearch": {}}]) == {
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 1.0},
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "tools": [{"googleSearch": {}}],
    }


def test_generate_body_passes_contents_through() -> None:
    """A REST contents list and a Content system instruction are passed through unchanged."""
    contents = [{"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello"}]}]
    instruction = {"parts": [{"text": "x"}]}
    assert generate_body(contents, system_instruction=instruction) == {
        "contents": contents, "systemInstruction": instruction}


@pytest.mark.parametrize(("contents", "named"), [
    ([], "contents"), ({"parts": [{"text": "x"}]}, "contents"), (b"x", "contents"),
    (["x"], "contents[0]"), ([{"role": "user"}], "contents[0]"),
    ([{"parts": "text"}], "contents[0]"), ([{"parts": [{}]}, {"parts": [1]}], "contents[1]"),
])
def test_generate_body_names_the_bad_contents(contents: Any, named: str) -> None:
    """A contents argument of the wrong shape is a UsageError naming the argument."""
    with pytest.raises(UsageError, match=f"^{re.escape(named)}:"):
        generate_body(contents)


@pytest.mark.parametrize(("option", "value"), [
    ("generation_config", [1]), ("system_instruction", 3), ("safety_settings", {"a": 1}),
    ("tools", "googleSearch"), ("tools", [1]),
])
def test_generate_body_names_the_bad_option(option: str, value: Any) -> None:
    """An option of the wrong type is a UsageError naming it."""
    with pytest.raises(UsageError, match=option):
        generate_body("x", **{option: value})


def test_count_tokens_body() -> None:
    """countTokens takes the same contents under "contents"."""
    assert count_tokens_body("Hi") == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_batch_embed_body() -> None:
    """Every text becomes one request naming the model with its models/ prefix."""
    assert batch_embed_body("gemini-embedding-001", ["a", "b"]) == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}},
    ]}
    assert batch_embed_body("models/m", ["a"])["requests"][0]["model"] == "models/m"


@pytest.mark.parametrize("texts", ["abc", [], ["x"] * (EMBED_BATCH_LIMIT + 1), ["a", 1]])
def test_batch_embed_body_refuses_bad_texts(texts: Any) -> None:
    """A bare string, no texts, more than the batch limit or a non-string is a UsageError."""
    with pytest.raises(UsageError, match="texts"):
        batch_embed_body("m", texts)


def test_estimate_tokens_counts_every_text() -> None:
    """The estimate is a quarter of all text characters, rounded up, system instruction included."""
    assert estimate_tokens(generate_body("x" * 9, system_instruction="y" * 4)) == 4
    assert estimate_tokens(batch_embed_body("m", ["abcd", "abcd"])) == 2
    assert estimate_tokens(generate_body("")) == 1
    assert estimate_tokens({}) == 1


# ---------------------------------------------------------------------------------------------
# Classification: every row of section 2.4, on the fixtures


@attrs.frozen(kw_only=True)
class Case:
    file: str
    status: int
    kind: OutcomeKind
    retry_after: float | None = None
    quota_id: str | None = None
    quota_value: int | None = None
    project: str | None = None
    reason: str | None = None
    google_status: str | None = None
    input_tokens: int | None = None


TPM = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
RPD = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
CASES = [
    Case(file="429_per_minute_tpm.json", status=429, kind=K.RATE_LIMITED_MINUTE, retry_after=26.0,
         quota_id=TPM, quota_value=250000, google_status="RESOURCE_EXHAUSTED"),
    Case(file="429_per_minute_tpm.json", status=429, kind=K.RATE_LIMITED_MINUTE, retry_after=26.0,
         quota_id=TPM, quota_value=250000, input_tokens=250000),
    Case(file="429_per_minute_tpm.json", status=429, kind=K.TOO_LARGE_FOR_QUOTA,
         retry_after=26.0, quota_id=TPM, quota_value=250000, input_tokens=250001),
    Case(file="429_several_violations.json", status=429, kind=K.RATE_LIMITED_DAY,
         retry_after=47.0, quota_id=RPD),
    Case(file="429_several_violations.json", status=429, kind=K.RATE_LIMITED_DAY,
         retry_after=47.0, quota_id=RPD, input_tokens=10**9),
    Case(file="429_daily_cap_2026.json", status=429, kind=K.RATE_LIMITED_DAY, retry_after=39.0,
         quota_id=RPD, quota_value=20),
    Case(file="429_paid_tpm_compact.json", status=429, kind=K.RATE_LIMITED_MINUTE,
         retry_after=47.0, quota_id="GenerateContentPaidTierInputTokensPerModelPerMinute",
         quota_value=4000000),
    Case(file="429_spend_cap_modelled.json", status=429, kind=K.SPEND_LIMITED, retry_after=212.5,
         quota_id="GenerateContentSpendPerBillingAccountPer10Minutes-Tier1", quota_value=10),
    Case(file="429_limit_zero_message.json", status=429, kind=K.QUOTA_ZERO,
         retry_after=11.102306822),
    Case(file="429_no_free_quota_tier.json", status=429, kind=K.QUOTA_ZERO),
    Case(file="429_bare.json", status=429, kind=K.SHARED_CAPACITY,
         google_status="RESOURCE_EXHAUSTED"),
    Case(file="429_bare_2026.json", status=429, kind=K.SHARED_CAPACITY),
    Case(file="list_wrapped_429.json", status=429, kind=K.SHARED_CAPACITY),
    Case(file="400_api_key_invalid.json", status=400, kind=K.KEY_INVALID,
         reason="API_KEY_INVALID", google_status="INVALID_ARGUMENT"),
    Case(file="400_api_key_not_found.json", status=400, kind=K.KEY_INVALID,
         reason="API_KEY_INVALID"),
    Case(file="403_leaked.json", status=403, kind=K.KEY_LEAKED,
         google_status="PERMISSION_DENIED"),
    Case(file="403_service_disabled.json", status=403, kind=K.PROJECT_DISABLED,
         reason="SERVICE_DISABLED", project="411082643095"),
    Case(file="403_unregistered_callers.json", status=403, kind=K.KEY_FORBIDDEN),
    Case(file="401_credentials_missing.json", status=401, kind=K.KEY_FORBIDDEN,
         reason="CREDENTIALS_MISSING", google_status="UNAUTHENTICATED"),
    Case(file="401_access_token_type_unsupported.json", status=401,
         kind=K.KEY_TYPE_UNSUPPORTED, google_status="UNAUTHENTICATED",
         reason="ACCESS_TOKEN_TYPE_UNSUPPORTED"),
    Case(file="403_file_permission.json", status=403, kind=K.REQUEST_ERROR,
         google_status="PERMISSION_DENIED"),
    Case(file="403_project_denied.json", status=403, kind=K.PROJECT_DISABLED),
    Case(file="403_proxy.html", status=403, kind=K.ACCESS_REFUSED),
    Case(file="401_proxy.json", status=401, kind=K.ACCESS_REFUSED),
    Case(file="502_html.html", status=401, kind=K.ACCESS_REFUSED),
    Case(file="400_region.json", status=400, kind=K.KEY_FORBIDDEN,
         google_status="FAILED_PRECONDITION"),
    Case(file="400_token_count.json", status=400, kind=K.REQUEST_ERROR),
    Case(file="400_invalid_argument.json", status=400, kind=K.REQUEST_ERROR),
    Case(file="400_batch_limit.json", status=400, kind=K.REQUEST_ERROR),
    Case(file="404_model.json", status=404, kind=K.MODEL_NOT_FOUND, google_status="NOT_FOUND"),
    Case(file="500_internal.json", status=500, kind=K.SERVER_ERROR, google_status="INTERNAL"),
    Case(file="503_overloaded.json", status=503, kind=K.OVERLOADED, google_status="UNAVAILABLE"),
    Case(file="503_high_demand.json", status=503, kind=K.OVERLOADED),
    Case(file="504_deadline.json", status=504, kind=K.TIMEOUT, google_status="DEADLINE_EXCEEDED"),
    Case(file="502_html.html", status=502, kind=K.SERVER_ERROR),
    Case(file="200_truncated.txt", status=200, kind=K.BAD_RESPONSE),
    Case(file="200_blocked_prompt.json", status=200, kind=K.BLOCKED),
    Case(file="200_safety_finish.json", status=200, kind=K.BLOCKED),
    Case(file="200_empty.json", status=200, kind=K.EMPTY),
    Case(file="200_thought_only.json", status=200, kind=K.EMPTY),
    Case(file="200_success.json", status=200, kind=K.SUCCESS),
    # An error object inside a 200 is classified by its inner code.
    Case(file="503_overloaded.json", status=200, kind=K.OVERLOADED, google_status="UNAVAILABLE"),
    Case(file="list_wrapped_429.json", status=200, kind=K.SHARED_CAPACITY),
    Case(file="400_api_key_invalid.json", status=200, kind=K.KEY_INVALID,
         reason="API_KEY_INVALID"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.status}-{c.file}-{c.input_tokens}")
def test_classify_fixture(case: Case) -> None:
    """Each recorded body is classified as section 2.4 says, with its retry delay and quota."""
    result = classify(case.status, body(case.file), input_tokens=case.input_tokens)
    assert result.outcome.kind is case.kind
    assert result.outcome.retry_after == case.retry_after
    assert result.quota_id == case.quota_id
    assert result.quota_value == case.quota_value
    assert result.project == case.project
    assert result.reason == case.reason
    if case.google_status is not None:
        assert result.google_status == case.google_status
    if case.kind is not K.SUCCESS:
        assert result.message
    if case.status == 200 and case.kind not in (K.BAD_RESPONSE, K.SUCCESS, K.BLOCKED, K.EMPTY):
        assert result.status == error_json(case.file)["error"]["code"]
    else:
        assert result.status == case.status


def test_every_outcome_from_a_response_is_covered() -> None:
    """The fixture table reaches every kind a response can produce."""
    not_from_responses = {K.CONNECTION_ERROR}
    assert {case.kind for case in CASES} | not_from_responses == set(K)


def test_an_unsupported_key_type_says_what_to_do() -> None:
    """Google's 401 for a key type it no longer takes reads like an OAuth problem; the message
    keysched keeps says the key was disabled and a new key (not OAuth) is the fix.  The same
    text without an ErrorInfo reason is read the same way (keysched always sends an API key)."""
    for raw in (body("401_access_token_type_unsupported.json"),
                json.dumps({"error": {k: v for k, v in error_json(
                    "401_access_token_type_unsupported.json")["error"].items()
                    if k != "details"}}).encode()):
        result = classify(401, raw)
        assert result.outcome.kind is K.KEY_TYPE_UNSUPPORTED
        assert result.message is not None
        assert result.message.startswith("Request had invalid authentication credentials.")
        assert "new key" in result.message
        assert "AQ." in result.message
    # A key kind a method refuses (CREDENTIALS_MISSING) stays a forbidden key.
    assert classify(401, body("401_credentials_missing.json")).outcome.kind is K.KEY_FORBIDDEN


def test_success_reads_text_and_usage() -> None:
    """A success carries the first candidate's text, finish reason and token counts."""
    result = classify(200, body("200_success.json"))
    assert result.text == "AI learns patterns from data to make decisions or predictions."
    assert result.finish_reason == "STOP"
    assert result.usage == Usage(prompt_tokens=8, output_tokens=11, thoughts_tokens=829,
                                 total_tokens=848)
    assert (result.outcome.input_tokens, result.outcome.output_tokens) == (8, 11)
    assert result.message is None
    assert result.json == json.loads(body("200_success.json"))


def test_blocked_reports_why() -> None:
    """A blocked prompt names its block reason; a safety finish names its finish reason."""
    assert classify(200, body("200_blocked_prompt.json")).block_reason == "SAFETY"
    finished = classify(200, body("200_safety_finish.json"))
    assert (finished.finish_reason, finished.block_reason) == ("SAFETY", None)
    assert finished.outcome.input_tokens == 12


@pytest.mark.parametrize("reason", sorted(SAFETY_FINISH_REASONS))
def test_every_safety_finish_reason_is_blocked(reason: str) -> None:
    """Every finish reason of the safety set makes a 200 BLOCKED, even with text."""
    answer = {"candidates": [{"content": {"parts": [{"text": "partial"}]},
                              "finishReason": reason}]}
    assert classify(200, json.dumps(answer).encode()).outcome.kind is K.BLOCKED


@pytest.mark.parametrize(("candidate", "kind"), [
    ({"content": {"parts": [{"text": ""}]}, "finishReason": "STOP"}, K.EMPTY),
    ({"finishReason": "STOP"}, K.EMPTY),
    ({"content": {"parts": []}, "finishReason": "MAX_TOKENS"}, K.SUCCESS),
    ({"content": {"parts": [{"text": "t", "thought": True}]}, "finishReason": "MAX_TOKENS"},
     K.SUCCESS),
    ({"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]},
      "finishReason": "STOP"}, K.SUCCESS),
    ({"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]},
      "finishReason": "STOP"}, K.SUCCESS),
    ({"content": {"parts": [{"text": "a", "thought": True}, {"text": "b"}]}}, K.SUCCESS),
])
def test_empty_means_no_content(candidate: dict[str, Any], kind: OutcomeKind) -> None:
    """No text and no other content is EMPTY unless the model ran out of output tokens."""
    result = classify(200, json.dumps({"candidates": [candidate]}).encode())
    assert result.outcome.kind is kind


def test_thoughts_are_not_text() -> None:
    """Thought parts are left out of the text."""
    answer = {"candidates": [{"content": {"parts": [
        {"text": "hmm", "thought": True}, {"text": "Hello"}, {"text": " world"}]}}]}
    assert classify(200, json.dumps(answer).encode()).text == "Hello world"


def test_empty_can_be_success() -> None:
    """With empty_is_error=False an empty answer is a SUCCESS with no text."""
    result = classify(200, body("200_empty.json"), empty_is_error=False)
    assert (result.outcome.kind, result.text, result.message) == (K.SUCCESS, "", None)


@pytest.mark.parametrize(("status", "kind"), [
    (408, K.TIMEOUT), (499, K.TIMEOUT), (504, K.TIMEOUT), (413, K.REQUEST_ERROR),
    (400, K.REQUEST_ERROR), (401, K.ACCESS_REFUSED), (403, K.ACCESS_REFUSED),
    (404, K.MODEL_NOT_FOUND), (429, K.SHARED_CAPACITY), (500, K.SERVER_ERROR),
    (502, K.SERVER_ERROR), (503, K.OVERLOADED), (507, K.SERVER_ERROR), (599, K.SERVER_ERROR),
    (418, K.REQUEST_ERROR), (302, K.REQUEST_ERROR), (100, K.REQUEST_ERROR),
])
def test_status_alone(status: int, kind: OutcomeKind) -> None:
    """Without a Google error body the HTTP status decides."""
    result = classify(status, b"")
    assert (result.outcome.kind, result.status, result.google_status) == (kind, status, None)
    assert result.message == f"HTTP {status} without a Google error object (0 bytes)"


@pytest.mark.parametrize("raw", [b"", b"[]", b"[1, 2]", b'"text"', b"null", b"42", b"<html>",
                                 b'{"error": "denied"}', b'{"error": null}', b"\xff\xfe\x00"])
def test_unreadable_200_is_bad_response(raw: bytes) -> None:
    """A 200 whose body is not a JSON object, or holds a malformed error, is BAD_RESPONSE."""
    assert classify(200, raw).outcome.kind is K.BAD_RESPONSE


def test_error_inside_200_without_a_usable_code() -> None:
    """An error inside a 200 falls back to its status string, then to a server error."""
    by_status = {"error": {"code": 200, "status": "RESOURCE_EXHAUSTED", "message": "x"}}
    result = classify(200, json.dumps(by_status).encode())
    assert (result.outcome.kind, result.status) == (K.SHARED_CAPACITY, 429)
    result = classify(200, b'{"error": {}}')
    assert (result.outcome.kind, result.status) == (K.SERVER_ERROR, 500)


def test_404_for_a_file_is_a_request_error() -> None:
    """A 404 about a referenced file blames the request, not the model."""
    missing = {"error": {"code": 404, "status": "NOT_FOUND",
                         "message": "File files/abc123 was not found."}}
    assert classify(404, json.dumps(missing).encode()).outcome.kind is K.REQUEST_ERROR


def test_quota_zero_from_quota_value() -> None:
    """A violation with quotaValue "0" is QUOTA_ZERO and names that violation."""
    error = error_json("429_daily_cap_2026.json")
    error["error"]["details"][1]["violations"][0]["quotaValue"] = "0"
    error["error"]["message"] = "You exceeded your current quota."
    result = classify(429, json.dumps(error).encode())
    assert (result.outcome.kind, result.quota_id, result.quota_value) == (K.QUOTA_ZERO, RPD, 0)


def test_limit_zero_is_not_limit_twenty() -> None:
    """Only "limit: 0" itself marks a zero quota, not "limit: 0.5" or "limit: 05"."""
    for message in ("limit: 05, model", "limit: 0.5", "nolimit: 20"):
        error = {"error": {"code": 429, "message": message}}
        assert classify(429, json.dumps(error).encode()).outcome.kind is K.SHARED_CAPACITY


def test_violation_without_minute_day_or_spend_is_per_minute() -> None:
    """A quota that is neither per minute, per day nor spend benches the group like a minute
    quota, and teaches nothing."""
    error = {"error": {"code": 429, "details": [{
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaId": "GenerateRequestsPerHourPerProject", "quotaValue": "7"}]}]}}
    result = classify(429, json.dumps(error).encode())
    assert (result.outcome.kind, result.quota_id) == (K.RATE_LIMITED_MINUTE,
                                                      "GenerateRequestsPerHourPerProject")
    assert result.outcome.violations == ()


def test_a_429_reports_every_violation_it_names_with_usable_values() -> None:
    """Every violation with a known dimension reaches the outcome; values the core may learn
    from are kept, the rest (absent, zero, absurd, non-numeric, negative) are None."""
    three = classify(429, body("429_several_violations.json")).outcome.violations
    assert [(v.dimension, v.value) for v in three] == [
        (QuotaDimension.REQUESTS_PER_DAY, None), (QuotaDimension.REQUESTS_PER_MINUTE, None),
        (QuotaDimension.TOKENS_PER_MINUTE, None)]
    assert classify(429, body("429_daily_cap_2026.json")).outcome.violations == (
        Violation(QuotaDimension.REQUESTS_PER_DAY, 20, RPD),)
    assert classify(429, body("429_spend_cap_modelled.json")).outcome.violations[0][:2] == (
        QuotaDimension.SPEND, 10)
    for raw, learned in [("5", 5), ("1000000000", 10**9), ("1000000000000", None), ("0", None),
                         ("-5", None), ("five", None), ("2.5", None), (5, 5), (None, None)]:
        error = {"error": {"code": 429, "details": [{
            "@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                 "quotaValue": raw}]}]}}
        [violation] = classify(429, json.dumps(error).encode()).outcome.violations
        assert violation.value == learned, raw


def test_details_are_found_in_any_order() -> None:
    """Reversing the details list changes nothing."""
    error = error_json("429_daily_cap_2026.json")
    error["error"]["details"].reverse()
    reversed_ = classify(429, json.dumps(error).encode())
    original = classify(429, body("429_daily_cap_2026.json"))
    assert reversed_._replace(json=None) == original._replace(json=None)


# ---------------------------------------------------------------------------------------------
# Retry delays


@pytest.mark.parametrize(("delay", "seconds"), [
    ("22s", 22.0), ("34.4s", 34.4), ("38.601s", 38.601), ("45.837906927s", 45.837906927),
    ("55.846891726s", 55.846891726), ("0s", 0.0), ("500ms", 0.5), ("1.5ms", 0.0015),
    ("26", None), ("-3s", None), ("1e3s", None), ("PT26S", None), ("9" * 400 + "s", None),
])
def test_retry_delay_format(delay: str, seconds: float | None) -> None:
    """RetryInfo.retryDelay is read as ^digits(.digits)?(s|ms)$ and nothing else."""
    error = {"error": {"code": 429, "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}}
    assert classify(429, json.dumps(error).encode()).outcome.retry_after == seconds


def test_retry_delay_falls_back_to_the_message() -> None:
    """Without RetryInfo, the "Please retry in" text gives the delay."""
    error = error_json("429_daily_cap_2026.json")
    del error["error"]["details"][2]
    assert classify(429, json.dumps(error).encode()).outcome.retry_after == 39.006833842
    bare = {"error": {"code": 429, "message": "Resource exhausted. Please retry in 250ms."}}
    result = classify(429, json.dumps(bare).encode())
    assert (result.outcome.kind, result.outcome.retry_after) == (K.SHARED_CAPACITY, 0.25)


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": "7"}, 7.0), ({"retry-after": " 12 "}, 12.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None), ({"Retry-After": "-1"}, None),
    ({"Other": "7"}, None), (None, None),
])
def test_retry_after_header(headers: dict[str, str] | None, seconds: float | None) -> None:
    """A Retry-After header in seconds is honoured, case-insensitively; an HTTP-date is not."""
    result = classify(503, body("503_overloaded.json"), headers)
    assert result.outcome.retry_after == seconds


def test_retry_info_beats_the_header_and_the_header_beats_the_message() -> None:
    """RetryInfo is the most precise hint, then Retry-After, then the message text."""
    assert classify(429, body("429_daily_cap_2026.json"),
                    {"Retry-After": "5"}).outcome.retry_after == 39.0
    message_only = {"error": {"code": 429, "message": "Please retry in 3s."}}
    assert classify(429, json.dumps(message_only).encode(),
                    {"Retry-After": "5"}).outcome.retry_after == 5.0


# ---------------------------------------------------------------------------------------------
# countTokens and batchEmbedContents


def test_count_tokens_answer() -> None:
    """A countTokens answer yields its totalTokens."""
    classified, total = classify_json_response(200, b'{"totalTokens": 31}',
                                               parse=parse_count_tokens)
    assert (classified.outcome.kind, total) == (K.SUCCESS, 31)


def test_embeddings_answer() -> None:
    """A batchEmbedContents answer yields one float vector per embedding, in order."""
    answer = b'{"embeddings": [{"values": [0.5, -1, 2e-3]}, {"values": []}]}'
    classified, vectors = classify_json_response(200, answer, parse=parse_embeddings)
    assert (classified.outcome.kind, vectors) == (K.SUCCESS, [[0.5, -1.0, 0.002], []])


@pytest.mark.parametrize("answer", [b'{"totalTokens": "x"}', b"{}", b'{"totalTokens": -1}',
                                    b'{"totalTokens": true}', b"[]", b"nope"])
def test_malformed_count_tokens_is_bad_response(answer: bytes) -> None:
    """A countTokens body of the wrong shape is BAD_RESPONSE with no value."""
    classified, total = classify_json_response(200, answer, parse=parse_count_tokens)
    assert (classified.outcome.kind, total) == (K.BAD_RESPONSE, None)


@pytest.mark.parametrize("answer", [{}, {"embeddings": {}}, {"embeddings": [{}]},
                                    {"embeddings": [{"values": ["1"]}]},
                                    {"embeddings": [{"values": [True]}]}, [1]])
def test_malformed_embeddings_are_none(answer: Any) -> None:
    """parse_embeddings returns None for any body of the wrong shape."""
    assert parse_embeddings(answer) is None


def test_json_response_errors_are_classified_like_generate() -> None:
    """An error answer to countTokens is classified exactly as for generateContent."""
    classified, value = classify_json_response(429, body("429_per_minute_tpm.json"),
                                               parse=parse_count_tokens)
    assert value is None
    assert classified == classify(429, body("429_per_minute_tpm.json"))


# ---------------------------------------------------------------------------------------------
# Stream chunks


def test_classify_chunk() -> None:
    """A chunk is BLOCKED on a safety finish, SUCCESS otherwise, even with no text."""
    assert classify_chunk({"candidates": [{"finishReason": "SAFETY"}]}).outcome.kind is K.BLOCKED
    assert classify_chunk({"candidates": [{"finishReason": "STOP"}]}).outcome.kind is K.SUCCESS
    assert classify_chunk([1]).outcome.kind is K.BAD_RESPONSE
    assert classify_chunk({"error": 3}).outcome.kind is K.BAD_RESPONSE
    inner = classify_chunk(error_json("503_overloaded.json"))
    assert (inner.outcome.kind, inner.status) == (K.OVERLOADED, 503)


# ---------------------------------------------------------------------------------------------
# Properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
# Values shaped like Google errors, so that the properties reach the interesting branches.
detail_types = st.sampled_from(["QuotaFailure", "RetryInfo", "ErrorInfo", "Help", "Other"]).map(
    lambda name: f"type.googleapis.com/google.rpc.{name}")
violations = st.fixed_dictionaries({}, optional={
    "quotaId": st.sampled_from([TPM, RPD, "GenerateRequestsPerMinutePerProjectPerModel", "x"])
    | st.text(max_size=8) | json_values,
    "quotaValue": st.sampled_from(["0", "20", "250000"]) | st.integers() | json_values,
})
details = st.fixed_dictionaries({"@type": detail_types | json_values}, optional={
    "violations": st.lists(violations, max_size=3) | json_values,
    "retryDelay": st.sampled_from(["26s", "0.5s", "900ms", "-1s", ""]) | json_values,
    "reason": st.sampled_from(["API_KEY_INVALID", "SERVICE_DISABLED", "CREDENTIALS_MISSING",
                               "RATE_LIMIT_EXCEEDED"]) | json_values,
    "metadata": st.fixed_dictionaries({"consumer": st.text(max_size=20)}) | json_values,
})
errors = st.fixed_dictionaries({}, optional={
    "code": st.integers(100, 599) | json_values,
    "status": st.sampled_from(["RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "UNAVAILABLE"])
    | json_values,
    "message": st.sampled_from(["limit: 0", "Please retry in 3.5s", "reported as leaked",
                                "API key not valid"]) | st.text() | json_values,
    "details": st.lists(details, max_size=4) | json_values,
}).map(lambda error: {"error": error})
bodies = st.one_of(
    st.binary(),
    json_values.map(lambda v: json.dumps(v).encode()),
    errors.map(lambda v: json.dumps(v).encode()),
    errors.map(lambda v: json.dumps([v]).encode()),
)
header_maps = st.none() | st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "x"]) | st.text(max_size=5),
    st.text(max_size=12) | st.integers(0, 10**400).map(str), max_size=3)
KEY_OR_PROJECT = {K.KEY_INVALID, K.KEY_LEAKED, K.KEY_FORBIDDEN, K.KEY_TYPE_UNSUPPORTED,
                  K.PROJECT_DISABLED, K.ACCESS_REFUSED}


@given(status=st.integers(100, 599), raw=bodies, headers=header_maps,
       input_tokens=st.none() | st.integers(0, 10**7), empty_is_error=st.booleans())
def test_classify_never_raises_and_keeps_its_invariants(
        status: int, raw: bytes, headers: dict[str, str] | None, input_tokens: int | None,
        empty_is_error: bool) -> None:
    """Any bytes, JSON and headers classify without raising, to a consistent result."""
    result = classify(status, raw, headers, input_tokens=input_tokens,
                      empty_is_error=empty_is_error)
    assert isinstance(result, Classified)
    retry_after = result.outcome.retry_after
    assert retry_after is None or (math.isfinite(retry_after) and retry_after >= 0)
    assert 100 <= result.status <= 599
    if result.outcome.kind is not K.SUCCESS:
        assert result.message


@given(status=st.integers(200, 299), error=errors, wrap=st.booleans())
def test_an_error_in_a_2xx_body_is_never_success(status: int, error: dict[str, Any],
                                                 wrap: bool) -> None:
    """A 2xx body that parses as an error object is never classified as SUCCESS."""
    raw = json.dumps([error] if wrap else error).encode()
    assert classify(status, raw).outcome.kind not in (K.SUCCESS, K.BLOCKED, K.EMPTY)


@given(status=st.integers(400, 499).filter(lambda s: s != 429), raw=bodies,
       input_tokens=st.none() | st.integers(0, 10**7))
def test_a_4xx_moves_to_another_key_only_for_key_or_project_reasons(
        status: int, raw: bytes, input_tokens: int | None) -> None:
    """A 4xx other than 429 is retried on another key only when the key or project is at fault."""
    kind = classify(status, raw, input_tokens=input_tokens).outcome.kind
    if DEFAULT_ACTIONS[kind].next is Next.RETRY_NOW:
        assert kind in KEY_OR_PROJECT


@given(raw=bodies, input_tokens=st.none() | st.integers(0, 10**7))
def test_a_429_never_blames_the_key(raw: bytes, input_tokens: int | None) -> None:
    """A 429 is about quota or capacity, never a reason to disable a key or project."""
    kind = classify(429, raw, input_tokens=input_tokens).outcome.kind
    assert kind in {K.RATE_LIMITED_MINUTE, K.RATE_LIMITED_DAY, K.QUOTA_ZERO,
                    K.TOO_LARGE_FOR_QUOTA, K.SHARED_CAPACITY}


@given(value=json_values)
def test_parsers_never_raise(value: Any) -> None:
    """The countTokens and embeddings parsers return a value or None for any JSON."""
    total = parse_count_tokens(value)
    assert total is None or total >= 0
    vectors = parse_embeddings(value)
    assert vectors is None or all(isinstance(x, float) for v in vectors for x in v)


# Bodies shaped like answers (mostly plain ones, with every oddity the fast path must refuse).
parts = st.fixed_dictionaries({"text": st.sampled_from(["", "ok", "two words"])}, optional={
    "thought": st.booleans() | json_values,
}) | st.fixed_dictionaries({}, optional={
    "text": json_values, "thought": json_values,
    "functionCall": st.fixed_dictionaries({"name": st.just("f")}) | json_values,
    "inlineData": st.fixed_dictionaries({"data": st.just("AAAA")}) | json_values,
}) | json_values
candidates = st.fixed_dictionaries({
    "content": st.fixed_dictionaries({"parts": st.lists(parts, max_size=3) | json_values},
                                     optional={"role": st.just("model")}) | json_values,
}, optional={
    "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", ""])
    | json_values,
    "index": st.just(0),
}) | json_values
counts = st.integers(-2, 10**6) | st.sampled_from(["12", "x"]) | json_values
answers = st.fixed_dictionaries({
    "candidates": st.lists(candidates, max_size=2) | json_values,
}, optional={
    "usageMetadata": st.fixed_dictionaries({}, optional={
        "promptTokenCount": counts, "candidatesTokenCount": counts,
        "thoughtsTokenCount": counts, "totalTokenCount": counts}) | json_values,
    "promptFeedback": st.fixed_dictionaries({}, optional={
        "blockReason": st.sampled_from(["SAFETY", ""]) | json_values}) | json_values,
    "modelVersion": st.just("gemini-2.5-flash"),
    "error": json_values,
})
plain_parts = st.fixed_dictionaries({"text": st.sampled_from(["", "ok", "two words"])},
                                    optional={"thought": st.booleans()})
plain_answers = st.fixed_dictionaries({
    "candidates": st.lists(st.fixed_dictionaries(
        {"content": st.fixed_dictionaries({"parts": st.lists(plain_parts, max_size=3)})},
        optional={"finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY"])}),
        min_size=1, max_size=2),
}, optional={
    "usageMetadata": st.fixed_dictionaries({}, optional={
        "promptTokenCount": counts, "candidatesTokenCount": counts,
        "thoughtsTokenCount": counts, "totalTokenCount": counts}),
})


@given(status=st.integers(200, 299), answer=plain_answers | answers, wrap=st.booleans(),
       input_tokens=st.none() | st.integers(0, 10**7), empty_is_error=st.booleans())
def test_the_plain_answer_shortcut_agrees_with_the_full_rules(
        status: int, answer: dict[str, Any], wrap: bool, input_tokens: int | None,
        empty_is_error: bool) -> None:
    """`classify` and `classify_chunk` take a one-pass shortcut for a plain answer: whenever it
    applies, it gives exactly what the full rules give."""
    from keysched import _wire

    raw = json.dumps([answer] if wrap else answer).encode()
    shortcut = _wire._plain_answer(status, answer)
    if shortcut is not None:
        full = _wire._classify_answer(status, answer, empty_is_error=empty_is_error)
        assert shortcut == full
        assert shortcut.outcome.kind is K.SUCCESS
        assert classify_chunk(answer) == _wire._classify_answer(
            200, answer, empty_is_error=False, require_content=False)
    result = classify(status, raw, {"retry-after": "3"}, input_tokens=input_tokens,
                      empty_is_error=empty_is_error)
    if isinstance(answer, dict) and "error" not in answer:
        assert result == _wire._classify_answer(status, answer, empty_is_error=empty_is_error)


def test_the_plain_answer_shortcut_takes_the_common_answer() -> None:
    """The benchmark's answer (text, finish reason and usage) goes through the shortcut."""
    from keysched import _wire

    answer = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking", "thought": True}, {"text": "o"}, {"text": "k"}]},
        "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3,
                                                      "candidatesTokenCount": 1}}
    result = _wire._plain_answer(200, answer)
    assert result is not None
    assert (result.text, result.finish_reason, result.usage) == (
        "ok", "STOP", Usage(prompt_tokens=3, output_tokens=1))
    assert (result.outcome.input_tokens, result.outcome.output_tokens) == (3, 1)
    assert result == classify(200, json.dumps(answer).encode())


def _parse_with_loads(raw: bytes) -> tuple[bool, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError, TypeError):
        return False, None
    return True, value[0] if isinstance(value, list) and len(value) == 1 else value


object_bodies = st.one_of(
    st.binary().map(lambda b: b"{" + b),
    json_values.map(lambda v: json.dumps({"v": v}, ensure_ascii=False).encode()),
    # what may follow an object: JSON whitespace, other whitespace, more data
    st.tuples(json_values, st.one_of(st.text(alphabet=" \t\n\r\x0b\x0c\xa0\u2028"),
                                     st.text(alphabet=" \nx}{0\""))).map(
        lambda pair: (json.dumps({"v": pair[0]}) + pair[1]).encode()),
    st.binary())


@given(raw=object_bodies)
def test_json_bodies_parse_as_json_loads_parses_them(raw: bytes) -> None:
    """The rules' parser reads exactly what `json.loads` reads, a one-element list unwrapped."""
    from keysched import _wire

    assert repr(_wire._parse_json(raw)) == repr(_parse_with_loads(raw))


@given(raw=object_bodies)
def test_the_object_scan_reads_what_json_loads_reads(raw: bytes) -> None:
    """The fast path's scan of an object body (a speed trick) reads what `json.loads` reads,
    and reads nothing when `json.loads` would not give an object."""
    from keysched import _wire

    scanned = _wire._scan_object(raw)
    if scanned is not None:
        assert repr((True, scanned)) == repr(_parse_with_loads(raw))


def test_the_object_scan_reads_the_benchmark_answer() -> None:
    """The benchmark's body (indented, so whitespace inside and none after) takes the scan."""
    from benchmarks.bench_client import BODY
    from keysched import _wire

    assert _wire._scan_object(BODY) == json.loads(BODY)
    assert _wire._scan_object(BODY + b"\n ") == json.loads(BODY)
    assert _wire._scan_object(BODY + b"x") is None


answer_bodies = st.one_of(
    bodies,
    (plain_answers | answers).map(lambda answer: json.dumps(answer).encode()),
    (plain_answers | answers).map(lambda answer: json.dumps(answer, indent=2).encode()),
    (plain_answers | answers).map(lambda answer: json.dumps([answer]).encode()),
)


@given(status=st.sampled_from([200, 200, 204, 429, 500]) | st.integers(100, 599),
       raw=answer_bodies, headers=header_maps, input_tokens=st.none() | st.integers(0, 10**7),
       empty_is_error=st.booleans())
def test_classify_with_its_fast_path_gives_what_the_rules_give(
        status: int, raw: bytes, headers: dict[str, str] | None, input_tokens: int | None,
        empty_is_error: bool) -> None:
    """`classify` (the scan and the plain-answer fast path first) equals the readable rules
    alone (`_classify`: `json.loads`, then the full classification), for any body."""
    from keysched import _wire

    fast = classify(status, raw, headers, input_tokens=input_tokens,
                    empty_is_error=empty_is_error)
    rules = _wire._classify(status, raw, headers, input_tokens=input_tokens,
                            empty_is_error=empty_is_error, answer=True)
    assert repr(fast) == repr(rules)


@given(value=json_values | st.integers() | st.booleans())
def test_the_fast_count_reads_what_the_rules_read(value: Any) -> None:
    """The fast path's `_count` gives `_int`'s answer for any JSON value."""
    from keysched import _wire

    assert _wire._count(value) == _wire._int(value)
