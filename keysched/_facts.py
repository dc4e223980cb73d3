"""The facts one process learns about the pool that the others need: plain records.

Theory of operation
-------------------
Many processes may share one pool (the design's "many processes, one pool").  What one of them
learns the hard way (a key is revoked, a group is benched until midnight, a limit is 429 and
its value) the others should not learn again by collecting the same errors.  These records are
that knowledge, by name (project, model, key *label*: never a secret), in core time:

- `Cooldown`: a quota group (project and model), a lane (key and model) or a model is cooling
  until ``until``.  Merged by the later end: a cooldown is never shortened.
- `DisabledKey`: a key is unusable for good.
- `LearnedLimit`: a limit of (project, model) taught by a 429; a configured limit still wins.
- `Usage`: a request another process sent on (project, model): it counts in the group's budget.

`Scheduler.shared_facts(now)` lists the first three as they stand (what is in force, not a log:
merging is idempotent, so a store may keep the latest and hand it to everyone).
`Scheduler.learn(now, fact)` takes any of the four back.  Usage is not in `shared_facts`: each
dispatch is shared as it happens (the driver sees every `Dispatch`), which counts exactly where
a periodic total would count twice.

The records are attrs classes (frozen, keyword-only) so a store can serialise them with
`attrs.asdict` and rebuild them with ``Cls(**fields)``.
"""

from __future__ import annotations

import attrs

from keysched._outcomes import QuotaDimension

__all__ = ["Cooldown", "DisabledKey", "LearnedLimit", "SharedFact", "Usage"]


@attrs.frozen(kw_only=True)
class Cooldown:
    """A cooldown in force until `until` (core time).

    Attributes:
        model: the model.
        until: when it ends.
        reason: why (an `OutcomeKind` value, usually).
        project: the project, for a quota group's cooldown (None otherwise).
        key: the key's label, for a lane's cooldown (None otherwise).  Neither project nor key:
            the model itself cools (overloaded).
    """

    model: str
    until: float
    reason: str
    project: str | None = None
    key: str | None = None


@attrs.frozen(kw_only=True)
class DisabledKey:
    """A key (by label) disabled for good, and why."""

    key: str
    reason: str


@attrs.frozen(kw_only=True)
class LearnedLimit:
    """A limit of (project, model) a 429 taught: `value` per `dimension`."""

    project: str
    model: str
    dimension: QuotaDimension
    value: int
    quota_id: str
    learned_at: float


@attrs.frozen(kw_only=True)
class Usage:
    """One request of `tokens` input tokens another process sent on (project, model) at `at`."""

    project: str
    model: str
    at: float
    tokens: int


SharedFact = Cooldown | DisabledKey | LearnedLimit | Usage
