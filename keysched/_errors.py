"""The exception tree of keysched.

Every exception keysched raises on purpose derives from `KeyschedError`::

    KeyschedError
    ├── ConfigurationError        you built it wrong (a field and its bad value are named)
    ├── UsageError                you called it wrong (an illegal input to the core; nothing changed)
    └── ServiceError              the service said no (HTTP status, Google status, model, key label)
        ├── RequestError          the request itself is bad (400): never retried on another key
        │   └── ResponseTooLargeError  the answer exceeded max_response_bytes: the key is not blamed
        ├── CapacityError         no lane could serve before the deadline; says when capacity returns
        ├── AttemptsExhaustedError  every allowed attempt failed
        ├── NoUsableKeyError      every key is disabled or every model unavailable, for good
        ├── EmptyResponseError    the service kept answering 200 with nothing in it
        └── StreamInterruptedError  a stream broke after chunks had been delivered

Errors carry data as attributes; their messages name key *labels*, never secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AttemptsExhaustedError",
    "CapacityError",
    "ConfigurationError",
    "EmptyResponseError",
    "KeyschedError",
    "NoUsableKeyError",
    "RequestError",
    "ResponseTooLargeError",
    "ServiceError",
    "StreamInterruptedError",
    "UsageError",
]


class KeyschedError(Exception):
    """The root of every error keysched raises on purpose."""


class ConfigurationError(KeyschedError, ValueError):
    """A configuration value is invalid; the message names the field and the bad value."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class UsageError(KeyschedError, RuntimeError):
    """An illegal call (for example completing an unknown attempt); the state is unchanged."""


class ServiceError(KeyschedError):
    """The service did not produce an answer for a request.

    Attributes:
        status: the HTTP status of the last failed attempt, if there was a response.
        google_status: Google's status string (``RESOURCE_EXHAUSTED`` ...), if any.
        service_message: Google's error message, if any.
        model: the model of the last attempt, if any.
        key: the label of the key used by the last attempt, if any.
        attempts: every attempt made for the request, oldest first.
        retry_at: when capacity is expected back (same clock as the client), if known.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        google_status: str | None = None,
        service_message: str | None = None,
        model: str | None = None,
        key: str | None = None,
        attempts: Sequence[Any] = (),
        retry_at: float | None = None,
    ) -> None:
        self.status = status
        self.google_status = google_status
        self.service_message = service_message
        self.model = model
        self.key = key
        self.attempts = tuple(attempts)
        self.retry_at = retry_at
        super().__init__(message)


class RequestError(ServiceError):
    """The request was refused as malformed or too large (HTTP 400/404): fix the request."""


class ResponseTooLargeError(RequestError):
    """The answer held more than ``max_response_bytes`` (decompressed); reading stopped there.

    Another key would be sent the same answer, so the call fails without a retry, and the key
    that carried it stays healthy.  Ask for less (``maxOutputTokens``), or raise the cap.
    """


class CapacityError(ServiceError):
    """No key and model could serve the request before its deadline (see ``retry_at``)."""


class AttemptsExhaustedError(ServiceError):
    """The request used every attempt its retry policy allows."""


class NoUsableKeyError(ServiceError):
    """Every key that could serve the request is disabled, or every model is unavailable."""


class EmptyResponseError(ServiceError):
    """The service answered 200 without content on every attempt allowed for empty answers."""


class StreamInterruptedError(ServiceError):
    """A stream failed after chunks were delivered; it cannot be failed over transparently.

    Attributes:
        chunks_delivered: how many chunks the caller had already received.
    """

    def __init__(self, message: str, *, chunks_delivered: int, **kwargs: Any) -> None:
        self.chunks_delivered = chunks_delivered
        super().__init__(message, **kwargs)
