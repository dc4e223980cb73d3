"""The one table from an attempt's outcome to the core's action.

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
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from keysched._outcomes import OutcomeKind

__all__ = ["DEFAULT_ACTIONS", "Action", "Effect", "Next"]


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


class Action(NamedTuple):
    """One row of an outcome table.

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
