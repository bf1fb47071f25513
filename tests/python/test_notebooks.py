"""The notebooks are committed with their outputs (figures readable on a repository browser),
their code is what tools/make_notebooks.py writes, and each runs headless without error
(nbclient) with this tree's package."""
import copy
import glob
import importlib.util
import os

import nbformat
import pytest
from conftest import ROOT

nbclient = pytest.importorskip("nbclient")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
_spec = importlib.util.spec_from_file_location("make_notebooks", os.path.join(ROOT, "tools", "make_notebooks.py"))
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)


def test_notebooks_exist():
    assert [os.path.basename(n) for n in NOTEBOOKS] == sorted(make_notebooks.NOTEBOOKS) == [
        "01_quickstart.ipynb", "02_workflow.ipynb", "03_high_entropy_tokens.ipynb",
        "04_attention_sinks.ipynb", "05_reasoning.ipynb", "06_turning_points.ipynb",
        "07_does_attention_matter.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_with_outputs_from_the_current_sources(path):
    nb = nbformat.read(path, as_version=4)
    want = make_notebooks.build(os.path.basename(path))
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in want.cells], \
        "notebook differs from tools/make_notebooks.py: run it again"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "committed without outputs: run tools/make_notebooks.py"
    errors = [o.get("ename") for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    figure_cells = [c for c in code if "visualize_" in c.source and "fig" in c.source]
    assert figure_cells and all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in figure_cells), \
        "a figure cell has no figure in its outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = copy.deepcopy(nbformat.read(path, as_version=4))
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
