"""tokens= on the three figure functions: a zoomed window keeps absolute positions (image
extent, ticks, marks, divider), padding is left out by default, the `max` bars never rank the
trivial first key, and bad windows are refused by message. Toy fixture (3 layers, 4 heads)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import attnscope  # noqa: E402
from attnscope import visualize_attention, visualize_attention_layers, visualize_attention_patterns  # noqa: E402

IDS = [1, 5, 9, 12, 3, 40, 22, 7, 18, 2]


@pytest.fixture(scope="module")
def model(toy_model):
    return toy_model


@pytest.fixture(scope="module")
def trace(model):
    return model.run(torch.tensor([IDS]))


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def test_zoomed_heatmap_keeps_absolute_positions(trace):
    full = trace.get("head_map/L1H2")[0].numpy().astype(float)
    fig = visualize_attention(trace, [(1, 2)], tokens=(3, 8), entropy_threshold=0.0, max_marks=None)
    got = np.ma.filled(fig.axes[0].get_images()[0].get_array().astype(float), np.nan)
    ratio = np.maximum(full * (full > 0).sum(1, keepdims=True), 1e-12)[3:8, 3:8]  # each row's uniform share: its whole row
    assert np.allclose(np.nan_to_num(got), np.tril(ratio))
    fig = visualize_attention(trace, [(1, 2)], tokens=(3, 8), entropy_threshold=0.0, max_marks=None, scale="linear")
    ax = fig.axes[0]
    img = ax.get_images()[0]
    want = full[3:8, 3:8]
    got = np.ma.filled(img.get_array().astype(float), np.nan)
    assert np.allclose(np.nan_to_num(got), np.triu(want, 1) * 0 + np.tril(want))  # future cells masked
    assert img.get_extent() == [2.5, 7.5, 7.5, 2.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == trace.labels[0][3:8]
    assert list(ax.get_xticks()) == [3, 4, 5, 6, 7]
    assert ax.get_xlim() == (2.5, 7.5)
    # the colour scale fits what is shown
    assert img.norm.vmax == pytest.approx(float(np.nanmax(np.tril(want))))
    # marks: only those inside the window, at their own rows
    rows = sorted({int(l.get_ydata()[0]) for l in ax.get_lines() if l.get_color() == "#ffd700"
                   and len(l.get_xdata()) == 2 and l.get_xdata()[0] == 2.5 and l.get_ydata()[0] == l.get_ydata()[1]})
    assert rows and all(3 <= r < 8 for r in rows)


def test_negative_and_open_windows(trace):
    fig = visualize_attention_layers(trace, [0, 2], tokens=(-4, None))
    for ax in fig.axes[:2]:
        assert ax.get_images()[0].get_extent() == [5.5, 9.5, 9.5, 5.5]
    fig = visualize_attention_patterns(trace, [(2, 3)], "mean", tokens=(2, 6))
    ax = fig.axes[0]
    assert [p.get_x() + p.get_width() / 2 for p in ax.patches] == pytest.approx([2, 3, 4, 5])
    assert np.allclose([p.get_height() for p in ax.patches], trace.get("received_mean")[2, 0, 3, 2:6].numpy())
    top = ax.get_xlabel().split("top: ")[1]
    assert all(f"({p})" not in top for p in (0, 1, 6, 7, 8, 9))  # ranks only among the bars shown


def test_padding_is_left_out_by_default(model):
    ids = torch.tensor([IDS[:4] + [0, 0, 0], IDS[:7]])  # right-padded batch of 2
    t = model.run(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7]))
    assert t.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    fig = visualize_attention(t, [(0, 0)], batch=0)
    ax = fig.axes[0]
    assert ax.get_images()[0].get_array().shape == (4, 4)
    assert [x.get_text() for x in ax.get_xticklabels()] == t.labels[0][:4]
    fig = visualize_attention_patterns(t, [(0, 0)], "mean", batch=0)
    assert len(fig.axes[0].patches) == 4
    fig = visualize_attention_layers(t, [0], batch=1)
    assert fig.axes[0].get_images()[0].get_array().shape == (7, 7)


def test_response_window(trace):
    class Generated(attnscope.Trace):  # the toy model has no decode method; fake the prompt boundary
        prompt_len = 6
    g = Generated(trace._core, model=trace._model)
    fig = visualize_attention(g, [(0, 0)], tokens="response")
    assert fig.axes[0].get_images()[0].get_extent() == [5.5, 9.5, 9.5, 5.5]
    dashed = [l for l in fig.axes[0].get_lines() if l.get_linestyle() not in ("-", "None")]
    assert not dashed  # the divider lies on the window's edge: not drawn inside it


def test_max_never_ranks_the_trivial_first_key(trace):
    fig = visualize_attention_patterns(trace, [(2, 1)], "max", top_k=3)
    ax = fig.axes[0]
    assert ax.patches[0].get_height() == pytest.approx(1.0)  # drawn as it is
    top = ax.get_xlabel().split("top: ")[1].split("\n")[0]
    assert "(0)" not in top and top.startswith("1 ")
    assert "position 0 is 1 by construction (its query sees only itself): not ranked" in ax.get_xlabel()
    v = trace.get("received_max")[2, 0, 1].numpy().copy()
    v[0] = -1
    assert f"({int(np.argmax(v))})" in top.split("   ")[0]  # rank 1 is the largest non-trivial bar


@pytest.mark.parametrize("tokens,message", [
    ((0, 11), r"tokens \(0, 11\) out of range: the trace has 10 positions \(0..9\)"),
    ((5, 5), r"tokens \(5, 5\) selects no positions: start must come before stop"),
    ((7, 3), "start must come before stop"),
    (("a", 3), r"tokens \('a', 3\): expected \(start, stop\) ints, 'response' or None"),
    ("prompt", "tokens 'prompt': expected"),
    ("response", r"tokens='response' needs a generated trace \(Model.generate\)"),
    (5, "tokens 5: expected"),
])
def test_bad_windows_are_refused_by_message(trace, tokens, message):
    for call in (lambda: visualize_attention(trace, [(0, 0)], tokens=tokens),
                 lambda: visualize_attention_patterns(trace, [(0, 0)], tokens=tokens),
                 lambda: visualize_attention_layers(trace, [0], tokens=tokens)):
        with pytest.raises(ValueError, match=message):
            call()


def test_every_mark_is_named_in_the_legend(trace):
    from attnscope.marks import high_entropy_positions
    hi = high_entropy_positions(trace, entropy_threshold=0.0, max_marks=None)
    assert len(hi) >= 5
    for fig in (visualize_attention(trace, [(0, 0)], entropy_threshold=0.0, max_marks=None),
                visualize_attention_layers(trace, [0, 1], entropy_threshold=0.0, max_marks=None),
                visualize_attention_patterns(trace, [(0, 0)], entropy_threshold=0.0, max_marks=None)):
        text = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
        assert all(f"{p} {trace.labels[0][p]}" in text for p in hi), text
    fig = visualize_attention(trace, [(0, 0)], entropy_threshold=0.0, max_marks=None, tokens=(0, 4))
    named = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts()).split("marked:")[1]
    assert [p for p in hi if f"{p} {trace.labels[0][p]}" in named] == [p for p in hi if p < 4]


def test_dollar_signs_in_tokens_are_text(trace, tmp_path):
    t = attnscope.Trace(trace._core, [["$x$", "Pay", "$$", "now", "$", "a", "b", "c", "d", "e"]], model=trace._model)
    for fig in (visualize_attention(t, [(0, 0)], entropy_threshold=0.0),
                visualize_attention_patterns(t, [(0, 0)], "max", entropy_threshold=0.0),
                visualize_attention_layers(t, [0], entropy_threshold=0.0)):
        fig.savefig(tmp_path / "f.png")  # mathtext would raise ParseException on "$$"
    ax = visualize_attention(t, [(0, 0)]).axes[0]
    assert [x.get_text() for x in ax.get_xticklabels()][:3] == ["$x$", "Pay", "$$"]


def test_default_uniform_scale_hatched_mask_and_even_ticks(trace):
    from matplotlib.colors import LogNorm, PowerNorm
    fig = visualize_attention(trace, [(1, 2)])
    ax, cax = fig.axes[0], fig.axes[1]
    norm = ax.get_images()[0].norm
    assert isinstance(norm, LogNorm) and (norm.vmin, norm.vmax) == (1 / 16, 16)
    assert cax.get_ylabel() == "attention ÷ uniform (1 / keys seen), log scale"
    assert [t.get_text() for t in cax.get_yticklabels()] == ["1/16", "1/8", "1/4", "1/2", "1", "2", "4", "8", "16"]
    assert np.allclose(np.diff(norm(np.array(cax.get_yticks()))), 1 / 8)  # evenly spread, 1 in the middle
    fig = visualize_attention(trace, [(1, 2)], scale="sqrt")
    ax, cax = fig.axes[0], fig.axes[1]
    norm = ax.get_images()[0].norm
    assert isinstance(norm, PowerNorm) and norm.gamma == 0.5 and norm.vmin == 0
    a = trace.get("head_map/L1H2")[0].numpy()
    real = np.nonzero(trace.attention_mask[0].numpy())[0]
    rest = np.delete(a[np.ix_(real, real)], 0, axis=1)
    assert norm.vmax == pytest.approx(float(rest.max()))        # the first key's column left out of the range
    assert cax.get_ylabel().startswith("attention (√ scale)")
    if a[:, real[0]].max() > rest.max():
        assert "top: the largest cell but the first key's (it saturates)" in cax.get_ylabel()
    ticks = np.array(cax.get_yticks())
    pos = norm(ticks)
    assert len(ticks) >= 4 and np.all(np.diff(pos) > 0.1)  # spread over the bar, not bunched at the top
    hatched = [p for p in ax.patches if p.get_hatch() == "////"]
    assert len(hatched) == 1
    path = hatched[0].get_path().vertices
    assert path[:, 0].min() == pytest.approx(0.5) and path[:, 1].min() == pytest.approx(-0.5)
    fig = visualize_attention(trace, [(1, 2)], scale="linear")
    assert fig.axes[1].get_ylabel().startswith("attention")
    fig = visualize_attention(trace, [(1, 2)], scale="linear", mask_first=True)
    assert fig.axes[1].get_ylabel() == "attention"
    fig = visualize_attention_layers(trace, [0, 1], tokens=(2, 7))
    hatched = [p for p in fig.axes[0].patches if p.get_hatch() == "////"]
    assert hatched and hatched[0].get_path().vertices[:, 0].min() == pytest.approx(2.5)


def test_huge_tokens_are_cut_for_display(trace):
    from attnscope.labels import MAX_LABEL, readable
    assert readable("a b") == "a␣b"
    long = readable("x" * 10_000_000)
    assert len(long) == MAX_LABEL and long.endswith("…")
    t = attnscope.Trace(trace._core, [[readable("y" * 5_000_000)] + trace.labels[0][1:]], model=trace._model)
    fig = visualize_attention(t, [(0, 0)], entropy_threshold=False)
    assert len(fig.axes[0].get_xticklabels()[0].get_text()) == MAX_LABEL


def test_wide_grids_wrap_into_rows(model):
    from attnscope.figure import MAX_HEIGHT, MAX_WIDTH
    t = model.run(torch.tensor([list(range(1, 61))]))  # 60 labelled tokens: ~6.5 in panels
    fig = visualize_attention(t, [(0, 0), (1, 1), (2, 2), (0, 3)])
    w, h = fig.get_size_inches()
    assert w <= MAX_WIDTH and 2 * 5 < h <= MAX_HEIGHT + 0.2  # 2 x 2, not one 26-inch row, and not too tall
    fig = visualize_attention(t, [(l % 3, l % 4) for l in range(12)])
    w, h = fig.get_size_inches()
    assert w <= MAX_WIDTH and h <= MAX_HEIGHT + 0.2 and len([a for a in fig.axes if a.get_title()]) == 12
    fig = visualize_attention(t, [(0, 0), (1, 1), (2, 2), (0, 3)])
    assert len([a for a in fig.axes if a.get_title()]) == 4
    fig = visualize_attention(t, [(0, 0), (1, 1), (2, 2), (0, 3)], ncols=4)  # asked for: kept
    assert fig.get_size_inches()[0] > MAX_WIDTH
