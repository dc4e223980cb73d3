"""Stateful property test: the core against a naive oracle, with safety invariants and liveness.

The oracle keeps the pool's state in the plainest possible form (dicts of cooldown ends, lists of
dispatch times) and re-derives every rule by brute force: which lanes can serve a request, which
tier it must use, which key is least loaded, which requests must have failed by their deadline.
Every decision the core returns is checked against it, one at a time, in order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from keysched import (
    DEFAULT_ACTIONS,
    Effect,
    Fail,
    FailReason,
    Finish,
    Key,
    LaneState,
    Limit,
    Next,
    Outcome,
    OutcomeKind,
    PoolConfig,
    RetryPolicy,
    Scheduler,
    UsageError,
    next_pacific_midnight,
)
from keysched._decisions import Decision, Dispatch

T0 = 1_000_000.0
WINDOW = 60.0
_K = OutcomeKind
QUOTA_REFUSALS = {_K.RATE_LIMITED_MINUTE, _K.RATE_LIMITED_DAY, _K.SPEND_LIMITED, _K.QUOTA_ZERO}
ALL_429S = QUOTA_REFUSALS | {_K.SHARED_CAPACITY, _K.TOO_LARGE_FOR_QUOTA}
PROBING_429S = {_K.RATE_LIMITED_MINUTE, _K.RATE_LIMITED_DAY, _K.SPEND_LIMITED, _K.SHARED_CAPACITY}
# Wall epochs that put core time T0 shortly before a Pacific midnight, some next to DST changes.
WALLS = [1_710_061_200.0 - T0 - 1_800.0,  # 2024-03-10 01:00 PST - 30 min: DST starts that night
         1_717_311_600.0 - T0 - 300.25,  # 2024-06-02 00:00 PDT - 5 min
         1_730_622_600.0 - T0 + 0.5]  # 2024-11-03 01:30 PDT: DST ends within the hour
STEPS = [0.0, 0.25, 1.0, 3.0, 10.0, 30.0, 61.0, 4_000.0]
RETRY_AFTER = [None, 0.0, 0.5, 3.0, 30.0]
TOKENS = [0, 40, 90, 150, 400]


@dataclass
class Req:
    """The oracle's view of one request."""

    rid: int
    models: tuple[int, ...]
    tokens: int
    deadline: float
    state: str = "waiting"  # waiting, backoff, flight, ended
    ready: float = math.inf
    number: int = 0
    later: int = 0
    empties: int = 0
    quota_waits: int = 0
    attempt: int | None = None
    avoid: set[int] = field(default_factory=set)
    errors: dict[int, int] = field(default_factory=dict)


