"""The outcome trace: a versioned JSON-lines record of every attempt a pool made.

Theory of operation
-------------------
A trace is a text file of JSON objects, one per line (UTF-8, ``\\n``-terminated).  The real
client writes it (``KeyedClient(..., record=...)``) and so does the simulator (``--trace``),
in the same format, so a simulated run and a real one compare line by line, and
``python -m sim replay`` can rebuild a scenario from either.  This module is the format and
nothing else: record classes, their JSON form, a validating reader.  It is pure (no asyncio,
no httpx, no clock); only `load` opens a file.

Line 1 is the header; every later line has a ``kind``::

    {"format": "keysched-trace", "version": 1, "source": "client", "start": 1765068000.0,
     "pool": {"keys": [{"label": "key#1", "project": "p1"}], "models": ["gemini-2.5-flash"],
              "limits": [{"model": "gemini-2.5-flash", "project": "p1", "rpm": 10,
                          "tpm": null, "rpd": 250}]}}
    {"kind": "attempt", "t": 0.412, "request": 0, "attempt": 1, "key": "key#1",
     "project": "p1", "model": "gemini-2.5-flash", "outcome": "rate_limited_minute",
     "status": 429, "retry_delay": 31.0,
     "violations": [{"quota_id": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                     "dimension": "rpm", "value": 10}],
     "tokens_in": null, "tokens_out": null, "latency": 0.052, "stream": false}
    {"kind": "request", "t": 0.913, "request": 0, "submitted": 0.36, "ok": true,
     "reason": null, "attempts": 2}
    {"kind": "dropped", "t": 5.0, "lines": 17}

Header fields: ``format`` (always ``"keysched-trace"``), ``version`` (this module reads 1),
``source`` (``"client"`` or ``"sim"``), ``start`` (Unix time of t = 0; the simulator writes its
virtual epoch), ``pool`` (optional, may be null): ``keys`` (label and project of each key, in
pool order), ``models`` (best first), ``limits`` (the configured limits; a null project means
every project; a null rpm/tpm/rpd means not configured).

``attempt`` lines, one per attempt whose outcome became known:

- ``t``: seconds since ``start`` when the outcome was known (the attempt was sent at
  ``t - latency``); ``request``: the request's number (the core's id, unique within the trace);
  ``attempt``: 1 for its first attempt, 2 for the next, ...
- ``key``: the key's label, or a keyed pseudonym (`pseudonym`) when the writer was asked to hide
  labels; never the secret.  ``project``: its project (pseudonymised with it).  ``model``.
- ``outcome``: an `OutcomeKind` value; ``status``: the HTTP status, or null when no response
  arrived (timeout, connection error) or the source has none.
- ``retry_delay``: seconds the server asked to wait, or null; ``violations``: the quotas a 429
  named (``quota_id``, ``dimension`` a `QuotaDimension` value, ``value`` the limit or null).
- ``tokens_in`` / ``tokens_out``: token counts the service reported, or null; ``latency``:
  seconds from sending to the outcome; ``stream``: whether it was a streaming call.

``request`` lines, one per request when it ends: ``t`` (when it ended), ``submitted`` (when the
caller submitted it: the arrival process a replay needs, which attempt times alone cannot give,
as a queued request is sent late), ``ok``, ``reason`` (null when ok, else a `FailReason` value,
``"cancelled"`` when the caller gave up or the client closed, ``"stream_interrupted"`` when a
stream broke after chunks reached the caller), ``attempts`` (how many it made; 0 if none).

``dropped`` lines: the writer lost ``lines`` lines before ``t`` (its disk was full or slow; the
calls went on).  A trace with such a line is incomplete, and a replay should say so.

Decisions where the issue was silent:

- ``t`` is the end of the attempt, not its start, so writers emit lines in order of ``t``
  (nondecreasing; the reader does not check it) and a line is written once, when it is complete.
- Request-end lines are part of version 1: without them a replay cannot tell arrivals from
  retries, nor a request that never got an attempt (a deadline in the queue) from none at all.
- Unknown fields in a known line are ignored, so a writer may add an optional field within
  version 1; an unknown ``kind`` or a missing field is an error (a new kind means version 2).
- Cancelled attempts (the caller gave up, ``aclose()``) have no outcome and get no attempt line;
  their request line says ``"cancelled"``.
- The pseudonym is a keyed hash (HMAC-SHA256) of the *label*, not of the secret: the file then
  holds no function of the secret at all, and the same label and hash key give the same
  pseudonym in every run.
- Every error the reader raises is a `TraceFormatError` naming the file, the line number and the
  field, with the offending value shortened; a bad value never reaches a record object.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring_ascii
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal

import attrs

from keysched._decisions import FailReason
from keysched._errors import KeyschedError
from keysched._outcomes import OutcomeKind, QuotaDimension, Violation

if TYPE_CHECKING:
    from keysched._config import PoolConfig

__all__ = [
    "CANCELLED",
    "FORMAT",
    "INTERRUPTED",
    "VERSION",
    "AttemptLine",
    "DroppedLine",
    "KeyInfo",
    "LimitInfo",
    "PoolInfo",
    "RequestLine",
    "Trace",
    "TraceFormatError",
    "TraceHeader",
    "TraceLine",
    "ViolationInfo",
    "dumps",
    "load",
    "parse",
    "pseudonym",
]

FORMAT = "keysched-trace"
"""The header's ``format`` field."""
VERSION = 1
"""The format version this module writes and reads."""

