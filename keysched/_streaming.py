"""One attempt of `KeyedClient.stream`: its chunks as they arrive, then how it ended.

Theory of operation: `KeyedClient.stream` runs the driver loop of `keysched._session` like every
call; its attempt is a `StreamAttempt`.  `StreamAttempt.chunks` opens the answer, parses it with
the SSE parser and yields each chunk; once the generator is done, `StreamAttempt.classified`
says how the attempt ended, for `Session.report`: an error answer or event as classified, a
timeout or a break, a safety stop, an empty stream, a stream cut before its last chunk, or a
success with its usage.

The first chunk must arrive within the first bound (the attempt's timeout, capped by the
request's deadline), each later one within the attempt's timeout of the one before.  Every wait
for the server is bounded that way, not by the HTTP library's per-read timers: bytes that
complete no chunk (keep-alive comments, an event never finished) are not progress.

Decision where the issue was silent: a failure after the last chunk (one with a
``finishReason``) loses nothing, so the attempt still counts as answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from keysched._decisions import Dispatch
from keysched._errors import StreamInterruptedError, UsageError
from keysched._outcomes import Outcome, OutcomeKind
from keysched._results import AttemptRecord, StreamChunk
from keysched._session import CLOSED, Session, failure
from keysched._sse import SSEParser, StreamEvent
from keysched._transport import (
    ResponseTooLarge,
    StreamResponse,
    TransportFailure,
    TransportTimeout,
)
from keysched._wire import SAFETY_FINISH_REASONS, Classified, Usage, classify

__all__ = ["StreamAttempt", "answered", "interrupted"]


class StreamAttempt:
    """One streamed attempt.

    Args:
        session: the request's session.
        dispatch: the attempt.
        tokens: the request's input-token estimate (for classifying an error answer).
        timeout: the longest wait for each chunk after the first.
        first_timeout: the longest wait for the first chunk.
    """

    def __init__(self, session: Session, dispatch: Dispatch, *, tokens: int, timeout: float,
                 first_timeout: float) -> None:
        self._session = session
        self._dispatch = dispatch
        self._tokens = tokens
        self._timeout = timeout
        self._wait = first_timeout  # the bound on the wait now running
        self._due = 0.0  # when that wait ends, on the event loop's clock
        self.delivered = 0
        self._usage: Usage | None = None
        self._blocked: str | None = None  # a safety finish reason
        self._finished = False  # the last chunk (one with a finishReason) has arrived
        self._verdict: Classified | None = None  # an error answer, error event or failure

    async def chunks(self, opening: contextlib.AbstractAsyncContextManager[StreamResponse]
                     ) -> AsyncGenerator[StreamChunk, None]:
        """Open the answer with `opening` and yield its chunks.

        Raises:
            UsageError: the client was closed while the caller held a chunk.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        self._due = loop.time() + self._wait
        session = self._session
        task = session.task = asyncio.current_task()  # for `aclose` to cancel
        try:
            async with contextlib.AsyncExitStack() as stack:
                pieces = await self._open(stack, opening)
                parser = SSEParser()
                while pieces is not None:
                    async with asyncio.timeout_at(self._due):
                        data = await anext(pieces, None)
                    for event in parser.close() if data is None else parser.feed(data):
                        if event.classified is not None:
                            self._verdict = event.classified
                            return
                        session.task = None  # the caller's own code runs: not ours to cancel
                        yield self._take(event)
                        if session.closed:
                            raise UsageError(CLOSED)
                        session.task = task
                        self._due = loop.time() + self._wait
                    if data is None:
                        break
        except (TransportTimeout, TimeoutError):
            if not self._finished:
                self._verdict = failure(OutcomeKind.TIMEOUT, f"no chunk within {self._wait:.1f}s")
        except TransportFailure as exc:
            if not self._finished:
                self._verdict = failure(OutcomeKind.CONNECTION_ERROR, f"{exc} while streaming")
        except ResponseTooLarge as exc:
            self._verdict = session.too_large(exc)
        finally:
            session.io_ended()

    async def _open(self, stack: contextlib.AsyncExitStack,
                    opening: contextlib.AbstractAsyncContextManager[StreamResponse]
                    ) -> AsyncIterator[bytes] | None:
        """The answer's bytes; None when it is an error answer (then classified)."""
        import asyncio

        async with asyncio.timeout_at(self._due):
            response = await stack.enter_async_context(opening)
            if response.status != 200:
                raw = await response.read()
                self._verdict = classify(response.status, raw, response.headers,
                                         input_tokens=self._tokens)
                return None
        return await stack.enter_async_context(contextlib.aclosing(response.iter_bytes()))

    def _take(self, event: StreamEvent) -> StreamChunk:
        """Note what a chunk's event says, and make the chunk."""
        self._usage = event.usage or self._usage
        if event.finish_reason is not None:
            self._finished = True
            if event.finish_reason in SAFETY_FINISH_REASONS:
                self._blocked = event.finish_reason
        chunk = StreamChunk(text=event.text, model=self._dispatch.model,
                            key=self._dispatch.key.label or "", index=self.delivered,
                            finish_reason=event.finish_reason, usage=event.usage, raw=event.json)
        self.delivered += 1
        self._wait = self._timeout
        return chunk

    @property
    def classified(self) -> Classified:
        """How the attempt ended (read once `chunks` is done)."""
        if self._verdict is not None:
            return self._verdict
        if self._blocked is None:
            if self.delivered == 0:
                return failure(OutcomeKind.EMPTY, "the stream ended without a chunk")
            if not self._finished:
                return failure(OutcomeKind.CONNECTION_ERROR,
                               "the stream ended before its last chunk (no finishReason)")
        return answered(self._blocked, self._usage)


def answered(blocked: str | None, usage: Usage | None) -> Classified:
    """A stream read to its end: a safety stop (`blocked`, its finish reason), or a success."""
    if blocked is not None:
        return Classified(outcome=Outcome(kind=OutcomeKind.BLOCKED), status=200,
                          finish_reason=blocked)
    return Classified(outcome=Outcome(kind=OutcomeKind.SUCCESS,
                                      input_tokens=usage.prompt_tokens if usage else None,
                                      output_tokens=usage.output_tokens if usage else None),
                      status=200, usage=usage)


def interrupted(dispatch: Dispatch, classified: Classified, delivered: int,
                attempts: list[AttemptRecord]) -> StreamInterruptedError:
    """The error for a stream that broke after `delivered` chunks reached the caller."""
    return StreamInterruptedError(
        f"the stream from {dispatch.model} via {dispatch.key.label} broke after "
        f"{delivered} chunk(s): {classified.outcome.kind.value}"
        f"{f' ({classified.message})' if classified.message else ''}",
        chunks_delivered=delivered, status=classified.status or None,
        google_status=classified.google_status, service_message=classified.message,
        model=dispatch.model, key=dispatch.key.label, attempts=attempts)
