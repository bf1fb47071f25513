"""visualize_attention_diff: the image is b − a of the maps (checked against the maps the
traces hold), aligned on the shared positions, centred at 0, the first different token marked
in green and labelled "a→b"; what cannot be compared is refused by message."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attnscope import visualize_attention_diff  # noqa: E402

A = [1, 5, 9, 12, 3, 40, 22, 7, 18, 2]
B = [1, 5, 9, 12, 30, 40, 22, 7]  # differs at 4, shorter


@pytest.fixture(scope="module")
def model(toy_model):
    return toy_model


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def test_difference_of_maps_on_the_shared_positions(model):
    a, b = model.run(torch.tensor([A])), model.run(torch.tensor([B]))
    fig = visualize_attention_diff(a, b, [0, 2])
    m = len(B)
    for ax, l in zip(fig.axes[:2], (0, 2)):
        img = np.ma.filled(ax.get_images()[0].get_array().astype(float), np.nan)
        want = (b.get(f"layer_map/L{l}")[0] - a.get(f"layer_map/L{l}")[0, :m, :m]).numpy()
        assert img.shape == (m, m)
        assert np.allclose(np.nan_to_num(img), np.tril(want), atol=1e-7)
        assert np.isnan(img[0, 1])  # the masked half stays blank
        assert np.allclose(np.nan_to_num(img[:4, :4]), 0, atol=1e-7)  # causal: rows before the change agree
        green = [l2 for l2 in ax.get_lines() if l2.get_color() == "#2ca02c"]
        assert [list(l2.get_xdata()) for l2 in green][0] == [3.5, 3.5]  # the vertical line before position 4
    norm = fig.axes[0].get_images()[0].norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert f"{a.labels[0][4]}→{b.labels[0][4]}" in labels
    assert "first different token at 4" in fig._suptitle.get_text()
    fig = visualize_attention_diff(a, b, [1], head_idx=2, tokens=(2, 6), vmax=0.5)
    img = fig.axes[0].get_images()[0]
    assert img.get_extent() == [1.5, 5.5, 5.5, 1.5] and img.norm.vmax == 0.5


def test_identical_traces_differ_by_nothing(model):
    a = model.run(torch.tensor([A]))
    fig = visualize_attention_diff(a, a, [1])
    img = np.ma.filled(fig.axes[0].get_images()[0].get_array().astype(float), np.nan)
    assert np.nanmax(np.abs(img)) == 0 and "same tokens" in fig._suptitle.get_text()


@pytest.mark.parametrize("call,message", [
    (lambda a, b, p: visualize_attention_diff(a, b, []), "layer_indices is empty"),
    (lambda a, b, p: visualize_attention_diff(a, b, [7]), "layer 7 out of range"),
    (lambda a, b, p: visualize_attention_diff(a, b, [0], head_idx=9), "head 9 out of range"),
    (lambda a, b, p: visualize_attention_diff(a, "x", [0]), "b: expected an attnscope.Trace, got str"),
    (lambda a, b, p: visualize_attention_diff(a, b, [0], tokens=(0, 99)), r"tokens \(0, 99\) out of range: the traces share 8 positions \(0..7\)"),
    (lambda a, b, p: visualize_attention_diff(a, b, [0], vmax=-1), "vmax -1 must be > 0"),
])
def test_refusals(model, call, message):
    a, b = model.run(torch.tensor([A])), model.run(torch.tensor([B]))
    with pytest.raises(ValueError, match=message):
        call(a, b, None)
