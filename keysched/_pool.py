"""The pool: keys, quota groups, models and lanes, with their cooldowns, budgets and breakers.

Theory of operation
-------------------
The pool owns every fact about capacity and nothing about requests.  The scheduler asks it
questions (which lane serves a request: a `keysched._placement.Placement` reads it; when
capacity returns; whether a list of models is hopeless) and tells it what happened (an attempt
was dispatched, released, or ended with an outcome).  What follows from an input comes back as
a value, `Changes`: the times at which capacity may return (the scheduler arms a wake-up timer
for each) and the `PoolEvent`s it announces, in order.  The pool never reaches back into the scheduler.

State (see `keysched._core` for the rules a user sees):

- **keys** (`keysched._keys.Keys`): requests in flight, strikes, disabled for good with a
  reason; by project and billing account.
- **quota groups** (`keysched._groups.QuotaGroup`), one per (project, model): cooldown, budget,
  half-open probing, presumed and learned limits.  The *priors* (limits learned on any group of
  a model) are kept here and handed to the groups.
- **models** (`keysched._breaker.ModelState`): the model breaker.
- **lanes** (`keysched._lanes.Lanes`): their own cooldown (the lane breaker, a server's retry
  delay, a baseline's fixed cooldown), their 500s in a row, and their counters.
- the **selector**, which indexes keys by load; the pool tells it when a key's load changes and
  when a parked lane may serve again.

The seam for shared state (many processes, one pool): facts learned from other processes come
in through plain inputs (`cool_group`, `cool_lane`, `cool_model`, `disable_key`,
`learn_limit`), which merge the way local facts do: a cooldown by the *later* end, never
shortened; a disabled key stays disabled; a learned limit replaces a learned one and never a
configured one.  The facts worth sharing go out as plain
records (`keysched._views.shared_facts`).  The pool stays pure: the driver reads and writes the store.

Decisions where the issue was silent:

- A cooldown learned from another process announces the same events as a local one
  (``group_cooled``, ``lane_cooled``, ``model_cooled``, ``key_disabled``, ``limit_learned``),
  with the reason it came with, so that logs and traces show it.
- A model cooled by another process is half-open here as after a local trip: one probe per
  ``probe_interval``, and an answer to an attempt sent after it ends the cooldown.
- `shared_facts` lists what is in force at a time (cooldowns not yet over, disabled keys,
  learned limits), not a log of changes: a store keeps the latest, and merging is idempotent.
  Usage is not among them: a shared store counts every process's dispatches in its own budgets
  (`keysched._store`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from keysched._breaker import ModelState, OverloadEvidence, escalated
from keysched._budget import Budget
from keysched._config import PoolConfig
from keysched._groups import QuotaGroup
from keysched._keys import Keys, KeyState
from keysched._lanes import Lanes
from keysched._outcomes import Outcome, QuotaDimension, Violation
from keysched._pacific import next_pacific_midnight
from keysched._requests import Attempt
from keysched._selection import Policy, Selector
from keysched._snapshot import PoolEvent, learned_limit_reason
from keysched._table import Action, Delay, Effect, Meaning, Next

__all__ = ["Changes", "Pool"]


class Changes:
    """What an input changed, for the scheduler to act on.

    Attributes:
        wakeups: times at which capacity may return, in the order they arose (the scheduler
            arms a wake-up for each).
        events: the `PoolEvent`s announced, in order (empty when events are not recorded).
    """

    __slots__ = ("_record", "events", "wakeups")

    def __init__(self, record: bool) -> None:
        self._record = record
        self.wakeups: list[float] = []
        self.events: list[PoolEvent] = []

    def wake(self, at: float) -> None:
        """Capacity may return at `at`."""
        self.wakeups.append(at)

    def emit(self, kind: str, reason: str, now: float, *, key: str | None = None,
             project: str | None = None, model: str | None = None,
             until: float | None = None) -> None:
        """Announce a `PoolEvent`."""
        if self._record:
            self.events.append(PoolEvent(now, kind, reason, key, project, model, until))


class Pool:
    """Keys, quota groups, models and lanes (see the module docstring).

    Args:
        config: the pool.
        policy: how to select and react.
        rng: the selector's randomness (random baselines).
        wall_epoch: the Unix time at core time 0, so per-day quotas end at midnight Pacific.
        record_events: build `PoolEvent`s in `Changes`.
    """

    def __init__(self, config: PoolConfig, policy: Policy, rng: random.Random, *,
                 wall_epoch: float, record_events: bool) -> None:
        self.policy = policy
        self._retry = config.retry
        self._wall_epoch = wall_epoch
        self._record = record_events
        self.cap = config.max_in_flight_per_key or math.inf
        self.keys = Keys(config)
        self.models = [
            ModelState(name, len(self.keys.projects), OverloadEvidence(
                trip=policy.overload_trip, rate=policy.overload_rate, window=policy.overload_window))
            for name in config.models]
        self._model_index = {name: index for index, name in enumerate(config.models)}
        # A group without a configured limit gets its budget (its history, for limits learned
        # later) on its first dispatch: most groups of a big pool stay small.
        self.groups = [[QuotaGroup(p, m, self._configured_budget(config, project, model))
                        for m, model in enumerate(config.models)]
                       for p, project in enumerate(self.keys.projects)]
        # Per model: the limits learned on any of its groups (the "priors").
        self.priors: list[dict[QuotaDimension, int]] = [{} for _ in config.models]
        self.lanes = Lanes(len(self.keys), len(self.models))
        self.selector: Selector = policy.selector(len(self.keys), len(self.models), rng)
        self._tier = list(range(len(self.models)))  # per best model, the tier last served
        # Counts what was benched, disabled or taken out: a waiting request's return time need
        # be weighed again only when it changed (see `Scheduler._returns_too_late`).
        self.benched = 0

    def _configured_budget(self, config: PoolConfig, project: str, model: str) -> Budget | None:
        limit = config.limit_for(project, model) if self.policy.budgets_limits else None
        return Budget(limit, self._wall_epoch, self._retry.quota_margin) if limit else None

    # ------------------------------------------------------------------ questions

    def hopeless(self, models: Sequence[int]) -> bool:
        """Whether no model of `models` can ever serve again (unavailable, or no group left)."""
        return all(self.models[m].unavailable or self.models[m].usable_groups <= 0
                   for m in models)

    def key_disabled(self, key: int) -> bool:
        """Whether the key is disabled for good."""
        return self.keys[key].disabled is not None

    # ------------------------------------------------------------------ attempts

    def acquire(self, key: int, model: int, tokens: int, quota: bool, now: float,
                seq: int) -> tuple[bool, bool]:
        """An attempt of `tokens` (`quota`: it spends quota) was dispatched on the lane; `seq`
        orders the key by last use.  Returns (budgeted, relearn): whether it was recorded in its
        group's budget, and whether it goes past a learned limit as its test."""
        state = self.keys.states[key]
        state.in_flight += 1
        state.seq = seq
        self.selector.update(key, (state.in_flight, seq))
        group = self.groups[state.project][model]
        budget = group.budget if group.budget is not None else self._budget(group)
        budgeted = budget is not None and quota
        relearn = False
        if budget is not None and budgeted:
            # Past a known limit only as the test of a learned one (see `Placement.verdict`).
            relearn = budget.limited and budget.free_at(now, tokens) > now
            budget.record(now, tokens)
        group.sent(test=relearn)
        self.lanes.dispatched(key, model)
        return budgeted, relearn

    def served(self, best: int, model: int, now: float) -> Changes | None:
        """A request whose best model is `best` was dispatched on `model`: a change of the tier
        serving `best` is announced (``fallback``, or ``recovered`` when back to `best`).
        Returns None when the tier did not change."""
        changes = None
        if model != self._tier[best]:
            changes = Changes(self._record)
            changes.emit("recovered" if model == best else "fallback",
                         f"{self.models[self._tier[best]].name} -> {self.models[model].name}", now,
                         model=self.models[model].name)
            self._tier[best] = model
        return changes

    def release(self, attempt: Attempt, now: float) -> None:
        """Free the key and the quota group an attempt held."""
        state = self.keys.states[attempt.key]
        state.in_flight -= 1
        self.selector.update(attempt.key, (state.in_flight, state.seq))
        group = self.groups[state.project][attempt.model]
        group.released(now, test=attempt.relearn)
        if group.parked:
            self._unpark(group)

    def withdraw(self, attempt: Attempt, tokens: int, now: float) -> None:
        """Take back an attempt that was never sent: release it, uncount it, refund it."""
        self.release(attempt, now)
        self.lanes.dispatched(attempt.key, attempt.model, -1)
        if attempt.budgeted:
            budget = self.groups[self.keys[attempt.key].project][attempt.model].budget
            assert budget is not None
            budget.forget(attempt.sent, tokens)

    def unpark_lane(self, key: int, model: int) -> None:
        """A parked lane's time came: offer it to the selector again."""
        self.selector.release(key, model)

    def _unpark(self, group: QuotaGroup) -> None:
        """Offer the group's lanes again (they were parked until one of its attempts ended)."""
        group.parked = False
        for key in self.keys.of_project[group.project]:
            self.selector.release(key, group.model)

    def _budget(self, group: QuotaGroup) -> Budget | None:
        """The group's budget, made on first use (None for policies that budget nothing)."""
        if group.budget is None and self.policy.budgets_limits:
            group.budget = Budget(None, self._wall_epoch, self._retry.quota_margin)
        return group.budget

    def settle(self, attempt: Attempt, tokens: int, outcome: Outcome, action: Action,
               meaning: Meaning, now: float) -> Changes:
        """An attempt (released already) ended with `outcome`; the policy's row is `action`
        and the outcome's is `meaning` (`keysched._table`).  Returns what changed."""
        changes = Changes(self._record)
        group = self.groups[self.keys.states[attempt.key].project][attempt.model]
        if meaning.answers:
            self._answered_on(group, attempt, now, changes)
        elif meaning.is_429:
            self._refused(group, attempt, tokens, outcome, meaning, now, changes)
        elif meaning.lane_breaker and action.effect is Effect.NONE:
            self._lane_error(attempt, outcome.kind.value, now, changes)
        if action.effect is not Effect.NONE:
            self._apply(action, outcome, attempt, group, now, changes)
        if outcome.retry_after is not None and action.retry_delay is Delay.IDLES_LANE:
            # The server named a retry delay but no quota group to blame (a Retry-After on a
            # 5xx, a timeout or a 503): honour it for this lane only, until exactly t + d.
            delay = min(outcome.retry_after, self._retry.max_server_delay)
            self._cool_lane(attempt.key, attempt.model, now + delay, outcome.kind.value, now,
                            changes)
        self.lanes.ended(attempt.key, attempt.model, answer=action.next is Next.RETURN)
        return changes

    def _answered_on(self, group: QuotaGroup, attempt: Attempt, now: float,
                     changes: Changes) -> None:
        """An answer: the model's streak, the lane's errors, the group's probing (see
        `Meaning.answers`)."""
        self.models[attempt.model].answered(attempt.sent, now)
        self.lanes.answered(attempt.key, attempt.model)
        if group.answered(self.priors[attempt.model], now, test=attempt.relearn):
            changes.emit("limit_unlearned", "an answer past the learned limit", now,
                         project=self.keys.projects[group.project],
                         model=self.models[group.model].name)
        if group.parked:
            self._unpark(group)

    def _refused(self, group: QuotaGroup, attempt: Attempt, tokens: int, outcome: Outcome,
                 meaning: Meaning, now: float, changes: Changes) -> None:
        """A 429: refund it, learn the limits it names, reopen the group half-open."""
        budget = group.budget
        if attempt.budgeted and budget is not None:
            budget.forget(attempt.sent, tokens)  # refused: the server did not count it
        if budget is None or not self.policy.learns_limits:
            return
        learned = group.refused(outcome.violations, now, test=attempt.relearn,
                                relearn_after=self._retry.relearn_after, probe=meaning.probes)
        for violation in learned:
            self.benched += 1
            self._announce_learned(group, violation, now, changes)
        for violation in outcome.violations:  # every usable value is a prior for the siblings
            if (violation.value is not None and violation.value >= 1
                    and violation.dimension is not QuotaDimension.SPEND):
                self.priors[group.model][violation.dimension] = violation.value

    def _announce_learned(self, group: QuotaGroup, violation: Violation, now: float,
                          changes: Changes) -> None:
        reason = learned_limit_reason(violation.dimension.value, violation.value,
                                      violation.quota_id)
        changes.emit("limit_learned", reason, now, project=self.keys.projects[group.project],
                     model=self.models[group.model].name)

    def _lane_error(self, attempt: Attempt, reason: str, now: float, changes: Changes) -> None:
        """A 500 on a lane: the lane breaker cools it at `lane_error_trip` in a row."""
        errors = self.lanes.server_error(attempt.key, attempt.model)
        trip = self.policy.lane_error_trip
        if errors >= trip:
            delay = escalated(self._retry.overload_cooldown, self._retry.overload_cooldown_cap,
                              errors - trip)
            self._cool_lane(attempt.key, attempt.model, now + delay, reason, now, changes)

    # ------------------------------------------------------------------ effects

    def _apply(self, action: Action, outcome: Outcome, attempt: Attempt, group: QuotaGroup,
               now: float, changes: Changes) -> None:
        """Apply the row's effect on the pool (`keysched._table.Effect`)."""
        effect = action.effect
        state = self.keys.states[attempt.key]
        reason = outcome.kind.value
        if effect is Effect.COOL_GROUP:
            self._cool_group(group, now + self._quota_delay(outcome), reason, now, changes)
        elif effect is Effect.COOL_BILLING_ACCOUNT:
            until = now + self._quota_delay(outcome)
            for project in self.keys.same_account(state.project):
                for other in self.groups[project]:
                    self._cool_group(other, until, reason, now, changes)
                    other.half_open = 1  # spend is no budget: reopen every group carefully
        elif effect is Effect.COOL_GROUP_BRIEFLY:
            # Bare 429s that persist on a group (paid accounts see them for hours on one model):
            # twice as long each time, so the pool spends its attempts elsewhere.  Only an
            # attempt sent after the current bench began escalates it: a burst of concurrent
            # 429s is one piece of evidence, not several.
            delay = group.bare_429(attempt.sent, now, self._retry.shared_capacity_cooldown,
                                   self._retry.shared_capacity_cooldown_cap)
            self._cool_group(group, now + delay, reason, now, changes)
        elif effect is Effect.COOL_GROUP_UNTIL_MIDNIGHT:
            until = next_pacific_midnight(now + self._wall_epoch) - self._wall_epoch
            self._cool_group(group, until, reason, now, changes)
        elif effect is Effect.GROUP_UNAVAILABLE:
            self._group_unavailable(group, reason, now, changes)
        elif effect is Effect.COOL_MODEL:
            self._overloaded(self.models[attempt.model], attempt.sent, reason, now, changes)
        elif effect is Effect.MODEL_UNAVAILABLE:
            self._model_unavailable(self.models[attempt.model], reason, now, changes)
        elif effect is Effect.DISABLE_KEY:
            self._disable(state, reason, now, changes)
        elif effect is Effect.DISABLE_PROJECT:
            for index in self.keys.of_project[state.project]:
                self._disable(self.keys[index], reason, now, changes)
        elif effect is Effect.COOL_LANE:
            self._cool_lane(attempt.key, attempt.model, now + action.seconds, reason, now, changes)
        elif effect is Effect.STRIKE:
            state.strikes += 1
            if state.strikes >= action.strikes:
                self._disable(state, f"{action.strikes} strikes, last {reason}", now, changes)

    def _quota_delay(self, outcome: Outcome) -> float:
        """How long a quota 429 benches (`Delay.BENCHES_GROUP`): the server's delay (capped),
        else a minute."""
        if outcome.retry_after is None:
            return self._retry.minute_cooldown
        return min(outcome.retry_after, self._retry.max_server_delay)

    def _group_unavailable(self, group: QuotaGroup, reason: str, now: float,
                           changes: Changes) -> None:
        if not group.unavailable:
            group.unavailable = True
            group.reason = reason
            if self.keys.project_active(group.project):
                self.models[group.model].usable_groups -= 1
            changes.emit("group_unavailable", reason, now,
                         project=self.keys.projects[group.project],
                         model=self.models[group.model].name)

    def _model_unavailable(self, model: ModelState, reason: str, now: float,
                           changes: Changes) -> None:
        if not model.unavailable:
            model.unavailable = True
            model.reason = reason
            changes.emit("model_unavailable", reason, now, model=model.name)

    def _overloaded(self, model: ModelState, sent: float, reason: str, now: float,
                    changes: Changes) -> None:
        # One 503 is evidence, not proof (see `keysched._breaker.ModelState`).
        changed, news = model.overloaded(
            sent, now, base=self._retry.overload_cooldown, cap=self._retry.overload_cooldown_cap,
            probe_interval=self.policy.probe_interval)
        if changed:
            self._model_cooled(model, reason, now, changes, news=news)

    def _model_cooled(self, model: ModelState, reason: str, now: float, changes: Changes, *,
                      news: bool) -> None:
        model.reason = reason
        self.benched += 1
        changes.wake(model.cool_until)
        changes.wake(model.probe_at)
        if news:  # not for every straggler that extends it a little
            changes.emit("model_cooled", reason, now, model=model.name, until=model.cool_until)

    def _cool_lane(self, key: int, model: int, until: float, reason: str, now: float,
                   changes: Changes) -> None:
        if self.lanes.cool(key, model, until, reason):
            state = self.keys.states[key]
            changes.emit("lane_cooled", reason, now, key=state.key.label,
                         project=self.keys.projects[state.project],
                         model=self.models[model].name, until=until)
            changes.wake(until)

    def _cool_group(self, group: QuotaGroup, until: float, reason: str, now: float,
                    changes: Changes) -> None:
        if until > group.cool_until:
            self.benched += 1
            group.cool_until = until
            group.reason = reason
            changes.wake(until)
            changes.emit("group_cooled", reason, now, project=self.keys.projects[group.project],
                         model=self.models[group.model].name, until=until)

    def _disable(self, state: KeyState, reason: str, now: float, changes: Changes) -> None:
        if state.disabled is not None:
            return
        if self.keys.disable(state, reason):  # its project has no key left
            for model_index, group in enumerate(self.groups[state.project]):
                if not group.unavailable:
                    self.models[model_index].usable_groups -= 1
        self.benched += 1
        changes.emit("key_disabled", reason, now, key=state.key.label,
                     project=self.keys.projects[state.project])

    # ------------------------------------------------------------------ facts from elsewhere

    def _group_named(self, project: str, model: str) -> QuotaGroup:
        return self.groups[self.keys.project_index(project)][self._model_index[model]]

    def cool_group(self, project: str, model: str, until: float, reason: str,
                   now: float) -> Changes:
        """Another process benched (project, model) until `until`: merged by the later end."""
        changes = Changes(self._record)
        self._cool_group(self._group_named(project, model), until, reason, now, changes)
        return changes

    def cool_lane(self, key: str, model: str, until: float, reason: str, now: float) -> Changes:
        """Another process idled the (key label, model) lane until `until` (later end wins)."""
        changes = Changes(self._record)
        self._cool_lane(self.keys.labelled(key).index, self._model_index[model], until, reason,
                        now, changes)
        return changes

    def cool_model(self, model: str, until: float, reason: str, now: float) -> Changes:
        """Another process took `model` out of rotation until `until` (later end wins)."""
        changes = Changes(self._record)
        state = self.models[self._model_index[model]]
        if state.cool_elsewhere(until, now, self.policy.probe_interval):
            self._model_cooled(state, reason, now, changes, news=True)
        return changes

    def disable_key(self, key: str, reason: str, now: float) -> Changes:
        """Another process found the key (by label) unusable for good."""
        changes = Changes(self._record)
        self._disable(self.keys.labelled(key), reason, now, changes)
        return changes

    def learn_limit(self, project: str, model: str, dimension: QuotaDimension, value: int,
                    now: float, quota_id: str) -> Changes:
        """Another process learned (project, model)'s limit of `dimension` from a 429."""
        changes = Changes(self._record)
        group = self._group_named(project, model)
        budget = self._budget(group)
        if budget is None or not self.policy.learns_limits:
            return changes
        if budget.learn(dimension, value, now, quota_id):
            self.benched += 1
            self._announce_learned(group, Violation(dimension=dimension, value=value,
                                                    quota_id=quota_id), now, changes)
        if value >= 1 and dimension is not QuotaDimension.SPEND:
            self.priors[group.model][dimension] = value
        return changes
