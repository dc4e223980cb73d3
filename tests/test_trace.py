"""The trace format: every record round-trips through JSON, and bad lines are named by line and field."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysched import OutcomeKind, QuotaDimension
from keysched._decisions import FailReason
from keysched.trace import (
    FORMAT,
    VERSION,
    AttemptLine,
    DroppedLine,
    KeyInfo,
    LimitInfo,
    PoolInfo,
    RequestLine,
    Trace,
    TraceFormatError,
    TraceHeader,
    ViolationInfo,
    dumps,
    load,
    parse,
    pseudonym,
)

names = st.text(min_size=1, max_size=12)
seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=10**12)
optional_counts = st.none() | counts
limits = st.none() | st.integers(min_value=1, max_value=10**9)

pools = st.builds(
    PoolInfo,
    keys=st.lists(st.builds(KeyInfo, label=names, project=names), max_size=4).map(tuple),
    models=st.lists(names, max_size=3).map(tuple),
    limits=st.lists(st.builds(LimitInfo, model=names, project=st.none() | names, rpm=limits,
                              tpm=limits, rpd=limits), max_size=3).map(tuple))
headers = st.builds(TraceHeader, source=st.sampled_from(["client", "sim"]), start=seconds,
                    pool=st.none() | pools)
violations = st.builds(ViolationInfo, quota_id=names,
                       dimension=st.none() | st.sampled_from([d.value for d in QuotaDimension]),
                       value=optional_counts)
attempt_lines = st.builds(
    AttemptLine, t=seconds, request=counts, attempt=st.integers(min_value=1, max_value=100),
    key=names, project=names, model=names,
    outcome=st.sampled_from([kind.value for kind in OutcomeKind]),
    status=st.none() | st.integers(min_value=100, max_value=599),
    retry_delay=st.none() | seconds, violations=st.lists(violations, max_size=3).map(tuple),
    tokens_in=optional_counts, tokens_out=optional_counts, latency=seconds, stream=st.booleans())
request_lines = st.one_of(
    st.builds(RequestLine, t=seconds, request=counts, submitted=seconds, ok=st.just(True),
              reason=st.none(), attempts=counts),
    st.builds(RequestLine, t=seconds, request=counts, submitted=seconds, ok=st.just(False),
              reason=st.sampled_from([r.value for r in FailReason]
                                     + ["cancelled", "stream_interrupted"]),
              attempts=counts))
dropped_lines = st.builds(DroppedLine, t=seconds, lines=st.integers(min_value=1, max_value=10**6))
traces = st.builds(Trace, header=headers,
                   lines=st.lists(attempt_lines | request_lines | dropped_lines,
                                  max_size=8).map(tuple))


@given(traces)
def test_a_trace_round_trips_through_its_text(trace: Trace) -> None:
    """Writing a trace and reading it back gives equal records, in order."""
    text = trace.dumps()
    assert text.count("\n") == 1 + len(trace.lines)
    assert load(io.StringIO(text)) == trace


@given(attempt_lines | request_lines | dropped_lines | headers)
def test_each_record_round_trips_through_one_line(record: Any) -> None:
    """A record's JSON is one line, and parsing it gives the record back."""
    line = dumps(record)
    assert "\n" not in line
    assert type(record).from_dict(json.loads(line)) == record


def test_the_header_names_the_format_and_version() -> None:
    """The first line says what it is, so a reader can refuse what it does not know."""
    data = json.loads(TraceHeader(source="sim", start=0.0).to_json())
    assert data == {"format": FORMAT, "version": VERSION, "source": "sim", "start": 0.0,
                    "pool": None}
    assert (FORMAT, VERSION) == ("keysched-trace", 1)