CANCELLED = "cancelled"
"""The request line's ``reason`` when the caller gave up (cancelled, or the client closed)."""
INTERRUPTED = "stream_interrupted"
"""The request line's ``reason`` when a stream broke after chunks reached the caller."""
_REASONS = frozenset({reason.value for reason in FailReason} | {CANCELLED, INTERRUPTED})
_OUTCOMES = frozenset(kind.value for kind in OutcomeKind)
_DIMENSIONS = frozenset(dimension.value for dimension in QuotaDimension)


class TraceFormatError(KeyschedError, ValueError):
    """A trace line or record is not what format version 1 says.

    Attributes:
        field: the offending field (``"line"`` for a line that is not a JSON object).
        problem: what is wrong, with the value shortened.
        file: the file's name, when reading one.
        line: the 1-based line number, when reading.
    """

    def __init__(self, field: str, problem: str, *, file: str | None = None,
                 line: int | None = None) -> None:
        self.field = field
        self.problem = problem
        self.file = file
        self.line = line
        where = "" if line is None else f"{file or '<trace>'}:{line}: "
        super().__init__(f"{where}field {field!r}: {problem}")

    def at(self, file: str, line: int) -> TraceFormatError:
        """The same error, located at `line` of `file`."""
        return TraceFormatError(self.field, self.problem, file=file, line=line)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


# Field checks, shared by the attrs validators (a writer building a bad record fails at once)
# and the reader (which locates the same error at its line).

def _bad(field: str, expected: str, value: object) -> TraceFormatError:
    return TraceFormatError(field, f"expected {expected}, got {_show(value)}")


