"""The pool: keys, quota groups, models and lanes, with their cooldowns, budgets and breakers.

Theory of operation
-------------------
The pool owns every fact about capacity and nothing about requests.  The scheduler asks it
questions (which lane can serve a request: `LaneQuery`; when capacity returns; whether a list of
models is hopeless) and tells it what happened (an attempt was dispatched, released, or ended
with an outcome).  What follows from an input comes back as a value, `Changes`: the times at
which capacity may return (the scheduler arms a wake-up timer for each) and the `PoolEvent`s it
announces, in order.  The pool never reaches back into the scheduler.

State (see `keysched._core` for the rules a user sees):

- **keys** (`KeyState`): requests in flight, strikes, disabled for good with a reason.
- **quota groups** (`keysched._groups.QuotaGroup`), one per (project, model): cooldown, budget,
  half-open probing, presumed and learned limits.  The *priors* (limits learned on any group of
  a model) are kept here and handed to the groups.
- **models** (`keysched._breaker.ModelState`): the model breaker.
- **lanes** (key, model): their own cooldown (the lane breaker, a server's retry delay, a
  baseline's fixed cooldown), their 500s in a row, and their counters (dispatched, answered,
  failed).
- the **selector**, which indexes keys by load; the pool tells it when a key's load changes and
  when a parked lane may serve again.

The seam for shared state (many processes, one pool): facts learned from other processes come
in through plain inputs (`cool_group`, `cool_lane`, `cool_model`, `disable_key`, `learn_limit`,
`count_usage`), which merge the way local facts do: a cooldown by the *later* end, never
shortened; a disabled key stays disabled; a learned limit replaces a learned one and never a
configured one; usage adds to the budget's window.  The facts worth sharing go out as plain
records (`shared_facts`).  The pool stays pure: the driver reads and writes the store.

Decisions where the issue was silent:

- A cooldown learned from another process announces the same events as a local one
  (``group_cooled``, ``lane_cooled``, ``model_cooled``, ``key_disabled``, ``limit_learned``),
  with the reason it came with, so that logs and traces show it.
- A model cooled by another process is half-open here as after a local trip: one probe per
  ``probe_interval``, and an answer to an attempt sent after it ends the cooldown.
- `shared_facts` lists what is in force at a time (cooldowns not yet over, disabled keys,
  learned limits), not a log of changes: a store keeps the latest, and merging is idempotent.
  Usage is not among them: the driver shares each dispatch as it makes it (`count_usage` on the
  other side), which counts exactly, where a periodic total would count twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Container, Iterator, Sequence

import attrs

from keysched._breaker import ModelState, OverloadEvidence, escalated
from keysched._budget import Budget
from keysched._config import Key, PoolConfig
from keysched._groups import QuotaGroup
from keysched._outcomes import Outcome, QuotaDimension, Violation
from keysched._pacific import next_pacific_midnight
from keysched._requests import Attempt
from keysched._selection import BLOCKED, SERVES, SKIPS, Policy, Selector, Verdict
from keysched._snapshot import GroupSnapshot, LaneSnapshot, LaneState, PoolEvent
from keysched._table import Action, Delay, Effect, Meaning, Next

__all__ = ["Changes", "Cooldown", "DisabledKey", "KeyState", "LaneQuery", "LearnedLimit", "Pool",
           "SharedFact"]


class KeyState:
    """One key of the pool.

    Attributes:
        index: its position in the pool.
        key: the configured key (its `repr` is its label, never the secret).
        project: its project's index.
        disabled: why it is disabled for good (None: it is not).
        in_flight: attempts in flight on it.
        seq: the id of its last dispatch (orders keys of equal load by last use).
        strikes: strikes counted against it (baseline policies).
    """

    __slots__ = ("disabled", "in_flight", "index", "key", "project", "seq", "strikes")

    def __init__(self, index: int, key: Key, project: int) -> None:
        self.index = index
        self.key = key
        self.project = project
        self.disabled: str | None = None
        self.in_flight = 0
        self.seq = index - 1_000_000_000  # before any dispatch; keeps the positional tie-break
        self.strikes = 0


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


# -- the records the pool shares with other processes -----------------------------------------

@attrs.frozen(kw_only=True)
class Cooldown:
    """A cooldown in force: of a quota group (`key` None), a lane (`key` set), or a model
    (`project` and `key` None).  Merge by the later `until`."""

    model: str
    until: float
    reason: str
    project: str | None = None
    key: str | None = None


@attrs.frozen(kw_only=True)
class DisabledKey:
    """A key disabled for good (by label, never the secret)."""

    key: str
    reason: str


@attrs.frozen(kw_only=True)
class LearnedLimit:
    """A limit a 429 taught for (project, model)."""

    project: str
    model: str
    dimension: QuotaDimension
    value: int
    learned_at: float
    quota_id: str


SharedFact = Cooldown | DisabledKey | LearnedLimit


class LaneQuery:
    """The `LaneOracle` for one request: which lanes can serve it now.

    It is made per placement with the request's demand (its tokens, whether it spends quota),
    and collects what the placement learned: the lanes the selector parked (the scheduler arms a
    timer for each) and `wake_at`, when a token budget too full for this request frees up.
    """

    __slots__ = ("_pool", "parked", "quota", "tokens", "wake_at")

    def __init__(self, pool: Pool, tokens: int, quota: bool) -> None:
        self._pool = pool
        self.tokens = tokens
        self.quota = quota
        self.parked: list[tuple[int, int, float]] = []
        self.wake_at = math.inf

    def verdict(self, key: int, model: int, now: float) -> Verdict:
        """See `keysched._selection.LaneOracle.verdict`."""
        pool = self._pool
        state = pool.keys[key]
        if state.disabled is not None or state.in_flight >= pool.cap:
            return BLOCKED
        group = pool.groups[state.project][model]
        if group.unavailable:
            return BLOCKED
        until = max(group.cool_until, pool.lane_cool.get((key, model), -math.inf))
        if until > now:
            return Verdict.blocked_until(until)
        if group.in_flight and group.full(pool.priors[model], self.tokens, now):
            group.parked = True  # `Pool.release` offers the lanes again when an attempt ends
            return BLOCKED
        budget = group.budget
        if budget is None or not budget.limited or not self.quota:
            return SERVES
        free = budget.free_at(now, self.tokens)
        if free <= now or group.may_test_learned_limit(now, self.tokens, free):
            return SERVES  # (past its limit only as the test of a learned one: `Pool.acquire`)
        if math.isinf(free):
            return SKIPS  # this request can never fit this group's token limit
        anyone = budget.free_at(now, 0)
        if anyone <= now:
            # Too large for what is left of the token budget: only this request waits, and it
            # must be woken when enough tokens have left the window.
            self.wake_at = min(self.wake_at, free)
            return SKIPS
        # Blocked for everyone, but only until a request of no tokens could pass: a smaller
        # request may use the lane then, before this one's tokens fit.  Or until its learned
        # limit is due to be tested.
        return Verdict.blocked_until(anyone if group.relearn_at <= now
                                     else min(anyone, group.relearn_at))

    def park(self, key: int, model: int, until: float) -> None:
        """See `keysched._selection.LaneOracle.park`: the scheduler arms the timer."""
        if math.isfinite(until):
            self.parked.append((key, model, until))


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
        self.project_names = list(config.projects)
        project_index = {name: index for index, name in enumerate(self.project_names)}
        self.keys = [KeyState(index, key, project_index[key.project or ""])
                     for index, key in enumerate(config.keys)]
        self._key_index = {state.key.label: state.index for state in self.keys}
        self.project_keys: list[list[int]] = [[] for _ in self.project_names]
        for state in self.keys:
            self.project_keys[state.project].append(state.index)
        self._project_active = [len(keys) for keys in self.project_keys]
        self.models = [
            ModelState(name, len(self.project_names), OverloadEvidence(
                trip=policy.overload_trip, rate=policy.overload_rate, window=policy.overload_window))
            for name in config.models]
        self._model_index = {name: index for index, name in enumerate(config.models)}
        self.n_models = len(self.models)
        self.groups: list[list[QuotaGroup]] = []
        for p, project in enumerate(self.project_names):
            row = []
            for m, model in enumerate(config.models):
                # A group without a configured limit gets its budget (its history, for limits
                # learned later) on its first dispatch: most groups of a big pool stay small.
                limit = config.limit_for(project, model) if policy.budgets_limits else None
                row.append(QuotaGroup(p, m, Budget(limit, wall_epoch, self._retry.quota_margin)
                                      if limit else None))
            self.groups.append(row)
        # Each project's billing account (a spend 429 benches every project of the account);
        # a project no key names an account for is billed alone.
        account_of = {key.project: key.billing_account for key in config.keys
                      if key.billing_account is not None}
        self._accounts = [account_of.get(project, f"project:{project}")
                          for project in self.project_names]
        # Per model: the limits learned on any of its groups (the "priors").
        self.priors: list[dict[QuotaDimension, int]] = [{} for _ in config.models]
        self.lane_cool: dict[tuple[int, int], float] = {}
        self._lane_cool_reason: dict[tuple[int, int], str] = {}
        self._lane_errors: dict[tuple[int, int], int] = {}  # 500s in a row, for the lane breaker
        # Per lane (index ``key * n_models + model``): attempts dispatched, answered, failed.
        lanes = len(self.keys) * self.n_models
        self._dispatched = [0] * lanes
        self._answered = [0] * lanes
        self._errored = [0] * lanes
        self.selector: Selector = policy.selector(len(self.keys), self.n_models, rng)
        # Counts what was benched, disabled or taken out: a waiting request's return time need
        # be weighed again only when it changed (see `Scheduler._returns_too_late`).
        self.benched = 0

    # ------------------------------------------------------------------ questions

    def query(self, tokens: int, quota: bool) -> LaneQuery:
        """An oracle for placing one request of `tokens` (`quota`: it spends quota)."""
        return LaneQuery(self, tokens, quota)

    def select(self, query: LaneQuery, model: int, now: float, avoid: Container[int]) -> int | None:
        """The key to serve the query's request on `model` now, if any lane can."""
        return self.selector.select(query, model, now, avoid)

    def model_open(self, model: int, now: float) -> bool:
        """Whether the model is in rotation now (neither unavailable nor cooling)."""
        state = self.models[model]
        return not state.unavailable and state.cool_until <= now

    def probe_due(self, model: int, now: float) -> bool:
        """Whether a cooling model may be probed now."""
        state = self.models[model]
        return not state.unavailable and state.cool_until > now and state.probe_at <= now

    def probed(self, model: int, now: float) -> float:
        """A request probes the cooling model now; returns when the next probe is due."""
        state = self.models[model]
        state.probe_at = now + self.policy.probe_interval
        return state.probe_at

    def has_key(self, label: str) -> bool:
        """Whether a key of the pool has this label."""
        return label in self._key_index

    def hopeless(self, models: Sequence[int]) -> bool:
        """Whether no model of `models` can ever serve again (unavailable, or no group left)."""
        return all(self.models[m].unavailable or self.models[m].usable_groups <= 0
                   for m in models)

    def key_disabled(self, key: int) -> bool:
        """Whether the key is disabled for good."""
        return self.keys[key].disabled is not None

    def capacity_returns(self, models: Sequence[int], tokens: int, now: float) -> float | None:
        """The earliest time a lane of `models` may serve a request of `tokens` again, if any
        ever will."""
        best = math.inf
        for model_index in models:
            model = self.models[model_index]
            if model.unavailable:
                continue
            for project_index, row in enumerate(self.groups):
                group = row[model_index]
                if group.unavailable or self._project_active[project_index] == 0:
                    continue
                # A cooling model may be probed before its cooldown ends, and a learned limit
                # tested before its budget frees: both can return capacity early.
                model_at = min(model.cool_until, max(now, model.probe_at))
                at = max(now, group.cool_until, model_at)
                if group.budget is not None and group.budget.limited:
                    free = group.budget.free_at(now, tokens)
                    at = max(at, min(free, max(now, group.relearn_at)))
                best = min(best, at)
        return best if math.isfinite(best) else None

    def lanes(self, at: float) -> Iterator[LaneSnapshot]:
        """Every lane as seen at `at`."""
        for state in self.keys:
            for model_index, model in enumerate(self.models):
                lane_state, reason, until = self._lane_status(state, model_index, at)
                lane = state.index * self.n_models + model_index
                yield LaneSnapshot(
                    key=state.key.label or "", project=self.project_names[state.project],
                    model=model.name, state=lane_state, reason=reason, cooldown_until=until,
                    in_flight=state.in_flight, dispatched=self._dispatched[lane],
                    succeeded=self._answered[lane], failed=self._errored[lane])

    def group_snapshots(self, at: float) -> Iterator[GroupSnapshot]:
        """Every quota group as seen at `at`."""
        for project_index, row in enumerate(self.groups):
            for model_index, group in enumerate(row):
                if group.budget is None:
                    usage: tuple[int | None, int | None, int | None] = (None, None, None)
                elif math.isfinite(at):
                    usage = group.budget.usage(at)
                else:  # the core has seen no time yet, so nothing was sent
                    usage = (0, 0, 0)
                cooling = group.cool_until > at
                yield GroupSnapshot(
                    project=self.project_names[project_index],
                    model=self.models[model_index].name,
                    cooldown_until=group.cool_until if cooling else None,
                    reason=group.reason if cooling or group.unavailable else None,
                    unavailable=group.unavailable, requests_last_minute=usage[0],
                    tokens_last_minute=usage[1], requests_today=usage[2],
                    limits=() if group.budget is None else group.budget.limits,
                    probing=group.half_open is not None)

    def _lane_status(self, state: KeyState, model_index: int,
                     now: float) -> tuple[LaneState, str | None, float | None]:
        if state.disabled is not None:
            return LaneState.DISABLED, state.disabled, None
        model = self.models[model_index]
        group = self.groups[state.project][model_index]
        if model.unavailable or group.unavailable:
            return LaneState.UNAVAILABLE, model.reason if model.unavailable else group.reason, None
        candidates = [(group.cool_until, group.reason), (model.cool_until, model.reason),
                      (self.lane_cool.get((state.index, model_index), -math.inf), "lane")]
        until, reason = max(candidates, key=lambda item: item[0])
        if until > now:
            return LaneState.COOLING, reason, until
        if group.budget is not None and group.budget.limited and math.isfinite(now):
            # (now is -inf when no time was seen: nothing was sent)
            free = group.budget.free_at(now, 0)
            if free > now:
                return LaneState.COOLING, "budget", free
        return LaneState.AVAILABLE, None, None

    # ------------------------------------------------------------------ attempts

    def acquire(self, key: int, model: int, tokens: int, quota: bool, now: float,
                seq: int) -> tuple[bool, bool]:
        """An attempt of `tokens` (`quota`: it spends quota) was dispatched on the lane; `seq`
        orders the key by last use.  Returns (budgeted, relearn): whether it was recorded in its
        group's budget, and whether it goes past a learned limit as its test."""
        state = self.keys[key]
        state.in_flight += 1
        state.seq = seq
        self.selector.update(key, (state.in_flight, seq))
        group = self.groups[state.project][model]
        budget = self._budget(group)
        budgeted = budget is not None and quota
        relearn = False
        if budget is not None and budgeted:
            # Past a known limit only as the test of a learned one (see `LaneQuery.verdict`).
            relearn = budget.limited and budget.free_at(now, tokens) > now
            budget.record(now, tokens)
        group.sent(test=relearn)
        self._dispatched[key * self.n_models + model] += 1
        return budgeted, relearn

    def release(self, attempt: Attempt, now: float) -> None:
        """Free the key and the quota group an attempt held."""
        state = self.keys[attempt.key]
        state.in_flight -= 1
        self.selector.update(attempt.key, (state.in_flight, state.seq))
        group = self.groups[state.project][attempt.model]
        group.released(now, test=attempt.relearn)
        if group.parked:
            self._unpark(group)

    def withdraw(self, attempt: Attempt, tokens: int, now: float) -> None:
        """Take back an attempt that was never sent: release it, uncount it, refund it."""
        self.release(attempt, now)
        self._dispatched[attempt.key * self.n_models + attempt.model] -= 1
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
        for key in self.project_keys[group.project]:
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
        group = self.groups[self.keys[attempt.key].project][attempt.model]
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
            self._cool_lane(attempt.key, attempt.model, now + min(
                outcome.retry_after, self._retry.max_server_delay), outcome.kind.value, now,
                changes)
        lane = attempt.key * self.n_models + attempt.model
        if action.next is Next.RETURN:
            self._answered[lane] += 1
        else:
            self._errored[lane] += 1
        return changes

    def _answered_on(self, group: QuotaGroup, attempt: Attempt, now: float,
                     changes: Changes) -> None:
        """An answer: the model's streak, the lane's errors, the group's probing (see
        `Meaning.answers`)."""
        self.models[attempt.model].answered(attempt.sent, now)
        self._lane_errors.pop((attempt.key, attempt.model), None)
        if group.answered(self.priors[attempt.model], now, test=attempt.relearn):
            changes.emit("limit_unlearned", "an answer past the learned limit", now,
                         project=self.project_names[group.project],
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
        changes.emit("limit_learned", f"{violation.dimension.value}={violation.value} from "
                     f"{violation.quota_id}", now, project=self.project_names[group.project],
                     model=self.models[group.model].name)

    def _lane_error(self, attempt: Attempt, reason: str, now: float, changes: Changes) -> None:
        """A 500 on a lane: the lane breaker cools it at `lane_error_trip` in a row."""
        lane = (attempt.key, attempt.model)
        errors = self._lane_errors[lane] = self._lane_errors.get(lane, 0) + 1
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
        state = self.keys[attempt.key]
        model = self.models[attempt.model]
        reason = outcome.kind.value
        if effect is Effect.COOL_GROUP:
            self._cool_group(group, now + self._quota_delay(outcome), reason, now, changes)
        elif effect is Effect.COOL_BILLING_ACCOUNT:
            self._cool_account(state.project, now + self._quota_delay(outcome), reason, now,
                               changes)
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
            self._overloaded(model, attempt.sent, reason, now, changes)
        elif effect is Effect.MODEL_UNAVAILABLE:
            if not model.unavailable:
                model.unavailable = True
                model.reason = reason
                changes.emit("model_unavailable", reason, now, model=model.name)
        elif effect is Effect.DISABLE_KEY:
            self._disable(state, reason, now, changes)
        elif effect is Effect.DISABLE_PROJECT:
            for index in self.project_keys[state.project]:
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

    def _cool_account(self, project: int, until: float, reason: str, now: float,
                      changes: Changes) -> None:
        account = self._accounts[project]
        for project_index in (p for p, a in enumerate(self._accounts) if a == account):
            for other in self.groups[project_index]:
                self._cool_group(other, until, reason, now, changes)
                other.half_open = 1  # spend is no budget: reopen every group carefully

    def _group_unavailable(self, group: QuotaGroup, reason: str, now: float,
                           changes: Changes) -> None:
        if not group.unavailable:
            group.unavailable = True
            group.reason = reason
            if self._project_active[group.project] > 0:
                self.models[group.model].usable_groups -= 1
            changes.emit("group_unavailable", reason, now,
                         project=self.project_names[group.project],
                         model=self.models[group.model].name)

    def _overloaded(self, model: ModelState, sent: float, reason: str, now: float,
                    changes: Changes) -> None:
        # One 503 is evidence, not proof (see `keysched._breaker.ModelState`).
        changed, news = model.overloaded(
            sent, now, base=self._retry.overload_cooldown, cap=self._retry.overload_cooldown_cap,
            probe_interval=self.policy.probe_interval)
        if changed:
            model.reason = reason
            self.benched += 1
            changes.wake(model.cool_until)
            changes.wake(model.probe_at)
            if news:  # not for every straggler that extends it a little
                changes.emit("model_cooled", reason, now, model=model.name,
                             until=model.cool_until)

    def _cool_lane(self, key: int, model: int, until: float, reason: str, now: float,
                   changes: Changes) -> None:
        lane = (key, model)
        if until > self.lane_cool.get(lane, -math.inf):
            self.lane_cool[lane] = until
            self._lane_cool_reason[lane] = reason
            state = self.keys[key]
            changes.emit("lane_cooled", reason, now, key=state.key.label,
                         project=self.project_names[state.project],
                         model=self.models[model].name, until=until)
            changes.wake(until)

    def _cool_group(self, group: QuotaGroup, until: float, reason: str, now: float,
                    changes: Changes) -> None:
        if until > group.cool_until:
            self.benched += 1
            group.cool_until = until
            group.reason = reason
            changes.wake(until)
            changes.emit("group_cooled", reason, now, project=self.project_names[group.project],
                         model=self.models[group.model].name, until=until)

    def _disable(self, state: KeyState, reason: str, now: float, changes: Changes) -> None:
        if state.disabled is not None:
            return
        state.disabled = reason
        self.benched += 1
        self._project_active[state.project] -= 1
        if self._project_active[state.project] == 0:
            for model_index, group in enumerate(self.groups[state.project]):
                if not group.unavailable:
                    self.models[model_index].usable_groups -= 1
        changes.emit("key_disabled", reason, now, key=state.key.label,
                     project=self.project_names[state.project])

    # ------------------------------------------------------------------ facts from elsewhere

    def _group_named(self, project: str, model: str) -> QuotaGroup:
        return self.groups[self.project_names.index(project)][self._model_index[model]]

    def cool_group(self, project: str, model: str, until: float, reason: str,
                   now: float) -> Changes:
        """Another process benched (project, model) until `until`: merged by the later end."""
        changes = Changes(self._record)
        self._cool_group(self._group_named(project, model), until, reason, now, changes)
        return changes

    def cool_lane(self, key: str, model: str, until: float, reason: str, now: float) -> Changes:
        """Another process idled the (key label, model) lane until `until` (later end wins)."""
        changes = Changes(self._record)
        self._cool_lane(self._key_index[key], self._model_index[model], until, reason, now,
                        changes)
        return changes

    def cool_model(self, model: str, until: float, reason: str, now: float) -> Changes:
        """Another process took `model` out of rotation until `until` (later end wins)."""
        changes = Changes(self._record)
        state = self.models[self._model_index[model]]
        if state.cool_elsewhere(until, now, self.policy.probe_interval):
            state.reason = reason
            self.benched += 1
            changes.wake(state.cool_until)
            changes.wake(state.probe_at)
            changes.emit("model_cooled", reason, now, model=state.name, until=until)
        return changes

    def disable_key(self, key: str, reason: str, now: float) -> Changes:
        """Another process found the key (by label) unusable for good."""
        changes = Changes(self._record)
        self._disable(self.keys[self._key_index[key]], reason, now, changes)
        return changes

    def learn_limit(self, project: str, model: str, dimension: QuotaDimension, value: int,
                    now: float, quota_id: str) -> Changes:
        """Another process learned (project, model)'s limit of `dimension` from a 429."""
        changes = Changes(self._record)
        group = self._group_named(project, model)
        budget = self._budget(group)
        if budget is None or not self.policy.learns_limits:
            return changes
        violation = Violation(dimension=dimension, value=value, quota_id=quota_id)
        if budget.learn(dimension, value, now, quota_id):
            self.benched += 1
            self._announce_learned(group, violation, now, changes)
        if value >= 1 and dimension is not QuotaDimension.SPEND:
            self.priors[group.model][dimension] = value
        return changes

    def count_usage(self, project: str, model: str, at: float, tokens: int, now: float) -> None:
        """Another process sent a request of `tokens` on (project, model) at `at`: it counts in
        the group's budget as one of ours would."""
        budget = self._budget(self._group_named(project, model))
        if budget is not None:
            budget.count(at, tokens, now)

    def shared_facts(self, now: float) -> list[SharedFact]:
        """The facts worth sharing that are in force at `now` (see the module docstring)."""
        facts: list[SharedFact] = [DisabledKey(key=state.key.label or "", reason=state.disabled)
                                   for state in self.keys if state.disabled is not None]
        facts.extend(Cooldown(model=model.name, until=model.cool_until, reason=model.reason or "")
                     for model in self.models if model.cool_until > now)
        for row in self.groups:
            for group in row:
                project, model_name = (self.project_names[group.project],
                                       self.models[group.model].name)
                if group.cool_until > now:
                    facts.append(Cooldown(project=project, model=model_name,
                                          until=group.cool_until, reason=group.reason or ""))
                if group.budget is not None:
                    facts.extend(LearnedLimit(
                        project=project, model=model_name, dimension=limit.dimension,
                        value=limit.value, learned_at=limit.learned_at or 0.0,
                        quota_id=limit.quota_id or "")
                        for limit in group.budget.limits if limit.source == "learned")
        for (key, model_index), until in self.lane_cool.items():
            if until > now:
                state = self.keys[key]
                facts.append(Cooldown(project=self.project_names[state.project],
                                      model=self.models[model_index].name, key=state.key.label,
                                      until=until, reason=self._lane_cool_reason[key, model_index]))
        return facts
