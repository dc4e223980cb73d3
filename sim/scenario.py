"""Scenarios: what the simulated Google looks like, what load hits it and what goes wrong.

A scenario is a TOML file a user can write by hand (see ``sim/scenarios/*.toml``)::

    description = "one line"
    start = "2026-03-07T23:50:00-08:00"   # wall clock at virtual t = 0, with its UTC offset
    duration = 600                        # virtual seconds
    time_scale = 60                       # virtual seconds per real second when served over HTTP
    seed = 1
    limits_known = false                  # may a policy be told the quotas?
    quota_window = "fixed"                # or "sliding": a request leaves the minute 60 s after

    [[models]]                            # best first
    name = "gemini-2.5-flash"
    latency_median = 2.0                  # seconds; latency is log-normal around it
    latency_sigma = 0.4
    output_tokens = [100, 600]            # uniform range (or one integer)

    [quotas."gemini-2.5-flash"]           # default for every project
    rpm = 10
    tpm = 250000
    rpd = 20

    [[projects]]
    name = "alpha"
    keys = 2                              # or [[projects.keys]] tables with label / secret
    quotas = { "gemini-2.5-pro" = 0 }     # 0: this project's tier lacks the model

    [[workload]]                          # phases; they may overlap
    start = 0
    end = 600
    rate = 0.5                            # Poisson arrivals per second
    input_tokens = [200, 2000]
    bursts = [{ at = 120, count = 40, spread = 5 }]

    [[faults]]
    kind = "overloaded"
    model = "gemini-2.5-flash"
    start = 60
    end = 180
    probability = 0.7

    [[quota_changes]]                     # a tier change: new quotas from `at` on
    at = 300
    project = "alpha"                     # optional: every project
    model = "gemini-2.5-flash"
    rpm = 20                              # fields not given keep their value

Decisions where the issue was silent:

- Durations are virtual seconds from the scenario start; ``end`` defaults to "for ever" for
  faults and to ``duration`` for workload phases.
- Quotas: a missing field (rpm/tpm/rpd) means unlimited; a missing model means unlimited for
  that project; ``0`` in any field (or the shorthand ``model = 0``) means the tier lacks the model
  and every request gets the ``limit: 0`` 429.  Project tables override the top-level defaults
  field by field.
- Keys without a secret get ``fake-<project>-<n>`` and the label ``<project>-<n>`` (1-based).
- ``known_limits()`` always returns the quotas (zero quotas left out: a `Limit` cannot say 0);
  ``limits_known`` only records whether a run should hand them to the policy.
- Unknown fields are errors, so a typo never silently means "default".
- ``quota_window = "fixed"`` (the default) counts minutes in windows aligned to the wall-clock
  minute, the retry delay being the time left in it; ``"sliding"`` counts the last 60 s, the
  retry delay being the time until the oldest counted request leaves (the harsher server: a
  client that floods when a cooldown ends is refused again at once).
- ``[[quota_changes]]`` change a project's quotas at a time (a tier upgrade or cut); the 429s
  after it report the new values.  `known_limits()` reports the quotas at t = 0.
"""

from __future__ import annotations

import datetime
import enum
import importlib.resources
import math
import tomllib
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from keysched import Key, Limit

