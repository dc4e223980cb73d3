"""A bare prompt goes on the wire as its contents list would (its shortcut, kept for the client's
speed target, gives what the general path gives); results are immutable values."""

from __future__ import annotations

import json

from helpers import Server, make_client
from hypothesis import given
from hypothesis import strategies as st
from virtual_clock import VirtualClock

from keysched._client import _encoded, _generation
from keysched._wire import generate_body

any_text = st.text(st.characters(blacklist_categories=()))  # surrogates and controls too


@given(prompt=any_text)
def test_a_bare_prompt_is_encoded_and_estimated_like_its_body(prompt: str) -> None:
    """The bare prompt's payload and token estimate are the general path's, byte for byte."""
    assert _generation(prompt, None, None, None, None) == _encoded(generate_body(prompt))


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


def test_results_are_immutable_and_their_repr_leaves_out_the_raw_answer() -> None:
    """A result or chunk prints every field but the raw JSON, and cannot be changed."""
    import attrs
    import pytest

    from keysched import AttemptRecord, GenerateResult, OutcomeKind, StreamChunk, Usage

    record = AttemptRecord(number=1, key="k", model="m", outcome=OutcomeKind.SUCCESS, status=200)
    result = GenerateResult(text="t", model="m", key="k", attempts=(record,),
                            usage=Usage(prompt_tokens=1), raw={"private": "x"})
    chunk = StreamChunk(text="t", model="m", key="k", index=0, raw={"private": "x"})
    for value in (result, chunk):
        assert "private" not in repr(value)
        assert "text='t'" in repr(value)
        assert "key='k'" in repr(value)
    assert repr(result).startswith("GenerateResult(text='t', model='m', key='k', attempts=(")
    with pytest.raises(AttributeError):
        result.text = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        chunk.text = "other"  # type: ignore[misc]
