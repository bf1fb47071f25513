"""Figures fit for papers: TrueType fonts in PDF/SVG, every token labelled up to 80 tokens, tick
labels on the layers grid, top-k ranks that never overlap, mask_first / log scale on bars, the
trivial first row of "max" said, option errors by message, and no figure left after an error.
On the default model (real tokens, 80 real positions)."""
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import attnscope  # noqa: E402
from attnscope import visualize_attention, visualize_attention_layers, visualize_attention_patterns  # noqa: E402
from attnscope.figure import PaperFigure  # noqa: E402


@pytest.fixture(scope="module")
def trace():
    m = attnscope.load(device="cpu", progress=False)
    text = ("Attention sinks appear because softmax must put its mass somewhere; the first token, seen by "
            "every later query, becomes the place where heads park attention they do not need. " * 3)
    ids = m.encode(text)[:80]
    return m.run(ids)


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def test_pdf_and_svg_embed_truetype_or_text(trace, tmp_path):
    fig = visualize_attention_layers(trace, [0, 14])
    assert isinstance(fig, PaperFigure)
    fig.savefig(tmp_path / "f.pdf")
    fig.savefig(tmp_path / "f.svg")
    pdf = (tmp_path / "f.pdf").read_bytes()
    assert b"/Type3" not in pdf and (b"/FontFile2" in pdf)  # TrueType (Type 42) fonts embedded
    svg = (tmp_path / "f.svg").read_text()
    assert "<text" in svg and "L14 Avg" in svg  # text stays text (editable, searchable)
    assert matplotlib.rcParams["pdf.fonttype"] == 3  # the user's global settings are left alone


def test_every_token_labelled_up_to_80(trace):
    assert trace.input_ids.shape[1] == 80
    fig = visualize_attention(trace, [(14, 0)])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == trace.labels[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == trace.labels[0]
    fig.canvas.draw()  # the panel grew so that neighbouring labels do not overlap
    boxes = [t.get_window_extent() for t in ax.get_yticklabels()]
    assert all(a.y0 >= b.y1 - 0.5 or b.y0 >= a.y1 - 0.5 for a, b in zip(boxes, boxes[1:]))
    fig = visualize_attention_patterns(trace, [(14, 0)], "mean")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == trace.labels[0]


def test_layers_grid_names_tokens_on_outer_panels(trace):
    fig = visualize_attention_layers(trace, [0, 1, 2, 9, 14, 18, 23, 29])
    panels = [a for a in fig.axes if a.get_images()]
    shown = lambda labels: [t.get_text() for t in labels if t.get_text() and t.get_visible()]  # noqa: E731
    first, inner, bottom = panels[0], panels[1], panels[5]
    ys = shown(first.get_yticklabels())
    assert 10 <= len(ys) <= 30 and set(ys) <= set(trace.labels[0])
    assert not inner.yaxis.get_tick_params()["labelleft"]  # only the first column names rows
    assert first.yaxis.get_tick_params()["labelleft"] and bottom.xaxis.get_tick_params()["labelbottom"]
    assert not first.xaxis.get_tick_params()["labelbottom"]
    marked = [int(p) for p in attnscope.high_entropy_positions(trace)]
    assert set(first.get_yticks().astype(int)) >= set(marked)  # every mark has a tick
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in first.get_yticklabels() if t.get_text()]
    assert all(a.y0 >= b.y1 - 0.5 or b.y0 >= a.y1 - 0.5 for a, b in zip(boxes, boxes[1:]))


def test_topk_ranks_never_overlap_and_are_listed(trace):
    for k in (3, 8):
        fig = visualize_attention_patterns(trace, [(14, 0), (29, 8)], "specific_token", token_idx=-1, top_k=k)
        fig.canvas.draw()
        for ax in fig.axes[:2]:
            ranks = [t for t in ax.texts if re.fullmatch(r"\d+", t.get_text())]
            assert sorted(int(t.get_text()) for t in ranks) == list(range(1, k + 1))
            boxes = [t.get_window_extent() for t in ranks]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b), (k, ax.get_title())
            yt = [t.get_window_extent() for t in ax.get_yticklabels() if t.get_text()]
            assert not any(a.overlaps(b) for a in boxes for b in yt)
            row = trace.get("head_map/L" + ax.get_title().split("H")[0][1:] + "H"
                            + ax.get_title().split("H")[1].split()[0])[0, -1].numpy()
            top = np.argsort(-row, kind="stable")[:k]
            listed = [int(x) for x in re.findall(r"\((\d+)\)", ax.get_xlabel())]
            assert listed == list(top)


