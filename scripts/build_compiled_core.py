"""Compile the pure scheduling core with mypyc, in place (opt-in; the default install stays pure).

Theory of operation: mypyc (it ships with mypy, already a dev dependency) turns type-annotated
modules into C extensions.  This script hands the core's modules to ``mypycify`` and runs
setuptools' ``build_ext --inplace`` on them, so each ``keysched/_x.py`` gains a
``keysched/_x.cpython-*.so`` beside it; Python imports the extension in preference to the
source, so nothing else changes.  ``--clean`` removes the extensions (and mypyc's shared
runtime module and ``build/``), giving back the pure reference.  The ``.py`` files stay the
reference and the only source: ``tests/test_compiled_core.py`` and ``scripts/sim_hashes.py``
hold the compiled core's decisions equal to theirs.

    python scripts/build_compiled_core.py          # needs a C compiler and Python headers
    python scripts/build_compiled_core.py --clean

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


def compiled_artifacts() -> list[Path]:
    """The extension modules a build left: the core's, and mypyc's shared runtime at the root."""
    folder = ROOT / "keysched"
    found = [p for name in CORE_MODULES + INTERPRETED for p in folder.glob(f"{name}.*.so")]
    found += list(ROOT.glob("*__mypyc.*.so"))
    return found


def clean() -> None:
    for path in compiled_artifacts():
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    if (ROOT / "build").is_dir():
        shutil.rmtree(ROOT / "build")
        print("removed build/")


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)  # mypyc names the modules from the paths, relative to the project root
    sources = [f"keysched/{name}.py" for name in CORE_MODULES]
    setup(
        name="keysched-compiled-core",
        packages=[],
        py_modules=[],
        ext_modules=mypycify(sources, opt_level="3"),
        script_args=["build_ext", "--inplace"],
    )
    print(f"compiled {len(CORE_MODULES)} core modules; interpreted: {', '.join(INTERPRETED)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true",
                        help="remove the compiled modules and build/ (back to the pure core)")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
    else:
        build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
