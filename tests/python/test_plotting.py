"""The three figure functions: panels, titles, tick labels, colour limits, crosshairs, bar
heights, and every bad input by its message. Runs on the toy fixture (3 layers, 4 heads)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import BUILD  # noqa: E402

import attnscope  # noqa: E402
from attnscope import (high_entropy_positions, visualize_attention, visualize_attention_layers,  # noqa: E402
                       visualize_attention_patterns)

YELLOW = "#ffd700"


@pytest.fixture(scope="module")
def trace():
    path = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")
    if not os.path.exists(path):
        pytest.skip("fixtures not built")
    m = attnscope.load(path, device="cpu")
    ids = torch.tensor([[1, 5, 9, 12, 3, 40, 22, 7, 18, 2]])
    return m.run(ids, capture={"heads": [(0, 0), (2, 3)], "layer_maps": [0, 1, 2], "received": True,
                               "attn_entropy": True, "sink_tokens": 1, "from_tokens": [-1]})


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def crosshair_rows(ax):
    """Rows of the horizontal crosshair lines (they start at the left edge, x = -0.5)."""
    return sorted({int(l.get_ydata()[0]) for l in ax.get_lines()
                   if l.get_color() == YELLOW and len(l.get_xdata()) == 2 and l.get_xdata()[0] == -0.5
                   and l.get_ydata()[0] == l.get_ydata()[1]})


@pytest.fixture()
def released(trace):
    """A trace that cannot compute what it lacks (as one read from a file)."""
    t = attnscope.Trace(trace._core)
    assert not t.can_compute
    return t



def uniform(m):
    """A map as scale="uniform" (the default) draws it: each row over its uniform share,
    1 / (keys with weight > 0 in the row)."""
    m = np.asarray(m, dtype=float)
    return np.maximum(m * (m > 0).sum(1, keepdims=True), 1e-12)


def test_visualize_attention(trace):
    fig = visualize_attention(trace, [(0, 0), (2, 3)], entropy_threshold=0.0, max_marks=None)
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["Layer 0 Head 0", "Layer 2 Head 3"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == trace.labels[0]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == trace.labels[0]
    img = axes[1].get_images()[0]
    assert np.allclose(img.get_array(), uniform(trace.get("head_map/L2H3")[0]))
    hi = high_entropy_positions(trace, entropy_threshold=0.0, max_marks=None)
    assert crosshair_rows(axes[0]) == sorted(hi.tolist()) and len(hi) == 10
    # causal map: row i's line stops at the diagonal, so nothing is drawn over the empty half
    assert all(l.get_xdata()[1] == l.get_ydata()[0] for l in axes[0].get_lines()
               if l.get_color() == YELLOW and len(l.get_xdata()) == 2 and l.get_xdata()[0] == -0.5)
    assert any("high predictive entropy" in t.get_text() for lg in fig.legends for t in lg.get_texts())


def test_crosshairs_follow_threshold_and_quantile(trace):
    ent = trace.entropy[0].numpy()
    fig = visualize_attention(trace, [(0, 0)])  # default: the top 20 % of the sequence
    want = np.nonzero(ent > np.quantile(ent, 0.8))[0].tolist()
    assert crosshair_rows(fig.axes[0]) == want and len(want) == 2
    marked = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_fontweight() == "bold"]
    assert marked == [trace.labels[0][i] for i in want]
    fig = visualize_attention(trace, [(0, 0)], entropy_threshold=False)
    assert crosshair_rows(fig.axes[0]) == [] and not fig.legends
    fig = visualize_attention(trace, [(0, 0)], entropy_threshold=float(np.median(ent)), max_marks=3)
    top3 = sorted(np.argsort(-ent)[:3].tolist())
    assert crosshair_rows(fig.axes[0]) == top3  # the cap keeps the highest


def test_generated_trace_marks_only_the_response_and_shows_the_divider(trace):
    class Generated(attnscope.Trace):  # the toy model has no decode method; fake the prompt boundary
        prompt_len = 6
    g = Generated(trace._core)
    hi = high_entropy_positions(g, entropy_quantile=0.01)
    assert hi.min() >= 5 and hi.max() <= 8   # distributions that drew tokens 6..9
    fig = visualize_attention(g, [(0, 0)])
    dashed = [l for l in fig.axes[0].get_lines() if l.get_linestyle() not in ("-", "None")]
    assert sorted(round(float(l.get_xdata()[0]), 1) for l in dashed if l.get_xdata()[0] == l.get_xdata()[1]) == [5.5]
    with pytest.raises(ValueError, match="region='response' needs a generated trace"):
        high_entropy_positions(trace, region="response")


def test_missing_maps_are_computed_in_one_run(trace, monkeypatch):
    t = attnscope.Trace(trace._core, model=trace._model)
    runs = []
    real = t._model.run
    monkeypatch.setattr(t._model, "run", lambda *a, **k: runs.append(k["capture"]) or real(*a, **k))
    fig = visualize_attention(t, [(1, 1), (1, 2), (0, 3)])
    assert len(runs) == 1 and sorted(map(tuple, runs[0]["heads"])) == [(0, 3), (1, 1), (1, 2)]
    assert np.allclose(fig.axes[0].get_images()[0].get_array(), uniform(t.get("head_map/L1H1")[0]))
    visualize_attention(t, [(1, 1)])
    assert len(runs) == 1  # kept
    t.drop("head_map/L1H1")
    assert "head_map/L1H1" not in t.captures


def test_visualize_attention_patterns(trace):
    fig = visualize_attention_patterns(trace, [(0, 0), (2, 3)], "mean")
    assert [a.get_title() for a in fig.axes] == ["L0H0 Mean", "L2H3 Mean"]
    heights = [b.get_height() for b in fig.axes[1].patches]
    assert np.allclose(heights, trace.get("received_mean")[2, 0, 3].numpy())
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == trace.labels[0]
    fig = visualize_attention_patterns(trace, [(1, 2)], "max")
    assert np.allclose([b.get_height() for b in fig.axes[0].patches], trace.get("received_max")[1, 0, 2].numpy())
    fig = visualize_attention_patterns(trace, [(2, 3)], "specific_token", token_idx=-3)
    assert fig.axes[0].get_title() == f"L2H3 From 7 {trace.labels[0][7]}"  # the token, not only its index
    assert np.allclose([b.get_height() for b in fig.axes[0].patches], trace.get("head_map/L2H3")[0, 7].numpy())
    fig = visualize_attention_patterns(trace, [(1, 1)], "specific_token", token_idx=9)  # from capture
    assert np.allclose([b.get_height() for b in fig.axes[0].patches], trace.get("from")[1, 0, 1, 0].numpy())
    top = np.argsort(-np.array(heights))[:3]
    red = [i for i, b in enumerate(fig.axes[0].patches) if b.get_edgecolor()[:3] == matplotlib.colors.to_rgb("#c44e52")]
    assert len(red) == 3 and len(top) == 3


def test_visualize_attention_layers_shares_one_colorbar(trace):
    fig = visualize_attention_layers(trace, [0, 1, 2])
    panels = [a for a in fig.axes if a.get_images()]
    assert [a.get_title() for a in panels] == ["L0 Avg", "L1 Avg", "L2 Avg"]
    limits = {(a.get_images()[0].norm.vmin, a.get_images()[0].norm.vmax) for a in panels}
    assert len(limits) == 1
    assert len(fig.axes) == 4  # three maps + ONE colorbar
    assert panels[0].get_images()[0].get_cmap().name == "RdBu_r"
    shown = panels[1].get_images()[0].get_array()
    want = trace.get("layer_map/L1")[0].numpy()
    upper = np.triu(np.ones_like(want, dtype=bool), 1)
    assert np.ma.getmaskarray(shown)[upper].all()            # masked (future) cells drawn blank
    assert np.allclose(shown.filled(0)[~upper], uniform(want)[~upper])  # the rest is the map, over uniform
    assert (panels[1].get_images()[0].norm.vmin, panels[1].get_images()[0].norm.vmax) == (1 / 16, 16)
    fig = visualize_attention_layers(trace, [0, 1], scale="linear")
    assert np.allclose(fig.axes[1].get_images()[0].get_array().filled(0)[~upper], want[~upper])
    assert fig.axes[1].get_images()[0].norm.vmin == 0.0
    fig = visualize_attention_layers(trace, [2], head_idx=3)
    assert fig.axes[0].get_title() == "L2 H3"
    fig = visualize_attention_layers(trace, [0, 1], mask_first=True)
    assert np.ma.getmaskarray(fig.axes[0].get_images()[0].get_array())[:, 0].all()  # NaN -> masked


def test_save_formats(trace, tmp_path):
    fig = visualize_attention_layers(trace, [0, 1, 2])
    for ext in ("png", "svg", "pdf"):
        fig.savefig(tmp_path / f"f.{ext}")
        assert (tmp_path / f"f.{ext}").stat().st_size > 1000


@pytest.mark.parametrize("call,message", [
    (lambda t: visualize_attention(t, []), "layers_heads is empty"),
    (lambda t: visualize_attention(t, [(3, 0)]), r"layer 3 out of range: the trace has 3 layers \(0..2\)"),
    (lambda t: visualize_attention(t, [(0, 4)]), r"head 4 out of range: the trace has 4 heads \(0..3\)"),
    (lambda t: visualize_attention(t, [(1, 1)]), r"the trace has no 'head_map/L1H1' \(it was read from a file or "
                                                 r"released its model, so it cannot compute it\): run with capture=\{'heads': \[\(1, 1\)\]\}"),
    (lambda t: visualize_attention_patterns(t, [(0, 0)], "median"), "pattern_type 'median': expected one of"),
    (lambda t: visualize_attention_patterns(t, [(0, 0)], "specific_token", token_idx=10), r"token_idx 10 out of range: expected an int in -10..9"),
    (lambda t: visualize_attention_patterns(t, [(1, 1)], "specific_token", token_idx=2), "no attention from token 2 at layer 1 head 1"),
    (lambda t: visualize_attention_layers(t, []), "layer_indices is empty"),
    (lambda t: visualize_attention_layers(t, [0], head_idx=1), "no map of layer 0 head 1"),
    (lambda t: visualize_attention(t, [(0, 0)], scale="cubic"), "scale 'cubic'"),
    (lambda t: visualize_attention(t, [(0, 0)], entropy_quantile=1.5), r"entropy_quantile 1.5 must be in \(0, 1\)"),
    (lambda t: visualize_attention(t, [(0, 0)], entropy_quantile=0), r"entropy_quantile 0 must be in \(0, 1\)"),
    (lambda t: visualize_attention(t, [(0, 0)], entropy_threshold=float("nan")), "entropy_threshold nan must be a finite"),
    (lambda t: visualize_attention(t, [(0, 0)], max_marks=0), "max_marks 0 must be an int >= 1"),
    (lambda t: visualize_attention(t, [(0, 0)], batch=1), r"batch 1 out of range: the trace has 1 sequence\(s\)"),
])
def test_errors(released, call, message):
    with pytest.raises(ValueError, match=message):
        call(released)


def test_ax_returns_the_axes(trace):
    fig, ax = plt.subplots()
    assert visualize_attention(trace, [(0, 0)], ax=ax) is ax
    assert ax.get_title() == "Layer 0 Head 0"
    fig, ax = plt.subplots()
    assert visualize_attention_patterns(trace, [(2, 3)], "mean", ax=ax) is ax
    assert np.allclose([b.get_height() for b in ax.patches], trace.get("received_mean")[2, 0, 3].numpy())
    with pytest.raises(ValueError, match="ax= draws one panel, but 2 were asked for"):
        visualize_attention(trace, [(0, 0), (2, 3)], ax=ax)
