"""What the core tells its driver to do: frozen values, dispatched on with ``match``."""

from __future__ import annotations

import enum

import attrs

from keysched._config import Key

__all__ = ["Decision", "Dispatch", "Fail", "FailReason", "Finish"]


class FailReason(enum.Enum):
    """Why a request ended without an answer."""

    REQUEST_ERROR = "request_error"
    """The service refused the request itself (fail fast)."""
    DEADLINE = "deadline"
    """No lane could serve it before its deadline; ``retry_at`` says when capacity returns."""
    NO_CAPACITY = "no_capacity"
    """Everything was cooling and the policy does not wait (baseline routers only)."""
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    NO_USABLE_LANE = "no_usable_lane"
    """Every key is disabled or every allowed model unavailable, for good."""
    EMPTY_RESPONSE = "empty_response"


@attrs.frozen(kw_only=True)
class Dispatch:
    """Send attempt `attempt` (the `number`-th of request `request`) with `key` to `model`."""

    request: int
    attempt: int
    number: int
    key: Key
    model: str


@attrs.frozen(kw_only=True)
class Finish:
    """Request `request` is answered by the response of attempt `attempt`."""

    request: int
    attempt: int


@attrs.frozen(kw_only=True)
class Fail:
    """Request `request` ends without an answer.

    Attributes:
        reason: why.
        attempt: its last attempt, if it made any (its response explains the failure).
        retry_at: when capacity is expected back (core time), if known.
    """

    request: int
    reason: FailReason
    attempt: int | None = None
    retry_at: float | None = None


Decision = Dispatch | Finish | Fail
