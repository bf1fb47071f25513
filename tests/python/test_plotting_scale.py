"""The default colour range shows a real model's structure at any length: on the "uniform"
scale at most 5 % of the cells fall below its bottom (the first key's column left out), and the
colorbar says how the range was chosen; the raw scales leave the first key's column out of their
top. Measured on the default model's own maps of this repository's README (230 tokens), where
a fixed 1/16..16 range put 38–58 % of the cells of layers 3–27 in the darkest tenth."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import attnscope  # noqa: E402
from attnscope.plotting.style import BOTTOM_QUANTILE, _default_vmin  # noqa: E402

README = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "README.md")


@pytest.fixture(scope="module")
def trace():
    m = attnscope.load(device="cpu", progress=False)
    return m.run(m.encode(open(README, encoding="utf-8").read())[:230],
                 capture={"layer_maps": [3, 14, 20, 27], "heads": [(14, 4)]})


def dark_share(im):
    """Share of the drawn (unmasked) cells in the darkest tenth of the colour scale."""
    a = np.ma.filled(im.get_array().astype(float), np.nan)
    cells = a[np.isfinite(a)]
    return float((im.norm(cells) < 0.1).mean())


def test_uniform_scale_shows_the_structure_of_a_real_model(trace):
    fig = attnscope.visualize_attention_layers(trace, [3, 14, 20, 27])
    ims = [a.get_images()[0] for a in fig.axes if a.get_images()]
    lo = ims[0].norm.vmin
    assert lo < 1 / 16 and np.log2(lo) == int(np.log2(lo))          # a power of 2, below the fixed 1/16
    assert float(ims[0].norm(1.0)) == pytest.approx(0.5)            # white (RdBu_r) is still an even share
    for im in ims:
        a = np.ma.filled(im.get_array().astype(float), np.nan)[:, 1:]   # the first key's column left out
        below = float((a[np.isfinite(a)] < lo).mean())
        assert below <= BOTTOM_QUANTILE and dark_share(im) <= 0.15, (below, dark_share(im))
    cb = fig.axes[-1]
    assert "bottom: 5% of the cells lie below (first key left out)" in cb.get_ylabel()
    fig = attnscope.visualize_attention(trace, [(14, 4)])
    assert dark_share(fig.axes[0].get_images()[0]) <= 0.15
    plt.close("all")


def test_short_or_flat_maps_keep_the_fixed_range():
    flat = np.full((6, 6), 1.0)
    assert _default_vmin(flat, "uniform") == 1 / 16
    skewed = np.where(np.arange(36).reshape(6, 6) % 2, 1 / 1000, 2.0)
    skewed[:, 0] = 1e-9                                             # a first key column never sets it
    assert _default_vmin(skewed, "uniform", skip=0) == 2.0 ** -10
    assert _default_vmin(skewed, "uniform") == 2.0 ** -20          # without the skip: the floor


def test_bars_of_a_long_trace_are_ranges_with_the_top_tokens_named(toy_model):
    import torch
    ids = torch.randint(2, 60, (1, 600), generator=torch.Generator().manual_seed(4))
    t = toy_model.run(ids)
    fig = attnscope.visualize_attention_patterns(t, [(1, 2)], "mean", entropy_threshold=False)
    ax = fig.axes[0]
    light, dark = ax.containers[0], ax.containers[1]
    assert len(light) == len(dark) == 120                                    # 600 positions, 5 per bar
    v = np.nan_to_num(t.get("received_mean")[1, 0, 2].numpy())
    assert np.allclose([b.get_height() for b in light], v.reshape(120, 5).max(1), atol=1e-7)
    assert np.allclose([b.get_height() for b in dark], v.reshape(120, 5).mean(1), atol=1e-7)
    assert "bars of 5 tokens: dark = mean over the range, light = its largest key" in ax.get_xlabel()
    top = int(np.argmax(v))
    assert f"1 {t.labels[0][top]} ({top})" in ax.get_xlabel()                # the top token by name
    fig = attnscope.visualize_attention_patterns(t, [(1, 2)], "specific_token", token_idx=599, entropy_threshold=False)
    bars = fig.axes[0].containers[0]
    row = t.get("head_map/L1H2")[0, 599].numpy()
    assert np.allclose([b.get_height() for b in bars], row.reshape(120, 5).sum(1), atol=1e-6)
    assert sum(b.get_height() for b in bars) == pytest.approx(1.0, abs=1e-5)
    plt.close("all")


def test_crowded_marks_are_spread_on_leader_lines():
    from attnscope.figure import ticks
    fig, ax = plt.subplots()
    ax.set_xlim(-0.5, 99.5)
    labels = [f"t{i}" for i in range(100)]
    ticks(ax, labels, "x", 20, marked=[40, 95, 96, 97, 98])
    leaders = [a for a in ax.texts if a.arrow_patch is not None]
    assert sorted(a.get_text() for a in leaders) == ["t95", "t96", "t97", "t98"]   # fanned out from the end
    assert [a.xy[0] for a in sorted(leaders, key=lambda a: a.get_text())] == [95, 96, 97, 98]  # lines to their ticks
    slots = sorted(a.xyann[0] for a in leaders)
    assert min(np.diff(slots)) >= 5 - 1e-9 and max(slots) <= 99           # one label apart, inside the axis
    named = [x.get_text() for x in ax.get_xticklabels() if x.get_text()]
    assert "t40" in named and not any(abs(int(x[1:]) - q) < 5 for x in named if x != "t40" for q in slots)
    plt.close(fig)