def _check_text(field: str, value: object, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value:
        raise _bad(field, "a non-empty string" + (" or null" if nullable else ""), value)


def _check_in(field: str, value: object, allowed: frozenset[str], *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or value not in allowed:
        raise _bad(field, "one of " + ", ".join(sorted(allowed)), value)


# The validators: one closure per field kind, accepting a good value in one test (they run on
# every record a writer makes; benchmarks/bench_record.py measures them).  `type(...) in` refuses
# a bool where a number is expected; a NaN fails every comparison.

_NUMBER_TYPES = (int, float)


def _number(*, nullable: bool = False) -> Any:
    expected = "a finite number >= 0" + (" or null" if nullable else "")

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (type(value) in _NUMBER_TYPES and 0 <= value < math.inf) or (
                value is None and nullable):
            return
        raise _bad(attribute.name, expected, value)
    return validate


def _integer(*, minimum: int = 0, nullable: bool = False) -> Any:
    expected = f"an integer >= {minimum}" + (" or null" if nullable else "")

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (type(value) is int and value >= minimum) or (value is None and nullable):
            return
        raise _bad(attribute.name, expected, value)
    return validate


def _text(*, nullable: bool = False) -> Any:
    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (type(value) is str and value) or (value is None and nullable):
            return
        _check_text(attribute.name, value, nullable=nullable)
    return validate


def _one_of(allowed: frozenset[str], *, nullable: bool = False) -> Any:
    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (type(value) is str and value in allowed) or (value is None and nullable):
            return
        _check_in(attribute.name, value, allowed, nullable=nullable)
    return validate


def _bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not True and value is not False:
        raise _bad(attribute.name, "true or false", value)


def _status(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if type(value) is not int or not 100 <= value <= 599:
        raise _bad(attribute.name, "an HTTP status (100-599) or null", value)


def _fields(cls: type[Any], data: object, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `cls` read from the JSON object `data`; a missing one is an error."""
    if not isinstance(data, dict):
        raise _bad("line", "a JSON object", data)
    values: dict[str, Any] = {}
    for attribute in attrs.fields(cls):
        if attribute.name in skip:
            continue
        if attribute.name not in data:
            raise TraceFormatError(attribute.name, "missing")
        values[attribute.name] = data[attribute.name]
    return values


def _list(field: str, value: object) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(field, "a list", value)
    return value


def _nested(field: str, error: TraceFormatError) -> TraceFormatError:
    """`error` from inside a nested object, its field named by its path (``pool.keys[2].label``)."""
    separator = "" if error.field.startswith("[") else "."
    return TraceFormatError(f"{field}{separator}{error.field}", error.problem)


# The header


@attrs.frozen(kw_only=True)
class KeyInfo:
    """One key of the pool, as the header describes it (never its secret)."""

    label: str = attrs.field(validator=_text())
    project: str = attrs.field(validator=_text())


@attrs.frozen(kw_only=True)
class LimitInfo:
    """One configured limit (`keysched.Limit`); a null project means every project."""

    model: str = attrs.field(validator=_text())
    project: str | None = attrs.field(default=None, validator=_text(nullable=True))
    rpm: int | None = attrs.field(default=None, validator=_integer(minimum=1, nullable=True))
    tpm: int | None = attrs.field(default=None, validator=_integer(minimum=1, nullable=True))
    rpd: int | None = attrs.field(default=None, validator=_integer(minimum=1, nullable=True))


def _as_is(text: str) -> str:
    return text


def _tuple_of(cls: type[Any]) -> Any:
    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, tuple) or not all(isinstance(item, cls) for item in value):
            raise _bad(attribute.name, f"a tuple of {cls.__name__}", value)
    return validate


def _models(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad(attribute.name, "a tuple of model names", value)
    for index, model in enumerate(value):
        _check_text(f"{attribute.name}[{index}]", model)


@attrs.frozen(kw_only=True)
class PoolInfo:
    """The pool a trace was recorded with: keys and projects, models best first, limits."""

    keys: tuple[KeyInfo, ...] = attrs.field(validator=_tuple_of(KeyInfo))
    models: tuple[str, ...] = attrs.field(validator=_models)
    limits: tuple[LimitInfo, ...] = attrs.field(default=(), validator=_tuple_of(LimitInfo))

    @classmethod
    def from_config(cls, config: PoolConfig, name: Callable[[str], str] = _as_is) -> PoolInfo:
        """The description of `config`'s pool (what the client's recorder and the simulator's
        trace writer put in their headers), each key label and project shown as `name` gives
        it (a pseudonym, say).  A key without a project is its own project, named after its
        label, as the pool counts it (`PoolConfig` fills it in)."""
        return cls(
            keys=tuple(KeyInfo(label=name(key.label or ""),
                               project=name(key.project or key.label or ""))
                       for key in config.keys),
            models=tuple(config.models),
            limits=tuple(LimitInfo(model=limit.model,
                                   project=None if limit.project is None else name(limit.project),
                                   rpm=limit.rpm, tpm=limit.tpm, rpd=limit.rpd)
                         for limit in config.limits))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this description."""
        return {"keys": [attrs.asdict(key) for key in self.keys], "models": list(self.models),
                "limits": [attrs.asdict(limit) for limit in self.limits]}

    @classmethod
    def from_dict(cls, data: object) -> PoolInfo:
        """Read and validate a JSON object; raises `TraceFormatError` naming the field."""
        values = _fields(cls, data)
        return cls(keys=_items("keys", values["keys"], KeyInfo),
                   models=tuple(_list("models", values["models"])),
                   limits=_items("limits", values["limits"], LimitInfo))


def _items(field: str, value: object, cls: type[Any]) -> tuple[Any, ...]:
    items = []
    for index, item in enumerate(_list(field, value)):
        try:
            items.append(cls(**_fields(cls, item)))
        except TraceFormatError as error:
            raise _nested(f"{field}[{index}]", error) from None
    return tuple(items)


@attrs.frozen(kw_only=True)
class TraceHeader:
    """The first line of a trace: format, version, who wrote it, when t = 0 is, the pool."""

    source: Literal["client", "sim"] = attrs.field(
        validator=_one_of(frozenset({"client", "sim"})))
    start: float = attrs.field(validator=_number())
    pool: PoolInfo | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(PoolInfo)))
    format: str = attrs.field(default=FORMAT, init=False)
    version: int = attrs.field(default=VERSION, init=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this header."""
        return {"format": self.format, "version": self.version, "source": self.source,
                "start": self.start, "pool": None if self.pool is None else self.pool.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> TraceHeader:
        """Read and validate a header object; raises `TraceFormatError` naming the field."""
        if not isinstance(data, dict):
            raise _bad("line", "a JSON object", data)
        if data.get("format") != FORMAT:
            raise _bad("format", f"{FORMAT!r} (is this a keysched trace?)", data.get("format"))
        if data.get("version") != VERSION:
            raise _bad("version", f"{VERSION} (this keysched reads version {VERSION})",
                       data.get("version"))
        values = _fields(cls, data, skip=("format", "version", "pool"))
        pool = data.get("pool")
        if pool is not None:
            try:
                pool = PoolInfo.from_dict(pool)
            except TraceFormatError as error:
                raise _nested("pool", error) from None
        return cls(source=values["source"], start=values["start"], pool=pool)

    def to_json(self) -> str:
        """This header as one JSON line (without the newline)."""
        return _json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TraceHeader:
        """Parse and validate one header line."""
        return cls.from_dict(_parse_json(text))


# The lines after it


@attrs.frozen(kw_only=True)
class ViolationInfo:
    """One quota a 429 named: its id, what it counts (a `QuotaDimension` value), its limit."""

    quota_id: str = attrs.field(validator=_text())
    dimension: str | None = attrs.field(
        validator=_one_of(_DIMENSIONS, nullable=True))
    value: int | None = attrs.field(validator=_integer(nullable=True))

    @classmethod
    def of(cls, violation: Violation, redact: Callable[[str], str] = _as_is) -> ViolationInfo:
        """The record of a quota a 429 named, its id as `redact` gives it (``?`` when empty:
        a line's quota id is never empty)."""
        return cls(quota_id=redact(violation.quota_id) or "?",
                   dimension=violation.dimension.value, value=violation.value)


def _violations(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(item, ViolationInfo) for item in value):
        raise _bad(attribute.name, "a tuple of ViolationInfo", value)


class _Line:
    """JSON conversion shared by the line kinds (each names its ``kind``)."""

    __slots__ = ()
    KIND: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this line, ``kind`` first."""
        return {"kind": self.KIND, **attrs.asdict(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        """This line as one JSON line (without the newline): the text of the generic
        ``_json(self.to_dict())``, written value by value (flat lines; `AttemptLine` has its
        own).  Speed trick for `benchmarks/bench_record.py`, held equal by `test_trace`."""
        fields = "".join(f',"{name}":{_scalar(getattr(self, name))}'
                         for name in _names(type(self)))
        return f'{{"kind":"{self.KIND}"{fields}}}'


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _names(cls: type[Any]) -> tuple[str, ...]:
    """The field names of the attrs class `cls`, in order (looked up once)."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(attribute.name for attribute in attrs.fields(cls))
    return names


def _scalar(value: str | float | bool | None) -> str:
    """A JSON scalar as json.dumps writes it (a bool before the int it also is)."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is str:
        return _str(value)
    return repr(value)


@attrs.frozen(kw_only=True)
class AttemptLine(_Line):
    """One attempt whose outcome became known (see the module docstring for each field)."""

    KIND: ClassVar[str] = "attempt"

    t: float = attrs.field(validator=_number())
    request: int = attrs.field(validator=_integer())
    attempt: int = attrs.field(validator=_integer(minimum=1))
    key: str = attrs.field(validator=_text())
    project: str = attrs.field(validator=_text())
    model: str = attrs.field(validator=_text())
    outcome: str = attrs.field(validator=_one_of(_OUTCOMES))
    status: int | None = attrs.field(validator=_status)
    retry_delay: float | None = attrs.field(validator=_number(nullable=True))
    violations: tuple[ViolationInfo, ...] = attrs.field(validator=_violations)
    tokens_in: int | None = attrs.field(validator=_integer(nullable=True))
    tokens_out: int | None = attrs.field(validator=_integer(nullable=True))
    latency: float = attrs.field(validator=_number())
    stream: bool = attrs.field(validator=_bool)

    def to_json(self) -> str:
        """This line as one JSON line (without the newline): the same text as the generic
        ``_json(self.to_dict())``, written out field by field.

        Speed trick for `benchmarks/bench_record.py` (a line per attempt; the generic path,
        through `attrs.asdict` and `json.dumps`, costs several times more); `test_trace` holds
        the two equal on every line Hypothesis makes.
        """
        violations = ",".join(
            f'{{"quota_id":{_str(v.quota_id)},"dimension":{_opt_str(v.dimension)},'
            f'"value":{_opt_num(v.value)}}}' for v in self.violations)
        return (f'{{"kind":"attempt","t":{self.t!r},"request":{self.request!r},'
                f'"attempt":{self.attempt!r},"key":{_str(self.key)},'
                f'"project":{_str(self.project)},"model":{_str(self.model)},'
                f'"outcome":{_str(self.outcome)},"status":{_opt_num(self.status)},'
                f'"retry_delay":{_opt_num(self.retry_delay)},"violations":[{violations}],'
                f'"tokens_in":{_opt_num(self.tokens_in)},"tokens_out":{_opt_num(self.tokens_out)},'
                f'"latency":{self.latency!r},"stream":{"true" if self.stream else "false"}}}')

    @property
    def kind(self) -> OutcomeKind:
        """The outcome as an `OutcomeKind`."""
        return OutcomeKind(self.outcome)

    @classmethod
    def from_dict(cls, data: object) -> AttemptLine:
        """Read and validate an attempt object; raises `TraceFormatError` naming the field."""
        values = _fields(cls, data)
        values["violations"] = _items("violations", values["violations"], ViolationInfo)
        return cls(**values)


def _reason(instance: RequestLine, attribute: attrs.Attribute[Any], value: object) -> None:
    if instance.ok:
        if value is not None:
            raise _bad(attribute.name, "null when ok is true", value)
        return
    _check_in(attribute.name, value, _REASONS)


@attrs.frozen(kw_only=True)
class RequestLine(_Line):
    """One request, when it ended: when it was submitted, whether it was answered, and why not."""

    KIND: ClassVar[str] = "request"

    t: float = attrs.field(validator=_number())
    request: int = attrs.field(validator=_integer())
    submitted: float = attrs.field(validator=_number())
    ok: bool = attrs.field(validator=_bool)
    reason: str | None = attrs.field(validator=_reason)
    attempts: int = attrs.field(validator=_integer())

    @classmethod
    def from_dict(cls, data: object) -> RequestLine:
        """Read and validate a request object; raises `TraceFormatError` naming the field."""
        return cls(**_fields(cls, data))


@attrs.frozen(kw_only=True)
class DroppedLine(_Line):
    """The writer lost `lines` lines before `t` (a full or slow disk); the trace is incomplete."""

    KIND: ClassVar[str] = "dropped"

    t: float = attrs.field(validator=_number())
    lines: int = attrs.field(validator=_integer(minimum=1))

    @classmethod
    def from_dict(cls, data: object) -> DroppedLine:
        """Read and validate a dropped object; raises `TraceFormatError` naming the field."""
        return cls(**_fields(cls, data))


TraceLine = AttemptLine | RequestLine | DroppedLine
"""Any line after the header."""

_KINDS: dict[str, type[AttemptLine] | type[RequestLine] | type[DroppedLine]] = {
    cls.KIND: cls for cls in (AttemptLine, RequestLine, DroppedLine)}


_str = encode_basestring_ascii  # json.dumps's own encoder of a string (ensure_ascii)


def _opt_str(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _opt_num(value: float | None) -> str:
    # repr is what json.dumps writes for an int or a finite float (the validators refuse the
    # others; a bool is refused where a number is expected).
    return "null" if value is None else repr(value)


def _json(data: dict[str, Any]) -> str:
    # allow_nan=False: NaN and infinities are not JSON, and the validators already refuse them.
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise TraceFormatError("line", f"not JSON ({error})") from None


def _line_from_dict(data: object) -> TraceLine:
    if not isinstance(data, dict):
        raise _bad("line", "a JSON object", data)
    if "kind" not in data:
        raise TraceFormatError("kind", "missing")
    cls = _KINDS.get(data["kind"]) if isinstance(data["kind"], str) else None
    if cls is None:
        raise _bad("kind", "one of " + ", ".join(sorted(_KINDS)), data["kind"])
    return cls.from_dict(data)


def dumps(record: TraceHeader | TraceLine) -> str:
    """`record` as one JSON line, without the newline."""
    return record.to_json()


def parse(lines: Iterable[str], *, name: str = "<trace>") -> Iterator[TraceHeader | TraceLine]:
    """Parse a trace lazily: the header first, then each line; blank lines are skipped.

    Args:
        lines: the text lines (a file opened for reading will do).
        name: the file's name, for errors.

    Raises:
        TraceFormatError: naming `name`, the line number and the field, at the first bad line
            (an empty trace is an error at line 1).
    """
    header_seen = False
    number = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = _parse_json(text)
            if header_seen:
                yield _line_from_dict(data)
            else:
                yield TraceHeader.from_dict(data)
                header_seen = True
        except TraceFormatError as error:
            raise error.at(name, number) from None
    if not header_seen:
        raise TraceFormatError("format", "the trace is empty (no header line)",
                               file=name, line=max(number, 1))


@attrs.frozen(kw_only=True)
class Trace:
    """A whole trace in memory: its header and its lines in file order."""

    header: TraceHeader
    lines: tuple[TraceLine, ...]

    @property
    def attempts(self) -> tuple[AttemptLine, ...]:
        """The attempt lines."""
        return tuple(line for line in self.lines if isinstance(line, AttemptLine))

    @property
    def requests(self) -> tuple[RequestLine, ...]:
        """The request lines."""
        return tuple(line for line in self.lines if isinstance(line, RequestLine))

    @property
    def dropped(self) -> int:
        """How many lines the writer lost (0 for a complete trace)."""
        return sum(line.lines for line in self.lines if isinstance(line, DroppedLine))

    def dumps(self) -> str:
        """The whole trace as text, one line per record, newline-terminated."""
        return "".join(dumps(record) + "\n" for record in (self.header, *self.lines))


def load(source: str | os.PathLike[str] | IO[str]) -> Trace:
    """Read and validate a whole trace from a path or an open text file.

    Raises:
        TraceFormatError: naming the file, the line number and the field of the first bad line.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, encoding="utf-8") as file:
            return _collect(parse(file, name=os.fspath(source)))
    return _collect(parse(source, name=getattr(source, "name", "<trace>")))


def _collect(records: Iterator[TraceHeader | TraceLine]) -> Trace:
    header = next(records)
    assert isinstance(header, TraceHeader)  # parse yields the header first or raises
    return Trace(header=header, lines=tuple(records))  # type: ignore[arg-type]


def pseudonym(name: str, hash_key: bytes) -> str:
    """A stable keyed pseudonym for a key label or project name: ``h-`` and 12 hex digits.

    The same `name` and `hash_key` give the same pseudonym in every run; without `hash_key` it
    cannot be reversed, even for guessable labels like ``key#1``.
    """
    return "h-" + hmac.new(hash_key, name.encode("utf-8"), hashlib.sha256).hexdigest()[:12]
