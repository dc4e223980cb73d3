"""The world model: what Google would answer to one attempt, in virtual time.

`World.attempt` is pure bookkeeping on plain dicts and slots objects: no JSON, no I/O, no clock.
It returns a `Reply` carrying the `Outcome` the real client would derive (the simulator feeds it
to the core directly) plus the few parameters `Reply.render` needs to build Google's exact bytes
later, for the HTTP server and the tests.

Order of decisions (where Google would decide them, earliest first):

1. ``reset`` faults: the connection dies before the request reaches anyone; then
   ``proxy_refused``: a proxy in front of Google answers a bare 401/403 page.
2. The key: unknown or revoked (400 ``API_KEY_INVALID``), leaked (403), a key type Google no
   longer takes (401 ``ACCESS_TOKEN_TYPE_UNSUPPORTED``), its project's API disabled (403
   ``SERVICE_DISABLED``) or its project denied access (403); no key at all is the 403
   "unregistered callers".
3. The model: one the scenario does not declare is a 404 (the default embedding model,
   ``gemini-embedding-001``, is served by every scenario, without quota); then
   ``file_denied``: a 403 about the request's file (a request error), not counted against any
   quota.
4. ``shared_429`` faults: a bare 429 (shared capacity), not counted against any quota.
5. Quotas of the key's (project, model), never of the key: ``limit: 0``, then requests per day,
   then requests per minute, then input tokens per minute.  Only an admitted request counts,
   and it counts against all three at once.
6. After admission (so these still use up quota): 504, timeouts, 503, 500, then, for
   ``generateContent``, a truncated or garbage 200 body, and, for streams, a cut or a
   mid-stream error; ``slow`` multiplies the latency.

Quota arithmetic: minute windows are fixed 60-second windows aligned to the wall-clock minute
(window = floor(wall / 60), wall = scenario start epoch + t), which matches Google's 0-60 s
``retryDelay`` values; the retry delay is the time left in the window.  With the scenario's
``quota_window = "sliding"``, a minute is the last 60 s instead, and the retry delay the time
until the oldest request counted leaves it.  Every quota 429 reports the limit's value
(``quotaValue``) and carries it in its `Outcome` too, as the client would read it from the body;
``[[quota_changes]]`` take effect at their time, before the attempt that follows.  A day ends at the next
midnight America/Los_Angeles (`keysched._pacific.next_pacific_midnight`), so a day can be 23 or
25 hours long.  A per-day 429 carries the same short minute-window delay Google really sends;
its `Outcome` kind (`RATE_LIMITED_DAY`) is what tells the core to wait for midnight.

A request whose own input tokens exceed the TPM quota gets the TPM 429 body, but its outcome is
`TOO_LARGE_FOR_QUOTA`: the client knows the size it sent, which the body alone does not say.

Randomness (fault probabilities, latency, output sizes) comes from one `random.Random` seeded at
construction, so the same sequence of calls gives the same replies.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from keysched import DEFAULT_EMBEDDING_MODEL
from keysched._tuples import tuple_builder
from keysched.driver import Outcome, OutcomeKind, next_pacific_midnight
from sim import bodies
from sim.bodies import Body
from sim.draws import lognormal, uniform_int
from sim.scenario import FaultKind, FaultSpec, ModelSpec, Scenario

__all__ = ["UNKNOWN_KEY", "Reply", "World"]

UNKNOWN_KEY = "(unknown)"
"""The counters' label for attempts with a secret the scenario does not know."""

_K = OutcomeKind


class _Err(NamedTuple):
    """An error answer, resolved once at import so the hot path never hashes an enum member
    (``Enum.__hash__`` is Python code in 3.11 and showed up at the top of the profile)."""

    body: Body
    status: int
    outcome: Outcome
    kind: OutcomeKind
    name: str


def _err(body: Body, kind: OutcomeKind) -> _Err:
    return _Err(body, bodies.STATUS[body][0], Outcome(kind=kind), kind, kind.value)


