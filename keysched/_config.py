"""Configuration: frozen attrs classes whose validators fail at construction.

Every error is a `ConfigurationError` naming the field and the bad value, except that a key's
secret is never echoed: a bad key is named by its position (``keys[3]``) and its label.

Decisions where the issue was silent:
- A plain string key gets the label ``key#N`` (1-based position) and a project of its own
  (named after the label): without a declared project, keys are assumed not to share quota.
- Durations are float seconds; a `datetime.timedelta` is accepted at this public edge.
- Secrets may not contain whitespace or control characters: they travel in an HTTP header, and a
  newline there is header injection, not a key.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from keysched._errors import ConfigurationError

__all__ = ["DEFAULT_EMBEDDING_MODEL", "DEFAULT_MODELS", "Key", "Limit", "PoolConfig", "RetryPolicy"]

DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite")
"""The models `KeyedClient` uses when it is given none, best first."""
DEFAULT_EMBEDDING_MODEL = "gemini-embedding-001"
"""The model `KeyedClient.embed` uses when it is given none."""


def _show(value: object) -> str:
    """A short repr for an error message; never raises (a hostile or huge value is summarised)."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises, or an int too long to print, must not mask the error
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _duration(field: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(field, f"expected a duration in seconds, got {type(value).__name__}"
                                        f" {_show(value)}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range is no duration
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(field, f"expected a finite duration {bound} seconds, got {_show(value)}")
    return seconds


MIN_TIMEOUT = 0.001
"""The shortest attempt timeout accepted, in seconds: below a millisecond no answer can arrive."""


def _timeout(field: str, value: object) -> float:
    """A timeout: a duration of at least `MIN_TIMEOUT` (a smaller one is a typo for seconds)."""
    seconds = _duration(field, value)
    if seconds < MIN_TIMEOUT:
        raise ConfigurationError(field, f"expected at least {MIN_TIMEOUT} seconds (one "
                                        f"millisecond), got {_show(value)}")
    return seconds


def _count(field: str, value: object, *, minimum: int = 1, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(field, f"expected an integer >= {minimum}, got "
                                        f"{type(value).__name__} {_show(value)}")
    if value < minimum:
        raise ConfigurationError(field, f"expected an integer >= {minimum}, got {_show(value)}")
    return value


def _name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(field, f"expected a non-empty string, got {_show(value)}")
    return value


def _label(field: str, value: object) -> str:
    """A name that goes into log lines and messages: no control characters (a newline in a
    label would forge a log line)."""
    _name(field, value)
    assert isinstance(value, str)
    if any(not ch.isprintable() and ch != " " for ch in value):
        raise ConfigurationError(field, f"expected no control characters, got {_show(value)}")
    return value


def _check_secret(field: str, value: object) -> str:
    # Never format `value` itself into a message: it may be a real key.
    if not isinstance(value, str):
        raise ConfigurationError(field, f"a key must be a string, got {type(value).__name__}")
    if not value:
        raise ConfigurationError(field, "a key must not be empty")
    # Every whitespace character but the ASCII space is unprintable (a separator or a control
    # character), so this is "any whitespace or control character", without a loop per character.
    if not value.isprintable() or " " in value:
        raise ConfigurationError(field, "a key must not contain whitespace or control characters "
                                        f"(length {len(value)})")
    # An HTTP header carries ASCII: a key pasted with curly quotes, say, would otherwise fail
    # in the HTTP library, with the key in its error message.
    if not value.isascii():
        raise ConfigurationError(field, "a key must be ASCII (a character outside it was found, "
                                        f"length {len(value)}; the key is not shown)")
    return value


@attrs.frozen(kw_only=True, repr=False)
class Key:
    """One API key of the pool.

    Attributes:
        secret: the API key itself; sent only in the ``x-goog-api-key`` header, never shown.
        label: how the key is named in logs, reprs, errors and snapshots.
        project: the Google Cloud project the key belongs to; keys of one project share quota.
        billing_account: the billing account the project is paid from, if known.  Projects of
            one account share its spend cap (a rolling 10-minute window): a spend 429 benches
            all of them.  Unset, the project is taken to be billed alone.
    """

    secret: str = attrs.field(eq=True)
    label: str | None = None
    project: str | None = None
    billing_account: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_secret("secret", self.secret)
        if self.label is not None:
            _label("label", self.label)
        if self.project is not None:
            _label("project", self.project)
        if self.billing_account is not None:
            _label("billing_account", self.billing_account)

    def __repr__(self) -> str:
        account = "" if self.billing_account is None else f", billing_account={self.billing_account!r}"
        return f"Key(label={self.label!r}, project={self.project!r}{account})"

    __str__ = __repr__


@attrs.frozen(kw_only=True)
class Limit:
    """Known quotas of one model, for one project or (``project=None``) for every project.

    When configured, the core budgets them itself and never sends a request they would refuse.

    Attributes:
        model: the model the limits apply to.
        project: the project they apply to; ``None`` means every project of the pool.
        rpm: requests per minute.
        tpm: input tokens per minute.
        rpd: requests per day (the day ends at midnight America/Los_Angeles).
    """

    model: str
    project: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None

    def __attrs_post_init__(self) -> None:
        _name("model", self.model)
        if self.project is not None:
            _name("project", self.project)
        for name in ("rpm", "tpm", "rpd"):
            _count(name, getattr(self, name), optional=True)


def _to_seconds(value: Any) -> Any:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else value


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed attempts are retried and how long a request may take.

    Attributes:
        max_attempts: attempts per request, the first one included.
        backoff_base: the first backoff delay, in seconds; it doubles per retry.
        backoff_cap: the largest backoff delay, in seconds.
        jitter: the fraction of each backoff delay that is randomised (0 = none, 1 = full jitter).
        deadline: the default time a request may take in total, in seconds.
        minute_cooldown: how long a per-minute 429 benches its quota group when the server gave
            no retry delay.
        shared_capacity_cooldown: how long a 429 without details (shared capacity) benches its
            quota group, in seconds.
        overload_cooldown: how long a 503 takes its model out of rotation; doubles while 503s
            continue, up to ``overload_cooldown_cap``.
        overload_cooldown_cap: the largest overload cooldown, in seconds.
        shared_capacity_cooldown_cap: bare 429s (shared capacity) that persist on one group
            double its cooldown each time, up to this (seconds); an answer resets it.
        empty_retries: how many times a 200 without content is retried on another key.
        server_errors_per_model: how many 500s a request takes on one model before it falls
            back to the next model.
        quota_margin: how many seconds later than the local clock says a quota window is taken
            to end (known and learned limits), to cover the offset between our clock and the
            server's and one network trip.  0 trusts the local clock exactly.
        relearn_after: a limit learned from a 429 is tested this long after it was learned, if
            it is holding requests back: one attempt goes past it.  An answer shows the quota
            grew (a tier upgrade): the learned limit is dropped, and the next 429 teaches the
            new one.  A 429 keeps it, and the next test waits twice as long.  None: never.
        max_server_delay: the longest a retry delay given by the server (``retryDelay``,
            ``Retry-After``) may bench a quota group or lane, in seconds; a longer one is cut
            to this.  A single absurd value must not bench a project for days.  (A per-day
            429 waits for midnight Pacific whatever this says.)
    """

    max_attempts: int = attrs.field(default=8)
    backoff_base: float = attrs.field(default=0.5, converter=_to_seconds)
    backoff_cap: float = attrs.field(default=20.0, converter=_to_seconds)
    jitter: float = 1.0
    deadline: float = attrs.field(default=120.0, converter=_to_seconds)
    minute_cooldown: float = attrs.field(default=60.0, converter=_to_seconds)
    shared_capacity_cooldown: float = attrs.field(default=2.0, converter=_to_seconds)
    overload_cooldown: float = attrs.field(default=2.0, converter=_to_seconds)
    # A short cap: the cooldown is also how late the pool notices that the model recovered.
    overload_cooldown_cap: float = attrs.field(default=20.0, converter=_to_seconds)
    shared_capacity_cooldown_cap: float = attrs.field(default=60.0, converter=_to_seconds)
    empty_retries: int = 1
    server_errors_per_model: int = 2
    quota_margin: float = attrs.field(default=1.0, converter=_to_seconds)
    relearn_after: float | None = attrs.field(default=300.0, converter=_to_seconds)
    max_server_delay: float = attrs.field(default=3600.0, converter=_to_seconds)

    def __attrs_post_init__(self) -> None:
        _count("retry.max_attempts", self.max_attempts)
        _count("retry.empty_retries", self.empty_retries, minimum=0)
        _count("retry.server_errors_per_model", self.server_errors_per_model)
        for name in ("backoff_base", "backoff_cap", "deadline", "minute_cooldown",
                     "shared_capacity_cooldown", "overload_cooldown", "overload_cooldown_cap",
                     "shared_capacity_cooldown_cap", "max_server_delay"):
            _duration(f"retry.{name}", getattr(self, name))
        _duration("retry.quota_margin", self.quota_margin, allow_zero=True)
        if self.relearn_after is not None:
            _duration("retry.relearn_after", self.relearn_after)
        if self.shared_capacity_cooldown_cap < self.shared_capacity_cooldown:
            raise ConfigurationError("retry.shared_capacity_cooldown_cap", f"must be >= "
                                     f"shared_capacity_cooldown ({self.shared_capacity_cooldown!r}"
                                     f"), got {self.shared_capacity_cooldown_cap!r}")
        if self.backoff_cap < self.backoff_base:
            raise ConfigurationError("retry.backoff_cap", f"must be >= backoff_base "
                                     f"({self.backoff_base!r}), got {self.backoff_cap!r}")
        if (isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float)
                or not 0 <= self.jitter <= 1):
            raise ConfigurationError("retry.jitter", f"expected a number in [0, 1], got "
                                     f"{_show(self.jitter)}")


KeyInput = str | Key


def _normalise_keys(value: object) -> tuple[Key, ...]:
    if isinstance(value, str | Key) or not isinstance(value, Iterable):
        raise ConfigurationError("keys", f"expected a list of keys, got {type(value).__name__}")
    keys: list[Key] = []
    seen: dict[str, int] = {}
    labels: dict[str, int] = {}
    for index, item in enumerate(value):
        where = f"keys[{index}]"
        key = item if isinstance(item, Key) else Key(secret=_check_secret(where, item))
        label = key.label or f"key#{index + 1}"
        key = attrs.evolve(key, label=label, project=key.project or label)
        if key.secret in seen:
            raise ConfigurationError(where, f"duplicate key (label {label!r}) of "
                                     f"keys[{seen[key.secret]}]")
        if label in labels:
            raise ConfigurationError(where, f"duplicate label {label!r} (also keys[{labels[label]}])")
        seen[key.secret] = index
        labels[label] = index
        keys.append(key)
    if not keys:
        raise ConfigurationError("keys", "at least one key is required, got none")
    return tuple(keys)


def _normalise_models(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise ConfigurationError("models", f"expected a best-first list of model names, got "
                                 f"{type(value).__name__}")
    models: list[str] = []
    for index, item in enumerate(value):
        name = _name(f"models[{index}]", item)
        name = name.removeprefix("models/")
        if name in models:
            raise ConfigurationError(f"models[{index}]", f"duplicate model {name!r}")
        models.append(name)
    if not models:
        raise ConfigurationError("models", "at least one model is required, got none")
    return tuple(models)


def _normalise_limits(value: object) -> tuple[Limit, ...]:
    if value is None:
        return ()
    if isinstance(value, Limit):
        return (value,)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigurationError("limits", f"expected a list of Limit, got {type(value).__name__}")
    limits = tuple(value)
    for index, item in enumerate(limits):
        if not isinstance(item, Limit):
            raise ConfigurationError(f"limits[{index}]", f"expected a Limit, got "
                                     f"{type(item).__name__} {_show(item)}")
    return limits


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything the scheduling core needs to know about a pool.

    Attributes:
        keys: the keys (plain strings or `Key` objects); labels and projects are filled in.
        models: model names, best first; a request falls back along this list.
        limits: known quotas per project and model, budgeted by the core when given.
        retry: the retry policy.
        max_in_flight_per_key: an optional cap on concurrent requests per key.
    """

    keys: tuple[Key, ...] = attrs.field(converter=_normalise_keys)
    models: tuple[str, ...] = attrs.field(converter=_normalise_models)
    limits: tuple[Limit, ...] = attrs.field(default=(), converter=_normalise_limits)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    max_in_flight_per_key: int | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError("retry", f"expected a RetryPolicy, got "
                                     f"{type(self.retry).__name__}")
        _count("max_in_flight_per_key", self.max_in_flight_per_key, optional=True)
        projects = {key.project for key in self.keys}
        accounts: dict[str | None, str] = {}
        for index, key in enumerate(self.keys):
            if key.billing_account is None:
                continue
            account = accounts.setdefault(key.project, key.billing_account)
            if account != key.billing_account:
                raise ConfigurationError(f"keys[{index}].billing_account", f"project "
                                         f"{key.project!r} is already billed to {account!r}, got "
                                         f"{key.billing_account!r}")
        seen: set[tuple[str | None, str]] = set()
        for index, limit in enumerate(self.limits):
            if limit.model.removeprefix("models/") not in self.models:
                raise ConfigurationError(f"limits[{index}].model", f"unknown model "
                                         f"{limit.model!r}; models are {list(self.models)}")
            if limit.project is not None and limit.project not in projects:
                raise ConfigurationError(f"limits[{index}].project", f"unknown project "
                                         f"{limit.project!r}")
            if (limit.project, limit.model) in seen:
                raise ConfigurationError(f"limits[{index}]", f"duplicate limit for project "
                                         f"{limit.project!r} and model {limit.model!r}")
            seen.add((limit.project, limit.model))

    def limit_for(self, project: str, model: str) -> Limit | None:
        """The limit that applies to `project` and `model`: a project's own beats the default."""
        fallback = None
        for limit in self.limits:
            if limit.model.removeprefix("models/") != model:
                continue
            if limit.project == project:
                return limit
            if limit.project is None:
                fallback = limit
        return fallback

    @property
    def projects(self) -> Sequence[str]:
        """The projects of the pool, in the order their first key appears."""
        return tuple(dict.fromkeys(key.project or "" for key in self.keys))
