"""The one table from an attempt's outcome to the core's action.

Theory of operation
-------------------
Rules in plain words (reference section 2.4):

- success and blocked content are answers: return them; a blocked prompt would be blocked on any
  key, so it is never retried.
- a per-minute 429 benches the (project, model) quota group for the server's retry delay;
  a per-day 429 benches it until midnight America/Los_Angeles (its short retry delay is a lie);
  ``limit: 0`` makes the model unavailable for that project for good. The request moves on at
  once to another project or model.  The limit a 429 names, with its value, is learned (the core
  budgets it from then on, see `keysched._budget`), and a 429 on a quota does not count against
  ``max_attempts``: the request only waited for quota, and no answer was spent on it.
- a 429 on the billing account's spend cap benches every project of that account.
- a 429 without details is shared capacity: the project backs off for a few seconds
  (``shared_capacity_cooldown``) and the request tries another project at once; no key is
  blamed (no strike, no long cooldown).
- a 503 takes the model out of rotation for an escalating cooldown: fall back a tier at once.
- 500s, timeouts, resets and garbled bodies back off and retry; 500s that repeat on one model
  move the request to the next model.
- an invalid, leaked or forbidden key, or one of a kind Google no longer accepts, is disabled for
  good; a disabled API (or a project denied access) disables every key of its project. The
  request moves on at once.
- a 401/403 without Google's error body (a proxy) idles the lane for a minute (the attempt is
  counted in the lane's failures); it never disables the key.
- a request error (400) fails fast, never retried on another key.

Policies other than the default (the simulator's baselines) supply their own table.

The table has two halves, both keyed by `OutcomeKind`, and every rule lives in one of them:

- **What the policy does** (`Action`, the rows of `DEFAULT_ACTIONS`; a policy may bring its own
  table): the effect on the pool (`Effect`), what happens to the request (`Next`), and where the
  server's retry delay applies (`Action.retry_delay`, which follows from those two).
- **What the outcome means** (`Meaning`, the rows of `OUTCOMES`; fixed by the wire, the same for
  every policy): whether it is an answer (which resets the model's 503 streak, the lane's 500s
  in a row and the group's bare-429 count), whether it is a 429 (refunded from the budget, its
  limits learned, its group reopened half-open), whether it counts against ``max_attempts``,
  whether it feeds the lane breaker, which retry budget it spends, and the failure reason when
  that budget or the request's models run out.

``python scripts/render_table.py`` renders both halves into README.md; a test checks the README
is current.

Decisions where the issue was silent:

- The meaning half is not a policy's to change: a baseline router's table says what it *does*
  with a 429, but a 429 is still refunded and still does not count against ``max_attempts``.
  (The simulator's baselines always ran with these rules; keeping them fixed keeps their runs.)
- The lane breaker counts a 500 only when the policy's row leaves the pool alone
  (`Effect.NONE`): a policy that strikes or cools the lane on a 500 has its own breaker.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from keysched._decisions import FailReason
from keysched._outcomes import OutcomeKind

__all__ = ["DEFAULT_ACTIONS", "OUTCOMES", "Action", "Delay", "Effect", "Meaning", "Next",
           "RetryBudget"]


class Effect(enum.Enum):
    """What an outcome does to the pool's state."""

    NONE = "none"
    COOL_GROUP = "cool_group"
    """Bench the (project, model) group for the retry delay (or ``minute_cooldown``)."""
    COOL_GROUP_BRIEFLY = "cool_group_briefly"
    """Bench the (project, model) group for the short ``shared_capacity_cooldown``."""
    COOL_GROUP_UNTIL_MIDNIGHT = "cool_group_until_midnight"
    """Bench the (project, model) group until the next midnight America/Los_Angeles."""
    COOL_BILLING_ACCOUNT = "cool_billing_account"
    """Bench every group of every project on the key's billing account (a spend cap) for the
    retry delay (or ``minute_cooldown``)."""
    GROUP_UNAVAILABLE = "group_unavailable"
    """The model is not in this project's tier: the group never serves again."""
    COOL_MODEL = "cool_model"
    """Take the model out of rotation for an escalating overload cooldown."""
    MODEL_UNAVAILABLE = "model_unavailable"
    """The model does not exist: no lane of it serves again."""
    DISABLE_KEY = "disable_key"
    DISABLE_PROJECT = "disable_project"
    COOL_LANE = "cool_lane"
    """Bench just this (key, model) lane for the action's fixed ``seconds`` (baseline routers,
    and a proxy's bare 401/403)."""
    STRIKE = "strike"
    """Count a strike against the key; disable it at the action's ``strikes`` (baseline proxies)."""


