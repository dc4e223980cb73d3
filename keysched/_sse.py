"""An incremental parser for Gemini's ``streamGenerateContent?alt=sse`` bodies (sans-IO).

Theory of operation: the driver feeds the response bytes as they arrive, in pieces of any size,
and gets back the complete events each piece finished; ``close()`` at the end of the body
flushes what is left. Bytes are split into lines on LF, and a CR before the LF is dropped, so
CRLF framing (what Google sends) and LF framing (what fakes and proxies send) parse alike. Lines
are only ever cut at LF, which never occurs inside a multi-byte UTF-8 character, so a split
anywhere in the byte stream cannot change the events.

What a line can be:

- ``data: <json>``: one data line of the current event; a blank line ends the event. The JSON
  is a ``GenerateContentResponse`` chunk, or ``{"error": {...}}`` (an error sent after the
  HTTP 200), or a list of either.
- a line starting with ``{`` or ``[`` outside an event: the start of a bare, pretty-printed JSON
  value that Google appends to a 200 stream when it fails midway (reference section 1.6).
  Lines are collected until the braces and brackets balance, counted outside JSON strings
  (the SDK counts braces the same way), and the value is parsed as a whole.
- blank lines, ``:`` comments and the ``event``/``id``/``retry`` fields, which Gemini does not
  send, are ignored.
- anything else is garbage: an error event classified ``BAD_RESPONSE``; parsing goes on.

Decisions where the reference is silent:

- A lone CR is not a line break: Google never sends one, and treating it as one would let a
  CRLF split between two ``feed`` calls produce an extra blank line.
- An error object is classified by the same rules as a non-stream body, with ``status`` = its
  inner ``code``. A chunk that cannot be read (not JSON, not an object) is an error event
  ``BAD_RESPONSE``.
- A stream that ends inside an event or inside a bare JSON value: ``close()`` still tries to
  parse what it has, and reports ``BAD_RESPONSE`` if it cannot.
- One line or event larger than ``max_event_bytes`` (default 16 MiB) is dropped with a
  ``BAD_RESPONSE`` event instead of growing memory without bound.
- ``data: [DONE]`` (how the OpenAI-compatible endpoint ends a stream) is no event: the
  parser also reads that dialect's streams, whose chunks are objects without ``error``.
- A chunk with a safety finish reason is still a chunk event; `classify_chunk` tells the
  client it is ``BLOCKED``. Whether the whole stream was empty is the client's call.
"""

from __future__ import annotations

import json as _json
import re
from typing import Any, NamedTuple

from keysched._errors import UsageError
from keysched._outcomes import Outcome, OutcomeKind
from keysched._wire import Classified, Usage, classify_chunk

__all__ = ["SSEParser", "StreamEvent"]

_DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
_IGNORED_FIELDS = frozenset({b"event", b"id", b"retry"})
# An escape pair is one token, so that an escaped quote never toggles the string state.
_STRUCTURE = re.compile(rb'\\.|[{}\[\]"]')


class StreamEvent(NamedTuple):
    """One event of a stream: a chunk, or an error (then `classified` is set).

    Attributes:
        json: the chunk's parsed JSON (for an error: the error body, if it parsed).
        text: the chunk's text, thoughts excluded.
        finish_reason: the chunk's ``finishReason`` (usually only on the last chunk).
        usage: the chunk's ``usageMetadata``, cumulative over the stream.
        classified: for an error event, the error classified as a non-stream body would be.
    """

    json: Any = None
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    classified: Classified | None = None

    @property
    def is_error(self) -> bool:
        """Whether this event reports an error rather than carrying a chunk."""
        return self.classified is not None


def _bad(why: str, parsed: Any = None) -> StreamEvent:
    outcome = Outcome(kind=OutcomeKind.BAD_RESPONSE)
    return StreamEvent(json=parsed, classified=Classified(outcome=outcome, status=200,
                                                          message=why, json=parsed))


def _events_of(payload: bytes, where: str) -> list[StreamEvent]:
    """The events of one complete JSON payload (a data event or a bare value)."""
    try:
        value = _json.loads(payload)
    except (ValueError, RecursionError):
        return [_bad(f"{where} is not JSON ({len(payload)} bytes)")]
    events = []
    for item in value if isinstance(value, list) else [value]:
        classified = classify_chunk(item)
        if isinstance(item, dict) and "error" not in item:
            events.append(StreamEvent(json=item, text=classified.text,
                                      finish_reason=classified.finish_reason,
                                      usage=classified.usage))
        else:
            events.append(StreamEvent(json=item, classified=classified))
    return events


