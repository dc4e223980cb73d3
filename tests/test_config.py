"""Bad configuration fails at construction, naming the field and the bad value."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysched import ConfigurationError, Key, Limit, PoolConfig, RetryPolicy


def _error(**kwargs: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        PoolConfig(**{"keys": ["k1", "k2"], "models": ["a", "b"], **kwargs})
    return info.value


def test_valid_config_fills_labels_and_projects() -> None:
    """Plain string keys get `key#N` labels and a project of their own."""
    config = PoolConfig(keys=["k1", Key(secret="k2", project="p")], models=["models/a", "b"])
    assert [k.label for k in config.keys] == ["key#1", "key#2"]
    assert [k.project for k in config.keys] == ["key#1", "p"]
    assert config.models == ("a", "b")
    assert config.projects == ("key#1", "p")


@pytest.mark.parametrize(("kwargs", "field", "shown"), [
    ({"keys": []}, "keys", "none"),
    ({"keys": "just-one-string"}, "keys", "str"),
    ({"keys": ["k1", "k1"]}, "keys[1]", "keys[0]"),
    ({"keys": [Key(secret="a", label="x"), Key(secret="b", label="x")]}, "keys[1]", "'x'"),
    ({"keys": ["k1", 42]}, "keys[1]", "int"),
    ({"keys": ["k1", ""]}, "keys[1]", "empty"),
    ({"keys": ["k1", "bad key"]}, "keys[1]", "whitespace"),
    ({"models": []}, "models", "none"),
    ({"models": ["a", ""]}, "models[1]", "''"),
    ({"models": ["a", "models/a"]}, "models[1]", "'a'"),
    ({"models": 3}, "models", "int"),
    ({"limits": [Limit(model="zzz", rpm=1)]}, "limits[0].model", "'zzz'"),
    ({"limits": [Limit(model="a", project="nope")]}, "limits[0].project", "'nope'"),
    ({"limits": [Limit(model="a"), Limit(model="a")]}, "limits[1]", "'a'"),
    ({"limits": ["rpm=3"]}, "limits[0]", "'rpm=3'"),
    ({"limits": {"a": 3}}, "limits", "dict"),
    ({"retry": "fast"}, "retry", "str"),
    ({"max_in_flight_per_key": 0}, "max_in_flight_per_key", "0"),
    ({"max_in_flight_per_key": 1.5}, "max_in_flight_per_key", "1.5"),
])
def test_bad_pool_config_names_field_and_value(kwargs: dict[str, Any], field: str,
                                               shown: str) -> None:
    """Each bad PoolConfig field raises ConfigurationError naming the field and the value."""
    error = _error(**kwargs)
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    assert shown in str(error)


@pytest.mark.parametrize("name", ["backoff_base", "backoff_cap", "deadline", "minute_cooldown",
                                  "overload_cooldown", "overload_cooldown_cap",
                                  "max_server_delay"])
@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, -math.inf, "5", True,
                                   datetime.timedelta(seconds=-3)])
def test_bad_durations_are_refused(name: str, value: object) -> None:
    """Zero, negative, NaN, infinite and non-numeric durations are refused, naming the field."""
    kwargs: dict[str, Any] = {name: value}
    if name == "backoff_base":
        kwargs["backoff_cap"] = 1e9
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    assert info.value.field == f"retry.{name}"
    assert repr(value if not isinstance(value, datetime.timedelta) else -3.0) in str(
        info.value) or type(value).__name__ in str(info.value)


def test_timedelta_durations_are_accepted() -> None:
    """A timedelta is accepted at the public edge and stored as float seconds."""
    policy = RetryPolicy(deadline=datetime.timedelta(minutes=2), backoff_base=0.25)
    assert policy.deadline == 120.0
    assert isinstance(policy.deadline, float)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_attempts": 0}, "retry.max_attempts"),
    ({"max_attempts": 2.0}, "retry.max_attempts"),
    ({"empty_retries": -1}, "retry.empty_retries"),
    ({"server_errors_per_model": 0}, "retry.server_errors_per_model"),
    ({"jitter": 1.5}, "retry.jitter"),
    ({"jitter": math.nan}, "retry.jitter"),
    ({"jitter": "1"}, "retry.jitter"),
    ({"backoff_base": 5.0, "backoff_cap": 1.0}, "retry.backoff_cap"),
])
def test_bad_retry_counts_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Bad counts and jitter in RetryPolicy raise ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    assert info.value.field == field
    assert repr(next(iter(kwargs.values()))) in str(info.value) or field.endswith("cap")


@pytest.mark.parametrize("name", ["rpm", "tpm", "rpd"])
@pytest.mark.parametrize("value", [0, -3, 2.5, math.nan, math.inf, "10", True])
def test_limits_must_be_positive_integers(name: str, value: object) -> None:
    """RPM, TPM and RPD must be positive integers; anything else names the field and value."""
    with pytest.raises(ConfigurationError) as info:
        Limit(model="a", **{name: value})
    assert info.value.field == name
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [None, "", "  ", 3])
def test_limit_model_must_be_a_name(value: object) -> None:
    """A Limit's model must be a non-empty string."""
    with pytest.raises(ConfigurationError) as info:
        Limit(model=value)  # type: ignore[arg-type]
    assert info.value.field == "model"