_KEY_INVALID = _err(Body.KEY_INVALID, _K.KEY_INVALID)
_KEY_LEAKED = _err(Body.KEY_LEAKED, _K.KEY_LEAKED)
_SERVICE_DISABLED = _err(Body.SERVICE_DISABLED, _K.PROJECT_DISABLED)
_UNREGISTERED = _err(Body.UNREGISTERED, _K.KEY_FORBIDDEN)
_MODEL_NOT_FOUND = _err(Body.MODEL_NOT_FOUND, _K.MODEL_NOT_FOUND)
_QUOTA_RPM = _err(Body.QUOTA_RPM, _K.RATE_LIMITED_MINUTE)
_QUOTA_TPM = _err(Body.QUOTA_TPM, _K.RATE_LIMITED_MINUTE)
_TOO_LARGE = _err(Body.QUOTA_TPM, _K.TOO_LARGE_FOR_QUOTA)
_QUOTA_RPD = _err(Body.QUOTA_RPD, _K.RATE_LIMITED_DAY)
_QUOTA_ZERO = _err(Body.QUOTA_ZERO, _K.QUOTA_ZERO)
_BARE_429 = _err(Body.BARE_429, _K.SHARED_CAPACITY)
_OVERLOADED = _err(Body.OVERLOADED, _K.OVERLOADED)
_INTERNAL = _err(Body.INTERNAL, _K.SERVER_ERROR)
_DEADLINE = _err(Body.DEADLINE_EXCEEDED, _K.TIMEOUT)
_KEY_TYPE_UNSUPPORTED = _err(Body.KEY_TYPE_UNSUPPORTED, _K.KEY_TYPE_UNSUPPORTED)
_PROJECT_DENIED = _err(Body.PROJECT_DENIED, _K.PROJECT_DISABLED)
_FILE_DENIED = _err(Body.FILE_DENIED, _K.REQUEST_ERROR)
_PROXY = {401: _err(Body.PROXY_401, _K.ACCESS_REFUSED), 403: _err(Body.PROXY_403,
                                                                 _K.ACCESS_REFUSED)}
_RESET_OUTCOME = Outcome(kind=_K.CONNECTION_ERROR)
# Served by every scenario that does not declare it, so that `KeyedClient.embed()` works
# against any of them; a fixed latency draws nothing from the world's generator, so the
# scenario's replies stay the same.
_EMBEDDING = ModelSpec(name=DEFAULT_EMBEDDING_MODEL, latency_median=0.2, latency_sigma=0.0,
                       output_tokens=(1, 1))
_BAD_BODY_OUTCOME = Outcome(kind=_K.BAD_RESPONSE)
_BAD_RESPONSE = _K.BAD_RESPONSE.value
_GARBAGE = (b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
            b"<body><h1>Bad Gateway</h1><p>The proxy could not read the upstream answer.</p>"
            b"</body></html>\n")
_TIMEOUT_OUTCOME = Outcome(kind=_K.TIMEOUT)
_CONNECTION_ERROR = _K.CONNECTION_ERROR.value
_SUCCESS = _K.SUCCESS.value

_JSON_HEADERS = [(b"content-type", b"application/json; charset=UTF-8"),
                 (b"vary", b"Origin, X-Origin, Referer")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"),
                (b"vary", b"Origin, X-Origin, Referer")]


