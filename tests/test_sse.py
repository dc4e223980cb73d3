"""Tests of the incremental SSE parser for streamGenerateContent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysched._errors import UsageError
from keysched._outcomes import OutcomeKind
from keysched._sse import SSEParser, StreamEvent
from keysched._wire import Usage, classify_chunk

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
K = OutcomeKind

# The two-event capture of reference section 1.6, byte for byte, with Google's CRLF framing.
CAPTURE = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "1\\n2\\n"}],"role": "model"},'
    b'"index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 3,'
    b'"totalTokenCount": 11,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}]},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "WhmlabShCNjv-8YPl_D1gAo"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": "3\\n4\\n5"}],"role": "model"},'
    b'"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,'
    b'"candidatesTokenCount": 8,"totalTokenCount": 16,"promptTokensDetails": [{"modality": '
    b'"TEXT","tokenCount": 8}]},"modelVersion": "gemini-2.5-flash",'
    b'"responseId": "WhmlabShCNjv-8YPl_D1gAo"}\r\n\r\n'
)
# The mid-stream failure of vercel/ai#5217: two data events, then a bare pretty-printed error.
# The reference elides the second usageMetadata as "{...}"; an empty object stands in for it.
MID_STREAM_ERROR = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Okay"}],"role": "model"}}],'
    b'"usageMetadata": {"promptTokenCount": 2304,"totalTokenCount": 2304,"promptTokensDetails":'
    b' [{"modality": "TEXT","tokenCount": 2304}]},"modelVersion": "gemini-2.0-flash"}\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": ""}],"role": "model"},'
    b'"finishReason": "STOP"}],"usageMetadata": {},"modelVersion": "gemini-2.0-flash"}\n\n'
    b'{\n'
    b'  "error": {\n'
    b'    "code": 503,\n'
    b'    "message": "The model is overloaded. Please try again later.",\n'
    b'    "status": "UNAVAILABLE"\n'
    b'  }\n'
    b'}\n'
)


def parse(*pieces: bytes, close: bool = True, limit: int | None = None) -> list[StreamEvent]:
    parser = SSEParser() if limit is None else SSEParser(max_event_bytes=limit)
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events + parser.close() if close else events


def test_capture_gives_two_chunks() -> None:
    """The real two-event capture yields its texts, the final finish reason and cumulative usage."""
    first, second = parse(CAPTURE)
    assert (first.text, first.finish_reason, first.is_error) == ("1\n2\n", None, False)
    assert (second.text, second.finish_reason) == ("3\n4\n5", "STOP")
    assert first.usage == Usage(prompt_tokens=8, output_tokens=3, total_tokens=11)
    assert second.usage == Usage(prompt_tokens=8, output_tokens=8, total_tokens=16)
    assert second.json["responseId"] == "WhmlabShCNjv-8YPl_D1gAo"


def test_lf_framing_is_the_same_as_crlf() -> None:
    """LF-only framing gives the same events as Google's CRLF framing."""
    assert parse(CAPTURE.replace(b"\r\n", b"\n")) == parse(CAPTURE)


def test_events_complete_as_their_blank_line_arrives() -> None:
    """feed returns an event as soon as its terminating blank line has arrived, not before."""
    parser = SSEParser()
    cut = CAPTURE.index(b"\r\n\r\n")
    assert parser.feed(CAPTURE[:cut + 2]) == []
    assert len(parser.feed(CAPTURE[cut + 2:cut + 4])) == 1
    assert len(parser.feed(CAPTURE[cut + 4:])) == 1
    assert parser.close() == []


def test_bare_error_after_data_events() -> None:
    """A bare multi-line error object after the data events becomes an error event."""
    *chunks, error = parse(MID_STREAM_ERROR)
    assert [chunk.text for chunk in chunks] == ["Okay", ""]
    assert error.is_error
    assert error.classified is not None
    assert (error.classified.outcome.kind, error.classified.status) == (K.OVERLOADED, 503)
    assert error.classified.message == "The model is overloaded. Please try again later."
    assert error.json == {"error": {"code": 503, "status": "UNAVAILABLE",
                                    "message": "The model is overloaded. Please try again later."}}


