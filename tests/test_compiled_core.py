"""The mypyc-compiled core (opt-in, `scripts/build_compiled_core.py`) decides as the pure core does.

Theory of operation: the pure ``.py`` modules are the reference; ``scripts/sim_hashes.txt``
holds the hash of every simulator run made with them, event for event (every attempt, its key,
model and outcome, every pool event).  When the core has been compiled in place, the compiled
modules win the import, so the same runs hashed again here must match the list.  Without a
compiled core (the default install, CI) the test skips.  The full check is
``python scripts/sim_hashes.py`` (337 runs); this test takes a sample that covers 429 storms,
quota exhaustion, revoked keys, overload and shared projects, one policy each.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

import keysched._core

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "sim_hashes.py"
BUILD_SCRIPT = SCRIPT.with_name("build_compiled_core.py")
COMPILED = not keysched._core.__file__.endswith(".py")

SAMPLE = [
    ("bare-429-burst", "least-loaded"),
    ("daily-exhaustion", "least-loaded"),
    ("revoked-keys", "round-robin"),
    ("overload-storm", "least-loaded"),
    ("shared-project", "least-loaded"),
    ("tier-change", "least-loaded"),
]


def _script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not COMPILED, reason="the core is not compiled (scripts/build_compiled_core.py)")
@pytest.mark.parametrize(("scenario", "policy"), SAMPLE)
def test_compiled_core_runs_match_the_pure_reference(scenario: str, policy: str) -> None:
    hashes = _script(SCRIPT)
    expected = dict(line.rsplit(" ", 1) for line in hashes.HASHES.read_text().splitlines())
    runs = [run for run in hashes._runs() if run[0] == scenario and run[1] == policy]
    assert runs, f"no run of {scenario} with {policy} in the hash list"
    run = runs[0]
    assert hashes.run_hash(run) == expected[hashes._label(run)]


def test_clean_removes_every_extension_a_build_left(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--clean` gives back the pure sources: a compiled simulator module left behind would
    shadow its `.py` as a compiled core module would, whichever build (with or without
    ``--with-sim``) made it."""
    build = _script(BUILD_SCRIPT)
    built = ["keysched/_core.cpython-311-x86_64-linux-gnu.so",
             "sim/engine.cpython-311-x86_64-linux-gnu.so",
             "sim/fit.cpython-311-x86_64-linux-gnu.so",  # not in today's list: still shadowing
             "1a2b3c__mypyc.cpython-311-x86_64-linux-gnu.so", "build/temp/x.o"]
    kept = ["keysched/_core.py", "sim/engine.py", "sim/fit.py", "sim/vendored.so"]
    for name in built + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    build.main(["--clean"])
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(kept)
