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

`Scheduler.shared_facts(now)` lists them as they stand (what is in force, not a log: merging is
idempotent, so a store may keep the latest and hand it to everyone).  `Scheduler.learn(now,
fact)` takes any of them back (`learn` here: checked names first, so a fact about a key or model
this pool does not have changes nothing).

Usage (what other processes sent) is not a fact here: a shared store decides every group's
budget itself, at dispatch, with its own claim (`keysched._store`), so no driver needs to count
another process's requests in this one's budget.

The records are attrs classes (frozen, keyword-only) so a store can serialise them with
`attrs.asdict` and rebuild them with ``Cls(**fields)``; a bad value fails at construction with a
`UsageError` naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from keysched._errors import UsageError
from keysched._names import Names
from keysched._outcomes import QuotaDimension
from keysched._pool import Changes, Pool

__all__ = ["Cooldown", "DisabledKey", "LearnedLimit", "SharedFact", "learn"]


def _count(low: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{type(instance).__name__}.{attribute.name} must be an integer "
                             f">= {low}, got {value!r}")
    return check


def _time(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UsageError(f"{type(instance).__name__}.{attribute.name} must be a time, got "
                         f"{value!r}")


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
    until: float = attrs.field(validator=_time)
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
    value: int = attrs.field(validator=_count(1))
    quota_id: str
    learned_at: float = attrs.field(validator=_time)


SharedFact = Cooldown | DisabledKey | LearnedLimit


def learn(pool: Pool, names: Names, fact: SharedFact, now: float) -> Changes:
    """Give `pool` a fact another process learned; returns what changed.

    Raises:
        UsageError: an unknown project, model or key label, or not a fact; nothing changes.
    """
    match fact:
        case Cooldown(project=None, key=None):
            return pool.cool_model(names.model(fact.model), fact.until, fact.reason, now)
        case Cooldown(key=None):
            return pool.cool_group(names.project(fact.project or ""), names.model(fact.model),
                                   fact.until, fact.reason, now)
        case Cooldown():
            return pool.cool_lane(names.key(fact.key or ""), names.model(fact.model),
                                  fact.until, fact.reason, now)
        case DisabledKey():
            return pool.disable_key(names.key(fact.key), fact.reason, now)
        case LearnedLimit():
            return pool.learn_limit(names.project(fact.project), names.model(fact.model),
                                    fact.dimension, fact.value, now, fact.quota_id)
    raise UsageError(f"fact must be a Cooldown, DisabledKey or LearnedLimit, got "
                     f"{type(fact).__name__}")
