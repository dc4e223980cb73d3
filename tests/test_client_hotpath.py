"""The shortcuts of `KeyedClient`'s hot path give exactly what the general code gives."""

from __future__ import annotations

import json
import pickle
import weakref
from typing import Any

import attrs
import pytest
from helpers import Server, make_client
from hypothesis import given
from hypothesis import strategies as st
from virtual_clock import VirtualClock

from keysched import AttemptRecord, GenerateResult, OutcomeKind, StreamChunk, Usage
from keysched._client import _encode, _prompt_payload
from keysched._results import _build_chunk, _build_record, _build_result
from keysched._wire import generate_body

any_text = st.text(st.characters(blacklist_categories=()))  # surrogates and controls too


@given(prompt=any_text)
def test_a_bare_prompt_is_encoded_like_its_body(prompt: str) -> None:
    """The bare prompt's payload is the generic encoding of its body, byte for byte."""
    assert _prompt_payload(prompt) == _encode(generate_body(prompt))


async def test_a_bare_prompt_sends_the_usual_body() -> None:
    """On the wire, a bare prompt and the same prompt as a contents list send the same body."""
    vc = VirtualClock()
    server = Server()
    async with make_client(server, vc) as client:
        await client.generate('say "hi" \u00e9\n')
        await client.generate([{"role": "user", "parts": [{"text": 'say "hi" \u00e9\n'}]}])
    first, second = (request.content for request in server.requests)
    assert first == second
    assert json.loads(first) == generate_body('say "hi" \u00e9\n')


RECORD: dict[str, Any] = {
    "number": 1, "key": "k", "model": "m", "outcome": OutcomeKind.SUCCESS, "status": 200,
    "google_status": None, "message": None, "retry_after": 1.5, "started": 1.0, "ended": 2.0}
VALUES: dict[type, dict[str, Any]] = {
    AttemptRecord: RECORD,
    GenerateResult: {"text": "t", "model": "m", "key": "k",
                     "attempts": (AttemptRecord(**RECORD),), "usage": Usage(prompt_tokens=1),
                     "finish_reason": "STOP", "block_reason": None, "raw": {"secret": "x"}},
    StreamChunk: {"text": "t", "model": "m", "key": "k", "index": 0, "finish_reason": None,
                  "usage": None, "raw": {"secret": "x"}},
}
BUILDERS = {AttemptRecord: _build_record, GenerateResult: _build_result,
            StreamChunk: _build_chunk}


@pytest.mark.parametrize("cls", list(VALUES))
def test_result_builders_make_the_public_classes(cls: Any) -> None:
    """Results built on the hot path are the public frozen classes, equal to the constructor's
    and printed the same (the raw answer left out)."""
    built = BUILDERS[cls](*VALUES[cls].values())
    made = cls(**VALUES[cls])
    assert type(built) is cls
    assert built == made
    assert repr(built) == repr(made)
    assert "secret" not in repr(built)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.key = "other"
    assert attrs.asdict(built) == attrs.asdict(made)
    assert pickle.loads(pickle.dumps(built)) == made
    assert weakref.ref(built)() is built


def test_aiohttp_timeouts_are_built_as_by_keywords() -> None:
    """The aiohttp backend's positional `ClientTimeout` equals the keyword-built one; a class
    of another shape is built by keywords."""
    import dataclasses

    import aiohttp

    from keysched._transport import _limits_maker

    assert _limits_maker(aiohttp.ClientTimeout)(7.5, 2.0) == aiohttp.ClientTimeout(
        total=7.5, connect=2.0, sock_read=2.0)

    @dataclasses.dataclass(frozen=True)
    class Other:
        total: float | None = None
        connect: float | None = None
        sock_read: float | None = None

    assert _limits_maker(Other)(7.5, 2.0) == Other(total=7.5, connect=2.0, sock_read=2.0)


def test_a_builder_without_a_slots_base_stores_through_the_descriptors() -> None:
    """A frozen class whose fields are not in a slots base of their own still gets a builder
    (slower, same instances)."""
    from keysched._wire import _builder

    @attrs.frozen(kw_only=True)
    class Plain:
        a: int
        b: str = "x"

    build = _builder(Plain)
    assert "_twin" not in build.__code__.co_names
    assert build(1, "y") == Plain(a=1, b="y")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        build(1, "y").a = 2