class CoreMachine(RuleBasedStateMachine):
    """Drives a `Scheduler` with random inputs and checks it against a naive oracle."""

    def __init__(self) -> None:
        super().__init__()
        self.core: Scheduler | None = None

    @initialize(
        projects=st.lists(st.sampled_from(["p0", "p1", "p2"]), min_size=3, max_size=5),
        n_models=st.integers(2, 3),
        limits=st.lists(st.none() | st.tuples(
            st.none() | st.integers(2, 3), st.none() | st.integers(100, 300),
            st.none() | st.integers(3, 5), st.booleans()), min_size=3, max_size=3),
        cap=st.none() | st.integers(1, 2),
        jitter=st.sampled_from([0.0, 1.0]),
        max_attempts=st.integers(3, 6),
        wall=st.sampled_from(WALLS),
        seed=st.integers(0, 2**32),
    )
    def setup(self, projects: list[str], n_models: int,
              limits: list[tuple[int | None, int | None, int | None, bool] | None],
              cap: int | None,
              jitter: float, max_attempts: int, wall: float, seed: int) -> None:
        """Build a pool of 3-5 keys over shared projects, 2-3 models and small known limits."""
        keys = [Key(secret=f"secret-{i}", label=f"k{i}", project=p) for i, p in enumerate(projects)]
        models = [f"m{i}" for i in range(n_models)]
        config_limits = []
        for model, known in zip(models, limits, strict=False):
            if known is None:
                continue
            rpm, tpm, rpd, own = known
            if rpm or tpm or rpd:
                config_limits.append(Limit(model=model, rpm=rpm, tpm=tpm, rpd=rpd))
                if own:  # a project-specific override with one more request per minute
                    config_limits.append(Limit(model=model, project=projects[0],
                                               rpm=(rpm or 2) + 1, tpm=tpm, rpd=rpd))
        self.retry = RetryPolicy(max_attempts=max_attempts, backoff_base=0.5, backoff_cap=4.0,
                                 jitter=jitter, deadline=60.0, minute_cooldown=20.0,
                                 overload_cooldown=2.0, overload_cooldown_cap=8.0)
        self.config = PoolConfig(keys=keys, models=models, limits=config_limits,
                                 retry=self.retry, max_in_flight_per_key=cap)
        self.core = Scheduler(self.config, rng=random.Random(seed), wall_epoch=wall)
        assert self.core.poll(T0) == []  # the core learns the time
        self.rng = random.Random(seed)  # mirrors the core's draws (backoff jitter only)
        self.wall = wall
        self.now = T0
        self.cap = cap or math.inf
        self.project = [k.project for k in keys]
        self.n_keys, self.n_models = len(keys), n_models
        self.limit = {(p, m): self.config.limit_for(p, models[m])
                      for p in set(projects) for m in range(n_models)}
        self.sent: dict[tuple[str, int], list[tuple[float, int]]] = {g: [] for g in self.limit}
        # A window ends `quota_margin` later than the clock says (keysched._budget).
        self.margin = self.retry.quota_margin
        self.window = WINDOW + self.margin
        # Probing groups (a 429 without a known limit): attempts allowed in flight, and in flight.
        self.probe: dict[tuple[str, int], int] = {}
        self.group_flight: dict[tuple[str, int], int] = dict.fromkeys(self.limit, 0)
        self.group_cool: dict[tuple[str, int], float] = {}
        self.group_gone: set[tuple[str, int]] = set()
        self.model_cool = [-math.inf] * n_models
        self.model_gone = [False] * n_models
        self.streak = [0] * n_models
        # The model breaker (default Policy): recent (time, was a 503) per model, when each model
        # was last cooled, and when a request may next probe it while it cools.
        self.evidence: list[list[list[float]]] = [[] for _ in range(n_models)]
        self.cooled_at = [-math.inf] * n_models
        self.probe_at = [-math.inf] * n_models
        self.lane_errors: dict[tuple[int, int], int] = {}  # 500s in a row per lane
        # Bare 429s since the group last answered, and when its current bare-429 bench began.
        self.bare: dict[tuple[str, int], tuple[int, float]] = {}
        self.lane_cool: dict[tuple[int, int], float] = {}
        self.disabled = [False] * self.n_keys
        self.in_flight = [0] * self.n_keys
        self.reqs: dict[int, Req] = {}
        self.attempts: dict[int, tuple[int, int, int]] = {}
        self.sent_at: dict[int, float] = {}
        self.done_attempts: list[int] = []
        self.pending: list[Decision] = []
        self.dispatched = 0
        note(f"config: keys={projects} models={n_models} limits={config_limits} cap={cap} "
             f"jitter={jitter} attempts={max_attempts} wall={wall}")

    # ---------------------------------------------------------------- oracle

    def eff(self, req: Req) -> tuple[int, ...]:
        models = tuple(m for m in req.models if req.errors.get(m, 0)
                       < self.retry.server_errors_per_model)
        return models or req.models[-1:]

    def budget_room(self, key: int, model: int, tokens: int, now: float) -> bool:
        group = (self.project[key], model)
        limit = self.limit[group]
        if limit is None:
            return True
        sent = self.sent[group]
        window = [n for t, n in sent if t + self.window > now]
        day = next_pacific_midnight(now - self.margin + self.wall)
        today = sum(1 for t, _ in sent if next_pacific_midnight(t - self.margin + self.wall) == day)
        return ((limit.rpm is None or len(window) + 1 <= limit.rpm)
                and (limit.tpm is None or sum(window) + tokens <= limit.tpm)
                and (limit.rpd is None or today + 1 <= limit.rpd))

    def can_serve(self, key: int, model: int, req: Req, now: float, probing: bool = False) -> bool:
        group = (self.project[key], model)
        return (not self.disabled[key] and self.in_flight[key] < self.cap
                and not self.model_gone[model] and (probing or self.model_cool[model] <= now)
                and group not in self.group_gone and self.group_cool.get(group, -math.inf) <= now
                and self.lane_cool.get((key, model), -math.inf) <= now
                and (group not in self.probe or self.group_flight[group] < self.probe[group])
                and self.budget_room(key, model, req.tokens, now))

    def hopeless(self, models: tuple[int, ...]) -> bool:
        def usable(m: int) -> bool:
            return not self.model_gone[m] and any(
                not self.disabled[k] and (self.project[k], m) not in self.group_gone
                for k in range(self.n_keys))
        return not any(usable(m) for m in models)

    def heads(self) -> list[Req]:
        """The oldest waiting request of each class of effective models."""
        firsts: dict[tuple[int, ...], Req] = {}
        for req in sorted(self.reqs.values(), key=lambda r: r.rid):
            if req.state == "waiting":
                firsts.setdefault(self.eff(req), req)
        return list(firsts.values())

    def probe_model(self, req: Req, now: float) -> int | None:
        """The cooling model a request nothing else can serve would probe now, if any."""
        if any(self.can_serve(k, m, req, now) for m in self.eff(req) for k in range(self.n_keys)):
            return None
        for m in self.eff(req):
            if (not self.model_gone[m] and self.model_cool[m] > now and self.probe_at[m] <= now
                    and any(self.can_serve(k, m, req, now, probing=True)
                            for k in range(self.n_keys))):
                return m
        return None

    def servable(self, req: Req, now: float) -> bool:
        if self.probe_model(req, now) is not None:
            return True
        return any(self.can_serve(k, m, req, now) for m in self.eff(req)
                   for k in range(self.n_keys))

    # ---------------------------------------------------------------- checking decisions

    def poll(self) -> None:
        assert self.core is not None
        now = self.now
        decisions = self.core.poll(now)
        note(f"poll({now}) -> {decisions}")
        pending, self.pending = self.pending, []
        assert [_plain(d) for d in decisions[:len(pending)]] == [_plain(d) for d in pending]
        rest = decisions[len(pending):]
        # Timers: every waiting or backing-off request past its deadline fails, in deadline order.
        late = sorted((r for r in self.reqs.values()
                       if r.state in ("waiting", "backoff") and r.deadline <= now),
                      key=lambda r: (r.deadline, r.rid))
        expected = [Fail(request=r.rid, reason=FailReason.DEADLINE, attempt=r.attempt)
                    for r in late]
        assert [_plain(d) for d in rest[:len(late)]] == [_plain(d) for d in expected]
        for fail, req in zip(rest[:len(late)], late, strict=True):
            assert isinstance(fail, Fail)
            assert fail.retry_at is None or fail.retry_at >= now
            req.state = "ended"
        for req in self.reqs.values():
            if req.state == "backoff" and req.ready <= now:
                req.state = "waiting"
        for decision in rest[len(late):]:
            self.check_dispatch_phase(decision, now)
        # Work conservation: the head of every class is left waiting only if nothing can serve it.
        for head in self.heads():
            assert not self.servable(head, now), f"request {head.rid} could be served at {now}"
            assert not self.hopeless(self.eff(head))
        self.reqs = {rid: r for rid, r in self.reqs.items() if r.state != "ended"}
        self.check_next_deadline()

    def check_dispatch_phase(self, decision: Decision, now: float) -> None:
        if isinstance(decision, Fail):
            req = self.reqs[decision.request]
            assert req.state == "waiting"
            if decision.reason is FailReason.DEADLINE:
                # Failed early: nothing can serve it before its deadline, and the core says when
                # capacity returns, after it.  No cooldown end, budget expiry or probe before the
                # deadline may make it servable.
                assert decision.retry_at is not None
                assert decision.retry_at > req.deadline
                assert now < req.deadline
                for at in [now, *sorted(t for t in self.event_times() if now < t <= req.deadline)]:
                    assert not self.servable(req, at), (req.rid, at)
            else:
                assert decision.reason is FailReason.NO_USABLE_LANE
                assert self.hopeless(self.eff(req))
            req.state = "ended"
            return
        assert isinstance(decision, Dispatch), decision
        req = self.reqs[decision.request]
        assert req.state == "waiting"
        models = self.eff(req)
        # FIFO among requests allowing the same models.
        assert all(r.rid > req.rid for r in self.reqs.values()
                   if r.state == "waiting" and r is not req and self.eff(r) == models)
        key = int(decision.key.label.removeprefix("k"))  # type: ignore[union-attr]
        model = self.config.models.index(decision.model)
        assert decision.number == req.number + 1
        probing = not self.can_serve(key, model, req, now)
        if probing:  # only a probe of a cooling model that nothing else could replace
            assert self.probe_model(req, now) == model, (key, model)
            self.probe_at[model] = now + 1.0  # Policy().probe_interval
        # 1. Safety: the lane may serve this request now.
        assert self.can_serve(key, model, req, now, probing), (key, model)
        # 2. The best tier that can serve, then the least-loaded lane, avoiding keys that failed.
        assert model in models
        for better in models[:models.index(model)]:
            assert not any(self.can_serve(k, better, req, now) for k in range(self.n_keys))
        lanes = [k for k in range(self.n_keys) if self.can_serve(k, model, req, now, probing)]
        fresh = [k for k in lanes if k not in req.avoid]
        pool = fresh or lanes
        assert key in pool
        assert self.in_flight[key] == min(self.in_flight[k] for k in pool)
        self.in_flight[key] += 1
        self.group_flight[(self.project[key], model)] += 1
        self.sent[(self.project[key], model)].append((now, req.tokens))
        self.attempts[decision.attempt] = (req.rid, key, model)
        self.sent_at[decision.attempt] = now
        req.state, req.number, req.attempt = "flight", req.number + 1, decision.attempt
        self.dispatched += 1

    def check_next_deadline(self) -> None:
        assert self.core is not None
        deadline = self.core.next_deadline()
        assert deadline >= self.now or deadline == -math.inf or deadline >= T0
        waiting = [r for r in self.reqs.values() if r.state in ("waiting", "backoff")]
        if not waiting:
            return
        bound = min(min(r.deadline for r in waiting),
                    min((r.ready for r in waiting if r.state == "backoff"), default=math.inf))
        assert deadline <= bound, (deadline, bound)
        # The core must also wake by the first moment a waiting head can be served.
        for at in sorted(t for t in self.event_times() if self.now < t < bound):
            if any(self.servable(head, at) for head in self.heads()):
                assert deadline <= at, (deadline, at)
                break

    def event_times(self) -> set[float]:
        times = set(self.group_cool.values()) | set(self.lane_cool.values()) | set(
            self.model_cool) | set(self.probe_at)
        for sent in self.sent.values():
            times.update(t + self.window for t, _ in sent)
        times.add(next_pacific_midnight(self.now + self.wall) - self.wall)
        times.add(next_pacific_midnight(self.now - self.margin + self.wall) - self.wall
                  + self.margin)
        return {t for t in times if math.isfinite(t)}

    # ---------------------------------------------------------------- rules

    @rule(data=st.data(), tokens=st.sampled_from(TOKENS),
          deadline=st.sampled_from([None, 5.0, 30.0, 120.0]))
    def submit(self, data: st.DataObject, tokens: int, deadline: float | None) -> None:
        """Submit a request allowing a random ordered subset of the models."""
        assert self.core is not None
        order = data.draw(st.permutations(range(self.n_models)))
        count = data.draw(st.integers(1, self.n_models))
        models = tuple(sorted(order[:count])) if data.draw(st.booleans()) else tuple(order[:count])
        rid = self.core.submit(self.now, models=[self.config.models[m] for m in models],
                               input_tokens=tokens, deadline=deadline)
        assert rid not in self.reqs
        self.reqs[rid] = Req(rid, models, tokens,
                             self.now + (deadline if deadline is not None else self.retry.deadline))
        if data.draw(st.booleans()):
            self.poll()

    @rule()
    def poll_now(self) -> None:
        """Poll at the current time."""
        self.poll()

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: float) -> None:
        """Let time pass, then poll."""
        self.now += step
        self.poll()

    @rule()
    def jump_to_next_deadline(self) -> None:
        """Jump to the time the core asked to be woken at, then poll."""
        assert self.core is not None
        deadline = self.core.next_deadline()
        if math.isfinite(deadline):
            self.now = max(self.now, deadline)
        self.poll()

    @rule(data=st.data())
    def jump_to_an_event(self, data: st.DataObject) -> None:
        """Jump exactly to a cooldown end, a budget expiry or a midnight, then poll."""
        future = sorted(t for t in self.event_times() if t > self.now)
        if future:
            self.now = data.draw(st.sampled_from(future[:6]))
        self.poll()

    @precondition(lambda self: bool(getattr(self, "attempts", None)))
    @rule(data=st.data(), kind=st.sampled_from(list(OutcomeKind)),
          retry_after=st.sampled_from(RETRY_AFTER), then_poll=st.booleans())
    def complete(self, data: st.DataObject, kind: OutcomeKind, retry_after: float | None,
                 then_poll: bool) -> None:
        """Complete a random attempt in flight with any outcome."""
        assert self.core is not None
        aid = data.draw(st.sampled_from(sorted(self.attempts)))
        self.core.complete(aid, Outcome(kind=kind, retry_after=retry_after), self.now)
        note(f"complete({aid}, {kind.name}, {retry_after}) at {self.now}")
        self.apply_outcome(aid, kind, retry_after)
        if then_poll:
            self.poll()

    def note_evidence(self, model: int, now: float, *, overloaded: bool) -> bool:
        """Record an answer or a 503; whether the model breaker trips (default Policy: five 503s
        and half the outcomes of the last 10 s, counted in buckets of 1 s that leave the window
        when a new bucket starts, as `keysched._breaker.OverloadEvidence` counts them)."""
        buckets = self.evidence[model]
        if not buckets or now >= buckets[-1][0] + 1.0:
            buckets[:] = [b for b in buckets if b[0] + 10.0 > now]
            buckets.append([now, 0, 0])
        buckets[-1][1] += 1
        buckets[-1][2] += overloaded
        total = sum(b[1] for b in buckets)
        count = sum(b[2] for b in buckets)
        return overloaded and count >= 5 and count >= 0.5 * total

    def apply_outcome(self, aid: int, kind: OutcomeKind, retry_after: float | None) -> None:
        now, retry = self.now, self.retry
        rid, key, model = self.attempts.pop(aid)
        self.done_attempts.append(aid)
        self.in_flight[key] -= 1
        req = self.reqs[rid]
        group = (self.project[key], model)
        self.group_flight[group] -= 1
        action = DEFAULT_ACTIONS[kind]
        sent = self.sent_at[aid]
        if kind in (OutcomeKind.SUCCESS, OutcomeKind.BLOCKED):
            self.streak[model] = 0
            self.note_evidence(model, now, overloaded=False)
            if self.model_cool[model] > now and sent >= self.cooled_at[model]:
                self.model_cool[model] = now  # a probe answered: the model is back
            self.lane_errors.pop((key, model), None)
            self.bare.pop(group, None)
            if group in self.probe:  # slow start: twice as many, until trusted again
                self.probe[group] *= 2
                if self.probe[group] >= 16:
                    del self.probe[group]
        if kind in ALL_429S:  # refused: the server did not count it, nor does the budget
            self.sent[group].remove((self.sent_at[aid], req.tokens))
        if kind in QUOTA_REFUSALS:
            req.quota_waits += 1
        if kind in PROBING_429S:  # no limit known (this oracle sends no quota values)
            self.probe[group] = 1
        effect = action.effect
        if effect is Effect.COOL_GROUP:
            until = now + (retry_after if retry_after is not None else retry.minute_cooldown)
            self.group_cool[group] = max(self.group_cool.get(group, -math.inf), until)
        elif effect is Effect.COOL_GROUP_BRIEFLY:  # doubling while bare 429s persist
            # (only an attempt sent after the current bench began escalates it)
            n, since = self.bare.get(group, (0, -math.inf))
            if sent >= since:
                n, since = n + 1, now
            self.bare[group] = (n, since)
            until = now + min(retry.shared_capacity_cooldown_cap,
                              retry.shared_capacity_cooldown * 2.0 ** (n - 1))
            self.group_cool[group] = max(self.group_cool.get(group, -math.inf), until)
        elif effect is Effect.COOL_GROUP_UNTIL_MIDNIGHT:
            until = next_pacific_midnight(now + self.wall) - self.wall
            self.group_cool[group] = max(self.group_cool.get(group, -math.inf), until)
        elif effect is Effect.COOL_BILLING_ACCOUNT:  # each project is billed alone here
            until = now + (retry_after if retry_after is not None else retry.minute_cooldown)
            for m in range(self.n_models):
                other = (self.project[key], m)
                self.group_cool[other] = max(self.group_cool.get(other, -math.inf), until)
                self.probe[other] = 1  # every group reopens half-open
        elif effect is Effect.GROUP_UNAVAILABLE:
            self.group_gone.add(group)
        elif effect is Effect.COOL_MODEL:  # the breaker: on evidence, or a failed probe
            tripped = self.note_evidence(model, now, overloaded=True) or (
                self.streak[model] > 0 and sent >= self.cooled_at[model])  # half-open
            cooling = self.model_cool[model] > now
            if tripped or cooling:
                if sent >= self.cooled_at[model]:
                    self.streak[model] += 1
                delay = min(retry.overload_cooldown_cap,
                            retry.overload_cooldown * 2.0 ** (max(self.streak[model], 1) - 1))
                if now + delay > self.model_cool[model]:
                    if not cooling or sent >= self.cooled_at[model]:  # not for a straggler
                        self.cooled_at[model] = now
                    self.model_cool[model] = now + delay
                    self.probe_at[model] = now + 1.0
        elif effect is Effect.MODEL_UNAVAILABLE:
            self.model_gone[model] = True
        elif effect is Effect.COOL_LANE:
            lane = (key, model)
            self.lane_cool[lane] = max(self.lane_cool.get(lane, -math.inf), now + action.seconds)
        elif effect is Effect.DISABLE_KEY:
            self.disabled[key] = True
        elif effect is Effect.DISABLE_PROJECT:
            for k in range(self.n_keys):
                if self.project[k] == self.project[key]:
                    self.disabled[k] = True
        if kind is OutcomeKind.SERVER_ERROR:  # the lane breaker: three 500s in a row
            n = self.lane_errors[(key, model)] = self.lane_errors.get((key, model), 0) + 1
            if n >= 3:
                until = now + min(retry.overload_cooldown_cap,
                                  retry.overload_cooldown * 2.0 ** (n - 3))
                self.lane_cool[(key, model)] = max(self.lane_cool.get((key, model), -math.inf),
                                                   until)
        # 3. A retry delay on an outcome that blames no quota group idles the lane until t + d.
        if (retry_after is not None and effect in (Effect.NONE, Effect.COOL_MODEL)
                and action.next in (Next.RETRY_NOW, Next.RETRY_LATER)):
            lane = (key, model)
            self.lane_cool[lane] = max(self.lane_cool.get(lane, -math.inf), now + retry_after)

        def fail(reason: FailReason) -> None:
            self.pending.append(Fail(request=rid, reason=reason, attempt=aid))
            req.state = "ended"

        step = action.next
        if step is Next.RETURN:
            self.pending.append(Finish(request=rid, attempt=aid))
            req.state = "ended"
            return None
        if step is Next.FAIL:
            return fail(FailReason.REQUEST_ERROR)
        if kind is OutcomeKind.EMPTY:
            req.empties += 1
            if req.empties > retry.empty_retries:
                return fail(FailReason.EMPTY_RESPONSE)
        if kind in (OutcomeKind.SERVER_ERROR, OutcomeKind.OVERLOADED):
            req.errors[model] = req.errors.get(model, 0) + 1
        if step is Next.RETRY_OTHER_MODEL:
            req.errors[model] = retry.server_errors_per_model
            if all(req.errors.get(m, 0) >= retry.server_errors_per_model for m in req.models):
                return fail(FailReason.REQUEST_ERROR if kind is OutcomeKind.TOO_LARGE_FOR_QUOTA
                            else FailReason.NO_USABLE_LANE)
        if (req.number - req.quota_waits >= retry.max_attempts
                or req.number >= 4 * retry.max_attempts):
            return fail(FailReason.ATTEMPTS_EXHAUSTED)
        if now >= req.deadline:
            return fail(FailReason.DEADLINE)
        req.avoid.add(key)
        if step is Next.RETRY_LATER:
            delay = min(retry.backoff_cap, retry.backoff_base * 2.0 ** req.later)
            req.later += 1
            req.ready = now + delay * (1 - retry.jitter * self.rng.random())
            req.state = "backoff"
        else:
            req.state = "waiting"
        return None

    @precondition(lambda self: bool(getattr(self, "reqs", None)))
    @rule(data=st.data(), then_poll=st.booleans())
    def cancel(self, data: st.DataObject, then_poll: bool) -> None:
        """Cancel a random request (open or ended); an open one ends and frees its lane."""
        assert self.core is not None
        rid = data.draw(st.integers(1, max(self.reqs) if self.reqs else 1))
        req = self.reqs.get(rid)
        open_ = req is not None and req.state != "ended"
        assert self.core.cancel(rid, self.now) is open_
        if req is not None and open_:
            if req.state == "flight":
                assert req.attempt is not None
                _, key, model = self.attempts.pop(req.attempt)
                self.done_attempts.append(req.attempt)
                self.in_flight[key] -= 1
                self.group_flight[(self.project[key], model)] -= 1
            req.state = "ended"
        if then_poll:
            self.poll()

    @rule(data=st.data(), which=st.sampled_from(
        ["finished", "unknown", "poll_back", "submit_back", "complete_back", "cancel_back",
         "cancel_never", "submit_unhashable_model"]))
    def illegal(self, data: st.DataObject, which: str) -> None:
        """7. An illegal input raises UsageError and changes nothing."""
        assert self.core is not None
        core, now = self.core, self.now
        back = now - data.draw(st.sampled_from([1e-6, 1.0, 100.0]))
        success = Outcome(kind=OutcomeKind.SUCCESS)
        calls: dict[str, Any] = {
            "finished": lambda: core.complete(
                data.draw(st.sampled_from(self.done_attempts)) if self.done_attempts else 0,
                success, now),
            "unknown": lambda: core.complete(10**9, success, now),
            "poll_back": lambda: core.poll(back),
            "submit_back": lambda: core.submit(back),
            "complete_back": lambda: core.complete(
                min(self.attempts) if self.attempts else -5, success, back),
            "cancel_back": lambda: core.cancel(
                min((r.rid for r in self.reqs.values() if r.state != "ended"), default=-5), back),
            "cancel_never": lambda: core.cancel(10**9, now),
            "submit_unhashable_model": lambda: core.submit(now, models=(["m"],)),  # type: ignore[arg-type]
        }
        before = (core.snapshot(now), core.next_deadline(), core.in_flight, core.open_requests)
        try:
            calls[which]()
        except UsageError:
            pass
        else:
            raise AssertionError(f"{which} did not raise UsageError")
        assert (core.snapshot(now), core.next_deadline(), core.in_flight,
                core.open_requests) == before

    # ---------------------------------------------------------------- invariants

    @invariant()
    def accounting_matches(self) -> None:
        """4. In-flight counts match the oracle, never go negative, and every request is counted."""
        if self.core is None:
            return
        snap = self.core.snapshot(self.now)
        assert self.core.in_flight == len(self.attempts)
        for lane in snap.lanes:
            key = int(lane.key.removeprefix("k"))
            model = self.config.models.index(lane.model)
            assert lane.in_flight == self.in_flight[key] >= 0
            if self.disabled[key]:
                assert lane.state is LaneState.DISABLED
            elif self.model_gone[model] or (self.project[key], model) in self.group_gone:
                assert lane.state is LaneState.UNAVAILABLE
        for group in snap.groups:
            g = (group.project, self.config.models.index(group.model))
            until = self.group_cool.get(g, -math.inf)
            assert group.cooldown_until == (until if until > self.now else None)
            assert group.unavailable is (g in self.group_gone)
            if group.requests_last_minute is not None:
                assert group.requests_last_minute == sum(
                    1 for t, _ in self.sent[g] if t + self.window > self.now)
        ended = snap.requests_finished + snap.requests_failed + snap.requests_cancelled
        assert snap.requests_submitted == ended + self.core.open_requests

    def teardown(self) -> None:
        """5. Liveness: answering every attempt and jumping past every deadline drains the queue."""
        if self.core is None:
            return
        for _ in range(2_000):
            for aid in sorted(self.attempts):
                self.core.complete(aid, Outcome(kind=OutcomeKind.SUCCESS), self.now)
                self.apply_outcome(aid, OutcomeKind.SUCCESS, None)
            self.poll()
            if not self.reqs:
                break
            if not self.attempts:
                deadline = self.core.next_deadline()
                assert math.isfinite(deadline)
                self.now = max(self.now, deadline)
        assert not self.reqs
        assert self.core.open_requests == 0
        assert self.core.in_flight == 0
        assert all(n == 0 for n in self.in_flight)
        snap = self.core.snapshot(self.now)
        assert snap.waiting == 0
        assert snap.in_flight == 0
        assert snap.requests_submitted == (snap.requests_finished + snap.requests_failed
                                           + snap.requests_cancelled)


