"""The Gemini wire format: build requests, classify responses (pure: bytes and JSON in, values out).

Theory of operation: the HTTP driver asks this module for a URL, headers and a JSON body, sends
them, and hands the status, the raw body bytes and the headers back to `classify`, which returns a
`Classified`: the `Outcome` the core schedules on, plus everything a caller or an error message
may want (Google's status and message, the quota that was hit, the text and usage of an answer).
Nothing here performs I/O, reads a clock, logs or draws random numbers, and `classify` never
raises, whatever bytes it is given: a body it cannot make sense of is an outcome
(`BAD_RESPONSE`, or a kind chosen from the HTTP status alone), not an exception.

The classification follows section 2.4 of ``reference/gemini-api.md``. Decisions taken where the
reference is silent:

- ``details`` entries are found by the last segment of ``@type``, in any order; every
  ``QuotaFailure`` violation of the body counts, not just those of the first entry.
- A 429 is read in this order: ``limit: 0`` (``QUOTA_ZERO``, permanent, so it beats everything),
  then any ``PerDay`` violation (``RATE_LIMITED_DAY``: the group is dead until midnight, whatever
  else the body says), then an ``InputTokens`` violation whose ``quotaValue`` is smaller than the
  request's own ``input_tokens`` (``TOO_LARGE_FOR_QUOTA``), then a spend violation
  (``SPEND_LIMITED``: any ``quotaId`` that says "Spend"; Google has not documented the body), then
  ``RATE_LIMITED_MINUTE``. A 429 with violations whose ``quotaId`` names neither a minute, a day
  nor spend is treated as per-minute: benching the group briefly is the cautious reading. A 429
  without violations is ``SHARED_CAPACITY``, even when ``ErrorInfo`` says ``RATE_LIMIT_EXCEEDED``.
- Every violation whose ``quotaId`` names a dimension (`keysched._outcomes.dimension_of`) goes
  into ``Outcome.violations`` with its ``quotaValue``: the core learns limits from them.  A value
  that is absent, not a decimal count, zero (``limit: 0`` has its own kind) or above 10^9 (no
  real quota is that large; a hostile one must not make a budget) is passed on as None.
- The retry delay comes from ``RetryInfo.retryDelay``, else a ``Retry-After`` header (delta
  seconds; an HTTP-date is ignored because turning it into a delay needs a clock), else the
  "Please retry in Xs" text. It is recorded for every status, not only 429. A value that is not
  a finite number of seconds is dropped rather than trusted.
- A 404 whose message names a file or a cached content (``files/...``, ``cachedContents/...``)
  is a ``REQUEST_ERROR``: the official table lists missing referenced files as a 404 cause, and
  marking a model unavailable for a caller's bad file reference would be wrong for everyone.
  So is a 403 that says the caller may not access a file or cached content ("You do not have
  permission to access the File ... or it may not exist"): the key is fine.
- A 401 or 403 without a Google error object carrying a ``status`` (an HTML page, a proxy's
  plain JSON) is ``ACCESS_REFUSED``: something in front of Google refused it, and only Google's
  own structured answers may disable a key for good.  A 403 "Your project has been denied
  access" disables the project (``PROJECT_DISABLED``, like ``SERVICE_DISABLED``).  A 401 with
  ``ErrorInfo.reason`` ``ACCESS_TOKEN_TYPE_UNSUPPORTED`` (or, without a reason, Google's
  "Expected OAuth 2 access token" text: keysched always sends an API key) is
  ``KEY_TYPE_UNSUPPORTED``, and its message gets a note that says to make a new key.
- An error object inside a 2xx body is classified by its inner ``code`` (else by its ``status``
  string, else as a 500); ``Classified.status`` then holds that inner code. ``{"error": <not an
  object>}`` in a 2xx body is ``BAD_RESPONSE``.
- An answer "has content" if the first candidate has a non-thought part with non-empty text or a
  ``functionCall``, ``inlineData``, ``fileData``, ``executableCode`` or ``codeExecutionResult``
  (an image answer has no text but is not empty). Only the first candidate is inspected, as the
  text is read from it.
- ``Outcome.output_tokens`` is ``candidatesTokenCount``: thinking tokens are in
  ``Usage.thoughts_tokens``; quotas only count input tokens.
- ``Classified.message`` is Google's ``error.message`` (cut to 2,000 characters) when there is
  one, else a short description written here. It never quotes the request, and never quotes a
  body that is not a Google error (an HTML 502 page is described by its length only).
- countTokens and batchEmbedContents answers go through `classify_json_response` with a parser
  (`parse_count_tokens`, `parse_embeddings`). Parsers return ``None`` for a body of the wrong
  shape and `classify_json_response` turns that into ``BAD_RESPONSE``: no exception crosses
  this layer for anything the server sends.
- One speed trick stays, fenced (section "The fast path" below): a 200 answer of plain text
  is scanned and read in one pass.  The rules (`_classify`) are its readable reference, and
  property tests hold the two equal.
- ``estimate_tokens`` counts the characters of every ``"text"`` string in the body (whatever
  its nesting, so it also covers ``systemInstruction`` and embedding requests); inline images
  and files are not counted.
"""

