"""Google's exact response bodies, built only when someone needs the bytes.

The world model decides *what* Google answers (a `Body` plus a few parameters); this module turns
that into the JSON Google would send.  Bodies follow ``reference/gemini-api.md`` section 2.3
verbatim: errors are pretty-printed with 2-space indentation, stream chunks use Google's compact
style (a space after ``:``, none after ``,``), SSE events end in CRLF CRLF, and an error after a
stream has started is a bare pretty-printed object without ``data:``.

Decisions where the reference was silent or offered variants:

- 429 bodies use the 2026 shape: details in the order Help, QuotaFailure, RetryInfo, the message
  carrying "* Quota exceeded for metric: ..., limit: N, model: M" and "Please retry in Xs.".
- ``retryDelay`` and the message both carry the exact time left in the minute window, rounded to
  the nanosecond ("37s", "45.837906927s"); real RetryInfo is sometimes whole seconds, but an exact
  value keeps a client that trusts it from retrying a hair too early.
- Free-tier projects get the ``-FreeTier`` quota ids and ``free_tier`` metrics, paid projects the
  paid ones (``GenerateRequestsPerMinutePerProjectPerModel``, ``generate_requests_per_model``).
- Generated text is filler of about four characters per output token; the response id is a
  stable hash of the seed and the attempt number.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
from typing import Any

from keysched.driver import Violation, violation_of

__all__ = [
    "PROXY_BODIES",
    "Body",
    "error_object",
    "format_duration",
    "pretty",
    "proxy_page",
    "response_id",
    "sse_event",
    "stream_objects",
    "success_object",
]

_TYPE = "type.googleapis.com/google.rpc."
_RATE_DOC = "https://ai.google.dev/gemini-api/docs/rate-limits"
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    f"information on this error, head to: {_RATE_DOC}. To monitor your current usage, head to: "
    "https://ai.dev/rate-limit. ")


class Body(enum.Enum):
    """Which error body Google sends."""

    KEY_INVALID = "key_invalid"
    KEY_LEAKED = "key_leaked"
    SERVICE_DISABLED = "service_disabled"
    UNREGISTERED = "unregistered"
    MODEL_NOT_FOUND = "model_not_found"
    QUOTA_RPM = "quota_rpm"
    QUOTA_TPM = "quota_tpm"
    QUOTA_RPD = "quota_rpd"
    QUOTA_ZERO = "quota_zero"
    BARE_429 = "bare_429"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    BAD_REQUEST = "bad_request"
    KEY_TYPE_UNSUPPORTED = "key_type_unsupported"
    PROJECT_DENIED = "project_denied"
    FILE_DENIED = "file_denied"
    PROXY_401 = "proxy_401"
    """Not Google's: a proxy's bare 401 page (see `proxy_page`)."""
    PROXY_403 = "proxy_403"
    """Not Google's: a proxy's bare 403 page (see `proxy_page`)."""


STATUS: dict[Body, tuple[int, str]] = {
    Body.KEY_INVALID: (400, "INVALID_ARGUMENT"),
    Body.KEY_LEAKED: (403, "PERMISSION_DENIED"),
    Body.SERVICE_DISABLED: (403, "PERMISSION_DENIED"),
    Body.UNREGISTERED: (403, "PERMISSION_DENIED"),
    Body.MODEL_NOT_FOUND: (404, "NOT_FOUND"),
    Body.QUOTA_RPM: (429, "RESOURCE_EXHAUSTED"),
    Body.QUOTA_TPM: (429, "RESOURCE_EXHAUSTED"),
    Body.QUOTA_RPD: (429, "RESOURCE_EXHAUSTED"),
    Body.QUOTA_ZERO: (429, "RESOURCE_EXHAUSTED"),
    Body.BARE_429: (429, "RESOURCE_EXHAUSTED"),
    Body.OVERLOADED: (503, "UNAVAILABLE"),
    Body.INTERNAL: (500, "INTERNAL"),
    Body.DEADLINE_EXCEEDED: (504, "DEADLINE_EXCEEDED"),
    Body.BAD_REQUEST: (400, "INVALID_ARGUMENT"),
    Body.KEY_TYPE_UNSUPPORTED: (401, "UNAUTHENTICATED"),
    Body.PROJECT_DENIED: (403, "PERMISSION_DENIED"),
    Body.FILE_DENIED: (403, "PERMISSION_DENIED"),
    Body.PROXY_401: (401, ""),
    Body.PROXY_403: (403, ""),
}
PROXY_BODIES = frozenset({Body.PROXY_401, Body.PROXY_403})
"""Bodies that are not a Google error object at all (rendered by `proxy_page`)."""

_FIXED_MESSAGES = {
    Body.KEY_LEAKED: "Your API key was reported as leaked. Please use another API key.",
    Body.UNREGISTERED: "Method doesn't allow unregistered callers (callers without established "
                       "identity). Please use API Key or other form of API consumer identity to "
                       "call this API.",
    Body.BARE_429: "Resource has been exhausted (e.g. check quota).",
    Body.OVERLOADED: "The model is overloaded. Please try again later.",
    Body.INTERNAL: "An internal error has occurred. Please retry or report in "
                   "https://developers.generativeai.google/guide/troubleshooting",
    Body.DEADLINE_EXCEEDED: "Deadline expired before operation could complete.",
    # Reference section 7.1 (gemini-cli#29275): the 2026 refusal of unrestricted standard keys.
    Body.KEY_TYPE_UNSUPPORTED: "Request had invalid authentication credentials. Expected OAuth 2 "
                               "access token, login cookie or other valid authentication "
                               "credential. See https://developers.google.com/identity/sign-in/"
                               "web/devconsole-project.",
    # Section 7.4: the phrase is Google's; the second sentence is ours.
    Body.PROJECT_DENIED: "Your project has been denied access. Please contact support.",
    Body.FILE_DENIED: "You do not have permission to access the File 3c5owo4l5cjd or it may not "
                      "exist.",
}

# (quotaMetric, quotaId) per (body, tier).
_QUOTA_IDS = {
    (Body.QUOTA_RPM, "free"): ("generate_content_free_tier_requests",
                               "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    (Body.QUOTA_TPM, "free"): ("generate_content_free_tier_input_token_count",
                               "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
    (Body.QUOTA_RPD, "free"): ("generate_content_free_tier_requests",
                               "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    (Body.QUOTA_RPM, "paid"): ("generate_requests_per_model",
                               "GenerateRequestsPerMinutePerProjectPerModel"),
    (Body.QUOTA_TPM, "paid"): ("generate_content_paid_tier_input_token_count",
                               "GenerateContentPaidTierInputTokensPerModelPerMinute"),
    (Body.QUOTA_RPD, "paid"): ("generate_requests_per_model_per_day",
                               "GenerateRequestsPerDayPerProjectPerModel"),
}


def format_duration(seconds: float) -> str:
    """A protobuf Duration string as Google writes it: ``"37s"``, ``"45.837906927s"``."""
    text = f"{max(seconds, 0.0):.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def pretty(obj: Any) -> bytes:
    """Google's pretty-printed JSON (2-space indent), as non-streaming responses use."""
    return json.dumps(obj, indent=2).encode()


