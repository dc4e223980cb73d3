"""Read-only views of the pool: snapshots for dashboards and notebooks, and pool events.

Theory of operation
-------------------
Everything here names keys by label; no secret ever reaches a snapshot or an event.  The values
are `typing.NamedTuple`s: immutable, and cheap to build (a snapshot of 10,000 keys x 3 models
holds 30,000 lanes) and to define (`import keysched` stays fast).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from keysched._budget import KnownLimit

__all__ = ["GroupSnapshot", "LaneSnapshot", "LaneState", "PoolEvent", "PoolSnapshot"]


class LaneState(enum.Enum):
    """Whether a (key, model) lane can serve."""

    AVAILABLE = "available"
    COOLING = "cooling"
    """Cooling down until ``cooldown_until`` (its quota group, its model, or the lane itself)."""
    DISABLED = "disabled"
    """The key is disabled for good (invalid, leaked, forbidden, project API disabled)."""
    UNAVAILABLE = "unavailable"
    """The model is not available to this key's project (``limit: 0``) or does not exist."""


class LaneSnapshot(NamedTuple):
    """One (key, model) lane at the snapshot's time.

    Attributes:
        key: the key's label.
        project: the key's project.
        model: the model.
        state: whether the lane can serve.
        reason: why it cannot serve (an `OutcomeKind` value or a short phrase), if it cannot.
        cooldown_until: when a cooling lane can serve again (core time).
        in_flight: requests in flight on the key (all models).
        dispatched: attempts sent on this lane.
        succeeded: attempts on this lane that returned an answer.
        failed: attempts on this lane that failed.
    """

    key: str
    project: str
    model: str
    state: LaneState
    reason: str | None
    cooldown_until: float | None
    in_flight: int
    dispatched: int
    succeeded: int
    failed: int


class GroupSnapshot(NamedTuple):
    """One (project, model) quota group, with its budget usage and the limits it knows.

    Attributes:
        limits: each known limit, and whether it was configured or learned from a 429 (and
            when, and from which ``quotaId``).
        probing: the group reopened after a 429 whose limit is unknown, and admits a few
            attempts at a time until answers come back.
    """

    project: str
    model: str
    cooldown_until: float | None
    reason: str | None
    unavailable: bool
    requests_last_minute: int | None
    tokens_last_minute: int | None
    requests_today: int | None
    limits: tuple[KnownLimit, ...] = ()
    probing: bool = False


class PoolSnapshot(NamedTuple):
    """The whole pool at time `now` (core time)."""

    now: float
    lanes: tuple[LaneSnapshot, ...]
    groups: tuple[GroupSnapshot, ...]
    waiting: int
    """Requests waiting for a lane (queued or backing off)."""
    in_flight: int
    """Attempts in flight."""
    requests_submitted: int
    requests_finished: int
    requests_failed: int
    requests_cancelled: int

    def lane(self, key: str, model: str) -> LaneSnapshot:
        """The lane of key label `key` and `model`."""
        for lane in self.lanes:
            if lane.key == key and lane.model == model:
                return lane
        raise KeyError((key, model))


class PoolEvent(NamedTuple):
    """A notable change of the pool, for logs and plots.

    Attributes:
        time: core time of the change.
        kind: ``key_disabled``, ``group_cooled``, ``group_unavailable``, ``model_cooled``,
            ``model_unavailable``, ``lane_cooled``, ``limit_learned`` (reason: ``rpm=5 from
            <quotaId>``), ``fallback`` or ``recovered``.
        reason: the outcome that caused it (an `OutcomeKind` value), or the tier change.
        key: the key's label, when one key is concerned.
        project: the project, when a project or quota group is concerned.
        model: the model concerned (for ``fallback``/``recovered``, the model now serving).
        until: when a cooldown ends (core time).
    """

    time: float
    kind: str
    reason: str
    key: str | None = None
    project: str | None = None
    model: str | None = None
    until: float | None = None


def learned_limit_reason(dimension: str, value: int | None, quota_id: str) -> str:
    """The reason of a ``limit_learned`` event: ``rpm=5 from <quotaId>``."""
    return f"{dimension}={value} from {quota_id}"


def parse_learned_limit(reason: str) -> tuple[str, int, str] | None:
    """The (dimension, value, quota id) a ``limit_learned`` reason names (see
    `learned_limit_reason`), or None if it is not one."""
    name, _, rest = reason.partition("=")
    value, _, quota_id = rest.partition(" from ")
    return (name, int(value), quota_id) if name and value.isdigit() else None