@pytest.mark.parametrize("value", [None, 123, b"bytes", "", "a\nb", "tab\there",
                                   "\u2018AIzaQUOTED\u2019", "AIza\u00e9t\u00e9"])
def test_bad_secret_is_refused_without_echo(value: object) -> None:
    """A secret that is not a clean non-empty string is refused, and never echoed."""
    with pytest.raises(ConfigurationError) as info:
        Key(secret=value)  # type: ignore[arg-type]
    assert info.value.field == "secret"
    if isinstance(value, str) and value:
        assert value not in str(info.value)


@pytest.mark.parametrize("field", ["label", "project"])
@pytest.mark.parametrize("value", ["ops\nWARNING key disabled key=prod-1", "a\rb", "tab\there",
                                   "bell\x07", "esc\x1b[31m", "nul\x00", "line\u2028sep"])
def test_labels_and_projects_with_control_characters_are_refused(field: str, value: str) -> None:
    """A label or project goes into log lines: a newline or an escape there would forge or
    garble them, so it is refused, naming the field and showing the value escaped."""
    with pytest.raises(ConfigurationError) as info:
        Key(secret="AIzaSECRETcontrol", **{field: value})
    assert info.value.field == field
    assert repr(value) in str(info.value)
    assert str(info.value).isprintable()  # the message itself carries no raw control character
    assert "AIzaSECRETcontrol" not in str(info.value)
    assert Key(secret="k", label="ok label #1", project="my project").label == "ok label #1"


def _construct(cls: Any, kwargs: dict[str, Any]) -> ConfigurationError | TypeError | None:
    """Build `cls`; return the ConfigurationError or call TypeError it raised (others escape)."""
    try:
        cls(**kwargs)
    except (ConfigurationError, TypeError) as error:
        return error
    return None


garbage = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.just(10**400) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=4) | st.just(datetime.timedelta(seconds=-1)) | st.just(object())
    | st.builds(Key, secret=st.sampled_from(["s1", "s2"]))
    | st.builds(Limit, model=st.sampled_from(["a", "b", "c"]), rpm=st.none() | st.integers(1, 5)),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(
        st.text(max_size=3), inner, max_size=2) | st.frozensets(st.integers(0, 3), max_size=2)
    | st.iterables(inner, max_size=2),
    max_leaves=6)


@given(st.sampled_from([PoolConfig, Key, Limit, RetryPolicy]),
       st.dictionaries(st.sampled_from(
           ["keys", "models", "limits", "retry", "max_in_flight_per_key", "secret", "label",
            "project", "model", "rpm", "tpm", "rpd", "max_attempts", "backoff_base",
            "backoff_cap", "jitter", "deadline", "minute_cooldown", "overload_cooldown",
            "overload_cooldown_cap", "empty_retries", "server_errors_per_model"]),
           garbage, max_size=4))
def test_garbage_raises_only_configuration_error(cls: Any, kwargs: dict[str, Any]) -> None:
    """Arbitrary garbage given to the config classes raises ConfigurationError, nothing else."""
    fields = {field.name for field in cls.__attrs_attrs__}
    kwargs = {name: value for name, value in kwargs.items() if name in fields}
    error = _construct(cls, kwargs)
    if isinstance(error, TypeError):
        # A missing required argument is Python's own call error, not a validation failure.
        assert "required keyword-only argument" in str(error)


_VALID: dict[Any, dict[str, Any]] = {
    PoolConfig: {"keys": ["k1", "k2"], "models": ["a", "b"]},
    Key: {"secret": "k1"},
    Limit: {"model": "a"},
    RetryPolicy: {},
}
flat_garbage = (st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats()
                | st.text(max_size=6) | st.binary(max_size=3) | st.just(object())
                | st.just(datetime.timedelta(days=10**8)) | st.lists(st.integers(), max_size=2)
                | st.just([None]) | st.just(iter([1])))


@given(st.sampled_from(list(_VALID)), st.data())
def test_one_bad_field_raises_only_configuration_error(cls: Any, data: st.DataObject) -> None:
    """One garbage field in an otherwise valid config raises ConfigurationError or nothing."""
    fields = [field.name for field in cls.__attrs_attrs__]
    name = data.draw(st.sampled_from(fields))
    kwargs = {**_VALID[cls], name: data.draw(flat_garbage)}
    error = _construct(cls, kwargs)
    assert not isinstance(error, TypeError)
    if error is not None:
        assert error.field.split("[")[0].split(".")[-1] in {
            name, "secret", "model", "project", "backoff_cap"}
