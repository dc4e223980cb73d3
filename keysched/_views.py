"""Read-only views of a `keysched._pool.Pool`: snapshots, and the facts worth sharing.

Theory of operation
-------------------
These functions read the pool and build values (`keysched._snapshot`, `keysched._facts`);
they change nothing, except that reading a budget expires the entries that left its window.
They are kept apart from the pool because they are how the pool is *shown*, not how it
decides: the pool's module stays about its rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from keysched._facts import Cooldown, DisabledKey, LearnedLimit, SharedFact
from keysched._keys import KeyState
from keysched._pool import Pool
from keysched._requests import Requests
from keysched._snapshot import GroupSnapshot, LaneSnapshot, LaneState, PoolSnapshot

__all__ = ["group_snapshots", "lane_snapshots", "shared_facts"]


def lane_snapshots(pool: Pool, at: float) -> Iterator[LaneSnapshot]:
    """Every lane as seen at `at`, key by key, model by model."""
    for state in pool.keys.states:
        for model_index, model in enumerate(pool.models):
            lane_state, reason, until = _lane_status(pool, state, model_index, at)
            dispatched, answered, failed = pool.lanes.counts(state.index, model_index)
            yield LaneSnapshot(
                key=state.key.label or "", project=pool.keys.projects[state.project],
                model=model.name, state=lane_state, reason=reason, cooldown_until=until,
                in_flight=state.in_flight, dispatched=dispatched, succeeded=answered,
                failed=failed)


def _lane_status(pool: Pool, state: KeyState, model_index: int,
                 now: float) -> tuple[LaneState, str | None, float | None]:
    if state.disabled is not None:
        return LaneState.DISABLED, state.disabled, None
    model = pool.models[model_index]
    group = pool.groups[state.project][model_index]
    if model.unavailable or group.unavailable:
        return LaneState.UNAVAILABLE, model.reason if model.unavailable else group.reason, None
    candidates = [(group.cool_until, group.reason), (model.cool_until, model.reason),
                  (pool.lanes.cool_until(state.index, model_index), "lane")]
    until, reason = max(candidates, key=lambda item: item[0])
    if until > now:
        return LaneState.COOLING, reason, until
    if group.budget is not None and group.budget.limited and math.isfinite(now):
        # (now is -inf when no time was seen: nothing was sent)
        free = group.budget.free_at(now, 0)
        if free > now:
            return LaneState.COOLING, "budget", free
    return LaneState.AVAILABLE, None, None


def group_snapshots(pool: Pool, at: float) -> Iterator[GroupSnapshot]:
    """Every quota group as seen at `at`, project by project, model by model."""
    for project_index, row in enumerate(pool.groups):
        for model_index, group in enumerate(row):
            if group.budget is None:
                usage: tuple[int | None, int | None, int | None] = (None, None, None)
            elif math.isfinite(at):
                usage = group.budget.usage(at)
            else:  # the core has seen no time yet, so nothing was sent
                usage = (0, 0, 0)
            cooling = group.cool_until > at
            yield GroupSnapshot(
                project=pool.keys.projects[project_index], model=pool.models[model_index].name,
                cooldown_until=group.cool_until if cooling else None,
                reason=group.reason if cooling or group.unavailable else None,
                unavailable=group.unavailable, requests_last_minute=usage[0],
                tokens_last_minute=usage[1], requests_today=usage[2],
                limits=() if group.budget is None else group.budget.limits,
                probing=group.half_open is not None)


def pool_snapshot(pool: Pool, book: Requests, in_flight: int, at: float) -> PoolSnapshot:
    """A read-only picture of the pool and the requests at `at` (`Scheduler.snapshot`)."""
    return PoolSnapshot(
        now=at, lanes=tuple(lane_snapshots(pool, at)), groups=tuple(group_snapshots(pool, at)),
        waiting=book.waiting, in_flight=in_flight, requests_submitted=book.submitted,
        requests_finished=book.finished, requests_failed=book.failed,
        requests_cancelled=book.cancelled)


def shared_facts(pool: Pool, now: float) -> list[SharedFact]:
    """The facts worth sharing that are in force at `now` (see `keysched._facts`): disabled
    keys, then cooling models, then per group its cooldown and learned limits, then lanes."""
    facts: list[SharedFact] = [DisabledKey(key=state.key.label or "", reason=state.disabled)
                               for state in pool.keys.states if state.disabled is not None]
    facts.extend(Cooldown(model=model.name, until=model.cool_until, reason=model.reason or "")
                 for model in pool.models if model.cool_until > now)
    for row in pool.groups:
        for group in row:
            project = pool.keys.projects[group.project]
            model = pool.models[group.model].name
            if group.cool_until > now:
                facts.append(Cooldown(project=project, model=model, until=group.cool_until,
                                      reason=group.reason or ""))
            if group.budget is not None:
                facts.extend(LearnedLimit(
                    project=project, model=model, dimension=limit.dimension, value=limit.value,
                    quota_id=limit.quota_id or "", learned_at=limit.learned_at or 0.0)
                    for limit in group.budget.limits if limit.source == "learned")
    for key, model_index, until, reason in pool.lanes.cooling(now):
        state = pool.keys[key]
        facts.append(Cooldown(project=pool.keys.projects[state.project],
                              model=pool.models[model_index].name, key=state.key.label,
                              until=until, reason=reason))
    return facts
