"""Compile the pure scheduling core (and optionally the simulator) with mypyc, in place (opt-in).

Theory of operation: mypyc (it ships with mypy, already a dev dependency) turns type-annotated
modules into C extensions.  This script hands the core's modules to ``mypycify`` and runs
setuptools' ``build_ext --inplace`` on them, so each ``keysched/_x.py`` gains a
``keysched/_x.cpython-*.so`` beside it; Python imports the extension in preference to the
source, so nothing else changes.  ``--clean`` removes the extensions (and mypyc's shared
runtime module and ``build/``), giving back the pure reference.  The ``.py`` files stay the
reference and the only source: ``tests/test_compiled_core.py`` and ``scripts/sim_hashes.py``
hold the compiled core's decisions equal to theirs.

    python scripts/build_compiled_core.py             # needs a C compiler and Python headers
    python scripts/build_compiled_core.py --with-sim  # the simulator's per-request modules too
    python scripts/build_compiled_core.py --clean     # removes whichever was built

Decisions taken where the issue was silent:
- Four of the core's modules stay interpreted: ``_errors`` (an exception inheriting from two
  builtin exception classes) and ``_outcomes`` (``Outcome`` subclasses a ``NamedTuple``), which
  mypyc refuses to compile as native classes; ``_config``, which compiles but fails at import
  (``__str__ = __repr__`` in an attrs class body: ``KeyError: '__repr__'``); ``_facts``, which
  fails at import on ``until: float = attrs.field(validator=_time)`` (``TypeError: float object
  expected; got attr._make._CountingAttr``: a native class checks the field's default).  Rewriting them for
  mypyc would make them less readable, and none is on the per-cycle path but ``Outcome``'s
  fields.  The compiled modules use them as ordinary Python objects.
- ``setup()`` is given the modules explicitly (``packages=[]``), so setuptools does not try to
  discover the project's packages from ``pyproject.toml`` (it refuses the flat layout).
- ``--with-sim`` adds the simulator modules a simulated request runs through (from a profile of
  the million-request run): ``engine``, ``world``, ``metrics``, ``workload``, ``draws``, and
  ``records``, ``scenario``, ``bodies``, which they use per attempt (records, scenario specs,
  error bodies).  All eight compile and import as they are, bar one honest annotation fix:
  ``world._Group`` stores its quotas as ``float`` (``math.inf`` when unlimited), and mypyc
  refused assigning an ``int`` to a ``float`` attribute ("Incompatible value representations"),
  so ``change`` converts.  The rest of ``sim/`` (CLI, fitting, replay, servers, plots) is not on
  the per-request path and stays interpreted.
- Edits to a compiled module's ``.py`` have no effect until the core is rebuilt or cleaned: the
  ``.so`` wins the import.  Hence the ``--clean``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `keysched/_core.py` and every module it imports, less INTERPRETED (see the docstring).
CORE_MODULES = (
    "_breaker", "_budget", "_core", "_decisions", "_groups", "_keys",
    "_lanes", "_names", "_pacific", "_placement", "_pool", "_queues", "_requests", "_selection",
    "_snapshot", "_table", "_timers", "_views",
)
INTERPRETED = ("_config", "_errors", "_facts", "_outcomes")
# With --with-sim: the simulator's modules on a simulated request's path (see the docstring).
SIM_MODULES = ("bodies", "draws", "engine", "metrics", "records", "scenario", "workload", "world")


def compiled_artifacts() -> list[Path]:
    """The extension modules a build left: every one shadowing a ``.py`` in ``keysched/`` or
    ``sim/`` (whichever list built it), and mypyc's shared runtime at the root."""
    found = [path for folder in ("keysched", "sim") for path in (ROOT / folder).glob("*.so")
             if path.with_name(path.name.split(".")[0] + ".py").exists()]
    found += list(ROOT.glob("*__mypyc.*.so"))
    return found


def clean() -> None:
    for path in compiled_artifacts():
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    if (ROOT / "build").is_dir():
        shutil.rmtree(ROOT / "build")
        print("removed build/")


def build(with_sim: bool) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)  # mypyc names the modules from the paths, relative to the project root
    sources = [f"keysched/{name}.py" for name in CORE_MODULES]
    if with_sim:
        sources += [f"sim/{name}.py" for name in SIM_MODULES]
    setup(
        name="keysched-compiled-core",
        packages=[],
        py_modules=[],
        ext_modules=mypycify(sources, opt_level="3"),
        script_args=["build_ext", "--inplace"],
    )
    print(f"compiled {len(CORE_MODULES)} core modules; interpreted: {', '.join(INTERPRETED)}")
    if with_sim:
        print(f"compiled {len(SIM_MODULES)} simulator modules: {', '.join(SIM_MODULES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true",
                        help="remove the compiled modules and build/ (back to the pure core)")
    parser.add_argument("--with-sim", action="store_true",
                        help="also compile the simulator's per-request modules (sim/)")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
    else:
        build(args.with_sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