def sse_event(obj: Any) -> bytes:
    """One SSE event in Google's compact chunk style, CRLF-terminated."""
    return b"data: " + json.dumps(obj, separators=(",", ": ")).encode() + b"\r\n\r\n"


def response_id(seed: int, serial: int) -> str:
    """A stable base64url id like Google's ``responseId``."""
    digest = hashlib.blake2b(f"{seed}:{serial}".encode(), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _violated(body: Body, tier: str, quota_value: int) -> list[tuple[str, str, int]]:
    """``(quotaMetric, quotaId, quotaValue)`` of each violation a 429 `body` lists."""
    if body is Body.QUOTA_ZERO:
        return [(*_QUOTA_IDS[(Body.QUOTA_TPM, tier)], 0), (*_QUOTA_IDS[(Body.QUOTA_RPD, tier)], 0)]
    if (body, tier) in _QUOTA_IDS:
        return [(*_QUOTA_IDS[(body, tier)], quota_value)]
    return []


def violations(body: Body, *, tier: str, quota_value: int) -> tuple[Violation, ...]:
    """The `Outcome.violations` the client reads from `body` (what `error_object` writes)."""
    found = (violation_of(quota_id, value) for _, quota_id, value in _violated(body, tier, quota_value))
    return tuple(v for v in found if v is not None)


def _help() -> dict[str, Any]:
    return {"@type": _TYPE + "Help", "links": [
        {"description": "Learn more about Gemini API quotas", "url": _RATE_DOC}]}


def _violation(metric: str, quota_id: str, model: str, value: int) -> dict[str, Any]:
    return {"quotaMetric": f"generativelanguage.googleapis.com/{metric}", "quotaId": quota_id,
            "quotaDimensions": {"location": "global", "model": model},
            "quotaValue": str(value)}


def _quota_error(body: Body, *, model: str, tier: str, quota_value: int,
                 retry_delay: float) -> tuple[str, list[dict[str, Any]]]:
    delay = format_duration(retry_delay)
    violated = _violated(body, tier, quota_value)
    lines = "".join(f"\n* Quota exceeded for metric: generativelanguage.googleapis.com/{metric},"
                    f" limit: {value}, model: {model}" for metric, _, value in violated)
    message = f"{_QUOTA_MESSAGE}{lines}\nPlease retry in {delay}."
    details = [
        _help(),
        {"@type": _TYPE + "QuotaFailure", "violations": [
            _violation(metric, quota_id, model, value) for metric, quota_id, value in violated]},
        {"@type": _TYPE + "RetryInfo", "retryDelay": delay},
    ]
    return message, details


def error_object(body: Body, *, model: str = "", tier: str = "free", quota_value: int = 0,
                 retry_delay: float = 0.0, project_number: int = 0, method: str = "generateContent",
                 message: str | None = None) -> dict[str, Any]:
    """The ``{"error": {...}}`` object Google sends for `body`.

    Args:
        body: which error.
        model: the model of the request (quota dimensions, 404 text).
        tier: ``"free"`` or ``"paid"`` (which quota ids).
        quota_value: the limit that was hit (429 bodies).
        retry_delay: seconds left in the quota window (429 bodies).
        project_number: the project of a SERVICE_DISABLED body.
        method: the RPC name for the 404 text.
        message: overrides the message of a `Body.BAD_REQUEST`.
    """
    code, status = STATUS[body]
    details: list[dict[str, Any]] | None = None
    if body in (Body.QUOTA_RPM, Body.QUOTA_TPM, Body.QUOTA_RPD, Body.QUOTA_ZERO):
        text, details = _quota_error(body, model=model, tier=tier, quota_value=quota_value,
                                     retry_delay=retry_delay)
    elif body is Body.KEY_INVALID:
        text = "API key not valid. Please pass a valid API key."
        details = [
            {"@type": _TYPE + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": text},
        ]
    elif body is Body.SERVICE_DISABLED:
        url = ("https://console.developers.google.com/apis/api/generativelanguage.googleapis.com"
               f"/overview?project={project_number}")
        text = (f"Generative Language API has not been used in project {project_number} before "
                f"or it is disabled. Enable it by visiting {url} then retry. If you enabled this "
                "API recently, wait a few minutes for the action to propagate to our systems and "
                "retry.")
        details = [
            {"@type": _TYPE + "Help", "links": [
                {"description": "Google developers console API activation", "url": url}]},
            {"@type": _TYPE + "ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
             "metadata": {"consumer": f"projects/{project_number}",
                          "service": "generativelanguage.googleapis.com"}},
        ]
    elif body is Body.MODEL_NOT_FOUND:
        text = (f"models/{model} is not found for API version v1beta, or is not supported for "
                f"{method}. Call ListModels to see the list of available models and their "
                "supported methods.")
    elif body is Body.BAD_REQUEST:
        text = message or "Request contains an invalid argument."
    elif body is Body.KEY_TYPE_UNSUPPORTED:
        text = _FIXED_MESSAGES[body]
        details = [{"@type": _TYPE + "ErrorInfo", "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                    "metadata": {"service": "generativelanguage.googleapis.com",
                                 "method": "google.ai.generativelanguage.v1beta.GenerativeService."
                                           f"{method[0].upper()}{method[1:]}"}}]
    elif body in PROXY_BODIES:
        raise ValueError(f"{body.value} is a proxy's page, not a Google error (see proxy_page)")
    else:
        text = _FIXED_MESSAGES[body]
    error: dict[str, Any] = {"code": code, "message": text, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def proxy_page(status: int) -> bytes:
    """The HTML page a proxy or load balancer in front of the API sends with a bare 401/403."""
    title = {401: "401 Authorization Required", 403: "403 Forbidden"}[status]
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
            "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


def _text(model: str, serial: int, output_tokens: int) -> str:
    head = f"[{model} #{serial}]"
    # About four characters per token, like English text.
    return head + " lorem" * max(output_tokens - len(head) // 4, 0)


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"promptTokenCount": input_tokens, "candidatesTokenCount": output_tokens,
            "totalTokenCount": input_tokens + output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}]}


def success_object(*, model: str, serial: int, seed: int, input_tokens: int,
                   output_tokens: int) -> dict[str, Any]:
    """A ``GenerateContentResponse`` with one candidate that finished with STOP."""
    return {
        "candidates": [{
            "content": {"parts": [{"text": _text(model, serial, output_tokens)}],
                        "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": _usage(input_tokens, output_tokens),
        "modelVersion": model,
        "responseId": response_id(seed, serial),
    }


def stream_objects(*, model: str, serial: int, seed: int, input_tokens: int, output_tokens: int,
                   chunks: int) -> list[dict[str, Any]]:
    """The chunks of a streamed answer: cumulative usage, ``finishReason`` on the last only."""
    text = _text(model, serial, output_tokens)
    rid = response_id(seed, serial)
    objects = []
    for i in range(chunks):
        piece = text[len(text) * i // chunks: len(text) * (i + 1) // chunks]
        candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}}
        if i == chunks - 1:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        objects.append({"candidates": [candidate],
                        "usageMetadata": _usage(input_tokens, output_tokens * (i + 1) // chunks),
                        "modelVersion": model, "responseId": rid})
    return objects
