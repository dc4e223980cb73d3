"""What an attempt came back with, as the core sees it.

The wire layer turns an HTTP response (or a network failure) into one `Outcome`; the simulator's
world model produces the same values.  The core maps each `OutcomeKind` to exactly one action in
`keysched._table`.
"""

from __future__ import annotations

import enum
import math
from typing import Any, NamedTuple

__all__ = ["Outcome", "OutcomeKind", "QuotaDimension", "Violation", "dimension_of", "violation_of"]


class OutcomeKind(enum.Enum):
    """Every class of answer the Gemini API gives (reference section 2.4)."""

    SUCCESS = "success"
    """200 with content."""
    BLOCKED = "blocked"
    """200 with ``promptFeedback.blockReason`` or a safety finish reason: returned, not retried."""
    EMPTY = "empty"
    """200 without any content: retried on another key a configured number of times."""
    RATE_LIMITED_MINUTE = "rate_limited_minute"
    """429 on a per-minute quota (RPM or input TPM) of the project and model."""
    RATE_LIMITED_DAY = "rate_limited_day"
    """429 on a per-day quota: benched until midnight America/Los_Angeles."""
    SPEND_LIMITED = "spend_limited"
    """429 on the billing account's spend cap (a rolling 10-minute window since 2026): every
    project of the account is benched."""
    QUOTA_ZERO = "quota_zero"
    """429 with ``limit: 0``: the model is not in this project's tier at all."""
    TOO_LARGE_FOR_QUOTA = "too_large_for_quota"
    """429 TPM where the request alone exceeds the quota: no key of that tier can serve it."""
    SHARED_CAPACITY = "shared_capacity"
    """429 without details: shared capacity; back off briefly, the key is not blamed."""
    OVERLOADED = "overloaded"
    """503: the model is overloaded; prefer another model."""
    SERVER_ERROR = "server_error"
    """500 and other 5xx: retried with backoff, then another model."""
    TIMEOUT = "timeout"
    """504, 499 or a client-side timeout."""
    CONNECTION_ERROR = "connection_error"
    """The connection failed or was reset before a response arrived."""
    BAD_RESPONSE = "bad_response"
    """A body that is not the JSON it should be (truncated, HTML, garbage)."""
    KEY_INVALID = "key_invalid"
    """400 ``API_KEY_INVALID``: the key is deleted, expired or unknown."""
    KEY_LEAKED = "key_leaked"
    """403 "reported as leaked"."""
    KEY_FORBIDDEN = "key_forbidden"
    """401/403 otherwise (no permission, unregistered caller, location refused)."""
    KEY_TYPE_UNSUPPORTED = "key_type_unsupported"
    """401 ``ACCESS_TOKEN_TYPE_UNSUPPORTED``: Google no longer accepts this kind of key (an
    unrestricted standard key, since mid-2026); the user needs a new key, not OAuth."""
    ACCESS_REFUSED = "access_refused"
    """401/403 without Google's error body (a proxy or load balancer said no): the key is
    cooled, not disabled, as only Google's own reasons may disable a key for good."""
    PROJECT_DISABLED = "project_disabled"
    """403 ``SERVICE_DISABLED``: every key of the project is unusable."""
    MODEL_NOT_FOUND = "model_not_found"
    """404 on the model: no key can use it."""
    REQUEST_ERROR = "request_error"
    """400 for the request itself: fail fast, never retried on another key."""


class QuotaDimension(enum.Enum):
    """What a quota counts, as a 429's ``quotaId`` names it."""

    REQUESTS_PER_MINUTE = "rpm"
    TOKENS_PER_MINUTE = "tpm"
    REQUESTS_PER_DAY = "rpd"
    SPEND = "spend"


def dimension_of(quota_id: str) -> QuotaDimension | None:
    """The dimension a ``quotaId`` names, or None when it names none we know.

    Google's ids read ``GenerateRequestsPerMinutePerProjectPerModel-FreeTier``,
    ``GenerateContentInputTokensPerModelPerMinute-FreeTier``,
    ``GenerateRequestsPerDayPerProjectPerModel``.  The spend cap's id is not documented: any id
    that says ``Spend`` is read as the billing account's spend window (README, "Quota learning").
    """
    if "spend" in quota_id.lower():
        return QuotaDimension.SPEND
    if "PerDay" in quota_id:
        return QuotaDimension.REQUESTS_PER_DAY if "Requests" in quota_id else None
    if "PerMinute" in quota_id:
        if "Tokens" in quota_id:
            return QuotaDimension.TOKENS_PER_MINUTE
        if "Requests" in quota_id:
            return QuotaDimension.REQUESTS_PER_MINUTE
    return None


class Violation(NamedTuple):
    """One quota a 429 says was exceeded (``QuotaFailure.violations[]``).

    Attributes:
        dimension: what the quota counts.
        value: its ``quotaValue`` (the limit), when the server sent a usable one.
        quota_id: Google's ``quotaId``, for events and logs.
    """

    dimension: QuotaDimension
    value: int | None
    quota_id: str


# No real quota comes near this; a larger quotaValue is not trusted to make a budget.
MAX_QUOTA_VALUE = 10**9


def violation_of(quota_id: str, value: int | None) -> Violation | None:
    """The `Violation` a 429 reports for `quota_id` with ``quotaValue`` `value`.

    None when the id names no dimension we know.  A value that is absent, zero (``limit: 0`` has
    its own outcome kind) or above `MAX_QUOTA_VALUE` (no real quota is that large; a hostile one
    must not make a budget) is kept as None: nothing is learned from it.
    """
    dimension = dimension_of(quota_id)
    if dimension is None:
        return None
    usable = value if value is not None and 0 < value <= MAX_QUOTA_VALUE else None
    return Violation(dimension=dimension, value=usable, quota_id=quota_id)


class _OutcomeFields(NamedTuple):
    kind: OutcomeKind
    retry_after: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    violations: tuple[Violation, ...] = ()


class Outcome(_OutcomeFields):
    """One attempt's result, reduced to what scheduling needs (an immutable named tuple).

    It is made once per attempt by the wire layer and by the simulator's world, so it is a named
    tuple rather than an attrs class: a third of the cost to build, its one check included.

    Attributes:
        kind: the class of the answer.
        retry_after: the server's retry delay in seconds (``RetryInfo.retryDelay``, the
            "Please retry in Xs" text, or a ``Retry-After`` header), if it gave one.
        input_tokens: input tokens the service counted, if known (for TPM budgets).
        output_tokens: output tokens produced, if known.
        violations: the quotas a 429 named, with their values: what the core learns limits from.

    Raises:
        ValueError: `retry_after` is negative, infinite or NaN.
    """

    __slots__ = ()

    def __new__(cls, kind: OutcomeKind, retry_after: float | None = None,
                input_tokens: int | None = None, output_tokens: int | None = None,
                violations: tuple[Violation, ...] = ()) -> Outcome:
        if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
            raise ValueError(f"retry_after must be a finite number >= 0, got {retry_after!r}")
        return tuple.__new__(cls, (kind, retry_after, input_tokens, output_tokens, violations))

    def _replace(self, **changes: Any) -> Outcome:
        """A copy with `changes`, checked like a new one (the tuple's own copy is not)."""
        return Outcome(*super()._replace(**changes))