GOOD_ATTEMPT = AttemptLine(
    t=2.5, request=7, attempt=2, key="key#1", project="p1", model="gemini-2.5-flash",
    outcome="rate_limited_minute", status=429, retry_delay=31.0,
    violations=(ViolationInfo(quota_id="GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                              dimension="rpm", value=10),),
    tokens_in=None, tokens_out=None, latency=0.05, stream=False)
HEADER = TraceHeader(source="client", start=1765068000.0,
                     pool=PoolInfo(keys=(KeyInfo(label="key#1", project="p1"),),
                                   models=("gemini-2.5-flash",)))


def text_with(line: dict[str, Any]) -> str:
    """A valid trace whose third line is `line`."""
    return "\n".join([HEADER.to_json(), GOOD_ATTEMPT.to_json(), json.dumps(line)]) + "\n"


def attempt_with(**changes: Any) -> dict[str, Any]:
    return {**GOOD_ATTEMPT.to_dict(), **changes}


@pytest.mark.parametrize(("line", "field"), [
    (attempt_with(status="429"), "status"),
    (attempt_with(status=600), "status"),
    (attempt_with(outcome="rate_limited"), "outcome"),
    (attempt_with(outcome=["success"]), "outcome"),
    (attempt_with(status=True), "status"),
    (attempt_with(request=True), "request"),
    (attempt_with(t=-1.0), "t"),
    (attempt_with(attempt=0), "attempt"),
    (attempt_with(key=""), "key"),
    (attempt_with(stream=1), "stream"),
    (attempt_with(tokens_in=1.5), "tokens_in"),
    (attempt_with(retry_delay=True), "retry_delay"),
    (attempt_with(violations={}), "violations"),
    (attempt_with(violations=[{"quota_id": "q", "dimension": "rpx", "value": 1}]),
     "violations[0].dimension"),
    (attempt_with(violations=[{"quota_id": "q", "dimension": "rpm"}]), "violations[0].value"),
    ({k: v for k, v in GOOD_ATTEMPT.to_dict().items() if k != "latency"}, "latency"),
    ({"kind": "request", "t": 1, "request": 1, "submitted": 0, "ok": True,
      "reason": "deadline", "attempts": 1}, "reason"),
    ({"kind": "request", "t": 1, "request": 1, "submitted": 0, "ok": False,
      "reason": "tired", "attempts": 1}, "reason"),
    ({"kind": "dropped", "t": 1, "lines": 0}, "lines"),
    ({"kind": "event", "t": 1}, "kind"),
    ({"t": 1}, "kind"),
    ([1, 2], "line"),
])
def test_a_bad_line_is_named_by_file_line_and_field(line: Any, field: str) -> None:
    """The error names the file, the 1-based line number and the field, and shows the value."""
    with pytest.raises(TraceFormatError) as caught:
        load(io.StringIO(text_with(line)))
    error = caught.value
    assert (error.line, error.field) == (3, field)
    assert str(error).startswith(f"<trace>:3: field {field!r}: ")


def test_a_number_beyond_float_range_is_refused() -> None:
    """JSON's 1e400 reads as infinity, which no duration is."""
    text = text_with(attempt_with()).replace('"latency": 0.05', '"latency": 1e400')
    with pytest.raises(TraceFormatError, match=r"<trace>:3: field 'latency'"):
        load(io.StringIO(text))


def test_a_file_is_named_by_its_path(tmp_path: Path) -> None:
    """Reading a path names that path in the error, and a line that is not JSON says so."""
    path = tmp_path / "outcomes.jsonl"
    path.write_text(HEADER.to_json() + "\n\n" + '{"kind": "attempt", "t": NaN}\n')
    with pytest.raises(TraceFormatError, match=r"outcomes\.jsonl:3: field 'line': not JSON"):
        load(path)


@pytest.mark.parametrize(("header", "field"), [
    ({"format": "something-else", "version": 1, "source": "client", "start": 0}, "format"),
    ({"format": FORMAT, "version": 2, "source": "client", "start": 0}, "version"),
    ({"format": FORMAT, "version": 1, "source": "browser", "start": 0}, "source"),
    ({"format": FORMAT, "version": 1, "source": "sim"}, "start"),
    ({"format": FORMAT, "version": 1, "source": "sim", "start": 0,
      "pool": {"keys": [{"label": "a"}], "models": [], "limits": []}}, "pool.keys[0].project"),
    ({"format": FORMAT, "version": 1, "source": "sim", "start": 0,
      "pool": {"keys": [], "models": ["m", 3], "limits": []}}, "pool.models[1]"),
    ({"format": FORMAT, "version": 1, "source": "sim", "start": 0,
      "pool": {"keys": [], "models": [], "limits": [{"model": "m", "project": None, "rpm": 0,
                                                     "tpm": None, "rpd": None}]}},
     "pool.limits[0].rpm"),
    (GOOD_ATTEMPT.to_dict(), "format"),
])
def test_a_bad_header_is_refused_at_line_one(header: dict[str, Any], field: str) -> None:
    """A trace of another format, another version or a bad pool is refused before any line."""
    with pytest.raises(TraceFormatError) as caught:
        list(parse([json.dumps(header), GOOD_ATTEMPT.to_json()], name="t.jsonl"))
    assert (caught.value.file, caught.value.line, caught.value.field) == ("t.jsonl", 1, field)


def test_an_empty_trace_is_an_error() -> None:
    """No header, no trace: blank lines do not make one."""
    with pytest.raises(TraceFormatError, match="empty"):
        load(io.StringIO("\n\n"))


def test_unknown_fields_are_ignored_within_version_1() -> None:
    """A writer may add an optional field without breaking readers of version 1."""
    trace = load(io.StringIO(text_with(attempt_with(region="eu"))))
    assert trace.attempts == (GOOD_ATTEMPT, GOOD_ATTEMPT)


def test_a_writer_cannot_build_a_bad_record() -> None:
    """The validators run at construction too, with the same error the reader gives."""
    with pytest.raises(TraceFormatError, match="field 'status'"):
        attrs.evolve(GOOD_ATTEMPT, status=99)
    with pytest.raises(TraceFormatError, match="field 'retry_delay'"):
        attrs.evolve(GOOD_ATTEMPT, retry_delay=float("inf"))
    with pytest.raises(TraceFormatError, match="field 'violations'"):
        attrs.evolve(GOOD_ATTEMPT, violations=[])  # type: ignore[arg-type]


def test_trace_views_split_the_lines_by_kind() -> None:
    """attempts, requests and dropped read the lines of each kind."""
    request = RequestLine(t=3.0, request=7, submitted=1.0, ok=True, reason=None, attempts=2)
    trace = Trace(header=HEADER, lines=(GOOD_ATTEMPT, DroppedLine(t=3, lines=4), request,
                                        DroppedLine(t=4, lines=1)))
    assert trace.attempts == (GOOD_ATTEMPT,)
    assert trace.requests == (request,)
    assert trace.dropped == 5
    assert GOOD_ATTEMPT.kind is OutcomeKind.RATE_LIMITED_MINUTE


def test_a_pseudonym_is_stable_keyed_and_not_the_name() -> None:
    """The same label and hash key give the same pseudonym; another hash key another one."""
    first = pseudonym("key#1", b"k1")
    assert first == pseudonym("key#1", b"k1")
    assert first != pseudonym("key#1", b"k2")
    assert first != pseudonym("key#2", b"k1")
    assert first.startswith("h-")
    assert len(first) == 14
    assert "key" not in first


def test_a_pool_is_described_from_its_config_with_names_as_given() -> None:
    """Keys, projects and limits' projects are shown as `name` gives them (models as they
    are); a key given without a project is its own project, named after its label."""
    from keysched import Key, Limit, PoolConfig

    config = PoolConfig(keys=["AIzaPlainKey000", Key(secret="AIzaOther", label="o", project="p")],
                        models=["m1", "m2"],
                        limits=[Limit(model="m1", rpm=5), Limit(model="m2", project="p", rpd=9)])
    assert PoolInfo.from_config(config) == PoolInfo(
        keys=(KeyInfo(label="key#1", project="key#1"), KeyInfo(label="o", project="p")),
        models=("m1", "m2"),
        limits=(LimitInfo(model="m1", rpm=5), LimitInfo(model="m2", project="p", rpd=9)))
    shown = PoolInfo.from_config(config, str.upper)
    assert [(k.label, k.project) for k in shown.keys] == [("KEY#1", "KEY#1"), ("O", "P")]
    assert [limit.project for limit in shown.limits] == [None, "P"]
    assert shown.models == ("m1", "m2")
    assert "AIza" not in repr(shown)


def test_a_violation_is_recorded_with_its_id_as_redact_gives_it() -> None:
    """The quota id goes through `redact`; an id left empty is written ``?`` (never empty)."""
    from keysched import Violation

    rpm = Violation(QuotaDimension.REQUESTS_PER_MINUTE, 5, "RpmId")
    assert ViolationInfo.of(rpm) == ViolationInfo(quota_id="RpmId", dimension="rpm", value=5)
    assert ViolationInfo.of(rpm, lambda text: text.replace("Rpm", "r")).quota_id == "rId"
    unnamed = Violation(QuotaDimension.REQUESTS_PER_DAY, None, "")
    assert ViolationInfo.of(unnamed) == ViolationInfo(quota_id="?", dimension="rpd", value=None)


def test_the_format_module_is_pure() -> None:
    """keysched.trace imports no event loop, HTTP client, clock, logging or threads."""
    import ast

    import keysched.trace

    source = Path(keysched.trace.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & {"asyncio", "httpx", "time", "datetime", "logging", "threading",
                       "random", "socket", "sim"} == set()


@given(attempt_lines | request_lines | dropped_lines)
def test_the_fast_line_json_is_the_generic_one(line: Any) -> None:
    """Each line's to_json, written out value by value for speed, equals the generic encoding."""
    from keysched.trace import _json

    assert line.to_json() == _json(line.to_dict())
