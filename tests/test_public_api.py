"""The public names, one module per audience, are locked; the layers above use only them.

`keysched` serves client users, `keysched.driver` code that drives the core, `keysched.wire` code
that speaks the Gemini wire format.  A name added to or dropped from any of them is an API
change: it must show up here, in review, not slip through.  `sim`, `benchmarks`, `examples.py`
and the notebooks may import only these three modules.
"""

from __future__ import annotations

import ast
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import keysched
import keysched.driver
import keysched.wire

ROOT = Path(__file__).parent.parent

CLIENT_API = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_MODELS",
    "AttemptRecord",
    "AttemptsExhaustedError",
    "CapacityError",
    "ConfigurationError",
    "EmptyResponseError",
    "GenerateResult",
    "GroupSnapshot",
    "Key",
    "KeyedClient",
    "KeyschedError",
    "KnownLimit",
    "LaneSnapshot",
    "LaneState",
    "Limit",
    "MemoryStore",
    "NoUsableKeyError",
    "OutcomeKind",
    "Policy",
    "PoolConfig",
    "PoolEvent",
    "PoolSnapshot",
    "PoolThread",
    "PoolTransport",
    "Recorder",
    "RedisStore",
    "RequestError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServiceError",
    "Store",
    "StreamChunk",
    "StreamInterruptedError",
    "Usage",
    "UsageError",
    "__version__",
    "genai_client",
]

DRIVER_API = [
    "BLOCKED",
    "DEFAULT_ACTIONS",
    "SERVES",
    "SKIPS",
    "Action",
    "Claim",
    "CoreFacts",
    "Decision",
    "Dispatch",
    "Effect",
    "Fail",
    "FailReason",
    "Finish",
    "Grant",
    "KnownLimit",
    "LaneOracle",
    "LeastLoaded",
    "Next",
    "Outcome",
    "OutcomeKind",
    "Policy",
    "QuotaDimension",
    "RandomChoice",
    "RoundRobin",
    "Scheduler",
    "Selector",
    "SelectorFactory",
    "Settlement",
    "SharedPool",
    "Verdict",
    "Violation",
    "next_pacific_midnight",
    "violation_of",
]

WIRE_API = [
    "API_BASE",
    "Classified",
    "SSEParser",
    "StreamEvent",
    "Usage",
    "classify",
    "endpoint_url",
    "estimate_tokens",
    "generate_body",
    "openai_tokens",
    "request_headers",
]

# The names `keysched.__all__` listed before the split; they still import from `keysched`.
FORMER_TOP_LEVEL = [
    "DEFAULT_ACTIONS", "Action", "Classified", "Decision", "Dispatch", "Effect", "Fail",
    "FailReason", "Finish", "LeastLoaded", "Next", "Outcome", "QuotaDimension", "RandomChoice",
    "RoundRobin", "SSEParser", "Scheduler", "Selector", "StreamEvent", "Violation", "classify",
    "next_pacific_midnight",
]

TRACE_API = [
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

METRICS_API = ["SNAPSHOT_TIMEOUT", "WAIT_BUCKETS", "PoolCollector"]

PUBLIC = {"keysched": CLIENT_API, "keysched.driver": DRIVER_API, "keysched.wire": WIRE_API,
          "keysched.trace": TRACE_API, "keysched.metrics": METRICS_API}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_locked_list(module: str) -> None:
    """Each public module's `__all__` is the list above, in the same (isort) order."""
    assert importlib.import_module(module).__all__ == PUBLIC[module]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_resolves(module: str) -> None:
    """Every name of `__all__` is an attribute, the lazy ones (`KeyedClient` ...) included."""
    loaded = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(loaded, name)]
    assert missing == []


def test_a_name_in_two_modules_is_one_object() -> None:
    """A name public in two modules (`Policy`, `OutcomeKind`, `Usage` ...) is the same object."""
    for first, second in [("keysched", "keysched.driver"), ("keysched", "keysched.wire"),
                          ("keysched.driver", "keysched.wire")]:
        for name in set(PUBLIC[first]) & set(PUBLIC[second]):
            assert getattr(importlib.import_module(first), name) is getattr(
                importlib.import_module(second), name), name


@pytest.mark.parametrize("name", FORMER_TOP_LEVEL)
def test_former_top_level_names_still_import_from_keysched(name: str) -> None:
    """Code written before the split keeps working: the old name is its new home's object."""
    home = keysched.driver if name in DRIVER_API else keysched.wire
    assert name in home.__all__
    assert name not in keysched.__all__
    assert getattr(keysched, name) is getattr(home, name)


def test_unknown_names_are_an_attribute_error() -> None:
    """The lazy lookup does not invent names: a typo is an AttributeError naming it."""
    with pytest.raises(AttributeError, match="NoSuchThing"):
        keysched.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


# ---------------------------------------------------------------------------------------------
# The layers above keysched import only its public modules


def _sources() -> Iterator[tuple[str, str]]:
    """(where, Python source) of every module of sim/ and benchmarks/, examples.py and each
    code cell of the notebooks (IPython magics dropped)."""
    for folder in ("sim", "benchmarks", "notebooks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")
    yield "examples.py", (ROOT / "examples.py").read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
                yield f"{path.relative_to(ROOT)} cell {index}", code


def _private_uses(tree: ast.AST) -> list[str]:
    """The private keysched modules a tree imports or reaches (`keysched._wire.x` included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("keysched._")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("keysched._"):
                found.append(node.module)
            elif node.module == "keysched":
                found += [f"keysched.{alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "keysched" and node.attr.startswith("_")
              and not node.attr.startswith("__")):
            found.append(f"keysched.{node.attr}")
    return found


def test_layers_above_import_only_public_modules() -> None:
    """sim/, benchmarks/, examples.py and the notebooks use keysched, .driver and .wire only."""
    seen = 0
    offenders = []
    for where, source in _sources():
        seen += 1
        offenders += [f"{where}: {name}" for name in _private_uses(ast.parse(source, where))]
    assert seen > 20  # the walk found the files (sim alone has more)
    assert offenders == []


def test_the_scan_sees_every_way_in() -> None:
    """The scanner catches `import`, `from ... import`, `from keysched import _x` and
    `keysched._x.y`, and lets the public modules and dunders through."""
    tree = ast.parse("import keysched._core\nfrom keysched._wire import classify\n"
                     "from keysched import _sse, __version__\nx = keysched._routes.route\n"
                     "import keysched.driver\nfrom keysched.wire import classify\n"
                     "y = keysched.__file__\n")
    assert sorted(_private_uses(tree)) == ["keysched._core", "keysched._routes", "keysched._sse",
                                           "keysched._wire"]