class Next(enum.Enum):
    """What happens to the request after the outcome."""

    RETURN = "return"
    """The attempt's response is the answer."""
    RETRY_NOW = "retry_now"
    """Try again at once, preferring a key and model that have not failed it."""
    RETRY_LATER = "retry_later"
    """Try again after exponential backoff with jitter."""
    RETRY_OTHER_MODEL = "retry_other_model"
    """This model is out for this request; try the next model at once."""
    FAIL = "fail"
    """Fail the request now."""


class Delay(enum.Enum):
    """Where the server's retry delay (``retryDelay``, ``Retry-After``) applies."""

    BENCHES_GROUP = "benches the group"
    """The group (or billing account) is benched for the delay, capped at ``max_server_delay``
    (``minute_cooldown`` when the server gave none)."""
    IDLES_LANE = "idles the lane"
    """No quota group is blamed: just this (key, model) lane idles until exactly ``t + d``."""
    IGNORED = "ignored"
    """The effect decides alone (a per-day 429's short delay is a lie: the group waits for
    midnight; a disabled key never comes back)."""


_GROUP_DELAY = frozenset({Effect.COOL_GROUP, Effect.COOL_BILLING_ACCOUNT})
_LANE_DELAY_EFFECTS = frozenset({Effect.NONE, Effect.COOL_MODEL})
_RETRIES = frozenset({Next.RETRY_NOW, Next.RETRY_LATER})


class Action(NamedTuple):
    """One row of a policy's outcome table: what it does about an outcome.

    Attributes:
        effect: what the outcome does to the pool.
        next: what happens to the request.
        seconds: the fixed cooldown for `Effect.COOL_LANE`.
        strikes: the strike threshold for `Effect.STRIKE`.
    """

    effect: Effect
    next: Next
    seconds: float = 0.0
    strikes: int = 3

    @property
    def retry_delay(self) -> Delay:
        """Where the server's retry delay applies, which follows from the effect and the next
        step: a group bench takes it; an effect that blames no group, with a retry to follow,
        idles the lane for it; anything else ignores it."""
        if self.effect in _GROUP_DELAY:
            return Delay.BENCHES_GROUP
        if self.effect in _LANE_DELAY_EFFECTS and self.next in _RETRIES:
            return Delay.IDLES_LANE
        return Delay.IGNORED


_K = OutcomeKind
DEFAULT_ACTIONS: dict[OutcomeKind, Action] = {
    _K.SUCCESS: Action(effect=Effect.NONE, next=Next.RETURN),
    _K.BLOCKED: Action(effect=Effect.NONE, next=Next.RETURN),
    _K.EMPTY: Action(effect=Effect.NONE, next=Next.RETRY_NOW),
    _K.RATE_LIMITED_MINUTE: Action(effect=Effect.COOL_GROUP, next=Next.RETRY_NOW),
    _K.RATE_LIMITED_DAY: Action(effect=Effect.COOL_GROUP_UNTIL_MIDNIGHT, next=Next.RETRY_NOW),
    _K.SPEND_LIMITED: Action(effect=Effect.COOL_BILLING_ACCOUNT, next=Next.RETRY_NOW),
    _K.QUOTA_ZERO: Action(effect=Effect.GROUP_UNAVAILABLE, next=Next.RETRY_NOW),
    _K.TOO_LARGE_FOR_QUOTA: Action(effect=Effect.NONE, next=Next.RETRY_OTHER_MODEL),
    _K.SHARED_CAPACITY: Action(effect=Effect.COOL_GROUP_BRIEFLY, next=Next.RETRY_NOW),
    _K.OVERLOADED: Action(effect=Effect.COOL_MODEL, next=Next.RETRY_NOW),
    _K.SERVER_ERROR: Action(effect=Effect.NONE, next=Next.RETRY_LATER),
    _K.TIMEOUT: Action(effect=Effect.NONE, next=Next.RETRY_LATER),
    _K.CONNECTION_ERROR: Action(effect=Effect.NONE, next=Next.RETRY_LATER),
    _K.BAD_RESPONSE: Action(effect=Effect.NONE, next=Next.RETRY_LATER),
    _K.KEY_INVALID: Action(effect=Effect.DISABLE_KEY, next=Next.RETRY_NOW),
    _K.KEY_LEAKED: Action(effect=Effect.DISABLE_KEY, next=Next.RETRY_NOW),
    _K.KEY_FORBIDDEN: Action(effect=Effect.DISABLE_KEY, next=Next.RETRY_NOW),
    _K.KEY_TYPE_UNSUPPORTED: Action(effect=Effect.DISABLE_KEY, next=Next.RETRY_NOW),
    _K.ACCESS_REFUSED: Action(effect=Effect.COOL_LANE, next=Next.RETRY_NOW, seconds=60.0),
    _K.PROJECT_DISABLED: Action(effect=Effect.DISABLE_PROJECT, next=Next.RETRY_NOW),
    _K.MODEL_NOT_FOUND: Action(effect=Effect.MODEL_UNAVAILABLE, next=Next.RETRY_OTHER_MODEL),
    _K.REQUEST_ERROR: Action(effect=Effect.NONE, next=Next.FAIL),
}


