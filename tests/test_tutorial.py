"""The tutorial notebook is stored without outputs and runs top to bottom on the Mess3 checkpoint.

Its last cell asserts the paper's findings as the notebook measured them (probe R^2, controls,
steering and patching against theory), so an error or a regression fails the run here.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "demos" / "tutorial.ipynb"


def cells(kind: str) -> list[dict]:
    """The notebook's cells of ``kind``, read as JSON (no Jupyter package needed)."""
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    return [cell for cell in nb["cells"] if cell["cell_type"] == kind]


def test_tutorial_is_stored_without_outputs():
    code = cells("code")
    assert code, "the tutorial has no code cells"
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:2]


def test_tutorial_is_a_valid_notebook():
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(NOTEBOOK, as_version=4))


def test_tutorial_covers_the_papers_path():
    """The sections the issue asks for, as the notebook's headings in this order, and both
    TransformerLens constructors."""
    headings = [
        line[3:]
        for cell in cells("markdown")
        for line in "".join(cell["source"]).splitlines()
        if line.startswith("## ")
    ]
    steps = ["process", "Beliefs", "checkpoint", "Probes, with controls", "fractal",
             "Steering", "Patching", "Bring your own model", "Checks"]  # fmt: skip
    found = [next((i for i, h in enumerate(headings) if step in h), -1) for step in steps]
    assert -1 not in found and found == sorted(found), (headings, found)
    text = NOTEBOOK.read_text()
    assert "HookedTransformer(HookedTransformerConfig" in text
    assert "TransformerBridge.boot_native(TransformerBridgeConfig" in text


@pytest.mark.slow
def test_tutorial_runs(shared_checkpoint, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    folder = shared_checkpoint("mess3_paper").parent
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The "python3" kernel is this interpreter (the running venv), whatever else is on PATH:
    # JUPYTER_PATH comes first in the kernel spec search.
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    env = {"BELIEF_LENS_CHECKPOINTS": str(folder), "JUPYTER_PATH": str(tmp_path)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()  # raises CellExecutionError on any error, the checks cell's included
        client = None  # the kernel has shut down and been reaped: its CPU time is counted
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"tutorial kernel CPU time: {cpu:.0f} s")
    assert cpu < 180, f"the tutorial took {cpu:.0f} s of CPU; the budget is 3 minutes"
    outputs = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "all checks passed" in outputs
    r2 = float(re.search(r"held-out R\^2 ([0-9.]+)", outputs).group(1))
    assert r2 > 0.9
    figures = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "application/vnd.plotly.v1+json" in out.get("data", {})
    ]
    assert len(figures) == 2, "the belief simplex and the fractal comparison are shown"
