"""The pure core imports no I/O, clock, logging or module-level randomness."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

CORE_MODULES = ["_core", "_selection", "_budget", "_table", "_decisions", "_outcomes",
                "_snapshot", "_pacific", "_config", "_requests", "_timers", "_pool",
                "_placement", "_keys", "_lanes", "_queues", "_names", "_facts", "_views",
                "_groups", "_breaker", "_returns"]
FORBIDDEN = {"time", "datetime", "asyncio", "socket", "httpx", "logging", "os", "threading"}


def _source(module: str) -> ast.Module:
    spec = importlib.util.find_spec(f"keysched.{module}")
    assert spec is not None
    assert spec.origin is not None
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def _imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_nothing_impure(module: str) -> None:
    """No core module imports time, asyncio, sockets, httpx, logging, os or threading."""
    allowed = {"datetime"} if module == "_config" else set()
    assert _imports(_source(module)) & (FORBIDDEN - allowed) == set()


def test_config_uses_datetime_only_for_timedelta() -> None:
    """_config touches `datetime` only to accept a `timedelta` at the public edge."""
    for node in ast.walk(_source("_config")):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "datetime"):
            assert node.attr == "timedelta"
        if isinstance(node, ast.ImportFrom) and node.module == "datetime":
            assert [alias.name for alias in node.names] == ["timedelta"]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_never_calls_module_level_random(module: str) -> None:
    """`random` appears only as the `random.Random` type, never as `random.random()` and co."""
    tree = _source(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            assert all(alias.name == "Random" for alias in node.names)
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "random"):
            assert node.attr == "Random", f"random.{node.attr} in keysched.{module}"


def test_scanner_catches_a_forbidden_import() -> None:
    """The scan itself works: it sees `import time` and `from logging import x`."""
    tree = ast.parse("import time\nfrom logging import getLogger\nimport os.path\n")
    assert _imports(tree) == {"time", "logging", "os"}


# The wire layer and the two public pure modules are held to the core's rules: a fake server, a
# simulator or another driver can use them without an event loop, a socket or a clock.  Kept in
# its own list so that the core's list can change without touching this one.
WIRE_MODULES = ["wire", "driver", "_wire", "_sse", "_routes", "_outcomes", "_errors"]


@pytest.mark.parametrize("module", WIRE_MODULES)
def test_wire_module_imports_nothing_impure(module: str) -> None:
    """No wire module (nor keysched.driver) imports time, asyncio, sockets, httpx, logging..."""
    assert _imports(_source(module)) & FORBIDDEN == set()


@pytest.mark.parametrize("module", WIRE_MODULES)
def test_wire_module_never_touches_random(module: str) -> None:
    """The wire layer draws no random numbers at all: `random` is not even imported."""
    assert "random" not in _imports(_source(module))


def test_public_pure_modules_load_no_io_when_imported() -> None:
    """`import keysched.driver, keysched.wire` in a fresh interpreter loads no asyncio, httpx,
    socket or ssl: what they import, transitively, is as pure as their own source."""
    code = ("import sys, keysched.driver, keysched.wire\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'asyncio', 'httpx', 'httpcore', 'anyio', 'socket', 'ssl', 'aiohttp'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
