"""Scenario files: loading, defaults, error messages, built-ins and workload generation."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from keysched._config import Key, Limit, PoolConfig
from sim.scenario import (
    FaultKind,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
)
from sim.workload import Arrival, generate_arrivals

MINIMAL = """\
description = "minimal"
start = "2026-05-12T10:00:00-07:00"
duration = 120

[[models]]
name = "gemini-2.5-flash"
latency_median = 1.0

[[models]]
name = "gemini-2.5-pro"
latency_median = 3.0

[quotas."gemini-2.5-flash"]
rpm = 10
tpm = 250000
rpd = 20

[[projects]]
name = "alpha"
keys = 2
quotas = { "gemini-2.5-pro" = 0, "gemini-2.5-flash" = { rpm = 4 } }

[[projects]]
name = "beta"
tier = "paid"

[[projects.keys]]
label = "b-main"
secret = "AIza-fake-beta"

[[projects.keys]]

[[workload]]
rate = 1.0
input_tokens = [100, 200]
stream = 0.5
bursts = [{ at = 30, count = 10, spread = 2 }]
"""

REQUIRED = {"demo", "steady", "saturation", "daily-exhaustion", "overload-storm", "revoked-keys",
            "shared-project", "thousand-keys", "bare-429-burst"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_loads_with_defaults(tmp_path: Path) -> None:
    """A hand-written file loads, generated keys get fake secrets, and quotas merge field by field."""
    scenario = load_scenario(_write(tmp_path, MINIMAL))
    assert scenario.name == "case"
    assert scenario.models_best_first == ("gemini-2.5-flash", "gemini-2.5-pro")
    alpha, beta = scenario.projects
    assert [(k.label, k.secret) for k in alpha.keys] == [("alpha-1", "fake-alpha-1"),
                                                         ("alpha-2", "fake-alpha-2")]
    assert [(k.label, k.secret) for k in beta.keys] == [("b-main", "AIza-fake-beta"),
                                                        ("beta-2", "fake-beta-2")]
    flash = alpha.quota("gemini-2.5-flash")
    assert flash is not None
    assert (flash.rpm, flash.tpm, flash.rpd) == (4, 250000, 20)
    pro = alpha.quota("gemini-2.5-pro")
    assert pro is not None
    assert pro.lacks_model
    assert beta.quota("gemini-2.5-pro") is None
    assert beta.tier == "paid"
    assert scenario.start_epoch % 60 == 0
    assert scenario.limits_known is False


def test_pool_keys_and_known_limits_build_a_pool_config(tmp_path: Path) -> None:
    """The scenario's keys and limits are valid keysched configuration; zero quotas are left out."""
    scenario = load_scenario(_write(tmp_path, MINIMAL))
    keys = scenario.pool_keys()
    assert all(isinstance(k, Key) for k in keys)
    assert keys[0].project == "alpha"
    limits = scenario.known_limits()
    assert Limit(model="gemini-2.5-flash", project="alpha", rpm=4, tpm=250000, rpd=20) in limits
    assert all(limit.model != "gemini-2.5-pro" for limit in limits)
    PoolConfig(keys=keys, models=scenario.models_best_first, limits=limits)


@pytest.mark.parametrize(("replace", "field", "expectation"), [
    ('description = "minimal"\n', "description", "required"),
    ('start = "2026-05-12T10:00:00-07:00"', "start", "UTC offset"),
    ("duration = 120", "duration", "finite number > 0"),
    ("rpm = 10\n", "quotas.gemini-2.5-flash.rpm", "an integer >= 0"),
    ('"gemini-2.5-pro" = 0,', "projects[0].quotas.gemini-2.5-ultra", "a model declared"),
    ('tier = "paid"', "projects[1].tier", '"free" or "paid"'),
    ("rate = 1.0", "workload[0].rate", "finite number >= 0"),
    ("latency_median = 3.0", "models[1].latency_median", "finite number > 0"),
    ("keys = 2", "projects[0].keys", "a key count >= 1"),
    ("stream = 0.5", "workload[0].stream", "<= 1"),
])
def test_malformed_fields_name_file_field_and_expectation(
        tmp_path: Path, replace: str, field: str, expectation: str) -> None:
    """Each malformed field gives an error naming the file, the field path and what was expected."""
    bad = {
        'description = "minimal"\n': "",
        'start = "2026-05-12T10:00:00-07:00"': 'start = "2026-05-12T10:00:00"',
        "duration = 120": "duration = -5",
        "rpm = 10\n": 'rpm = "ten"\n',
        '"gemini-2.5-pro" = 0,': '"gemini-2.5-ultra" = 0,',
        'tier = "paid"': 'tier = "gold"',
        "rate = 1.0": "rate = -1",
        "latency_median = 3.0": "latency_median = 0",
        "keys = 2": "keys = 0",
        "stream = 0.5": "stream = 1.5",
    }[replace]
    path = _write(tmp_path, MINIMAL.replace(replace, bad, 1))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message
    assert repr(field) in message
    assert expectation in message
    assert info.value.field == field


