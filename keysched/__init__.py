"""keysched: spread Gemini API calls over a pool of API keys and models.

Three public modules, one per audience, and two for what a client records and shows:

- `keysched` (this one), for client users: `KeyedClient`, its configuration (`PoolConfig`,
  `Key`, `Limit`, `RetryPolicy`, `Policy`), its results, errors, snapshots and events, the
  integrations that put the pool under an SDK (`PoolTransport`, `PoolThread`, `genai_client`),
  and the `Recorder` of the outcome trace.
- `keysched.driver`, for code that drives the scheduling core itself (the simulator, another
  event loop): `Scheduler`, its decisions and outcomes, the outcome table and the selectors.
- `keysched.wire`, for code that speaks the Gemini wire format: request building,
  classification, the SSE parser and the token estimates.
- `keysched.trace`, the outcome trace's format (the client and the simulator write it, replay
  reads it); `keysched.metrics`, the pool as a Prometheus collector (the ``metrics`` extra).

Everything else (`keysched._*`) is private and may change without notice; a test locks the
five `__all__` lists.

Decisions where the issue was silent:

- `OutcomeKind`, `Usage` and `KnownLimit` are here as well as in `keysched.driver` or
  `keysched.wire`: results (`AttemptRecord.outcome`, `GenerateResult.usage`) and snapshots
  (`GroupSnapshot.limits`) hold them, so a client user reads them.
- The names that used to be here and now live in `keysched.driver` or `keysched.wire`
  (`Scheduler`, `Dispatch`, `classify`, `SSEParser` ...) still import from `keysched`, without a
  warning, for code written before the split; they are no longer in `__all__`, and new code
  imports them from their module.
"""

from typing import TYPE_CHECKING, Any

from keysched._budget import KnownLimit
from keysched._config import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_MODELS,
    Key,
    Limit,
    PoolConfig,
    RetryPolicy,
)
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
from keysched._outcomes import OutcomeKind
from keysched._results import AttemptRecord, GenerateResult, StreamChunk
from keysched._selection import Policy
from keysched._snapshot import GroupSnapshot, LaneSnapshot, LaneState, PoolEvent, PoolSnapshot
from keysched._wire import Usage

if TYPE_CHECKING:
    from keysched._client import KeyedClient
    from keysched._integrations import PoolTransport
    from keysched._recorder import Recorder
    from keysched._redis_store import RedisStore
    from keysched._store import MemoryStore, Store
    from keysched._threaded import PoolThread, genai_client

    # The names kept for code written before keysched.driver and keysched.wire (see above).
    from keysched.driver import DEFAULT_ACTIONS as DEFAULT_ACTIONS
    from keysched.driver import Action as Action
    from keysched.driver import Decision as Decision
    from keysched.driver import Dispatch as Dispatch
    from keysched.driver import Effect as Effect
    from keysched.driver import Fail as Fail
    from keysched.driver import FailReason as FailReason
    from keysched.driver import Finish as Finish
    from keysched.driver import LeastLoaded as LeastLoaded
    from keysched.driver import Next as Next
    from keysched.driver import Outcome as Outcome
    from keysched.driver import QuotaDimension as QuotaDimension
    from keysched.driver import RandomChoice as RandomChoice
    from keysched.driver import RoundRobin as RoundRobin
    from keysched.driver import Scheduler as Scheduler
    from keysched.driver import Selector as Selector
    from keysched.driver import Violation as Violation
    from keysched.driver import next_pacific_midnight as next_pacific_midnight
    from keysched.wire import Classified as Classified
    from keysched.wire import SSEParser as SSEParser
    from keysched.wire import StreamEvent as StreamEvent
    from keysched.wire import classify as classify

__version__ = "0.1.0"

# The client pulls in asyncio and httpx; the configuration, the core and the wire layer do not.
# Loading it on first use keeps `import keysched` cheap for code that only needs the pure parts
# (the simulator, a dashboard reading snapshots).
_LAZY = {"KeyedClient": "keysched._client", "PoolThread": "keysched._threaded",
         "PoolTransport": "keysched._integrations", "Recorder": "keysched._recorder",
         "genai_client": "keysched._threaded", "MemoryStore": "keysched._store",
         "Store": "keysched._store", "RedisStore": "keysched._redis_store"}
_LAZY.update(dict.fromkeys(
    ["DEFAULT_ACTIONS", "Action", "Decision", "Dispatch", "Effect", "Fail", "FailReason",
     "Finish", "LeastLoaded", "Next", "Outcome", "QuotaDimension", "RandomChoice", "RoundRobin",
     "Scheduler", "Selector", "Violation", "next_pacific_midnight"], "keysched.driver"))
_LAZY.update(dict.fromkeys(["Classified", "SSEParser", "StreamEvent", "classify"],
                           "keysched.wire"))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keysched' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_MODELS",
    "AttemptRecord",
    "AttemptsExhaustedError",
    "CapacityError",
    "ConfigurationError",
    "EmptyResponseError",
    "GenerateResult",
    "GroupSnapshot",
    "Key",
    "KeyedClient",
    "KeyschedError",
    "KnownLimit",
    "LaneSnapshot",
    "LaneState",
    "Limit",
    "MemoryStore",
    "NoUsableKeyError",
    "OutcomeKind",
    "Policy",
    "PoolConfig",
    "PoolEvent",
    "PoolSnapshot",
    "PoolThread",
    "PoolTransport",
    "Recorder",
    "RedisStore",
    "RequestError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServiceError",
    "Store",
    "StreamChunk",
    "StreamInterruptedError",
    "Usage",
    "UsageError",
    "__version__",
    "genai_client",
]
