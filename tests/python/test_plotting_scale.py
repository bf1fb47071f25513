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
