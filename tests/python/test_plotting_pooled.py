"""Long traces drawn as tile means computed by the core (pooled maps): the drawn tiles equal
tile means of the full maps computed here, the uniform scale's ratio uses the pooled uniform
reference, axes keep token coordinates with tile-range labels, and the options' errors."""
import matplotlib
import numpy as np
import pytest
import torch
from reference_stats import pooled_reference

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402

import attnscope  # noqa: E402

T = 600


@pytest.fixture(scope="module")
def long_trace(toy_model):
    g = torch.Generator().manual_seed(1)
    return toy_model.run(torch.randint(3, 60, (1, T), generator=g))


def _mesh(ax):
    return next(c for c in ax.collections if isinstance(c, QuadMesh))


def test_layers_grid_draws_tile_means(long_trace):
    t = long_trace
    fig = attnscope.visualize_attention_layers(t, [0, 2])
    mesh = _mesh(fig.axes[1])
    pm, pu, bounds = t.pooled_maps(256)
    assert pm.shape == (3, 1, 4, 256, 256) and bounds[:4] == [0, 2, 4, 7] and bounds[-1] == T
    A = t.get("layer_map/L2")[None].double()                              # [1, 1, T, T]
    vis = (A > 0)                                                                # a causal toy: no underflow
    want_pm, want_pu = pooled_reference(A, vis, torch.ones(1, T, dtype=torch.bool), 256)
    ratio = (want_pm[0, 0] / want_pu[0]).numpy()
    ratio[~(want_pu[0].numpy() > 0)] = np.nan
    got = np.ma.filled(mesh.get_array().astype(float), np.nan).reshape(256, 256)
    assert np.array_equal(np.isnan(got), np.isnan(ratio))                       # masked tiles: above the diagonal
    g, w = got[~np.isnan(got)], np.maximum(ratio[~np.isnan(ratio)], 1e-12)

    assert np.allclose(g, w, rtol=1e-5, atol=1e-7)
    # the head mean of the pooled head maps is the pooled head-mean map
    assert torch.allclose(pm[2, 0].mean(0).double(), want_pm[0, 0], atol=1e-6)
    assert fig.axes[1].get_xlim() == (-0.5, T - 0.5)
    # tick labels: the tile range of each ticked position, a marked position its token
    marked = set(attnscope.high_entropy_positions(t).tolist())
    ticks = [(int(p), x.get_text()) for p, x in zip(fig.axes[0].get_yticks(), fig.axes[0].get_yticklabels()) if x.get_text()]
    assert sum(p not in marked for p, _ in ticks) >= 4
    for p, text in ticks:
        k = np.searchsorted(bounds, p, side="right") - 1
        assert text == (t.labels[0][p] if p in marked else f"{bounds[k]}–{bounds[k + 1] - 1}"), (p, text)
    assert fig.axes[-1].get_ylabel().endswith("means over tiles of 2–3 tokens")
    assert [p for p in fig.axes[0].patches if p.get_hatch() == "////"]        # the masked half hatched
    plt.close(fig)


def test_heads_raw_scale_and_options(long_trace):
    t = long_trace
    fig = attnscope.visualize_attention(t, [(1, 3)], scale="linear", pool=50)
    got = np.ma.filled(_mesh(fig.axes[0]).get_array().astype(float), np.nan).reshape(50, 50)
    pm, _, _ = t.pooled_maps(50)
    want = pm[1, 0, 3].double().numpy()
    ok = ~np.isnan(got)
    assert np.allclose(got[ok], want[ok]) and np.all(want[~ok] == 0)          # masked tiles: nothing seen
    plt.close(fig)
    fig = attnscope.visualize_attention(t, [(1, 3)], pool=False, max_labels=20)
    assert fig.axes[0].get_images() and not [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    plt.close(fig)
    short = attnscope.visualize_attention(t, [(1, 3)], tokens=(100, 300), max_labels=20)   # 200 tokens: full maps
    assert short.axes[0].get_images()
    plt.close(short)
    with pytest.raises(ValueError, match=r"pool=0: expected None \(auto\), False or a tile count in 1..65536"):
        attnscope.visualize_attention_layers(t, [0], pool=0)
    t2 = attnscope.Trace(t._core, t.labels)                                     # no model
    t2.drop("pooled_map")
    with pytest.raises(ValueError, match=r"no pooled maps of 256 tiles and no model to compute them: "
                                         r"capture with \{'pooled_maps': 256\}"):
        attnscope.visualize_attention_layers(t2, [0], pool=256)
    with pytest.raises(ValueError, match=r"the trace has no 'layer_map/L0' \(it was read from a file"):
        attnscope.visualize_attention_layers(t2, [0])         # auto: full maps, which it lacks


def test_auto_pooling_falls_back_to_full_maps(long_trace, tmp_path):
    """A trace read from a file (no model) draws the full maps it holds; a file that also holds
    pooled maps draws those; the same for an explicit pool= that the file lacks: refused by name."""
    t = long_trace
    t.ensure(["layer_map/L0"])
    path = tmp_path / "t.safetensors"
    t.drop("pooled_map")
    t.drop("pooled_uniform")
    t.save(path)
    f = attnscope.Trace.load(str(path))
    fig = attnscope.visualize_attention_layers(f, [0])
    assert fig.axes[0].get_images() and not [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    plt.close(fig)
    t.pooled_maps(256)
    t.save(path)
    fig = attnscope.visualize_attention_layers(attnscope.Trace.load(str(path)), [0])
    assert [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    plt.close(fig)
