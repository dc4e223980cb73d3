"""Write scenario data as a TOML file a person can edit (the standard library only reads TOML).

Theory of operation
-------------------
`dumps` writes the subset of TOML a scenario uses: at the top level, scalars first, then
tables (``[quotas."gemini-2.5-flash"]``), then arrays of tables (``[[projects]]``), each
array entry's own scalars, then its nested tables as inline tables and its lists of tables as
arrays of inline tables (``bursts = [{ at = 1.5, count = 1, spread = 0 }]``), which is how the
built-in scenarios are written by hand.  `tomllib.loads(dumps(data))` gives `data` back, with
tuples read as lists.

Decisions: floats are written with `repr` (shortest round-trip form), so a fitted value reads
back bit for bit; keys that are not bare TOML keys are quoted; ``None`` values are left out
(TOML has no null, and the scenario reader takes a missing field as its default).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps"]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold the number {value!r} here")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_list(value: Any) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str) and bool(value)
            and all(isinstance(item, Mapping) for item in value))


def _scalars(table: Mapping[str, Any]) -> list[str]:
    """The `key = value` lines of `table`, nested tables written inline."""
    return [f"{_key(name)} = {_value(value)}" for name, value in table.items()
            if value is not None]


def dumps(data: Mapping[str, Any], *, comment: str = "") -> str:
    """`data` as TOML text (see the module docstring); `comment` lines go at the top."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    plain = {k: v for k, v in data.items()
             if not isinstance(v, Mapping) and not _is_table_list(v)}
    lines += _scalars(plain)
    for name, value in data.items():
        if not isinstance(value, Mapping) or not value:
            continue
        if all(isinstance(table, Mapping) for table in value.values()):
            for sub, table in value.items():
                lines += ["", f"[{_key(name)}.{_key(sub)}]", *_scalars(table)]
        else:
            lines += ["", f"[{_key(name)}]", *_scalars(value)]
    for name, value in data.items():
        if _is_table_list(value):
            for entry in value:
                lines += ["", f"[[{_key(name)}]]", *_scalars(entry)]
    return "\n".join(lines) + "\n"
