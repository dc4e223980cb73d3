"""`sim.tomlwrite.dumps` writes TOML that `tomllib` reads back as the same data."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.tomlwrite import dumps

names = st.text(alphabet="abcxyz-_.\" 2é\x7f\n", min_size=1, max_size=8)
scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12))
inline = st.dictionaries(names, scalars, max_size=3)
entries = st.dictionaries(names, st.one_of(scalars, st.lists(scalars, max_size=3), inline),
                          max_size=4)


@given(top=st.dictionaries(names, scalars, max_size=4),
       tables=st.dictionaries(names, st.dictionaries(names, entries, min_size=1, max_size=2),
                              max_size=2),
       arrays=st.dictionaries(names, st.lists(entries, min_size=1, max_size=3), max_size=2))
def test_what_is_written_reads_back_the_same(top: dict[str, Any],
                                             tables: dict[str, Any],
                                             arrays: dict[str, Any]) -> None:
    """Scalars, tables of tables and arrays of tables (with inline tables) round-trip."""
    data: dict[str, Any] = {**top}
    for name, table in tables.items():
        data.setdefault(name, table)
    for name, array in arrays.items():
        data.setdefault(name, array)
    assert tomllib.loads(dumps(data, comment="fitted\nby a test")) == data


def test_none_is_left_out_and_infinity_refused() -> None:
    """TOML has no null (the field is left out) and no place here for an infinite number."""
    assert tomllib.loads(dumps({"a": 1, "b": None, "t": {"x": {"c": None, "d": 2}}})) == {
        "a": 1, "t": {"x": {"d": 2}}}
    with pytest.raises(ValueError, match="inf"):
        dumps({"end": math.inf})
    with pytest.raises(TypeError, match="set"):
        dumps({"bad": {1, 2}})
