"""keysched.wire: the public surface of the Gemini wire format (pure: bytes and JSON in, values out).

Theory of operation: a driver that speaks HTTP itself (or a fake server that must answer as
Google does) builds a call with `endpoint_url`, `request_headers` and `generate_body`, estimates
its input tokens with `estimate_tokens` (`openai_tokens` for an OpenAI-compatible body), and
turns the answer into a `Classified` (the core's `Outcome` plus Google's status, message, text
and `Usage`) with `classify`, or a streamed answer into `StreamEvent`s with an `SSEParser`.
Nothing here performs I/O, reads a clock or draws random numbers; importing it loads neither
asyncio nor httpx.

Decisions where the issue was silent:

- `API_BASE` is public: `endpoint_url` needs a base, and a driver for the real API uses it.
- The countTokens, embedding and ListModels helpers, and `classify_chunk`, stay private: only
  `KeyedClient` and the SDK transport use them today; they can be added here when a user
  needs them (removing a public name is harder than adding one).
"""

from keysched._routes import openai_tokens
from keysched._sse import SSEParser, StreamEvent
from keysched._wire import (
    API_BASE,
    Classified,
    Usage,
    classify,
    endpoint_url,
    estimate_tokens,
    generate_body,
    request_headers,
)

__all__ = [
    "API_BASE",
    "Classified",
    "SSEParser",
    "StreamEvent",
    "Usage",
    "classify",
    "endpoint_url",
    "estimate_tokens",
    "generate_body",
    "openai_tokens",
    "request_headers",
]