def test_bare_error_is_reported_before_close() -> None:
    """The bare error is delivered by feed as soon as its braces balance."""
    parser = SSEParser()
    events = parser.feed(MID_STREAM_ERROR)
    assert len(events) == 3
    assert events[-1].is_error


def test_bare_array_wrapped_error() -> None:
    """A pretty-printed [{"error": ...}] array in the stream is an error event."""
    (event,) = parse((FIXTURES / "list_wrapped_429.json").read_bytes())
    assert event.classified is not None
    assert (event.classified.outcome.kind, event.classified.status) == (K.SHARED_CAPACITY, 429)


def test_data_event_carrying_an_error() -> None:
    """An error object in a data event is classified by its inner code."""
    error = (FIXTURES / "429_daily_cap_2026.json").read_bytes()
    (event,) = parse(b"data: " + json.dumps([json.loads(error)]).encode() + b"\r\n\r\n")
    assert event.classified is not None
    assert event.classified.outcome.kind is K.RATE_LIMITED_DAY
    assert event.classified.outcome.retry_after == 39.0


def test_braces_inside_strings_do_not_count() -> None:
    """Brackets and escaped quotes inside JSON strings do not end a bare value early."""
    bare = (b'{\n  "error": {\n    "code": 500,\n    "message": "a } ] \\" { [ b",\n'
            b'    "status": "INTERNAL"\n  }\n}\n')
    (event,) = parse(bare)
    assert event.classified is not None
    assert event.classified.message == 'a } ] " { [ b'


def test_garbage_line_is_bad_response_and_parsing_goes_on() -> None:
    """A line that is neither SSE nor JSON is a BAD_RESPONSE event; later events still parse."""
    first, second, third = parse(b"<html>oops</html>\r\n", CAPTURE)
    assert first.classified is not None
    assert first.classified.outcome.kind is K.BAD_RESPONSE
    assert "<html>" not in (first.classified.message or "")
    assert (second.text, third.text) == ("1\n2\n", "3\n4\n5")


@pytest.mark.parametrize("payload", [b"data: {not json\n\n", b"data: 42\n\n",
                                     b"data: [1]\n\n", b'data: {"error": "x"}\n\n'])
def test_unreadable_data_is_bad_response(payload: bytes) -> None:
    """A data event that is not a JSON object or a proper error is BAD_RESPONSE."""
    (event,) = parse(payload)
    assert event.classified is not None
    assert event.classified.outcome.kind is K.BAD_RESPONSE


def test_comments_and_other_fields_are_ignored() -> None:
    """Comments, event/id/retry fields and whitespace-only lines produce nothing."""
    stream = b": keep-alive\r\nevent: message\r\nid: 1\r\nretry: 10\r\n   \r\n" + CAPTURE
    assert parse(stream) == parse(CAPTURE)


def test_multi_line_data_is_joined() -> None:
    """Several data lines of one event are joined with newlines before parsing."""
    (event,) = parse(b'data: {"candidates":\ndata: [{"content": {"parts": [{"text": "x"}]}}]}\n\n')
    assert event.text == "x"


def test_close_flushes_an_unterminated_event() -> None:
    """A stream that ends without its final blank line, or mid-line, still yields the event."""
    assert parse(CAPTURE.removesuffix(b"\r\n\r\n")) == parse(CAPTURE)
    assert parse(CAPTURE.removesuffix(b"\r\n")) == parse(CAPTURE)
    assert parse(CAPTURE, close=False) == parse(CAPTURE)


def test_truncated_bare_value_is_bad_response() -> None:
    """A stream that ends inside a bare JSON value reports BAD_RESPONSE on close."""
    parser = SSEParser()
    assert parser.feed(MID_STREAM_ERROR[:-20]) != []  # the two chunks
    (event,) = parser.close()
    assert event.classified is not None
    assert event.classified.outcome.kind is K.BAD_RESPONSE


def test_safety_finish_chunk_is_a_chunk_the_client_can_tell() -> None:
    """A chunk with a safety finish reason is a chunk event that classify_chunk calls BLOCKED."""
    (event,) = parse(b'data: {"candidates": [{"finishReason": "SAFETY"}]}\r\n\r\n')
    assert not event.is_error
    assert event.finish_reason == "SAFETY"
    assert classify_chunk(event.json).outcome.kind is K.BLOCKED