class SSEParser:
    """Turns the bytes of a ``streamGenerateContent?alt=sse`` body into `StreamEvent`s.

    Feed it every piece of the body in order, then call `close` once at the end.
    """

    def __init__(self, *, max_event_bytes: int = _DEFAULT_MAX_EVENT_BYTES) -> None:
        if isinstance(max_event_bytes, bool) or not isinstance(max_event_bytes, int) or (
                max_event_bytes < 1):
            raise UsageError(f"max_event_bytes: expected an integer >= 1, got "
                             f"{max_event_bytes!r}")
        self._max = max_event_bytes
        self._buffer = bytearray()  # the bytes of the line being received
        self._scanned = 0  # how much of _buffer is known to hold no LF
        self._skipping = False  # dropping the rest of an oversized line
        self._data: list[bytes] = []  # data lines of the current event
        self._data_size = 0  # bytes of the current event, 0 between events
        self._bare: list[bytes] = []  # lines of a bare JSON value
        self._bare_size = 0  # bytes of the bare value, 0 outside one
        self._depth = 0  # unclosed { and [ of the bare value
        self._in_string = False
        self._closed = False

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Add the next bytes of the body; return the events they completed.

        Raises:
            UsageError: after `close`, or for something that is not bytes.
        """
        if self._closed:
            raise UsageError("SSEParser.feed: the parser is closed")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UsageError(f"SSEParser.feed: expected bytes, got {type(data).__name__}")
        self._buffer += data
        events: list[StreamEvent] = []
        start = 0
        while (end := self._buffer.find(b"\n", max(start, self._scanned))) >= 0:
            events += self._complete_line(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]  # once per feed: deleting per line would be quadratic
        if self._skipping:
            self._buffer.clear()  # more of a line already reported as too long
        elif len(self._buffer) > self._max:
            events.append(_bad(f"a stream line exceeds {self._max} bytes"))
            self._buffer.clear()
            self._skipping = True
        self._scanned = len(self._buffer)
        return events

    def close(self) -> list[StreamEvent]:
        """End the body: flush its last line and any unfinished event. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        events: list[StreamEvent] = []
        if self._buffer or self._skipping:
            events += self._complete_line(bytes(self._buffer))
        self._buffer.clear()
        if self._bare_size:
            events += self._finish_bare(truncated=True)
        return events + self._dispatch()

    def _complete_line(self, line: bytes) -> list[StreamEvent]:
        if self._skipping:  # the rest of a line already reported as too long
            self._skipping = False
            return []
        if len(line) > self._max:  # the same verdict as when it arrives in pieces (see feed)
            return [_bad(f"a stream line exceeds {self._max} bytes")]
        return self._line(line.removesuffix(b"\r"))

    def _line(self, line: bytes) -> list[StreamEvent]:
        if self._bare_size:  # inside a bare JSON value
            return self._bare_line(line)
        stripped = line.strip()
        if not stripped:
            return self._dispatch()
        if line.startswith(b":"):
            return []
        field, colon, value = line.partition(b":")
        if field == b"data":
            return self._data_line(value.removeprefix(b" ") if colon else b"")
        if colon and field in _IGNORED_FIELDS:
            return []
        events = self._dispatch()  # a bare value is not part of the event before it
        if stripped[:1] in (b"{", b"["):
            return events + self._bare_line(line)
        return [*events, _bad(f"a stream line is neither SSE nor JSON ({len(line)} bytes)")]

    def _data_line(self, value: bytes) -> list[StreamEvent]:
        # Past the limit, lines are only counted: the event is reported once and then skipped
        # up to its blank line, rather than its remains being read as new events.
        was_over = self._data_size > self._max
        self._data_size += len(value) + 1
        if self._data_size <= self._max:
            self._data.append(value)
            return []
        self._data.clear()
        return [] if was_over else [_bad(f"a stream event exceeds {self._max} bytes")]

    def _dispatch(self) -> list[StreamEvent]:
        """End the current SSE event, if it has data."""
        if not self._data_size:
            return []
        payload = b"\n".join(self._data)
        over = self._data_size > self._max
        self._data.clear()
        self._data_size = 0
        if payload == b"[DONE]":  # the OpenAI-compatible endpoint's end-of-stream marker
            return []
        return [] if over else _events_of(payload, "a data event")

    def _bare_line(self, line: bytes) -> list[StreamEvent]:
        # Brackets are counted even past the size limit, so that the end of an oversized value
        # is still found and its remains are not read as garbage lines.
        was_over = self._bare_size > self._max
        self._bare_size += len(line) + 1
        for match in _STRUCTURE.finditer(line):
            self._count(match[0])
        events = []
        if self._bare_size <= self._max:
            self._bare.append(line)
        elif not was_over:
            self._bare.clear()
            events.append(_bad(f"a bare JSON value in the stream exceeds {self._max} bytes"))
        if self._depth <= 0:
            events += self._finish_bare(truncated=False)
        return events

    def _count(self, token: bytes) -> None:
        """Track the nesting of brackets that are outside JSON strings."""
        if token == b'"':
            self._in_string = not self._in_string
        elif self._in_string or len(token) == 2:  # inside a string, or an escape pair
            return
        elif token in (b"{", b"["):
            self._depth += 1
        elif token in (b"}", b"]"):
            self._depth -= 1

    def _finish_bare(self, *, truncated: bool) -> list[StreamEvent]:
        payload = b"\n".join(self._bare)
        over = self._bare_size > self._max
        self._reset_bare()
        if over:  # already reported when it crossed the limit
            return []
        events = _events_of(payload, "a bare JSON value in the stream")
        if truncated and any(event.is_error and event.json is None for event in events):
            return [_bad("the stream ended inside a bare JSON value")]
        return events

    def _reset_bare(self) -> None:
        self._bare.clear()
        self._bare_size = 0
        self._depth = 0
        self._in_string = False