__all__ = [
    "FaultKind",
    "FaultSpec",
    "KeySpec",
    "ModelSpec",
    "ProjectSpec",
    "QuotaSpec",
    "Scenario",
    "ScenarioError",
    "WorkloadSpec",
    "builtin_scenarios",
    "load_scenario",
    "parse_scenario",
]


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file, the field and the expectation.

    Attributes:
        source: the file (or built-in name) being read.
        field: the dotted path of the bad field, e.g. ``projects[1].quotas.gemini-2.5-pro.rpm``.
        expected: what the field should have been.
    """

    def __init__(self, source: str, field: str, expected: str, *, got: object = None,
                 show_got: bool = True) -> None:
        self.source = source
        self.field = field
        self.expected = expected
        tail = f", got {got!r}" if show_got else ""
        super().__init__(f"{source}: field {field!r}: expected {expected}{tail}")


class FaultKind(enum.Enum):
    """The events a fault trace can contain."""

    KEY_REVOKED = "key_revoked"
    """400 ``API_KEY_INVALID`` for the key (or every key of ``project``) from ``start``."""
    KEY_LEAKED = "key_leaked"
    """403 "reported as leaked" for the key from ``start``."""
    PROJECT_DISABLED = "project_disabled"
    """403 ``SERVICE_DISABLED`` for every key of the project."""
    OVERLOADED = "overloaded"
    """503 "The model is overloaded" with ``probability``."""
    SERVER_ERROR = "server_error"
    """500 INTERNAL with ``probability``."""
    SHARED_429 = "shared_429"
    """429 without details (shared capacity) with ``probability``; not counted as quota use."""
    SLOW = "slow"
    """Latency multiplied by ``factor``."""
    TIMEOUT = "timeout"
    """No answer: the server hangs for the scenario's ``timeout`` then drops the connection."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """504 DEADLINE_EXCEEDED after the scenario's ``timeout``."""
    RESET = "reset"
    """The connection is reset before any response."""
    STREAM_CUT = "stream_cut"
    """A streamed answer stops after ``after_chunks`` chunks and the connection drops."""
    STREAM_ERROR = "stream_error"
    """A streamed answer sends ``after_chunks`` chunks, then an error object (``code``)."""
    TRUNCATED_BODY = "truncated_body"
    """A 200 whose JSON answer is cut in half (a well-formed HTTP message with a broken body,
    as a misbehaving proxy sends it); only for ``generateContent``, streams are left alone."""
    GARBAGE_BODY = "garbage_body"
    """A 200 whose body is an HTML page, not JSON (a captive portal or a proxy's error page);
    only for ``generateContent``, streams are left alone."""
    KEY_TYPE_UNSUPPORTED = "key_type_unsupported"
    """401 ``ACCESS_TOKEN_TYPE_UNSUPPORTED`` for the key from ``start`` (Google's 2026 refusal
    of unrestricted standard keys)."""
    PROJECT_DENIED = "project_denied"
    """403 "Your project has been denied access" for every key of the project."""
    FILE_DENIED = "file_denied"
    """403 "You do not have permission to access the File ..." with ``probability``: the
    request's file, not the key (not counted as quota use)."""
    PROXY_REFUSED = "proxy_refused"
    """A bare 401 or 403 (``code``) HTML page from a proxy in front of the API, with
    ``probability``, before the request reaches Google."""


@attrs.frozen(kw_only=True)
class KeySpec:
    """One API key: its fake secret, its label and its project."""

    label: str
    secret: str
    project: str


@attrs.frozen(kw_only=True)
class QuotaSpec:
    """The quotas Google enforces on one (project, model); ``None`` means unlimited."""

    model: str
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None

    @property
    def lacks_model(self) -> bool:
        """True when the tier does not include the model at all (``limit: 0``)."""
        return 0 in (self.rpm, self.tpm, self.rpd)


@attrs.frozen(kw_only=True)
class ProjectSpec:
    """A Google Cloud project: its keys, tier, number and per-model quotas."""

    name: str
    number: int
    tier: str
    keys: tuple[KeySpec, ...]
    quotas: tuple[QuotaSpec, ...]

    def quota(self, model: str) -> QuotaSpec | None:
        """The quota of `model` in this project, or ``None`` when unlimited."""
        for quota in self.quotas:
            if quota.model == model:
                return quota
        return None


@attrs.frozen(kw_only=True)
class ModelSpec:
    """A model: log-normal latency around a median, output size range, stream chunking."""

    name: str
    latency_median: float
    latency_sigma: float = 0.3
    output_tokens: tuple[int, int] = (200, 800)
    stream_chunks: int = 4


@attrs.frozen(kw_only=True)
class Burst:
    """`count` extra arrivals spread uniformly over [at, at + spread)."""

    at: float
    count: int
    spread: float = 1.0


@attrs.frozen(kw_only=True)
class WorkloadSpec:
    """One workload phase: Poisson arrivals at `rate` per second over [start, end), plus bursts."""

    start: float
    end: float
    rate: float
    models: tuple[str, ...]
    input_tokens: tuple[int, int]
    deadline: float = 60.0
    stream: float = 0.0
    """The probability that a request is streamed."""
    bursts: tuple[Burst, ...] = ()


@attrs.frozen(kw_only=True)
class QuotaChange:
    """New quotas for (`project`, `model`) from virtual time `at` on; ``None`` fields keep theirs.

    `project` ``None`` means every project.
    """

    at: float
    model: str
    project: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None


@attrs.frozen(kw_only=True)
class FaultSpec:
    """One timed fault, active over [start, end) for the keys/projects/models it names.

    ``None`` filters match everything.  ``factor`` is for `FaultKind.SLOW`, ``after_chunks`` for
    the stream faults, ``code`` for `FaultKind.STREAM_ERROR` (500 or 503) and
    `FaultKind.PROXY_REFUSED` (403 or 401).
    """

    kind: FaultKind
    start: float = 0.0
    end: float = math.inf
    probability: float = 1.0
    key: str | None = None
    project: str | None = None
    model: str | None = None
    factor: float = 3.0
    after_chunks: int = 1
    code: int = 503


@attrs.frozen(kw_only=True)
class Scenario:
    """A whole scenario.  See the module docstring for the file format."""

    name: str
    description: str
    source: str
    start: datetime.datetime
    duration: float
    time_scale: float = 1.0
    seed: int = 0
    limits_known: bool = False
    timeout: float = 60.0
    """How long (virtual seconds) a timeout fault hangs and a 504 takes."""
    error_latency: float = 0.1
    """How long (virtual seconds) an error answer takes."""
    models: tuple[ModelSpec, ...]
    projects: tuple[ProjectSpec, ...]
    workload: tuple[WorkloadSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    quota_window: str = "fixed"
    """``"fixed"`` minute windows aligned to the wall clock, or ``"sliding"`` 60-second ones."""
    quota_changes: tuple[QuotaChange, ...] = ()

    @property
    def start_epoch(self) -> float:
        """The wall-clock start as Unix seconds."""
        return self.start.timestamp()

    @property
    def models_best_first(self) -> tuple[str, ...]:
        """Model names in the order the file lists them (best first)."""
        return tuple(model.name for model in self.models)

    @property
    def keys(self) -> tuple[KeySpec, ...]:
        """Every key of every project, in file order."""
        return tuple(key for project in self.projects for key in project.keys)

    def pool_keys(self) -> tuple[Key, ...]:
        """The keys as keysched `Key` objects (secret, label, project)."""
        return tuple(Key(secret=k.secret, label=k.label, project=k.project) for k in self.keys)

    def known_limits(self) -> tuple[Limit, ...]:
        """The quotas as keysched `Limit` objects, one per (project, model) with a non-zero quota.

        Returned whatever `limits_known` says; that flag tells a run whether to use them.
        """
        limits = []
        for project in self.projects:
            for quota in project.quotas:
                if quota.lacks_model or (quota.rpm, quota.tpm, quota.rpd) == (None, None, None):
                    continue
                limits.append(Limit(model=quota.model, project=project.name, rpm=quota.rpm,
                                    tpm=quota.tpm, rpd=quota.rpd))
        return tuple(limits)


# -- loading ------------------------------------------------------------------------------------

_SCENARIO_DIR = "scenarios"


def builtin_scenarios() -> list[str]:
    """The names of the built-in scenarios, sorted."""
    folder = importlib.resources.files("sim") / _SCENARIO_DIR
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir()
                  if entry.name.endswith(".toml"))


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Load a scenario from a TOML file, or a built-in one by name.

    Raises:
        ScenarioError: the file is missing, not TOML, or a field is wrong.
    """
    path = Path(path_or_name)
    if isinstance(path_or_name, str) and not path.suffix and not path.exists():
        if path_or_name not in builtin_scenarios():
            raise ScenarioError(path_or_name, "(scenario)", f"a file path or one of the built-in "
                                f"scenarios {builtin_scenarios()}", show_got=False)
        resource = importlib.resources.files("sim") / _SCENARIO_DIR / f"{path_or_name}.toml"
        return _parse_text(resource.read_text(encoding="utf-8"), f"<built-in {path_or_name}>",
                           path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), "(file)", f"a readable TOML file ({exc.strerror})",
                            show_got=False) from exc
    return _parse_text(text, str(path), path.stem)


def _parse_text(text: str, source: str, name: str) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "(syntax)", f"valid TOML ({exc})", show_got=False) from exc
    return parse_scenario(data, source=source, name=name)


_MISSING: Any = object()


class _Table:
    """Typed reads from one TOML table; every failure names the source, field and expectation."""

    def __init__(self, source: str, path: str, value: object, allowed: set[str]) -> None:
        if not isinstance(value, dict):
            raise ScenarioError(source, path or "(top level)", "a table", got=value)
        for name in value:
            if name not in allowed:
                raise ScenarioError(source, self._join(path, name),
                                    f"no such field; known fields are {sorted(allowed)}",
                                    show_got=False)
        self.source = source
        self.path = path
        self.data: dict[str, Any] = value

    @staticmethod
    def _join(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def where(self, name: str) -> str:
        return self._join(self.path, name)

    def error(self, name: str, expected: str, got: object = _MISSING) -> ScenarioError:
        return ScenarioError(self.source, self.where(name), expected, got=got,
                             show_got=got is not _MISSING)

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(name, "this field (it is required)")
        return default

    def string(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is not default and (not isinstance(value, str) or not value.strip()):
            raise self.error(name, "a non-empty string", value)
        return value

    def number(self, name: str, default: Any = _MISSING, *, minimum: float = 0.0,
               strict: bool = False, maximum: float = math.inf) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        bad = isinstance(value, bool) or not isinstance(value, int | float)
        if bad or not math.isfinite(value) or value < minimum or (strict and value == minimum) \
                or value > maximum:
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            if maximum < math.inf:
                bound += f" and <= {maximum:g}"
            raise self.error(name, f"a finite number {bound}", value)
        return float(value)

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int = 0) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(name, f"an integer >= {minimum}", value)
        return value

    def int_range(self, name: str, default: Any = _MISSING, *, minimum: int = 0) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        expected = f"an integer >= {minimum} or a range [low, high] of such integers"
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return (value, value)
        if (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and minimum <= value[0] <= value[1]):
            return (value[0], value[1])
        raise self.error(name, expected, value)

    def table_list(self, name: str) -> list[Any]:
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise self.error(name, "an array of tables ([[" + self.where(name) + "]])", value)
        return value


def _start_time(table: _Table) -> datetime.datetime:
    raw = table.raw("start")
    expected = 'an ISO date-time with a UTC offset, e.g. "2026-03-07T23:50:00-08:00"'
    if isinstance(raw, datetime.datetime):
        value = raw  # TOML's own offset date-time literal
    elif isinstance(raw, str):
        try:
            value = datetime.datetime.fromisoformat(raw)
        except ValueError:
            raise table.error("start", expected, raw) from None
    else:
        raise table.error("start", expected, raw)
    if value.tzinfo is None or value.utcoffset() is None:
        raise table.error("start", expected + " (the offset is missing)", raw)
    return value


def _models(top: _Table) -> tuple[ModelSpec, ...]:
    models = []
    for index, raw in enumerate(top.table_list("models")):
        t = _Table(top.source, f"models[{index}]", raw, {
            "name", "latency_median", "latency_sigma", "output_tokens", "stream_chunks"})
        models.append(ModelSpec(
            name=t.string("name").removeprefix("models/"),
            latency_median=t.number("latency_median", 1.0, strict=True),
            latency_sigma=t.number("latency_sigma", 0.3),
            output_tokens=t.int_range("output_tokens", (200, 800), minimum=1),
            stream_chunks=t.integer("stream_chunks", 4, minimum=1)))
        if [m.name for m in models].count(models[-1].name) > 1:
            raise t.error("name", "a model name not used before", models[-1].name)
    if not models:
        raise top.error("models", "at least one [[models]] table")
    return tuple(models)


def _quotas(table: _Table, name: str, models: tuple[str, ...],
            defaults: Mapping[str, QuotaSpec]) -> tuple[QuotaSpec, ...]:
    raw = table.raw(name, {})
    if not isinstance(raw, dict):
        raise table.error(name, "a table of model = { rpm, tpm, rpd } (or model = 0)", raw)
    merged = dict(defaults)
    for model, value in raw.items():
        where = f"{table.where(name)}.{model}"
        if model not in models:
            raise ScenarioError(table.source, where, f"a model declared in [[models]] {list(models)}",
                                show_got=False)
        if value == 0 and not isinstance(value, bool):
            merged[model] = QuotaSpec(model=model, rpm=0, tpm=0, rpd=0)
            continue
        q = _Table(table.source, where, value, {"rpm", "tpm", "rpd"})
        base = merged.get(model, QuotaSpec(model=model))
        merged[model] = QuotaSpec(model=model, rpm=q.integer("rpm", base.rpm),
                                  tpm=q.integer("tpm", base.tpm), rpd=q.integer("rpd", base.rpd))
    return tuple(merged[m] for m in models if m in merged)


def _projects(top: _Table, models: tuple[str, ...]) -> tuple[ProjectSpec, ...]:
    defaults = {q.model: q for q in _quotas(top, "quotas", models, {})}
    projects: list[ProjectSpec] = []
    labels: set[str] = set()
    secrets: set[str] = set()
    for index, raw in enumerate(top.table_list("projects")):
        t = _Table(top.source, f"projects[{index}]", raw, {"name", "number", "tier", "keys",
                                                            "quotas"})
        name = t.string("name")
        if any(p.name == name for p in projects):
            raise t.error("name", "a project name not used before", name)
        tier = t.string("tier", "free")
        if tier not in ("free", "paid"):
            raise t.error("tier", '"free" or "paid"', tier)
        # A stable fake project number: SERVICE_DISABLED bodies name "projects/<number>".
        number = t.integer("number", 100_000_000_000 + zlib.crc32(name.encode()), minimum=1)
        keys_raw = t.raw("keys", 1)
        keys: list[KeySpec] = []
        if isinstance(keys_raw, int) and not isinstance(keys_raw, bool) and keys_raw >= 1:
            keys = [KeySpec(label=f"{name}-{n}", secret=f"fake-{name}-{n}", project=name)
                    for n in range(1, keys_raw + 1)]
        elif isinstance(keys_raw, list) and keys_raw:
            for n, key_raw in enumerate(keys_raw, start=1):
                k = _Table(top.source, f"{t.where('keys')}[{n - 1}]", key_raw, {"label", "secret"})
                keys.append(KeySpec(label=k.string("label", f"{name}-{n}"),
                                    secret=k.string("secret", f"fake-{name}-{n}"), project=name))
        else:
            raise t.error("keys", "a key count >= 1 or an array of {label, secret} tables",
                          keys_raw)
        for n, key in enumerate(keys):
            if key.label in labels:
                raise ScenarioError(top.source, f"{t.where('keys')}[{n}].label",
                                    "a key label not used before", got=key.label)
            if key.secret in secrets or any(ch.isspace() for ch in key.secret):
                raise ScenarioError(top.source, f"{t.where('keys')}[{n}].secret",
                                    "a unique secret without whitespace", show_got=False)
            labels.add(key.label)
            secrets.add(key.secret)
        projects.append(ProjectSpec(name=name, number=number, tier=tier, keys=tuple(keys),
                                    quotas=_quotas(t, "quotas", models, defaults)))
    if not projects:
        raise top.error("projects", "at least one [[projects]] table")
    return tuple(projects)


def _workload(top: _Table, models: tuple[str, ...], duration: float) -> tuple[WorkloadSpec, ...]:
    phases = []
    for index, raw in enumerate(top.table_list("workload")):
        t = _Table(top.source, f"workload[{index}]", raw, {
            "start", "end", "rate", "models", "input_tokens", "deadline", "stream", "bursts"})
        start = t.number("start", 0.0)
        end = t.number("end", duration)
        if end < start:
            raise t.error("end", f"a time >= start ({start:g})", end)
        allowed = t.raw("models", list(models))
        if (not isinstance(allowed, list) or not allowed
                or any(m not in models for m in allowed) or len(set(allowed)) != len(allowed)):
            raise t.error("models", f"a non-empty list of distinct models from {list(models)}",
                          allowed)
        stream = t.raw("stream", 0.0)
        stream = float(stream) if isinstance(stream, bool) else t.number("stream", 0.0,
                                                                         maximum=1.0)
        bursts = []
        for b_index, b_raw in enumerate(t.table_list("bursts")):
            b = _Table(top.source, f"{t.where('bursts')}[{b_index}]", b_raw,
                       {"at", "count", "spread"})
            bursts.append(Burst(at=b.number("at"), count=b.integer("count", minimum=1),
                                spread=b.number("spread", 1.0)))
        phases.append(WorkloadSpec(
            start=start, end=end, rate=t.number("rate", 0.0), models=tuple(allowed),
            input_tokens=t.int_range("input_tokens", (500, 2000), minimum=1),
            deadline=t.number("deadline", 60.0, strict=True), stream=stream,
            bursts=tuple(bursts)))
    return tuple(phases)


_NEEDS_KEY_OR_PROJECT = {FaultKind.KEY_REVOKED, FaultKind.KEY_LEAKED,
                         FaultKind.KEY_TYPE_UNSUPPORTED}
_NEEDS_PROJECT = {FaultKind.PROJECT_DISABLED, FaultKind.PROJECT_DENIED}
_CODES = {FaultKind.PROXY_REFUSED: (403, 401)}
"""The codes a fault may send, the first the default (else 503 or 500, for stream errors)."""


def _faults(top: _Table, projects: tuple[ProjectSpec, ...],
            models: tuple[str, ...]) -> tuple[FaultSpec, ...]:
    labels = [key.label for p in projects for key in p.keys]
    names = [p.name for p in projects]
    faults = []
    for index, raw in enumerate(top.table_list("faults")):
        t = _Table(top.source, f"faults[{index}]", raw, {
            "kind", "start", "end", "probability", "key", "project", "model", "factor",
            "after_chunks", "code"})
        kind_raw = t.raw("kind")
        try:
            kind = FaultKind(kind_raw)
        except ValueError:
            raise t.error("kind", f"one of {[k.value for k in FaultKind]}", kind_raw) from None
        start = t.number("start", 0.0)
        end = t.number("end", math.inf)
        if end <= start:
            raise t.error("end", f"a time > start ({start:g})", end)
        key = t.string("key", None)
        if key is not None and key not in labels:
            raise t.error("key", "the label of a declared key", key)
        project = t.string("project", None)
        if project is not None and project not in names:
            raise t.error("project", f"a declared project {names}", project)
        model = t.string("model", None)
        if model is not None and model not in models:
            raise t.error("model", f"a declared model {list(models)}", model)
        if kind in _NEEDS_KEY_OR_PROJECT and key is None and project is None:
            raise t.error("key", f"a key label (or a project) for a {kind.value} fault")
        if kind in _NEEDS_PROJECT and project is None:
            raise t.error("project", f"the project a {kind.value} fault disables")
        codes = _CODES.get(kind, (503, 500))
        code = t.integer("code", codes[0])
        if code not in codes:
            raise t.error("code", " or ".join(map(str, sorted(codes))), code)
        faults.append(FaultSpec(
            kind=kind, start=start, end=end,
            probability=t.number("probability", 1.0, maximum=1.0), key=key, project=project,
            model=model, factor=t.number("factor", 3.0, minimum=1.0),
            after_chunks=t.integer("after_chunks", 1), code=code))
    return tuple(faults)


def parse_scenario(data: Mapping[str, Any], *, source: str = "<scenario>",
                   name: str = "scenario") -> Scenario:
    """Build a `Scenario` from parsed TOML data.

    Raises:
        ScenarioError: a field is missing or wrong; the message names `source` and the field.
    """
    top = _Table(source, "", dict(data), {
        "name", "description", "start", "duration", "time_scale", "seed", "limits_known",
        "timeout", "error_latency", "models", "quotas", "projects", "workload", "faults",
        "quota_window", "quota_changes"})
    models = _models(top)
    names = tuple(m.name for m in models)
    duration = top.number("duration", strict=True)
    projects = _projects(top, names)
    limits_known = top.raw("limits_known", False)
    if not isinstance(limits_known, bool):
        raise top.error("limits_known", "true or false", limits_known)
    quota_window = top.string("quota_window", "fixed")
    if quota_window not in ("fixed", "sliding"):
        raise top.error("quota_window", '"fixed" or "sliding"', quota_window)
    return Scenario(
        name=top.string("name", name), description=top.string("description"), source=source,
        start=_start_time(top), duration=duration,
        time_scale=top.number("time_scale", 1.0, strict=True),
        seed=top.integer("seed", 0), limits_known=limits_known,
        timeout=top.number("timeout", 60.0, strict=True),
        error_latency=top.number("error_latency", 0.1),
        models=models, projects=projects, workload=_workload(top, names, duration),
        faults=_faults(top, projects, names), quota_window=quota_window,
        quota_changes=_quota_changes(top, projects, names))


def _quota_changes(top: _Table, projects: tuple[ProjectSpec, ...],
                   models: tuple[str, ...]) -> tuple[QuotaChange, ...]:
    changes = []
    for index, raw in enumerate(top.table_list("quota_changes")):
        t = _Table(top.source, f"quota_changes[{index}]", raw,
                   {"at", "project", "model", "rpm", "tpm", "rpd"})
        model = t.string("model")
        if model not in models:
            raise t.error("model", f"a model declared in [[models]] {list(models)}", model)
        project = t.raw("project", None)
        if project is not None and not any(p.name == project for p in projects):
            raise t.error("project", "a declared project", project)
        changes.append(QuotaChange(at=t.number("at"), model=model, project=project,
                                   rpm=t.integer("rpm", None), tpm=t.integer("tpm", None),
                                   rpd=t.integer("rpd", None)))
    return tuple(sorted(changes, key=lambda change: change.at))