from __future__ import annotations

import json as _json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from keysched._errors import UsageError
from keysched._outcomes import Outcome, OutcomeKind, Violation, violation_of

__all__ = [
    "API_BASE",
    "EMBED_BATCH_LIMIT",
    "METHODS",
    "SAFETY_FINISH_REASONS",
    "Classified",
    "Usage",
    "batch_embed_body",
    "classify",
    "classify_chunk",
    "classify_json_response",
    "count_tokens_body",
    "endpoint_url",
    "estimate_tokens",
    "generate_body",
    "list_models_url",
    "parse_count_tokens",
    "parse_embeddings",
    "request_headers",
    "tokens_for_chars",
]

API_BASE = "https://generativelanguage.googleapis.com"
EMBED_BATCH_LIMIT = 100
"""The most requests one batchEmbedContents call may carry (a 400 beyond it)."""
METHODS = frozenset({"generateContent", "streamGenerateContent", "countTokens",
                     "batchEmbedContents"})
SAFETY_FINISH_REASONS = frozenset({
    "SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE",
})
"""Finish reasons that mean the model refused: the same verdict on any key, so never retried."""

# Kept by hand rather than read with importlib.metadata, which would read files at import time;
# a test checks it against the installed distribution.
_VERSION = "0.1.0"
_API_VERSION = "v1beta"
_MAX_MESSAGE = 2000
_CONTENT_PART_FIELDS = ("functionCall", "inlineData", "fileData", "executableCode",
                        "codeExecutionResult")
_K = OutcomeKind

# ---------------------------------------------------------------------------------------------
# Requests


def _model_path(model: str) -> str:
    if not isinstance(model, str) or not model.removeprefix("models/").strip():
        raise UsageError(f"model: expected a model name such as 'gemini-2.5-flash', got {model!r}")
    collection, name = "models", model.removeprefix("models/")
    if name.startswith("tunedModels/"):
        collection, name = "tunedModels", name.removeprefix("tunedModels/")
    # Quoting keeps a strange model name from escaping its path segment ("../", "?", "#").
    return f"{collection}/{urllib.parse.quote(name, safe='-._~')}"


def endpoint_url(base_url: str, model: str, method: str) -> str:
    """The URL of a model method; the key never goes in it.

    Args:
        base_url: ``API_BASE`` or a fake server's root; a trailing slash is tolerated.
        model: the model name, with or without the ``models/`` prefix.
        method: one of `METHODS`; ``streamGenerateContent`` gets ``?alt=sse``.

    Raises:
        UsageError: for an unknown method or an empty model name.
    """
    if method not in METHODS:
        raise UsageError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    url = f"{base_url.rstrip('/')}/{_API_VERSION}/{_model_path(model)}:{method}"
    return url + "?alt=sse" if method == "streamGenerateContent" else url


def list_models_url(base_url: str, *, page_size: int | None = None,
                    page_token: str | None = None) -> str:
    """The ListModels URL, with optional paging parameters."""
    query = {k: v for k, v in (("pageSize", page_size), ("pageToken", page_token))
             if v is not None}
    url = f"{base_url.rstrip('/')}/{_API_VERSION}/models"
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


def request_headers(secret: str) -> dict[str, str]:
    """The headers of every call: the key travels in ``x-goog-api-key`` only.

    Raises:
        UsageError: for a key that could not be a header value (the key is never quoted).
    """
    if not isinstance(secret, str) or not secret or not secret.isascii() or any(
            ch.isspace() or not ch.isprintable() for ch in secret):
        raise UsageError("secret: a key must be a non-empty ASCII string without whitespace or "
                         "control characters")
    return {"x-goog-api-key": secret, "content-type": "application/json",
            "user-agent": f"keysched/{_VERSION}"}


def _contents(contents: object) -> list[dict[str, Any]]:
    if isinstance(contents, str):
        return [{"role": "user", "parts": [{"text": contents}]}]
    if isinstance(contents, Mapping) or not isinstance(contents, Sequence) or isinstance(
            contents, bytes | bytearray):
        raise UsageError(f"contents: expected a str or a list of Content dicts, got "
                         f"{type(contents).__name__} (wrap a single Content dict in a list)")
    if not contents:
        raise UsageError("contents: expected at least one turn, got an empty list")
    turns = []
    for index, turn in enumerate(contents):
        parts = turn.get("parts") if isinstance(turn, Mapping) else None
        if not isinstance(parts, Sequence) or isinstance(parts, str) or not all(
                isinstance(part, Mapping) for part in parts):
            raise UsageError(f"contents[{index}]: expected a Content dict with a list of part "
                             f"dicts under 'parts', got {type(turn).__name__}")
        turns.append(dict(turn))
    return turns


