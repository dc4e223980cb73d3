"""keysched.driver: the public surface for code that drives the scheduling core itself.

Theory of operation: `KeyedClient` and the simulator are two drivers of one sans-IO `Scheduler`.
A driver submits requests, reports each attempt's `Outcome`, polls for `Decision`s (`Dispatch`,
`Finish`, `Fail`) and sleeps (or jumps its virtual clock) until `Scheduler.next_deadline()`.
This module gathers what such a driver needs: the scheduler, its decisions, the outcomes it
takes, the outcome -> action table a `Policy` carries, the selectors that pick a key, and the
quota facts (`KnownLimit`, `Violation`, `next_pacific_midnight`) a world model shares with it.
Configuration (`PoolConfig`, `Key`, `Limit`, `RetryPolicy`) and snapshots and events
(`PoolSnapshot`, `PoolEvent` ...) come from `keysched` itself, which client users import too.

Importing it is cheap: nothing here (nor `keysched`'s own import) loads asyncio or httpx.

Decisions where the issue was silent:

- `Policy` is here and in `keysched`: a client user passes one to `KeyedClient`, a driver
  author builds one from selectors and a table.  It is the same object.
- `LaneOracle`, `Verdict` and its three usual values (`SERVES`, `SKIPS`, `BLOCKED`) are here
  because a `Selector` of one's own asks `LaneOracle.verdict` and must read its answer;
  `SelectorFactory` is the type of `Policy.selector`.
- `dimension_of`, `MAX_QUOTA_VALUE` and the scheduler's private helpers stay private.
- Sharing one pool among processes: `CoreFacts` (the seam between a core and a store's
  facts), `SharedPool` (the store's rules in plain Python, with time passed in) and the records
  a store takes and gives (`Claim`, `Grant`, `Settlement`), for a driver of its own (the
  simulator's `sim.processes`).  The stores themselves are client API (`keysched`).
"""

from keysched._budget import KnownLimit
from keysched._core import Scheduler
from keysched._core_facts import CoreFacts
from keysched._decisions import Decision, Dispatch, Fail, FailReason, Finish
from keysched._outcomes import Outcome, OutcomeKind, QuotaDimension, Violation, violation_of
from keysched._pacific import next_pacific_midnight
from keysched._selection import (
    BLOCKED,
    SERVES,
    SKIPS,
    LaneOracle,
    LeastLoaded,
    Policy,
    RandomChoice,
    RoundRobin,
    Selector,
    SelectorFactory,
    Verdict,
)
from keysched._store import Claim, Grant, Settlement, SharedPool
from keysched._table import DEFAULT_ACTIONS, Action, Effect, Next

__all__ = [
    "BLOCKED",
    "DEFAULT_ACTIONS",
    "SERVES",
    "SKIPS",
    "Action",
    "Claim",
    "CoreFacts",
    "Decision",
    "Dispatch",
    "Effect",
    "Fail",
    "FailReason",
    "Finish",
    "Grant",
    "KnownLimit",
    "LaneOracle",
    "LeastLoaded",
    "Next",
    "Outcome",
    "OutcomeKind",
    "Policy",
    "QuotaDimension",
    "RandomChoice",
    "RoundRobin",
    "Scheduler",
    "Selector",
    "SelectorFactory",
    "Settlement",
    "SharedPool",
    "Verdict",
    "Violation",
    "next_pacific_midnight",
    "violation_of",
]
