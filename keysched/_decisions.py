"""What the core tells its driver to do: immutable values, dispatched on with ``match``.

Theory of operation
-------------------
They are `typing.NamedTuple`s rather than attrs classes because one is built per dispatch and per
ended request on the hot path, and a named tuple is built three times faster than a frozen attrs
instance (0.5 µs against 1.6 µs).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

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


class Dispatch(NamedTuple):
    """Send attempt `attempt` (the `number`-th of request `request`) with `key` to `model`."""

    request: int
    attempt: int
    number: int
    key: Key
    model: str


class Finish(NamedTuple):
    """Request `request` is answered by the response of attempt `attempt`."""

    request: int
    attempt: int


class Fail(NamedTuple):
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
