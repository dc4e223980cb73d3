"""``notebooks/key_utilization.ipynb`` runs top to bottom in a real Jupyter kernel.

The kernel is the ``python3`` kernelspec that ``pip install -e ".[dev]"`` installs into the
environment (ipykernel ships it); the test checks that it resolves to this interpreter, so the
notebook runs against this checkout, not some other Python on the machine.  The notebook runs
from a temporary copy, so outputs are never written back; the committed file must have none.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "key_utilization.ipynb"
KERNEL = "python3"
CELL_TIMEOUT = 120  # seconds per cell


def test_committed_notebook_has_no_outputs() -> None:
    """Every code cell is stored without outputs or execution counts."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source[:80]
        assert cell.execution_count is None, cell.source[:80]
    assert nb.metadata["kernelspec"]["name"] == KERNEL


def _kernel_executable() -> str:
    """The interpreter the ``python3`` kernelspec launches (jupyter_client's own rule)."""
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(f"no {KERNEL!r} Jupyter kernel: pip install -e \".[dev]\" installs ipykernel "
                    "and its kernelspec")
    program = spec.argv[0]
    # jupyter_client launches "python"/"python3"/"python3.X" as sys.executable.
    names = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return sys.executable if program in names else program


def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute every cell with nbclient; any cell error fails the test."""
    executable = _kernel_executable()
    assert os.path.realpath(executable) == os.path.realpath(sys.executable), (
        f"the {KERNEL!r} kernelspec runs {executable}, not this interpreter ({sys.executable}); "
        f"run `{sys.executable} -m ipykernel install --sys-prefix`")
    # The notebook's "your own scenario file" cell reads KEYSCHED_SCENARIO: exercise it with a
    # copy of the built-in demo, named like it, so the run is the default one.
    demo = importlib.resources.files("sim") / "scenarios" / "demo.toml"
    scenario_file = tmp_path / "demo.toml"
    scenario_file.write_text(demo.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("KEYSCHED_SCENARIO", str(scenario_file))

    before = NOTEBOOK.read_bytes()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One more cell: which Python did the kernel run?
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    copy = tmp_path / NOTEBOOK.name
    nbformat.write(nb, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    assert NOTEBOOK.read_bytes() == before
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "demo: Three projects" in text  # the scenario file was loaded
    # The trace section loaded the built-in trace, fitted it and replayed it.
    assert "limits the 429s revealed" in text
    assert "\nrecorded " in text
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) >= 12
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix
