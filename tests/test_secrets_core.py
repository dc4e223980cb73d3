"""A canary key never shows in any repr, str or error of the configuration or the core."""

from __future__ import annotations

import random
from typing import Any

import pytest

from keysched import (
    ConfigurationError,
    Key,
    Outcome,
    OutcomeKind,
    PoolConfig,
    RetryPolicy,
    Scheduler,
    UsageError,
)
from keysched._decisions import Dispatch

CANARY = "AIzaCANARY-9f8e7d6c5b4a"
T0 = 1_000_000.0


def _texts(value: Any) -> list[str]:
    return [repr(value), str(value)]


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        assert CANARY not in text
        assert "CANARY" not in text


def _keys() -> list[Any]:
    return [CANARY, Key(secret=CANARY + "-b", label="b", project="p"),
            Key(secret=CANARY + "-c", project="p")]


def test_config_reprs_hide_the_canary() -> None:
    """Key and PoolConfig reprs and strs name labels only."""
    config = PoolConfig(keys=_keys(), models=["m1", "m2"])
    texts = _texts(config) + [text for key in config.keys for text in _texts(key)]
    texts += [*_texts(config.keys), repr(config.retry)]
    _assert_clean(texts)


@pytest.mark.parametrize("keys", [
    [CANARY, CANARY],
    [Key(secret=CANARY, label="a"), Key(secret=CANARY, label="b")],
    [CANARY + " trailing space"],
    [CANARY + "\n"],
    ["\x00" + CANARY],
    [Key(secret="x", label="dup"), Key(secret=CANARY, label="dup")],
    CANARY,
    [CANARY, 12],
])
def test_configuration_errors_hide_the_canary(keys: Any) -> None:
    """Every ConfigurationError raised for bad keys omits the secret."""
    with pytest.raises(ConfigurationError) as info:
        PoolConfig(keys=keys, models=["m"])
    _assert_clean([str(info.value), repr(info.value), *map(str, info.value.args)])


def test_key_errors_hide_the_canary() -> None:
    """Errors raised by Key itself omit the secret."""
    for secret in [CANARY + " x", CANARY + "\t"]:
        with pytest.raises(ConfigurationError) as info:
            Key(secret=secret)
        _assert_clean([str(info.value), repr(info.value)])


def test_core_outputs_hide_the_canary() -> None:
    """Decisions, events, snapshots and usage errors of a run through every outcome omit it."""
    config = PoolConfig(keys=_keys(), models=["m1", "m2"],
                        retry=RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_cap=0.2))
    core = Scheduler(config, rng=random.Random(7), wall_epoch=1_700_000_000.0 - T0)
    texts: list[str] = []
    now = T0
    for kind in OutcomeKind:
        core.submit(now)
        for _ in range(20):
            decisions = core.poll(now)
            texts += [text for d in decisions for text in _texts(d)]
            sent = [d for d in decisions if isinstance(d, Dispatch)]
            if sent:
                core.complete(sent[0].attempt, Outcome(kind=kind, retry_after=0.5), now)
                texts += [str(sent[0].key), repr(sent[0].key)]
                break
            now = max(now, min(core.next_deadline(), now + 1e6))
        texts += _texts(core.snapshot()) + [text for e in core.take_events() for text in _texts(e)]
    texts += _texts(core.poll(now)) + _texts(core.snapshot(now))
    for call in [lambda: core.complete(10**6, Outcome(kind=OutcomeKind.SUCCESS), now),
                 lambda: core.poll(now - 1), lambda: core.cancel(10**6, now),
                 lambda: core.submit(now, models=[CANARY]),
                 lambda: core.submit(now, models=["m1"], input_tokens=-1)]:
        with pytest.raises(UsageError) as info:
            call()
        texts += [str(info.value), repr(info.value)]
    # The canary passed as a model name is echoed back by design: the caller chose to send it.
    _assert_clean([text for text in texts if "unknown model" not in text])
    assert any("key#1" in text for text in texts)
