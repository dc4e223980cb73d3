"""A bare prompt goes on the wire as its contents list would; results are immutable values."""

from __future__ import annotations

import json

from helpers import Server, make_client
from virtual_clock import VirtualClock

from keysched._wire import generate_body


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
