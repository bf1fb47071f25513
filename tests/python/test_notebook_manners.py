"""In a real Jupyter kernel with the inline backend (what researchers use): a cell that ends in a
figure call shows it once, an assigned figure is shown once, a failing call leaves no empty
figure behind, and attnscope.show renders HTML."""
import os

import nbformat
import pytest
from conftest import BUILD, ROOT

nbclient = pytest.importorskip("nbclient")
FIX = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")

CELLS = [
    f"import attnscope\nm = attnscope.load({FIX!r}, device='cpu')\nt = m.run('t2 t3 t4 t5 t6')",
    "attnscope.visualize_attention_layers(t, [0, 1])",                        # last expression
    "fig = attnscope.visualize_attention(t, [(0, 0), (1, 1)])",                # assigned
    "attnscope.visualize_attention_patterns(t, [(0, 0)], 'mean')",             # returns a Figure
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nattnscope.visualize_attention_patterns(t, [(0, 0)], 'max', ax=ax)",
    "attnscope.visualize_attention(t, [(99, 0)])",                             # fails: no figure
    "attnscope.show(t, layers=[0])",
    "import matplotlib.pyplot as plt\nlen(plt.get_fignums())",
    "a = m.generate('t2 t3', max_new_tokens=40, progress=True, stop=[])",        # progress: one line
    "from attnscope.streaming import Progress\np = Progress(10, desc='work', unit='tok')\n"
    "for _ in range(4):\n    p()\np.close()",                                    # stopped early: ends at its end
]


def _images(cell):
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def test_figures_display_once_and_errors_leave_nothing(tmp_path, monkeypatch):
    if not os.path.exists(FIX):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    monkeypatch.setenv("PYTHONPATH", os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's default: matplotlib-inline
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = nb.cells
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(cells) for o in c.outputs
              if o.output_type == "error"]
    assert [e[0] for e in errors] == [5], errors
    assert "layer 99 out of range" in errors[0][2]
    assert [_images(c) for c in cells[1:6]] == [1, 1, 1, 1, 0]
    html = [o for o in cells[6].outputs if "text/html" in o.get("data", {})]
    assert len(html) == 1 and "attnscope-view" in html[0]["data"]["text/html"]
    assert cells[7].outputs[0]["data"]["text/plain"] == "0"  # every figure was shown and closed; none left open
    for c in cells[8:10]:  # progress is one output updated in place: no stream of stderr chunks
        assert [o.output_type for o in c.outputs] == ["display_data"], c.outputs
    assert "40/40" in cells[8].outputs[0]["data"]["text/plain"]
    done = cells[9].outputs[0]["data"]["text/plain"]
    assert "work: 100%" in done and "4/4" in done and "stopped before 10" in done
