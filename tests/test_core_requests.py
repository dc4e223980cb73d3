"""The request state machine: every (state, input) pair is legal per the table or refused intact."""

from __future__ import annotations

import itertools

import pytest

from keysched._errors import UsageError
from keysched._requests import (
    TRANSITIONS,
    WAITS,
    Request,
    RequestInput,
    Requests,
    RequestState,
)


def _book_with(state: RequestState) -> tuple[Requests, Request]:
    """A book holding one request forced into `state` (with the waiting count to match)."""
    book = Requests()
    request = book.new((0,), 10, 100.0, True, 90.0)
    request.state = state
    book.waiting = 1 if state in WAITS else 0
    return book, request


def _counts(book: Requests) -> tuple[int, ...]:
    return (book.waiting, book.submitted, book.finished, book.failed, book.cancelled,
            len(book.open))


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RequestState, RequestInput)))
def test_every_pair_is_legal_or_refused_without_change(state: RequestState,
                                                       event: RequestInput) -> None:
    """A legal pair leads where the table says and keeps the counts true; any other raises
    UsageError naming both, and changes neither the request nor the counts."""
    book, request = _book_with(state)
    before = _counts(book)
    if (state, event) not in TRANSITIONS:
        with pytest.raises(UsageError, match=f"{event.name} is illegal in state {state.name}"):
            book.move(request, event)
        assert request.state is state
        assert _counts(book) == before
        return
    book.move(request, event)
    after = TRANSITIONS[state, event]
    assert request.state is after
    assert book.waiting == (1 if after in WAITS else 0)
    ended = after is RequestState.ENDED
    assert (request.id in book.open) is not ended
    assert (book.finished, book.failed, book.cancelled) == (
        int(ended and event is RequestInput.ANSWER), int(ended and event is RequestInput.FAIL),
        int(ended and event is RequestInput.CANCEL))


def test_ended_is_final_and_new_only_queues() -> None:
    """Nothing leaves ENDED, and a NEW request can only be queued."""
    assert not [pair for pair in TRANSITIONS if pair[0] is RequestState.ENDED]
    assert [pair[1] for pair in TRANSITIONS if pair[0] is RequestState.NEW] == [
        RequestInput.QUEUE]


def test_every_state_but_new_and_ended_can_be_cancelled_and_failed() -> None:
    """Every request the caller can see can be cancelled, and failed, exactly once."""
    for state in set(RequestState) - {RequestState.NEW, RequestState.ENDED}:
        assert TRANSITIONS[state, RequestInput.CANCEL] is RequestState.ENDED
        assert TRANSITIONS[state, RequestInput.FAIL] is RequestState.ENDED


def test_a_life_counts_once() -> None:
    """Submit, queue, dispatch, back off, queue again, answer: counted once as finished."""
    book = Requests()
    request = book.new((0,), 0, 10.0, True, 10.0)
    for event in (RequestInput.QUEUE, RequestInput.DISPATCH, RequestInput.BACK_OFF,
                  RequestInput.READY, RequestInput.DISPATCH, RequestInput.ANSWER):
        book.move(request, event)
    assert _counts(book) == (0, 1, 1, 0, 0, 0)
    assert book.issued(request.id)
    assert not book.issued(request.id + 1)
