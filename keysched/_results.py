"""What `KeyedClient` returns: results, attempt records and stream chunks (labels, no secrets)."""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

from keysched._outcomes import OutcomeKind
from keysched._wire import SAFETY_FINISH_REASONS, Usage

__all__ = ["AttemptRecord", "GenerateResult", "StreamChunk"]


def _repr_without_raw(self: Any) -> str:
    """The usual named-tuple repr, less the raw JSON (long, and nothing a log line needs)."""
    fields = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True)
                       if name != "raw")
    return f"{type(self).__name__}({fields})"


class AttemptRecord(NamedTuple):
    """One attempt of a request.

    Attributes:
        number: 1 for the first attempt of the request, 2 for the first retry, ...
        key: the label of the key used.
        model: the model asked.
        outcome: how it ended.
        status: the HTTP status (0 when no response arrived).
        google_status: Google's status string, if any.
        message: Google's message or a description of the failure, if it failed.
        retry_after: the retry delay the server gave, if any.
        started: client clock time when it was sent.
        ended: client clock time when it ended.
    """

    number: int
    key: str
    model: str
    outcome: OutcomeKind
    status: int
    google_status: str | None = None
    message: str | None = None
    retry_after: float | None = None
    started: float = 0.0
    ended: float = 0.0


class GenerateResult(NamedTuple):
    """The answer to a `generate` call.

    Attributes:
        text: the answer's text (thoughts excluded); empty for a blocked prompt.
        model: the model that served it.
        key: the label of the key that served it.
        attempts: every attempt made, oldest first (the last one served).
        usage: token usage, if reported.
        finish_reason: the candidate's ``finishReason``, if any.
        block_reason: ``promptFeedback.blockReason`` when the prompt was blocked.
        raw: the raw response JSON.
    """

    text: str
    model: str
    key: str
    attempts: tuple[AttemptRecord, ...]
    usage: Usage | None = None
    finish_reason: str | None = None
    block_reason: str | None = None
    raw: Any = None

    def __repr__(self) -> str:
        return _repr_without_raw(self)

    @property
    def blocked(self) -> bool:
        """Whether the service refused to answer for safety reasons (prompt or answer)."""
        return self.block_reason is not None or self.finish_reason in SAFETY_FINISH_REASONS


@attrs.frozen(kw_only=True)
class StreamChunk:
    """One chunk of a stream.  (An attrs class, not a named tuple like the others here: its field
    `index` would shadow ``tuple.index``.)

    Attributes:
        text: the chunk's text.
        model: the model serving the stream.
        key: the label of the key serving the stream.
        index: 0 for the first chunk delivered, then 1, 2, ...
        finish_reason: set on the last chunk.
        usage: cumulative usage so far, if reported.
        raw: the chunk's JSON.
    """

    text: str
    model: str
    key: str
    index: int
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: Any = attrs.field(default=None, repr=False)