class RetryBudget(enum.Enum):
    """Which of the request's retry budgets an outcome spends (`keysched.RetryPolicy`)."""

    NONE = "-"
    EMPTY = "empty_retries"
    """Empty answers: the request fails with the row's ``exhausted`` reason past this many."""
    PER_MODEL = "server_errors_per_model"
    """Server errors on one model: past this many, the request moves to its next model (the
    last model always stays)."""


class Meaning(NamedTuple):
    """One row of `OUTCOMES`: what an outcome means, whatever the policy does about it.

    Attributes:
        answers: the model answered.  Resets the model's 503 streak (an answer to a probe ends
            its cooldown), the lane's 500s in a row, the group's bare-429 count, and widens a
            half-open group.
        is_429: a 429.  The server did not count the attempt: it is refunded from its group's
            budget, and the limits the 429 names (with their values) are learned.
        probes: after a 429 whose limit is still unknown, the group reopens half-open (one
            attempt in flight, doubling per answer).
        counts_attempt: counts against ``max_attempts``.  A 429 on a quota only waited for
            quota and spent no answer; ``4 x max_attempts`` attempts still end a request.
        lane_breaker: counts towards the lane breaker (``Policy.lane_error_trip`` in a row),
            when the policy's row leaves the pool alone (`Effect.NONE`).
        budget: the retry budget it spends (`Next.RETRY_OTHER_MODEL` spends the whole
            per-model budget of the model, whatever this says).
        exhausted: the failure reason when that budget, or the request's models, run out.
    """

    answers: bool = False
    is_429: bool = False
    probes: bool = False
    counts_attempt: bool = True
    lane_breaker: bool = False
    budget: RetryBudget = RetryBudget.NONE
    exhausted: FailReason = FailReason.NO_USABLE_LANE


_ANSWER = Meaning(answers=True)
_QUOTA_429 = Meaning(is_429=True, probes=True, counts_attempt=False)
_FAILURE = Meaning()
OUTCOMES: dict[OutcomeKind, Meaning] = {
    _K.SUCCESS: _ANSWER,
    _K.BLOCKED: _ANSWER,
    _K.EMPTY: Meaning(budget=RetryBudget.EMPTY, exhausted=FailReason.EMPTY_RESPONSE),
    _K.RATE_LIMITED_MINUTE: _QUOTA_429,
    _K.RATE_LIMITED_DAY: _QUOTA_429,
    _K.SPEND_LIMITED: _QUOTA_429,
    _K.QUOTA_ZERO: Meaning(is_429=True, counts_attempt=False),
    _K.TOO_LARGE_FOR_QUOTA: Meaning(is_429=True, exhausted=FailReason.REQUEST_ERROR),
    _K.SHARED_CAPACITY: Meaning(is_429=True, probes=True),
    _K.OVERLOADED: Meaning(budget=RetryBudget.PER_MODEL),
    _K.SERVER_ERROR: Meaning(lane_breaker=True, budget=RetryBudget.PER_MODEL),
    _K.TIMEOUT: _FAILURE,
    _K.CONNECTION_ERROR: _FAILURE,
    _K.BAD_RESPONSE: _FAILURE,
    _K.KEY_INVALID: _FAILURE,
    _K.KEY_LEAKED: _FAILURE,
    _K.KEY_FORBIDDEN: _FAILURE,
    _K.KEY_TYPE_UNSUPPORTED: _FAILURE,
    _K.ACCESS_REFUSED: _FAILURE,
    _K.PROJECT_DISABLED: _FAILURE,
    _K.MODEL_NOT_FOUND: _FAILURE,
    _K.REQUEST_ERROR: _FAILURE,
}
"""What each outcome means, for every policy (see `Meaning`)."""
