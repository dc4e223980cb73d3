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
        # float(): the attributes are floats (math.inf when unlimited); mypyc, compiling this
        # module (scripts/build_compiled_core.py --with-sim), refuses an int stored in them.
        if rpm is not None:
            self.rpm = float(rpm)
        if tpm is not None:
            self.tpm = float(tpm)
        if rpd is not None:
            self.rpd = float(rpd)
        self.zero = 0 in (self.rpm, self.tpm, self.rpd)

    def slide(self, t: float) -> None:
        """Count the last 60 s as the minute (a sliding window)."""
        admitted = self.admitted
        while admitted and admitted[0][0] + 60.0 <= t:
            self.minute_tokens -= admitted.popleft()[1]
        self.minute_requests = len(admitted)


_Check = Callable[["World", float, "_KeyState", str, int, bool], "Reply | None"]
"""One step of `World.attempt`: ``(world, t, key, model, input tokens, stream)`` to the reply
that ends the attempt there, or ``None`` to go on to the next step."""

_Respond = Callable[["World", FaultSpec, "_KeyState", str, bool], "Reply"]
"""What a fault that hits answers: ``(world, fault, key, model, stream)`` to the reply."""


def _refuse(err: _Err, latency: str = "error") -> _Respond:
    """A fault's answer: the error `err`, after the scenario's error latency (or its timeout)."""

    def respond(world: World, fault: FaultSpec, key: _KeyState, model: str,
                stream: bool) -> Reply:
        wait = world._timeout if latency == "timeout" else world._error_latency
        return world._error(err, model, key, wait, stream)

    return respond


def _reset(world: World, fault: FaultSpec, key: _KeyState, model: str, stream: bool) -> Reply:
    return world._no_response("reset", _RESET_OUTCOME, model, key, world._error_latency, stream)


def _proxy(world: World, fault: FaultSpec, key: _KeyState, model: str, stream: bool) -> Reply:
    return world._error(_PROXY[fault.code], model, key, world._error_latency, stream)


def _hang(world: World, fault: FaultSpec, key: _KeyState, model: str, stream: bool) -> Reply:
    return world._no_response("timeout", _TIMEOUT_OUTCOME, model, key, world._timeout, stream)


class _FaultCheck:
    """A step of `World.attempt`: when one of `faults` hits the attempt, `respond` answers."""

    __slots__ = ("faults", "respond")

    def __init__(self, faults: tuple[FaultSpec, ...], respond: _Respond) -> None:
        self.faults = faults
        self.respond = respond

    def __call__(self, world: World, t: float, key: _KeyState, model: str, input_tokens: int,
                 stream: bool) -> Reply | None:
        fault = world._hit(self.faults, t, key.label, key.project, model)
        return None if fault is None else self.respond(world, fault, key, model, stream)


def _model_unknown(world: World, t: float, key: _KeyState, model: str, input_tokens: int,
                   stream: bool) -> Reply | None:
    if model in world._models:
        return None
    return world._error(_MODEL_NOT_FOUND, model, key, world._error_latency, stream)


def _over_quota(world: World, t: float, key: _KeyState, model: str, input_tokens: int,
                stream: bool) -> Reply | None:
    if world._changes and world._changes[0].at <= t:
        world._change_quotas(t)
    group = key.groups.get(model)
    return None if group is None else world._admit(group, t, input_tokens, model, key, stream)


_KEY_FAULTS: tuple[tuple[FaultKind, _Err], ...] = (
    (FaultKind.KEY_REVOKED, _KEY_INVALID),
    (FaultKind.KEY_LEAKED, _KEY_LEAKED),
    (FaultKind.KEY_TYPE_UNSUPPORTED, _KEY_TYPE_UNSUPPORTED),
    (FaultKind.PROJECT_DISABLED, _SERVICE_DISABLED),
    (FaultKind.PROJECT_DENIED, _PROJECT_DENIED),
)
"""The faults of the key itself, in the order Google checks them (also `World.check_key`)."""

_STEPS: tuple[tuple[FaultKind, _Respond] | _Check, ...] = (
    (FaultKind.RESET, _reset),
    (FaultKind.PROXY_REFUSED, _proxy),
    *((kind, _refuse(err)) for kind, err in _KEY_FAULTS),
    _model_unknown,
    (FaultKind.FILE_DENIED, _refuse(_FILE_DENIED)),
    (FaultKind.SHARED_429, _refuse(_BARE_429)),
    _over_quota,  # only an admitted request counts against the quotas
    (FaultKind.DEADLINE_EXCEEDED, _refuse(_DEADLINE, latency="timeout")),
    (FaultKind.TIMEOUT, _hang),
    (FaultKind.OVERLOADED, _refuse(_OVERLOADED)),
    (FaultKind.SERVER_ERROR, _refuse(_INTERNAL)),
)
"""`World.attempt`'s steps before the answer, in order (the module docstring's list): a fault
kind with its answer, or a check of its own.  The first step that answers ends the attempt."""

