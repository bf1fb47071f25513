"""Figures of dataset traces: the layers grid and patterns over averages, and
visualize_head_summary (titles, values drawn, colour limits, error messages)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import BUILD  # noqa: E402

import attnscope  # noqa: E402


@pytest.fixture(scope="module")
def model():
    path = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")  # 3 layers, 4 heads
    if not os.path.exists(path):
        pytest.skip("fixtures not built")
    return attnscope.load(path, device="cpu")


@pytest.fixture(scope="module")
def data(model):
    ids = torch.randint(1, 64, (9, 8), generator=torch.Generator().manual_seed(1))
    return attnscope.aggregate_dataset(model, ids, length=8, num=9, batch_size=4, progress=False)


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def test_layers_grid_of_averages(data):
    fig = attnscope.visualize_attention_layers(data, [0, 2])
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["L0 Avg", "L2 Avg"]
    assert fig._suptitle.get_text() == "mean over 9 sequences of 8 tokens"
    ims = [a.get_images()[0] for a in axes]
    m = data.get("layer_map/L2")[0].numpy().astype(float)
    assert np.allclose(ims[1].get_array(), np.maximum(m * (m > 0).sum(1, keepdims=True), 1e-12))  # over uniform
    assert ims[0].get_clim() == ims[1].get_clim() == (1 / 16, 16)
    fig = attnscope.visualize_attention_layers(data, [0, 2], scale="linear")
    ims = [a.get_images()[0] for a in fig.axes if a.get_title()]
    assert np.allclose(ims[1].get_array(), m)
    lo = min(data.get(f"layer_map/L{l}").min().item() for l in (0, 2))
    assert ims[0].get_clim() == ims[1].get_clim() and ims[0].get_clim()[0] == pytest.approx(lo)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == [str(i) for i in range(8)]
    with pytest.raises(ValueError, match=r"dataset trace has no map of layer 1 head 2: "
                                         r"aggregate_dataset\(..., capture=\{'head_maps': True\}\)"):
        attnscope.visualize_attention_layers(data, [1], head_idx=2)


def test_patterns_of_averages(data):
    fig = attnscope.visualize_attention_patterns(data, [(1, 3)], "mean", top_k=0)
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert np.allclose(bars, data.alpha[1, 3].numpy(), atol=1e-7)
    fig = attnscope.visualize_attention_patterns(data, [(1, 3)], "max", top_k=0)
    assert np.allclose([p.get_height() for p in fig.axes[0].patches],
                       data.get("received_max")[1, 0, 3].numpy())


def test_head_summary_sink_and_entropy(data):
    ax = attnscope.visualize_head_summary(data, "sink")
    im = ax.get_images()[0]
    assert np.allclose(im.get_array(), data.alpha[..., 0].numpy())
    assert im.get_clim() == (0.0, 1.0)
    assert ax.get_title().startswith(f"Sink₁ = {data.sink1:.1%} of heads (ε = 0.3)")
    assert "9 sequences of 8 tokens" in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert len(ax.texts) == 3 * 4  # values printed in the 12 cells
    dots = ax.collections[0].get_offsets()
    assert len(dots) == int((data.alpha[..., 0] > 0.3).sum())
    ax = attnscope.visualize_head_summary(data, "entropy", annotate=False)
    assert np.allclose(ax.get_images()[0].get_array(), data.head_entropy.numpy())
    assert ax.get_title().startswith("Attention entropy per head") and not ax.texts
    ax = attnscope.visualize_head_summary(data, "sink_rate")
    assert np.allclose(ax.get_images()[0].get_array(), data.sink_rate.numpy())


def test_head_summary_of_one_trace_and_into_given_axes(model):
    t = model.run([[1, 5, 9, 12, 3, 40]], capture="all")
    _, ax = plt.subplots()
    out = attnscope.visualize_head_summary(t, "sink", ax=ax)
    assert out is ax
    assert np.allclose(ax.get_images()[0].get_array(), t.get("received_mean")[:, 0, :, 0].numpy())
    assert "1 sequences of 6 tokens" in ax.get_title()


def test_head_summary_errors(model, data):
    with pytest.raises(ValueError, match=r"metric 'heads': expected one of \('sink', 'sink_rate', 'entropy'\)"):
        attnscope.visualize_head_summary(data, "heads")
    d = attnscope.aggregate_dataset(model, [[1, 2, 3]], length=3, num=1, capture={"received": True},
                                    progress=False)
    with pytest.raises(ValueError, match=r"metric 'entropy' needs the 'attn_entropy' part"):
        attnscope.visualize_head_summary(d, "entropy")
    t = model.run([[1, 2, 3]], capture={"heads": [(0, 0)]})
    with pytest.raises(ValueError, match="the trace holds neither every layer's map nor aggregates"):
        attnscope.visualize_head_summary(t)