class Reply(NamedTuple):
    """What Google answers to one attempt (immutable).

    A `NamedTuple` rather than a frozen attrs class on purpose: one is built per attempt and the
    simulator makes well over 100k attempts per CPU second; attrs' frozen ``__init__`` costs
    about 2.5 µs for these 17 fields, a named tuple a fifth of that.

    Attributes:
        outcome: the classification the real client would derive from this answer.
        latency: virtual seconds until the answer (or the failure) is complete.
        status: the HTTP status (200 for a stream that fails after it started; 0 when no
            response is sent at all, i.e. faults ``reset`` and ``timeout``).
        model: the model asked for.
        fault: ``None``, or how the answer misbehaves on the wire: ``"reset"`` (connection reset
            before a response), ``"timeout"`` (no answer; the connection drops after
            `latency`), ``"cut"`` (a stream stops after `cut_after` chunks and the connection
            drops), ``"midstream"`` (a stream sends `cut_after` chunks, then the error `body`),
            ``"truncated"`` (a 200 whose JSON answer is cut in half), ``"garbage"`` (a 200 whose
            body is an HTML page).
        cut_after: chunks delivered before a cut or a mid-stream error.
        body: the error body, ``None`` for a success.
        The remaining fields parameterise the bytes `render` builds.
    """

    outcome: Outcome
    latency: float
    status: int
    model: str
    fault: str | None = None
    cut_after: int | None = None
    body: Body | None = None
    quota_value: int = 0
    retry_delay: float = 0.0
    tier: str = "free"
    project_number: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    chunks: int = 1
    serial: int = 0
    seed: int = 0
    stream: bool = False

    def error_object(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object of an error reply."""
        if self.body is None:
            raise ValueError("a successful reply has no error object")
        method = "StreamGenerateContent" if self.stream else "generateContent"
        return bodies.error_object(self.body, model=self.model, tier=self.tier,
                                   quota_value=self.quota_value, retry_delay=self.retry_delay,
                                   project_number=self.project_number, method=method)

    def stream_events(self) -> list[bytes]:
        """The SSE byte chunks of a streamed 200, in order (truncated for a cut, error last for
        a mid-stream error)."""
        objects = bodies.stream_objects(
            model=self.model, serial=self.serial, seed=self.seed, input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, chunks=self.chunks)
        if self.cut_after is not None:
            objects = objects[:self.cut_after]
        events = [bodies.sse_event(obj) for obj in objects]
        if self.fault == "midstream":
            events.append(bodies.pretty(self.error_object()) + b"\n")
        return events

    def render(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``(status, headers, body)`` exactly as Google would send them (a stream concatenated).

        Raises:
            ValueError: the reply has no response at all (fault ``reset`` or ``timeout``).
        """
        if self.fault in ("reset", "timeout"):
            raise ValueError(f"a {self.fault} fault sends no response")
        if self.fault == "garbage":
            return 200, [(b"content-type", b"text/html; charset=UTF-8")], _GARBAGE
        if self.body in bodies.PROXY_BODIES:
            return (self.status, [(b"content-type", b"text/html")],
                    bodies.proxy_page(self.status))
        if self.status == 200 and self.stream:
            return 200, list(_SSE_HEADERS), b"".join(self.stream_events())
        if self.body is not None:
            return self.status, list(_JSON_HEADERS), bodies.pretty(self.error_object())
        obj = bodies.success_object(model=self.model, serial=self.serial, seed=self.seed,
                                    input_tokens=self.input_tokens,
                                    output_tokens=self.output_tokens)
        body = bodies.pretty(obj)
        if self.fault == "truncated":
            body = body[:len(body) // 2]
        return 200, list(_JSON_HEADERS), body


_new_reply = tuple_builder(Reply)  # for the two replies every attempt goes through


class _Group:
    """Quota state of one (project, model); unlimited quotas are ``math.inf``."""

    __slots__ = ("admitted", "day_end", "day_requests", "minute", "minute_requests",
                 "minute_tokens", "rpd", "rpm", "tpm", "zero")

    def __init__(self, rpm: int | None, tpm: int | None, rpd: int | None) -> None:
        self.rpm: float = math.inf
        self.tpm: float = math.inf
        self.rpd: float = math.inf
        self.zero = False
        self.change(rpm, tpm, rpd)
        # A sliding window's requests, oldest first: (time, input tokens).
        self.admitted: collections.deque[tuple[float, int]] = collections.deque()
        self.minute = -(2**62)
        self.minute_requests = 0
        self.minute_tokens = 0
        self.day_end = -math.inf
        self.day_requests = 0

    def change(self, rpm: int | None, tpm: int | None, rpd: int | None) -> None:
        """Set the quotas given (a tier change); ``None`` keeps one as it is."""
        if rpm is not None:
            self.rpm = rpm
        if tpm is not None:
            self.tpm = tpm
        if rpd is not None:
            self.rpd = rpd
        self.zero = 0 in (self.rpm, self.tpm, self.rpd)

    def slide(self, t: float) -> None:
        """Count the last 60 s as the minute (a sliding window)."""
        admitted = self.admitted
        while admitted and admitted[0][0] + 60.0 <= t:
            self.minute_tokens -= admitted.popleft()[1]
        self.minute_requests = len(admitted)


class _Faults:
    """The faults that can hit one key, by kind, in the scenario's order.

    Filtered by key and project once at construction, so the hot path skips every fault that
    names other keys without a call (keys with the same faults share one instance).
    """

    __slots__ = ("cut", "deadline", "denied", "disabled", "file_denied", "garbage", "hang",
                 "key_type", "keyed", "leaked", "overloaded", "proxy", "reset", "revoked",
                 "server_error", "shared_429", "slow", "stream_error", "truncated")

    def __init__(self, faults: tuple[FaultSpec, ...]) -> None:
        def of(kind: FaultKind) -> tuple[FaultSpec, ...]:
            return tuple(f for f in faults if f.kind is kind)

        self.reset = of(FaultKind.RESET)
        self.revoked = of(FaultKind.KEY_REVOKED)
        self.leaked = of(FaultKind.KEY_LEAKED)
        self.disabled = of(FaultKind.PROJECT_DISABLED)
        self.key_type = of(FaultKind.KEY_TYPE_UNSUPPORTED)
        self.denied = of(FaultKind.PROJECT_DENIED)
        self.keyed = bool(self.revoked or self.leaked or self.disabled or self.key_type
                          or self.denied)
        self.proxy = of(FaultKind.PROXY_REFUSED)
        self.file_denied = of(FaultKind.FILE_DENIED)
        self.shared_429 = of(FaultKind.SHARED_429)
        self.deadline = of(FaultKind.DEADLINE_EXCEEDED)
        self.hang = of(FaultKind.TIMEOUT)
        self.overloaded = of(FaultKind.OVERLOADED)
        self.server_error = of(FaultKind.SERVER_ERROR)
        self.slow = of(FaultKind.SLOW)
        self.cut = of(FaultKind.STREAM_CUT)
        self.stream_error = of(FaultKind.STREAM_ERROR)
        self.truncated = of(FaultKind.TRUNCATED_BODY)
        self.garbage = of(FaultKind.GARBAGE_BODY)


class _KeyState:
    __slots__ = ("counts", "faults", "groups", "label", "number", "project", "tier")

    def __init__(self, label: str, project: str, number: int, tier: str,
                 groups: dict[str, _Group], faults: _Faults) -> None:
        self.label = label
        self.project = project
        self.number = number
        self.tier = tier
        self.groups = groups
        self.faults = faults
        # Per model, the same dict as `World._counts[(label, model)]`: counted without a tuple.
        self.counts: dict[str, dict[str, int]] = {}


class World:
    """Google's side of a scenario: quotas, faults and latencies, in virtual time.

    Args:
        scenario: the scenario to play.
        seed: seeds the world's own `random.Random` (defaults to ``scenario.seed``).
    """

    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self._rng = random.Random(self.seed)
        self._epoch = scenario.start_epoch
        self._phase = self._epoch % 60.0  # seconds past the wall-clock minute at t = 0
        self._error_latency = scenario.error_latency
        self._timeout = scenario.timeout
        self._serial = 0
        # {(key label, model): {"requests": n, <OutcomeKind value>: n}}, in first-seen order.
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._unknown_counts: dict[str, dict[str, int]] = {}  # per model, for UNKNOWN_KEY
        # Keys hit by the same faults share one `_Faults`, found by the faults' positions (cheap
        # to hash, unlike the attrs specs).
        shared: dict[tuple[int, ...], _Faults] = {}
        self._keys: dict[str, _KeyState] = {}
        self._sliding = scenario.quota_window == "sliding"
        self._changes = list(scenario.quota_changes)  # sorted by time; applied as time passes
        self._project_groups: dict[str, dict[str, _Group]] = {}
        for project in scenario.projects:
            groups = {q.model: _Group(q.rpm, q.tpm, q.rpd) for q in project.quotas}
            self._project_groups[project.name] = groups
            for key in project.keys:
                mine = tuple(i for i, f in enumerate(scenario.faults)
                             if (f.key is None or f.key == key.label)
                             and (f.project is None or f.project == project.name))
                faults = shared.get(mine)
                if faults is None:
                    faults = shared[mine] = _Faults(tuple(scenario.faults[i] for i in mine))
                # The same group objects for every key: quotas are per project, not per key.
                self._keys[key.secret] = _KeyState(key.label, project.name, project.number,
                                                   project.tier, groups, faults)
        # Per model: its latency and output size draws (from the one generator) and its chunks.
        rng = self._rng
        specs = scenario.models
        if DEFAULT_EMBEDDING_MODEL not in scenario.models_best_first:
            specs += (_EMBEDDING,)
        self._models: dict[str, tuple[Callable[[], float], Callable[[], int], int]] = {
            m.name: (lognormal(rng, math.log(m.latency_median), m.latency_sigma)
                     if m.latency_sigma > 0 else partial(math.exp, math.log(m.latency_median)),
                     uniform_int(rng, *m.output_tokens), m.stream_chunks)
            for m in specs}
        self.models = tuple(m.name for m in specs)
        """Every model the world serves: the scenario's, then the default embedding model."""
        # Every fault, for attempts without a known key (only a reset can hit them).
        self._faults = _Faults(scenario.faults)

    # -- queries ----------------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, dict[str, int]]]:
        """A snapshot ``{key label: {model: {"requests": n, <OutcomeKind value>: n}}}``."""
        snapshot: dict[str, dict[str, dict[str, int]]] = {}
        # list() and dict() copy in one C call under the GIL, so a server thread may keep
        # counting.
        for (label, model), counts in list(self._counts.items()):
            snapshot.setdefault(label, {})[model] = dict(counts)
        return snapshot

    def label_of(self, secret: str) -> str | None:
        """The label of the key with `secret`, or ``None`` if the scenario has no such key."""
        state = self._keys.get(secret)
        return None if state is None else state.label

    def check_key(self, t: float, secret: str) -> Reply | None:
        """The error reply a key-level fault gives at `t`, or ``None`` if the key is usable.

        Used for calls that do not spend generation quota (listing models, counting tokens);
        nothing is counted.
        """
        key = self._keys.get(secret)
        err = _UNREGISTERED if not secret else self._key_error(t, key, "")
        if err is None:
            return None
        return Reply(err.outcome, self._error_latency, err.status, "", body=err.body,
                     project_number=0 if key is None else key.number, seed=self.seed)

    # -- the hot path -------------------------------------------------------------------------

    def _hit(self, faults: tuple[FaultSpec, ...], t: float, label: str, project: str,
             model: str) -> FaultSpec | None:
        for f in faults:
            if (f.start <= t < f.end and (f.key is None or f.key == label)
                    and (f.project is None or f.project == project)
                    and (f.model is None or f.model == model)
                    and (f.probability >= 1.0 or self._rng.random() < f.probability)):
                return f
        return None

    def _key_error(self, t: float, key: _KeyState | None, model: str) -> _Err | None:
        if key is None:
            return _KEY_INVALID
        f = key.faults
        if f.revoked and self._hit(f.revoked, t, key.label, key.project, model):
            return _KEY_INVALID
        if f.leaked and self._hit(f.leaked, t, key.label, key.project, model):
            return _KEY_LEAKED
        if f.key_type and self._hit(f.key_type, t, key.label, key.project, model):
            return _KEY_TYPE_UNSUPPORTED
        if f.disabled and self._hit(f.disabled, t, key.label, key.project, model):
            return _SERVICE_DISABLED
        if f.denied and self._hit(f.denied, t, key.label, key.project, model):
            return _PROJECT_DENIED
        return None

    def _count(self, key: _KeyState | None, model: str, name: str) -> None:
        """Count one attempt of `key` (``None``: under `UNKNOWN_KEY`) on `model` as `name`."""
        by_model = self._unknown_counts if key is None else key.counts
        counts = by_model.get(model)
        if counts is None:
            label = UNKNOWN_KEY if key is None else key.label
            counts = by_model[model] = self._counts.setdefault((label, model), {"requests": 0})
        counts["requests"] += 1
        counts[name] = counts.get(name, 0) + 1

    def _error(self, err: _Err, model: str, key: _KeyState | None, latency: float,
               stream: bool, quota_value: int = 0, retry_delay: float | None = None) -> Reply:
        if retry_delay is None:
            outcome = err.outcome
            retry_delay = 0.0
        else:  # a quota 429: it names the limit and its value, as the body does
            violations = bodies.violations(err.body, tier="free" if key is None else key.tier,
                                           quota_value=quota_value)
            outcome = Outcome(kind=err.kind, retry_after=retry_delay, violations=violations)
        self._count(key, model, err.name)
        if key is None:
            return Reply(outcome, latency, err.status, model, None, None, err.body, quota_value,
                         retry_delay, "free", 0, 0, 0, 1, self._serial, self.seed, stream)
        return _new_reply((outcome, latency, err.status, model, None, None, err.body,
                           quota_value, retry_delay, key.tier, key.number, 0, 0, 1, self._serial,
                           self.seed, stream))

    def _no_response(self, fault: str, outcome: Outcome, model: str, key: _KeyState | None,
                     latency: float, stream: bool) -> Reply:
        self._count(key, model, outcome.kind.value)
        return Reply(outcome, latency, 0, model, fault, serial=self._serial, seed=self.seed,
                     stream=stream)

    def attempt(self, t: float, secret: str, model: str, input_tokens: int, *,
                stream: bool = False) -> Reply:
        """Decide what Google answers to one attempt at virtual time `t` (seconds from start).

        Args:
            t: virtual time of the attempt, seconds since the scenario start.
            secret: the API key sent (``""`` for none).
            model: the model asked for (without ``models/``).
            input_tokens: the request's input size, counted against the TPM quota.
            stream: whether it is a ``streamGenerateContent`` call.

        Returns:
            The reply, with the client's `Outcome` and the latency in virtual seconds.
        """
        self._serial += 1
        key = self._keys.get(secret)
        if key is None or not secret:
            return self._unknown(t, secret, key, model, stream)
        faults = key.faults
        if faults.reset and self._hit(faults.reset, t, key.label, key.project, model):
            return self._no_response("reset", _RESET_OUTCOME, model, key, self._error_latency,
                                     stream)
        if faults.proxy:
            refused = self._hit(faults.proxy, t, key.label, key.project, model)
            if refused is not None:
                return self._error(_PROXY[refused.code], model, key, self._error_latency, stream)
        if faults.keyed:
            err = self._key_error(t, key, model)
            if err is not None:
                return self._error(err, model, key, self._error_latency, stream)
        spec = self._models.get(model)
        if spec is None:
            return self._error(_MODEL_NOT_FOUND, model, key, self._error_latency, stream)
        if faults.file_denied and self._hit(faults.file_denied, t, key.label, key.project, model):
            return self._error(_FILE_DENIED, model, key, self._error_latency, stream)
        if faults.shared_429 and self._hit(faults.shared_429, t, key.label, key.project, model):
            return self._error(_BARE_429, model, key, self._error_latency, stream)
        if self._changes and self._changes[0].at <= t:
            self._change_quotas(t)
        group = key.groups.get(model)
        if group is not None:
            refusal = self._admit(group, t, input_tokens, model, key, stream)
            if refusal is not None:
                return refusal
        return self._serve(t, key, model, input_tokens, stream, spec)

    def _change_quotas(self, t: float) -> None:
        """Apply the quota changes due by `t`."""
        while self._changes and self._changes[0].at <= t:
            change = self._changes.pop(0)
            for name, groups in self._project_groups.items():
                if change.project not in (None, name):
                    continue
                group = groups.get(change.model)
                if group is None:  # the model was unlimited for the project until now
                    group = groups[change.model] = _Group(None, None, None)
                group.change(change.rpm, change.tpm, change.rpd)

    def _unknown(self, t: float, secret: str, key: _KeyState | None, model: str,
                 stream: bool) -> Reply:
        """`attempt` without a key (``""``) or with a secret the scenario does not know."""
        label = UNKNOWN_KEY if key is None else key.label
        project = "" if key is None else key.project
        reset = self._faults.reset
        if reset and self._hit(reset, t, label, project, model):
            return self._no_response("reset", _RESET_OUTCOME, model, key, self._error_latency,
                                     stream)
        err = _UNREGISTERED if not secret else _KEY_INVALID
        return self._error(err, model, None, self._error_latency, stream)

    def _admit(self, g: _Group, t: float, input_tokens: int, model: str, key: _KeyState,
               stream: bool) -> Reply | None:
        minute = math.floor((t + self._phase) / 60.0)
        latency = self._error_latency
        if g.zero:
            return self._error(_QUOTA_ZERO, model, key, latency, stream, 0,
                               self._delay(t, minute, g))
        if self._sliding:
            g.slide(t)
        elif minute > g.minute:
            g.minute = minute
            g.minute_requests = 0
            g.minute_tokens = 0
        if t >= g.day_end:
            g.day_end = next_pacific_midnight(self._epoch + t) - self._epoch
            g.day_requests = 0
        if g.day_requests >= g.rpd:
            return self._error(_QUOTA_RPD, model, key, latency, stream, int(g.rpd),
                               self._delay(t, minute, g))
        if g.minute_requests >= g.rpm:
            return self._error(_QUOTA_RPM, model, key, latency, stream, int(g.rpm),
                               self._delay(t, minute, g))
        if g.minute_tokens + input_tokens > g.tpm:
            err = _TOO_LARGE if input_tokens > g.tpm else _QUOTA_TPM
            return self._error(err, model, key, latency, stream, int(g.tpm),
                               self._delay(t, minute, g))
        g.minute_requests += 1
        g.minute_tokens += input_tokens
        g.day_requests += 1
        if self._sliding:
            g.admitted.append((t, input_tokens))
        return None

    def _delay(self, t: float, minute: int, g: _Group) -> float:
        """A refusal's retry delay at `t`: the time left in wall-clock minute window `minute`,
        or, on a sliding window, until the oldest request counted leaves it.

        Rounded to the nanosecond, as the body prints it: the outcome equals the parsed body.
        """
        if self._sliding and g.admitted:
            return round(g.admitted[0][0] + 60.0 - t, 9)
        return round((minute + 1) * 60.0 - self._phase - t, 9)

    def _serve(self, t: float, key: _KeyState, model: str, input_tokens: int, stream: bool,
               spec: tuple[Callable[[], float], Callable[[], int], int]) -> Reply:
        label, project = key.label, key.project
        f = key.faults
        if f.deadline and self._hit(f.deadline, t, label, project, model):
            return self._error(_DEADLINE, model, key, self._timeout, stream)
        if f.hang and self._hit(f.hang, t, label, project, model):
            return self._no_response("timeout", _TIMEOUT_OUTCOME, model, key, self._timeout,
                                     stream)
        if f.overloaded and self._hit(f.overloaded, t, label, project, model):
            return self._error(_OVERLOADED, model, key, self._error_latency, stream)
        if f.server_error and self._hit(f.server_error, t, label, project, model):
            return self._error(_INTERNAL, model, key, self._error_latency, stream)
        draw_latency, draw_output_tokens, chunks = spec
        latency = draw_latency()
        output_tokens = draw_output_tokens()
        rng = self._rng
        for slow in f.slow:
            if (slow.start <= t < slow.end and (slow.key is None or slow.key == label)
                    and (slow.project is None or slow.project == project)
                    and (slow.model is None or slow.model == model)
                    and (slow.probability >= 1.0 or rng.random() < slow.probability)):
                latency *= slow.factor
        serial = self._serial
        if stream:
            cut = f.cut and self._hit(f.cut, t, label, project, model)
            broken = None if cut else f.stream_error and self._hit(
                f.stream_error, t, label, project, model)
            fault = cut or broken
            if fault:
                k = min(fault.after_chunks, chunks - 1)
                if cut:
                    outcome, body, name = _RESET_OUTCOME, None, _CONNECTION_ERROR
                else:
                    err = _OVERLOADED if fault.code == 503 else _INTERNAL
                    outcome, body, name = err.outcome, err.body, err.name
                self._count(key, model, name)
                return Reply(outcome, latency * (k + 1) / chunks, 200, model,
                             "cut" if cut else "midstream", k, body, 0, 0.0, key.tier,
                             key.number, input_tokens, output_tokens, chunks, serial, self.seed,
                             True)
        elif f.truncated or f.garbage:
            bad = None
            if f.truncated and self._hit(f.truncated, t, label, project, model):
                bad = "truncated"
            elif f.garbage and self._hit(f.garbage, t, label, project, model):
                bad = "garbage"
            if bad is not None:
                self._count(key, model, _BAD_RESPONSE)
                return Reply(_BAD_BODY_OUTCOME, latency, 200, model, bad, None, None, 0, 0.0,
                             key.tier, key.number, input_tokens, output_tokens, chunks, serial,
                             self.seed, False)
        self._count(key, model, _SUCCESS)
        outcome = Outcome(kind=_K.SUCCESS, input_tokens=input_tokens, output_tokens=output_tokens)
        # This is the hottest line of the simulator.
        return _new_reply((outcome, latency, 200, model, None, None, None, 0, 0.0, key.tier,
                           key.number, input_tokens, output_tokens, chunks, serial, self.seed,
                           stream))