def test_fault_errors_name_the_field(tmp_path: Path) -> None:
    """Faults with an unknown kind, an unknown key or a missing target are refused by field."""
    cases = [
        ('kind = "meteor"', "faults[0].kind", "one of"),
        ('kind = "key_revoked"\nkey = "nobody"', "faults[0].key", "label of a declared key"),
        ('kind = "key_leaked"', "faults[0].key", "a key label"),
        ('kind = "overloaded"\nstart = 50\nend = 10', "faults[0].end", "a time > start"),
        ('kind = "overloaded"\nprobability = 2', "faults[0].probability", "<= 1"),
    ]
    for body, field, expectation in cases:
        path = _write(tmp_path, MINIMAL + "\n[[faults]]\n" + body + "\n")
        with pytest.raises(ScenarioError, match=expectation) as info:
            load_scenario(path)
        assert info.value.field == field, body
        assert str(path) in str(info.value)


def test_typos_syntax_errors_and_unknown_names_are_reported(tmp_path: Path) -> None:
    """Unknown fields, TOML syntax errors, missing files and unknown built-ins all name the file."""
    with pytest.raises(ScenarioError, match=r"'models\[0\].latency_mean'.*known fields"):
        load_scenario(_write(tmp_path, MINIMAL.replace("latency_median = 1.0",
                                                       "latency_mean = 1.0")))
    with pytest.raises(ScenarioError, match="valid TOML"):
        load_scenario(_write(tmp_path, MINIMAL + "\n[[broken\n"))
    with pytest.raises(ScenarioError, match="readable TOML file"):
        load_scenario(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match="built-in scenarios"):
        load_scenario("no-such-scenario")


def test_duplicate_labels_and_secrets_are_refused(tmp_path: Path) -> None:
    """Two keys with one label, or one secret, make the file invalid (without echoing secrets)."""
    text = MINIMAL.replace('label = "b-main"', 'label = "alpha-1"')
    with pytest.raises(ScenarioError, match="label not used before"):
        load_scenario(_write(tmp_path, text))
    text = MINIMAL.replace('secret = "AIza-fake-beta"', 'secret = "fake-alpha-1"')
    with pytest.raises(ScenarioError, match="unique secret") as info:
        load_scenario(_write(tmp_path, text))
    assert "fake-alpha-1" not in str(info.value)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_builtin_loads(name: str) -> None:
    """Every required built-in scenario ships, loads by name and describes itself in one line."""
    assert name in builtin_scenarios()
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.description
    assert "\n" not in scenario.description
    assert scenario.workload
    assert generate_arrivals(scenario, random.Random(scenario.seed))
    PoolConfig(keys=scenario.pool_keys(), models=scenario.models_best_first,
               limits=scenario.known_limits())


def test_builtins_have_the_features_their_names_promise() -> None:
    """The built-ins contain what the issue asks of them (key counts, faults, midnight, limits)."""
    assert len(load_scenario("thousand-keys").keys) == 1000
    assert load_scenario("saturation").limits_known
    demo = load_scenario("demo")
    assert len(demo.projects) == 3
    assert {f.kind for f in demo.faults} >= {FaultKind.KEY_REVOKED, FaultKind.OVERLOADED}
    daily = load_scenario("daily-exhaustion")
    midnight = 1772956800  # 2026-03-08T00:00:00-08:00
    assert daily.start_epoch < midnight < daily.start_epoch + daily.duration
    revoked = {f.kind for f in load_scenario("revoked-keys").faults}
    assert revoked >= {FaultKind.KEY_REVOKED, FaultKind.KEY_LEAKED}
    shared = load_scenario("shared-project")
    assert len(shared.keys) >= 4 * len(shared.projects)
    assert FaultKind.SHARED_429 in {f.kind for f in load_scenario("bare-429-burst").faults}


def test_arrivals_are_deterministic_sorted_and_include_bursts(tmp_path: Path) -> None:
    """One seed gives one arrival list, sorted by time, with the burst and streamed requests in it."""
    scenario = load_scenario(_write(tmp_path, MINIMAL))
    first = generate_arrivals(scenario, random.Random(5))
    assert first == generate_arrivals(scenario, random.Random(5))
    assert first != generate_arrivals(scenario, random.Random(6))
    assert [a.time for a in first] == sorted(a.time for a in first)
    assert all(0 <= a.time < 120 for a in first)
    assert sum(1 for a in first if 30 <= a.time < 32) >= 10
    assert any(a.stream for a in first)
    assert not all(a.stream for a in first)
    assert all(isinstance(a, Arrival) and 100 <= a.input_tokens <= 200 for a in first)
    assert first[0].models == scenario.models_best_first
    # Poisson at 1/s over 120 s plus a burst of 10: about 130 arrivals.
    assert math.isclose(len(first), 130, abs_tol=45)