_WIRE_FAULTS: tuple[tuple[FaultKind, bool], ...] = (
    (FaultKind.STREAM_CUT, True), (FaultKind.STREAM_ERROR, True),
    (FaultKind.TRUNCATED_BODY, False), (FaultKind.GARBAGE_BODY, False))
"""Faults of an answer on its way back, in order, with whether they hit streams (or plain
calls); the first that hits spoils the answer."""


class _Faults:
    """The faults that can hit one key, and `World.attempt`'s steps for it.

    Filtered by key and project once at construction, so an attempt only runs the steps of
    fault kinds that can hit its key (keys with the same faults share one instance).
    """

    __slots__ = ("checks", "key_errors", "reset", "slow", "wire")

    def __init__(self, faults: tuple[FaultSpec, ...]) -> None:
        def of(kind: FaultKind) -> tuple[FaultSpec, ...]:
            return tuple(f for f in faults if f.kind is kind)

        def checks(steps: tuple[tuple[FaultKind, _Respond] | _Check, ...]) -> tuple[_Check, ...]:
            out: list[_Check] = []
            for step in steps:
                if not isinstance(step, tuple):
                    out.append(step)
                elif of(step[0]):
                    out.append(_FaultCheck(of(step[0]), step[1]))
            return tuple(out)

        self.checks = checks(_STEPS)
        self.key_errors = tuple((of(kind), err) for kind, err in _KEY_FAULTS if of(kind))
        self.slow = of(FaultKind.SLOW)
        self.wire = tuple((kind, of(kind), streams) for kind, streams in _WIRE_FAULTS
                          if of(kind))
        self.reset = of(FaultKind.RESET)


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
        for faults, err in key.faults.key_errors:
            if self._hit(faults, t, key.label, key.project, model):
                return err
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
        return Reply(outcome, latency, err.status, model, None, None, err.body, quota_value,
                     retry_delay, key.tier, key.number, 0, 0, 1, self._serial, self.seed, stream)

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
        for check in key.faults.checks:
            reply = check(self, t, key, model, input_tokens, stream)
            if reply is not None:
                return reply
        return self._serve(t, key, model, input_tokens, stream)

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

    def _serve(self, t: float, key: _KeyState, model: str, input_tokens: int,
               stream: bool) -> Reply:
        """The answer to an admitted attempt that no earlier step refused: its latency and size
        drawn, slowed by ``slow`` faults, perhaps spoilt on its way back."""
        draw_latency, draw_output_tokens, chunks = self._models[model]
        latency = draw_latency()
        output_tokens = draw_output_tokens()
        faults = key.faults
        for slow in faults.slow:  # every slow fault that hits multiplies the latency
            if self._hit((slow,), t, key.label, key.project, model):
                latency *= slow.factor
        for kind, spoilers, streams in faults.wire:
            if streams != stream:
                continue
            fault = self._hit(spoilers, t, key.label, key.project, model)
            if fault is not None:
                return self._spoilt(kind, fault, key, model, input_tokens, latency,
                                    output_tokens, chunks)
        self._count(key, model, _SUCCESS)
        outcome = Outcome(kind=_K.SUCCESS, input_tokens=input_tokens, output_tokens=output_tokens)
        return Reply(outcome, latency, 200, model, None, None, None, 0, 0.0, key.tier, key.number,
                     input_tokens, output_tokens, chunks, self._serial, self.seed, stream)

    def _spoilt(self, kind: FaultKind, fault: FaultSpec, key: _KeyState, model: str,
                input_tokens: int, latency: float, output_tokens: int, chunks: int) -> Reply:
        """A 200 that goes wrong on the wire: a stream cut or broken after some chunks, or a
        plain answer truncated or replaced by an HTML page."""
        stream = kind in (FaultKind.STREAM_CUT, FaultKind.STREAM_ERROR)
        body: Body | None = None
        cut_after: int | None = None
        if kind is FaultKind.STREAM_CUT:
            outcome, name, wire = _RESET_OUTCOME, _CONNECTION_ERROR, "cut"
        elif kind is FaultKind.STREAM_ERROR:
            err = _OVERLOADED if fault.code == 503 else _INTERNAL
            outcome, name, wire, body = err.outcome, err.name, "midstream", err.body
        else:
            outcome, name = _BAD_BODY_OUTCOME, _BAD_RESPONSE
            wire = "truncated" if kind is FaultKind.TRUNCATED_BODY else "garbage"
        if stream:  # the chunks before the fault arrive; the latency is theirs
            cut_after = min(fault.after_chunks, chunks - 1)
            latency = latency * (cut_after + 1) / chunks
        self._count(key, model, name)
        return Reply(outcome, latency, 200, model, wire, cut_after, body, 0, 0.0, key.tier,
                     key.number, input_tokens, output_tokens, chunks, self._serial, self.seed,
                     stream)