def test_max_first_row_is_said_and_mask_first_leaves_it_out(trace):
    fig = visualize_attention_patterns(trace, [(14, 0)], "max")
    ax = fig.axes[0]
    assert ax.patches[0].get_height() == pytest.approx(1.0)
    assert "position 0 is 1 by construction" in ax.get_xlabel()
    fig = visualize_attention_patterns(trace, [(14, 0)], "max", mask_first=True)
    ax = fig.axes[0]
    assert ax.patches[0].get_height() == 0 and ax.get_ylim()[1] < 1.0
    assert "by construction" not in ax.get_xlabel()
    want = trace.get("received_max")[14, 0, 0, 1:].numpy()
    assert np.allclose([p.get_height() for p in ax.patches[1:80]], want)


def test_log_scale_on_bars(trace):
    fig = visualize_attention_patterns(trace, [(14, 0)], "mean", yscale="log")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] > 0


@pytest.mark.parametrize("fn,kw,msg", [
    ("heads", {"vmin": 0.5, "vmax": 0.1}, r"vmin 0.5 must be below vmax 0.1"),
    ("heads", {"scale": "log", "vmin": 0}, r"vmin 0 must be > 0 with scale='log'"),
    ("heads", {"scale": "power", "gamma": 0}, r"gamma 0 must be a number > 0"),
    ("heads", {"vmax": float("nan")}, r"vmax nan must be a finite number"),
    ("heads", {"max_labels": -1}, r"max_labels -1 must be an int >= 0"),
    ("heads", {"ncols": 0}, r"ncols 0 must be an int >= 1"),
    ("heads", {"panel": -2}, r"panel -2 must be a size in inches > 0"),
    ("heads", {"batch": -1}, r"batch -1 out of range"),
    ("bars", {"top_k": -1}, r"top_k -1 must be an int >= 0"),
    ("bars", {"yscale": "sqrt"}, r"yscale 'sqrt': expected 'linear' or 'log'"),
    ("bars", {"entropy_threshold": float("nan")}, r"entropy_threshold nan must be a finite number"),
    ("bars", {"entropy_quantile": 0}, r"entropy_quantile 0 must be in \(0, 1\)"),
    ("bars", {"max_marks": 0}, r"max_marks 0 must be an int >= 1"),
    ("layers", {"ncols": 0}, r"ncols 0 must be an int >= 1"),
    ("layers", {"vmin": 2, "vmax": 1}, r"vmin 2 must be below vmax 1"),
])
def test_bad_options_name_the_value(trace, fn, kw, msg):
    call = {"heads": lambda: visualize_attention(trace, [(0, 0)], **kw),
            "bars": lambda: visualize_attention_patterns(trace, [(0, 0)], "mean", **kw),
            "layers": lambda: visualize_attention_layers(trace, [0], **kw)}[fn]
    with pytest.raises(ValueError, match=msg):
        call()
    assert plt.get_fignums() == []  # nothing half-drawn is left for Jupyter to show


def test_failure_while_drawing_closes_the_figure(trace, tmp_path):
    trace.save(tmp_path / "t.safetensors")
    back = attnscope.Trace.load(str(tmp_path / "t.safetensors"))  # no maps, no model
    with pytest.raises(ValueError, match=r"no map of layer 3 head 1"):
        visualize_attention_layers(back, [3], head_idx=1)
    with pytest.raises(ValueError, match=r"the trace has no 'head_map/L2H2'"):
        visualize_attention(back, [(2, 2)])
    assert plt.get_fignums() == []
