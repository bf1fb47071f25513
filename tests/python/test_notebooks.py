"""Every notebook runs headless without error (nbclient), with this tree's package."""
import glob
import os

import nbformat
import pytest
from conftest import ROOT

nbclient = pytest.importorskip("nbclient")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_notebooks_exist():
    assert [os.path.basename(n) for n in NOTEBOOKS] == [
        "01_quickstart.ipynb", "02_workflow.ipynb", "03_high_entropy_tokens.ipynb",
        "04_attention_sinks.ipynb", "05_reasoning.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "committed with outputs"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