def test_oversized_line_is_dropped_and_parsing_recovers() -> None:
    """A line longer than max_event_bytes is one BAD_RESPONSE event; the next event parses."""
    parser = SSEParser(max_event_bytes=1000)
    events = parser.feed(b"data: " + b"x" * 600)
    events += parser.feed(b"y" * 600)
    events += parser.feed(b"z" * 600 + b"\n\n" + CAPTURE)
    assert events[0].classified is not None
    assert events[0].classified.outcome.kind is K.BAD_RESPONSE
    assert [event.text for event in events[1:]] == ["1\n2\n", "3\n4\n5"]


def test_oversized_event_and_bare_value_are_dropped() -> None:
    """Too many data lines or too long a bare value give BAD_RESPONSE instead of growing."""
    parser = SSEParser(max_event_bytes=100)
    events = parser.feed(b"data: 1234567890123456789012345678901234567890\n" * 4 + b"\n")
    events += parser.feed(b"{\n" + b'  "a": 1234567890123456789012345678901234567890,\n' * 4)
    assert [event.classified.outcome.kind for event in events if event.classified] == [
        K.BAD_RESPONSE, K.BAD_RESPONSE]


def test_illegal_calls_raise() -> None:
    """feed after close, or of something that is not bytes, is a UsageError; close is idempotent."""
    parser = SSEParser()
    with pytest.raises(UsageError):
        parser.feed("data: {}")  # type: ignore[arg-type]
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(UsageError):
        parser.feed(b"data: {}\n\n")
    with pytest.raises(UsageError):
        SSEParser(max_event_bytes=0)


# ---------------------------------------------------------------------------------------------
# Properties

texts = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A valid stream: chunks with any text, CRLF or LF framing, maybe a trailing bare error."""
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    chunks = [{"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                               "index": 0}],
               "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": index}}
              for index, text in enumerate(draw(st.lists(texts, max_size=5)))]
    stream = b"".join(b"data: " + json.dumps(chunk).encode() + newline * 2 for chunk in chunks)
    if draw(st.booleans()):
        error = {"error": {"code": draw(st.sampled_from([429, 500, 503])),
                           "message": draw(texts), "status": "UNAVAILABLE"}}
        stream += json.dumps(error, indent=2).encode().replace(b"\n", newline) + newline
    return stream


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_of_a_valid_stream_gives_the_same_events(stream: bytes, cuts: list[int]) -> None:
    """Feeding a valid stream in any pieces gives the events of feeding it whole."""
    whole = parse(stream)
    assert parse(*split(stream, cuts)) == whole
    assert [event.is_error for event in whole].count(True) <= 1


@given(stream=streams())
def test_valid_stream_texts_round_trip(stream: bytes) -> None:
    """The chunk texts of a valid stream come back exactly, errors aside."""
    expected = [json.loads(line.removeprefix(b"data: "))["candidates"][0]["content"]["parts"][0]
                ["text"] for line in stream.splitlines() if line.startswith(b"data: ")]
    assert [event.text for event in parse(stream) if not event.is_error] == expected


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_bytes_parse_without_raising_and_split_independently(
        data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes never make the parser raise, and how they are split does not matter."""
    whole = parse(data)
    # repr, not ==: a NaN inside parsed JSON is never equal to itself.
    assert repr(parse(*split(data, cuts))) == repr(whole)


lines = st.sampled_from([b"data: {}", b"data: [", b"", b"{", b"}", b"[", b"]", b'"', b": c",
                         b'data: {"error": {"code": 503}}', b"garbage", b'  "x": "}"'])


@given(chosen=st.lists(lines, max_size=12), newline=st.sampled_from([b"\r\n", b"\n"]),
       cuts=st.lists(st.integers(0, 400), max_size=8),
       limit=st.none() | st.integers(1, 60))
def test_line_soup_never_raises(chosen: list[bytes], newline: bytes, cuts: list[int],
                                limit: int | None) -> None:
    """Any mix of SSE-ish, JSON-ish and garbage lines parses alike however split, any size limit."""
    data = newline.join(chosen)
    events: list[Any] = parse(data, limit=limit)
    assert repr(parse(*split(data, cuts), limit=limit)) == repr(events)
    for event in events:
        assert event.is_error or isinstance(event.json, dict)