def _plain(decision: Decision) -> tuple[Any, ...]:
    """A decision without its informative `retry_at`."""
    if isinstance(decision, Fail):
        return ("fail", decision.request, decision.reason, decision.attempt)
    return (type(decision).__name__, decision)


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(settings.default, stateful_step_count=40)


@given(n_keys=st.integers(2, 6), rounds=st.lists(st.integers(1, 13), min_size=1, max_size=12),
       seed=st.integers(0, 1000))
def test_identical_keys_are_used_equally(n_keys: int, rounds: list[int], seed: int) -> None:
    """6. Under steady load, dispatch counts of identical keys never differ by more than one."""
    config = PoolConfig(keys=[f"s{i}" for i in range(n_keys)], models=["m"])
    core = Scheduler(config, rng=random.Random(seed))
    order = random.Random(seed)
    counts = dict.fromkeys(range(1, n_keys + 1), 0)
    now = T0
    for batch in rounds:
        for _ in range(batch):
            core.submit(now)
        sent = [d for d in core.poll(now) if isinstance(d, Dispatch)]
        assert len(sent) == batch
        for dispatch in sent:
            counts[int(dispatch.key.label.removeprefix("key#"))] += 1  # type: ignore[union-attr]
        assert max(counts.values()) - min(counts.values()) <= 1
        order.shuffle(sent)
        now += 1.0
        for dispatch in sent:
            core.complete(dispatch.attempt, Outcome(kind=OutcomeKind.SUCCESS), now)
        core.poll(now)
    assert core.in_flight == 0