def _mapping(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{name}: expected a dict, got {type(value).__name__}")
    return dict(value)


def _mappings(name: str, value: object) -> list[dict[str, Any]]:
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        raise UsageError(f"{name}: expected a list of dicts, got {type(value).__name__}")
    return [_mapping(f"{name}[{index}]", item) for index, item in enumerate(value)]


def generate_body(contents: str | Sequence[Mapping[str, Any]], *,
                  generation_config: Mapping[str, Any] | None = None,
                  system_instruction: str | Mapping[str, Any] | None = None,
                  safety_settings: Sequence[Mapping[str, Any]] | None = None,
                  tools: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON body of generateContent and streamGenerateContent.

    Args:
        contents: a prompt (one user turn) or the REST ``contents`` list, passed through.
        generation_config: the REST ``generationConfig`` (camelCase keys), passed through.
        system_instruction: a string or a REST Content dict.
        safety_settings: the REST ``safetySettings`` list.
        tools: the REST ``tools`` list.

    Raises:
        UsageError: naming the argument whose shape is wrong.
    """
    body: dict[str, Any] = {"contents": _contents(contents)}
    if system_instruction is not None:
        if isinstance(system_instruction, str):
            body["systemInstruction"] = {"parts": [{"text": system_instruction}]}
        else:
            body["systemInstruction"] = _mapping("system_instruction", system_instruction)
    if generation_config is not None:
        body["generationConfig"] = _mapping("generation_config", generation_config)
    if safety_settings is not None:
        body["safetySettings"] = _mappings("safety_settings", safety_settings)
    if tools is not None:
        body["tools"] = _mappings("tools", tools)
    return body


def count_tokens_body(contents: str | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON body of countTokens (same ``contents`` rules as `generate_body`)."""
    return {"contents": _contents(contents)}


def batch_embed_body(model: str, texts: Sequence[str]) -> dict[str, Any]:
    """The JSON body of batchEmbedContents: one request per text, at most `EMBED_BATCH_LIMIT`.

    Raises:
        UsageError: for a bare string, a non-string item, no texts or too many.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise UsageError(f"texts: expected a list of strings, got {type(texts).__name__}")
    if not 1 <= len(texts) <= EMBED_BATCH_LIMIT:
        raise UsageError(f"texts: expected 1 to {EMBED_BATCH_LIMIT} texts per batch, got "
                         f"{len(texts)}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise UsageError(f"texts[{index}]: expected a str, got {type(text).__name__}")
    name = _model_path(model)
    return {"requests": [{"model": name, "content": {"parts": [{"text": text}]}}
                         for text in texts]}


def tokens_for_chars(chars: int) -> int:
    """The input-token estimate of `chars` characters of text: a quarter, rounded up, >= 1."""
    return max(1, -(-chars // 4))


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A cheap input-token estimate for TPM budgeting: text characters / 4, rounded up, >= 1."""
    chars = 0
    stack: list[Any] = [body]
    while stack:  # iterative: a deep body must not hit the recursion limit
        node = stack.pop()
        values = node.values() if isinstance(node, Mapping) else node
        if isinstance(node, Mapping):
            text = node.get("text")
            if isinstance(text, str):
                chars += len(text)
        # Only containers go on the stack: scalars (most of a body) are skipped right here.
        stack.extend(v for v in values if isinstance(v, Mapping | list | tuple))
    return tokens_for_chars(chars)


# ---------------------------------------------------------------------------------------------
# Values read from responses


class Usage(NamedTuple):
    """``usageMetadata`` of an answer (cumulative over a stream); a missing count is None."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    """``candidatesTokenCount``: the answer, thinking excluded."""
    thoughts_tokens: int | None = None
    total_tokens: int | None = None


class Classified(NamedTuple):
    """One response, classified: the core's `Outcome` plus what callers and errors report.

    Attributes:
        outcome: what the core schedules on.
        status: the HTTP status, or the inner ``code`` of an error sent inside a 2xx body.
        google_status: ``error.status`` (``RESOURCE_EXHAUSTED`` ...), if any.
        message: Google's error message, or a description of what was wrong; None on success.
        reason: ``ErrorInfo.reason`` (``API_KEY_INVALID``, ``SERVICE_DISABLED`` ...), if any.
        quota_id: the ``quotaId`` of the violation that decided the kind, if any.
        quota_value: that violation's ``quotaValue``, if it had one.
        project: the project number of a ``SERVICE_DISABLED`` error, if given.
        json: the parsed body (a one-element list unwrapped), or None if it was not JSON.
        text: the text of the first candidate, thoughts excluded.
        finish_reason: the first candidate's ``finishReason``, if any.
        block_reason: ``promptFeedback.blockReason``, if any.
        usage: ``usageMetadata``, if any.
    """

    outcome: Outcome
    status: int
    google_status: str | None = None
    message: str | None = None
    reason: str | None = None
    quota_id: str | None = None
    quota_value: int | None = None
    project: str | None = None
    json: Any = None
    text: str = ""
    finish_reason: str | None = None
    block_reason: str | None = None
    usage: Usage | None = None


def _dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    # quotaValue arrives as a decimal string ("250000"); counts arrive as numbers. Every count
    # the API sends is >= 0, so a negative one is treated as missing.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def _parse_json(body: bytes) -> tuple[bool, Any]:
    """``(True, value)`` for a JSON body, ``(False, None)`` otherwise; never raises."""
    if not isinstance(body, bytes | bytearray):
        return False, None
    try:
        value = _json.loads(body)
    except (ValueError, RecursionError, TypeError):  # ValueError covers decode errors too
        return False, None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # Google wraps errors in a one-element array on some paths
    return True, value


def _usage(response: dict[str, Any]) -> Usage | None:
    meta = _dict(response.get("usageMetadata"))
    if meta is None:
        return None
    return Usage(_int(meta.get("promptTokenCount")), _int(meta.get("candidatesTokenCount")),
                 _int(meta.get("thoughtsTokenCount")), _int(meta.get("totalTokenCount")))


def _first_candidate(response: dict[str, Any]) -> dict[str, Any]:
    """The first candidate of an answer; empty if it has none (or not an object)."""
    candidates = response.get("candidates")
    return _dict(candidates[0] if isinstance(candidates, list) and candidates else None) or {}


def _parts(candidate: dict[str, Any]) -> list[Any] | None:
    """A candidate's ``content.parts``, if it is a list."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else None


def _answer_parts(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-thought parts of the first candidate."""
    parts = _parts(_first_candidate(response))
    if parts is None:
        return []
    return [part for part in parts if isinstance(part, dict) and part.get("thought") is not True]


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(text for part in parts if isinstance(text := part.get("text"), str))


def _has_content(parts: list[dict[str, Any]]) -> bool:
    return any(_str(part.get("text")) or any(part.get(f) for f in _CONTENT_PART_FIELDS)
               for part in parts)


def _finish_reason(response: dict[str, Any]) -> str | None:
    return _str(_first_candidate(response).get("finishReason"))


def _retry_delay(value: object) -> float | None:
    """A protobuf Duration string ("26s", "45.837906927s") or "500ms", in seconds."""
    text = _str(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text.strip(), re.ASCII) if text else None
    return _seconds(match[1], match[2]) if match else None


def _seconds(number: str, unit: str = "s") -> float | None:
    seconds = float(number) / (1000 if unit == "ms" else 1)
    return seconds if math.isfinite(seconds) else None  # "9" * 400 is inf: not a delay


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    try:
        items = list(headers.items())
    except Exception:  # a caller's odd mapping must not make classify raise
        return None
    return next((v for k, v in items if isinstance(k, str) and k.lower() == name
                 and isinstance(v, str)), None)


def _retry_after(error: dict[str, Any], details: dict[str, dict[str, Any]],
                 headers: Mapping[str, str] | None) -> float | None:
    from_body = _retry_delay((details.get("RetryInfo") or {}).get("retryDelay"))
    if from_body is not None:
        return from_body
    header = (_header(headers, "retry-after") or "").strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", header, re.ASCII):
        from_header = _seconds(header)
        if from_header is not None:
            return from_header
    message = _str(error.get("message")) or ""
    match = re.search(r"[Pp]lease retry in (\d+(?:\.\d+)?)(ms|s)\b", message, re.ASCII)
    return _seconds(match[1], match[2]) if match else None


# ---------------------------------------------------------------------------------------------
# Classification


class _Violation(NamedTuple):
    quota_id: str
    value: int | None


class _Verdict(NamedTuple):
    kind: OutcomeKind
    violation: _Violation | None = None


def _details(error: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[_Violation]]:
    """The first detail of each @type (by its last name) and every quota violation."""
    by_type: dict[str, dict[str, Any]] = {}
    violations: list[_Violation] = []
    for detail in _list(error.get("details")):
        if not isinstance(detail, dict):
            continue
        name = (_str(detail.get("@type")) or "").rsplit("/", 1)[-1].removeprefix("google.rpc.")
        by_type.setdefault(name, detail)
        if name == "QuotaFailure":
            for item in _list(detail.get("violations")):
                if isinstance(item, dict):
                    violations.append(_Violation(quota_id=_str(item.get("quotaId")) or "",
                                                 value=_int(item.get("quotaValue"))))
    return by_type, violations


def _learnable(violations: list[_Violation]) -> tuple[Violation, ...]:
    """The violations whose dimension is known, with their values if usable (see above)."""
    found = (violation_of(v.quota_id, v.value) for v in violations)
    return tuple(v for v in found if v is not None)


def _is_day(violation: _Violation, input_tokens: int | None) -> bool:
    return "PerDay" in violation.quota_id


def _is_too_large(violation: _Violation, input_tokens: int | None) -> bool:
    return ("InputTokens" in violation.quota_id and violation.value is not None
            and input_tokens is not None and input_tokens > violation.value)


def _is_spend(violation: _Violation, input_tokens: int | None) -> bool:
    return "spend" in violation.quota_id.lower()


def _is_minute(violation: _Violation, input_tokens: int | None) -> bool:
    return "PerMinute" in violation.quota_id


# How a 429 with violations reads, first match wins (the order of the module docstring): the
# kind, and which violation decides it.  None matching is per-minute, decided by the first.
_RULES_429: tuple[tuple[OutcomeKind, Callable[[_Violation, int | None], bool]], ...] = (
    (_K.RATE_LIMITED_DAY, _is_day),
    (_K.TOO_LARGE_FOR_QUOTA, _is_too_large),
    (_K.SPEND_LIMITED, _is_spend),
    (_K.RATE_LIMITED_MINUTE, _is_minute),
)


def _classify_429(message: str, violations: list[_Violation],
                  input_tokens: int | None) -> _Verdict:
    zero = next((v for v in violations if v.value == 0), None)
    if zero or re.search(r"\blimit: 0(?![\d.])", message) or (
            "doesn't have a free quota tier" in message):
        return _Verdict(kind=_K.QUOTA_ZERO, violation=zero)
    if not violations:
        return _Verdict(kind=_K.SHARED_CAPACITY)
    for kind, matches in _RULES_429:
        found = next((v for v in violations if matches(v, input_tokens)), None)
        if found:
            return _Verdict(kind=kind, violation=found)
    return _Verdict(kind=_K.RATE_LIMITED_MINUTE, violation=violations[0])


def _kind_of_400(google_status: str, lowered: str, reason: str) -> OutcomeKind:
    if reason.startswith("API_KEY_") or "api key not valid" in lowered or (
            "api key not found" in lowered):
        return _K.KEY_INVALID
    if google_status == "FAILED_PRECONDITION" or "location is not supported" in lowered:
        return _K.KEY_FORBIDDEN
    return _K.REQUEST_ERROR


def _kind_of_refusal(status: int, google_status: str, message: str,
                     reason: str) -> OutcomeKind:
    """A 401 or a 403."""
    lowered = message.lower()
    if not google_status:
        # No Google error object (or one without its status): a proxy or load balancer refused
        # the call.  Only Google's own reasons may disable a key for good.
        return _K.ACCESS_REFUSED
    if status == 401:
        unsupported = reason == "ACCESS_TOKEN_TYPE_UNSUPPORTED" or (
            not reason and "expected oauth 2 access token" in lowered)
        return _K.KEY_TYPE_UNSUPPORTED if unsupported else _K.KEY_FORBIDDEN
    if "reported as leaked" in lowered:
        return _K.KEY_LEAKED
    if reason == "SERVICE_DISABLED" or "project has been denied access" in lowered:
        return _K.PROJECT_DISABLED
    if _NAMES_A_RESOURCE.search(message) or "permission to access the file" in lowered or (
            "permission to access the cached" in lowered):
        return _K.REQUEST_ERROR  # the caller's file, not the key
    return _K.KEY_FORBIDDEN


_KIND_OF_STATUS = {404: _K.MODEL_NOT_FOUND, 408: _K.TIMEOUT, 499: _K.TIMEOUT,
                   503: _K.OVERLOADED, 504: _K.TIMEOUT}
"""The statuses whose kind the status alone decides (after the 4xx rules above)."""


def _classify_status(status: int, google_status: str, message: str, reason: str,
                     violations: list[_Violation], input_tokens: int | None) -> _Verdict:
    """The kind of a non-2xx answer (or an error inside a 2xx), from section 2.4."""
    if status == 429:
        return _classify_429(message, violations, input_tokens)
    if status == 400:
        return _Verdict(kind=_kind_of_400(google_status, message.lower(), reason))
    if status in (401, 403):
        return _Verdict(kind=_kind_of_refusal(status, google_status, message, reason))
    if status == 404 and _NAMES_A_RESOURCE.search(message):
        return _Verdict(kind=_K.REQUEST_ERROR)
    kind = _KIND_OF_STATUS.get(status)
    if kind is None:
        kind = _K.SERVER_ERROR if status >= 500 else _K.REQUEST_ERROR
    return _Verdict(kind=kind)


_NAMES_A_RESOURCE = re.compile(r"\b(files|cachedContents)/")
"""A message about one of the caller's files or cached contents, not about the key or model."""
_KEY_TYPE_ADVICE = (
    " (keysched: Google no longer accepts this kind of API key (unrestricted standard keys are "
    "refused since June 2026). The key was disabled; OAuth is not needed: create a new key in "
    "Google AI Studio (new keys start with 'AQ.') and use it instead.)")

_HTTP_OF_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def _inner_code(error: dict[str, Any]) -> int:
    """The status an error object inside a 2xx body stands for."""
    code = _int(error.get("code"))
    if code is not None and 400 <= code <= 599:
        return code
    return _HTTP_OF_STATUS.get(_str(error.get("status")) or "", 500)


def _classify_error(status: int, error: dict[str, Any], parsed: Any,
                    headers: Mapping[str, str] | None, input_tokens: int | None) -> Classified:
    details, violations = _details(error)
    error_info = details.get("ErrorInfo") or {}
    reason = _str(error_info.get("reason"))
    google_status = _str(error.get("status"))
    message = (_str(error.get("message")) or "")[:_MAX_MESSAGE]
    verdict = _classify_status(status, google_status or "", message, reason or "", violations,
                               input_tokens)
    project = None
    if verdict.kind is _K.PROJECT_DISABLED:
        consumer = _str((_dict(error_info.get("metadata")) or {}).get("consumer")) or ""
        project = consumer.removeprefix("projects/") if consumer.startswith("projects/") else None
    retry_after = _retry_after(error, details, headers)
    violation = verdict.violation
    if verdict.kind is _K.KEY_TYPE_UNSUPPORTED:
        message += _KEY_TYPE_ADVICE  # Google's words read like an OAuth problem; say what to do
    learned = _learnable(violations) if status == 429 else ()
    return Classified(
        outcome=Outcome(kind=verdict.kind, retry_after=retry_after, violations=learned),
        status=status,
        google_status=google_status,
        message=message or f"HTTP {status} {google_status or ''}".rstrip(), reason=reason,
        quota_id=(violation.quota_id or None) if violation else None,
        quota_value=violation.value if violation else None, project=project, json=parsed)


def _classify_answer(status: int, response: dict[str, Any], *, empty_is_error: bool,
                     require_content: bool = True) -> Classified:
    """A 2xx GenerateContentResponse: success, blocked or empty."""
    usage = _usage(response)
    finish = _finish_reason(response)
    parts = _answer_parts(response)  # read once: text and emptiness both come from them
    block = _str((_dict(response.get("promptFeedback")) or {}).get("blockReason")) or None
    message: str | None = None
    if block or finish in SAFETY_FINISH_REASONS:
        kind, message = _K.BLOCKED, f"blocked: {block or finish}"
    elif require_content and not _has_content(parts) and (
            not _list(response.get("candidates")) or finish != "MAX_TOKENS"):
        kind = _K.EMPTY if empty_is_error else _K.SUCCESS
        message = "the answer has no content" if empty_is_error else None
    else:
        kind = _K.SUCCESS
    outcome = Outcome(kind=kind, input_tokens=usage.prompt_tokens if usage else None,
                      output_tokens=usage.output_tokens if usage else None)
    return Classified(outcome=outcome, status=status, message=message, json=response,
                      text=_text(parts), finish_reason=finish, block_reason=block,
                      usage=usage)


# The fast path: the one speed trick of this module, fenced.
#
# Target: `benchmarks/bench_client.py`, default `KeyedClient` >= 0.9x raw aiohttp at c=16 and
# c=64, with the 5 ms server that makes the client's own CPU per request decide (it misses
# there, 0.59-0.91x at c=64: see the README's benchmark notes).  Nearly every answer is a 200
# whose body is one JSON object of plain text.  `classify` scans such a body straight into
# its object (`_scan_object`) and reads it in one pass (`_plain_answer`).  Measured with
# `python -m benchmarks.profile_client --mode fake` (three interleaved runs each), keysched's
# own CPU per request was 51-56 us with this path and 64-80 us with the rules alone
# (`_parse_json`, then `_classify_answer`), on a client whose aiohttp costs a few hundred.
# The rules are the readable reference and decide everything else; property tests in
# tests/test_wire.py hold the two equal over generated bodies:
# `test_classify_with_its_fast_path_gives_what_the_rules_give`,
# `test_the_plain_answer_shortcut_agrees_with_the_full_rules` and
# `test_the_object_scan_reads_what_json_loads_reads`.

# The C scanner under `json.loads` (JSONDecoder.__init__ sets it; typeshed leaves it out).
_SCAN: Callable[[str, int], tuple[Any, int]] = _json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _scan_object(body: bytes) -> dict[str, Any] | None:
    """The JSON object `body` holds, if it starts with ``{``; None otherwise; never raises.

    What json.loads does with bytes that start so (UTF-8 by its detection rules, no leading
    whitespace), without the detection, the decoder's two regex matches and its two
    Python-level calls: scan the object, then allow only JSON whitespace after it.
    """
    if body[:1] != b"{" or body[1:2] == b"\0":  # a NUL second byte means UTF-16 or -32
        return None
    try:
        text = body.decode("utf-8", "surrogatepass")
        value: dict[str, Any]
        value, end = _SCAN(text, 0)
    except (ValueError, RecursionError, StopIteration):
        # ValueError covers decode errors too; StopIteration is the scanner's "no value here".
        return None
    if end != len(text) and len(text.rstrip(" \t\n\r")) != end:
        return None  # data after the object
    return value


def _plain_text(parts: Any) -> str:
    """The text of an answer's non-thought parts, "" if none; raises (KeyError, TypeError,
    AttributeError ...) where a part is not an object, which `_plain_answer` catches."""
    if len(parts) == 1:  # most answers: one part, its text
        part = parts[0]
        text = part["text"] if part.get("thought") is not True else None
        return text if text.__class__ is str else ""
    return "".join(text for part in parts
                   if part.get("thought") is not True and (text := part.get("text")).__class__ is str)


def _count(value: Any) -> int | None:
    """What `_int` gives, with the usual count (an int >= 0, or none) taken as it is."""
    return value if value is None or (value.__class__ is int and value >= 0) else _int(value)


def _plain_usage(response: dict[str, Any]) -> Usage | None:
    """What `_usage` gives, read with `_count`."""
    meta = response.get("usageMetadata")
    if meta.__class__ is not dict:
        return None
    return Usage(_count(meta.get("promptTokenCount")), _count(meta.get("candidatesTokenCount")),
                 _count(meta.get("thoughtsTokenCount")), _count(meta.get("totalTokenCount")))


def _plain_answer(status: int, response: Any) -> Classified | None:
    """The common answer, classified in one pass; None for anything else.

    "Common" is a JSON object without ``error`` or ``promptFeedback`` whose first candidate has
    a content with a list of part objects that yields some text, and no safety finish reason:
    always a ``SUCCESS``.  The result is exactly what `_classify_answer` gives for it.
    """
    if response.__class__ is not dict or "error" in response or "promptFeedback" in response:
        return None
    # Indexing instead of checking each type first: JSON has no other containers, so a value of
    # the wrong type raises one of the errors caught below (a str's [0] is a str, whose ["..."]
    # and .get raise too), and the full rules take over.
    try:
        candidate = response["candidates"][0]
        text = _plain_text(candidate["content"]["parts"])
        finish = candidate.get("finishReason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if finish.__class__ is not str:
        finish = None
    if not text or finish in SAFETY_FINISH_REASONS:
        return None
    usage = _plain_usage(response)
    outcome = Outcome(_K.SUCCESS, None, usage.prompt_tokens if usage else None,
                      usage.output_tokens if usage else None)
    # Positionally: outcome, status, then google_status .. project (none on an answer), json,
    # text, finish_reason, block_reason (none without promptFeedback), usage.
    return Classified(outcome, status, None, None, None, None, None, None, response, text,
                      finish, None, usage)


def _bad_response(status: int, why: str, parsed: Any = None) -> Classified:
    return Classified(outcome=Outcome(kind=_K.BAD_RESPONSE), status=status, message=why,
                      json=parsed)


def _classify_2xx(status: int, is_json: bool, parsed: Any, headers: Mapping[str, str] | None, *,
                  input_tokens: int | None, empty_is_error: bool, answer: bool) -> Classified:
    """A 2xx body: an answer (`answer`; else any JSON object is a success), or an error."""
    response = _dict(parsed)
    if response is None:
        what = "not JSON" if not is_json else f"a JSON {type(parsed).__name__}"
        return _bad_response(status, f"HTTP {status} body is {what}, not an object", parsed)
    if "error" in response:
        error = _dict(response["error"])
        if error is None:
            return _bad_response(status, f"HTTP {status} body has a malformed error", parsed)
        return _classify_error(_inner_code(error), error, parsed, headers, input_tokens)
    if not answer:
        return Classified(outcome=Outcome(kind=_K.SUCCESS), status=status, json=parsed)
    return _classify_answer(status, response, empty_is_error=empty_is_error)


def _classify(status: int, body: bytes, headers: Mapping[str, str] | None, *,
              input_tokens: int | None, empty_is_error: bool, answer: bool,
              scanned: dict[str, Any] | None = None) -> Classified:
    """The rules (the readable reference of the fast path), for an answer (`answer`) or another
    JSON response; `scanned` is the body's object when the fast path has read it already (and
    found it is not a plain answer)."""
    is_json, parsed = (True, scanned) if scanned is not None else _parse_json(body)
    if 200 <= status <= 299:
        return _classify_2xx(status, is_json, parsed, headers, input_tokens=input_tokens,
                             empty_is_error=empty_is_error, answer=answer)
    error = _dict((_dict(parsed) or {}).get("error"))
    if error is None:  # an HTML page from a proxy, an empty body: the status alone decides
        size = len(body) if isinstance(body, bytes | bytearray) else 0
        error = {"message": f"HTTP {status} without a Google error object ({size} bytes)"}
    return _classify_error(status, error, parsed, headers, input_tokens)


def classify(status: int, body: bytes, headers: Mapping[str, str] | None = None, *,
             input_tokens: int | None = None, empty_is_error: bool = True) -> Classified:
    """Classify a generateContent response; never raises.

    Args:
        status: the HTTP status.
        body: the raw response body.
        headers: the response headers (only ``Retry-After`` is read), matched case-insensitively.
        input_tokens: the request's input tokens (counted or estimated), to tell a request too
            large for a TPM quota from an exhausted quota.
        empty_is_error: classify a 200 without content as ``EMPTY`` (else ``SUCCESS``).

    Returns:
        The classification; see the module docstring for the rules.
    """
    scanned = _scan_object(body) if status == 200 and isinstance(body, bytes) else None
    plain = _plain_answer(200, scanned) if scanned is not None else None
    if plain is not None:
        return plain
    return _classify(status, body, headers, input_tokens=input_tokens,
                     empty_is_error=empty_is_error, answer=True, scanned=scanned)


_T = TypeVar("_T")


def classify_json_response(status: int, body: bytes, headers: Mapping[str, str] | None = None,
                           *, parse: Callable[[Any], _T | None]) -> tuple[Classified, _T | None]:
    """Classify a countTokens / batchEmbedContents / other JSON response and parse its value.

    Errors are classified exactly as by `classify`. A 2xx JSON object is handed to `parse`; if
    it returns None the body had the wrong shape and the result is ``BAD_RESPONSE``.

    Returns:
        ``(classified, value)``; ``value`` is None unless the outcome is ``SUCCESS``.
    """
    classified = _classify(status, body, headers, input_tokens=None, empty_is_error=False,
                           answer=False)
    if classified.outcome.kind is not _K.SUCCESS:
        return classified, None
    value = parse(classified.json)
    if value is None:
        return _bad_response(status, "the response body does not have the expected fields",
                             classified.json), None
    return classified, value


def parse_count_tokens(json: Any) -> int | None:
    """``totalTokens`` of a countTokens answer, or None if the body lacks it."""
    return _int((_dict(json) or {}).get("totalTokens"))


def parse_embeddings(json: Any) -> list[list[float]] | None:
    """The vectors of a batchEmbedContents answer, in request order, or None if malformed.

    The caller checks that there is one vector per text it sent.
    """
    embeddings = (_dict(json) or {}).get("embeddings")
    if not isinstance(embeddings, list):
        return None
    vectors = []
    for item in embeddings:
        values = (_dict(item) or {}).get("values")
        if not isinstance(values, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in values):
            return None
        vectors.append([float(x) for x in values])
    return vectors


def classify_chunk(json: Any) -> Classified:
    """Classify one parsed stream chunk: ``BLOCKED`` or ``SUCCESS``, never ``EMPTY``.

    Single chunks are often empty (the last one may carry only ``finishReason``), so emptiness
    is for the caller to judge over the whole stream. An error object is classified as by
    `classify`.
    """
    chunk = _dict(json)
    if chunk is None:
        return _bad_response(200, f"a stream chunk is a JSON {type(json).__name__}, not an "
                                  "object", json)
    if "error" in chunk:
        error = _dict(chunk["error"])
        if error is None:
            return _bad_response(200, "a stream chunk has a malformed error", json)
        return _classify_error(_inner_code(error), error, json, None, None)
    return _plain_answer(200, chunk) or _classify_answer(200, chunk, empty_is_error=False,
                                                         require_content=False)
