"""keysched: spread Gemini API calls over a pool of API keys and models.

The parts, from the bottom up: `PoolConfig` and friends (validated configuration), `Scheduler`
(the pure scheduling core), the wire layer (requests and response classification) and
`KeyedClient` (the asyncio + httpx driver).
"""

from typing import TYPE_CHECKING, Any

from keysched._budget import KnownLimit
from keysched._config import Key, Limit, PoolConfig, RetryPolicy
from keysched._core import Scheduler
from keysched._decisions import Decision, Dispatch, Fail, FailReason, Finish
from keysched._errors import (
    AttemptsExhaustedError,
    CapacityError,
    ConfigurationError,
    EmptyResponseError,
    KeyschedError,
    NoUsableKeyError,
    RequestError,
    ResponseTooLargeError,
    ServiceError,
    StreamInterruptedError,
    UsageError,
)
from keysched._outcomes import Outcome, OutcomeKind, QuotaDimension, Violation
from keysched._pacific import next_pacific_midnight
from keysched._results import AttemptRecord, GenerateResult, StreamChunk
from keysched._selection import LeastLoaded, Policy, RandomChoice, RoundRobin, Selector
from keysched._snapshot import GroupSnapshot, LaneSnapshot, LaneState, PoolEvent, PoolSnapshot
from keysched._sse import SSEParser, StreamEvent
from keysched._table import DEFAULT_ACTIONS, Action, Effect, Next
from keysched._wire import Classified, Usage, classify

if TYPE_CHECKING:
    from keysched._client import DEFAULT_MODELS, KeyedClient
    from keysched._integrations import PoolTransport
    from keysched._recorder import Recorder
    from keysched._threaded import PoolThread, genai_client

__version__ = "0.1.0"

# The client pulls in asyncio and httpx; the configuration, the core and the wire layer do not.
# Loading it on first use keeps `import keysched` cheap for code that only needs the pure parts
# (the simulator, a dashboard reading snapshots).
_LAZY = {"DEFAULT_MODELS": "keysched._client", "KeyedClient": "keysched._client",
         "PoolThread": "keysched._threaded", "PoolTransport": "keysched._integrations",
         "Recorder": "keysched._recorder",
         "genai_client": "keysched._threaded"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keysched' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "DEFAULT_ACTIONS",
    "DEFAULT_MODELS",
    "Action",
    "AttemptRecord",
    "AttemptsExhaustedError",
    "CapacityError",
    "Classified",
    "ConfigurationError",
    "Decision",
    "Dispatch",
    "Effect",
    "EmptyResponseError",
    "Fail",
    "FailReason",
    "Finish",
    "GenerateResult",
    "GroupSnapshot",
    "Key",
    "KeyedClient",
    "KeyschedError",
    "KnownLimit",
    "LaneSnapshot",
    "LaneState",
    "LeastLoaded",
    "Limit",
    "Next",
    "NoUsableKeyError",
    "Outcome",
    "OutcomeKind",
    "Policy",
    "PoolConfig",
    "PoolEvent",
    "PoolSnapshot",
    "PoolThread",
    "PoolTransport",
    "QuotaDimension",
    "RandomChoice",
    "Recorder",
    "RequestError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "RoundRobin",
    "SSEParser",
    "Scheduler",
    "Selector",
    "ServiceError",
    "StreamChunk",
    "StreamEvent",
    "StreamInterruptedError",
    "Usage",
    "UsageError",
    "Violation",
    "__version__",
    "classify",
    "genai_client",
    "next_pacific_midnight",
]
