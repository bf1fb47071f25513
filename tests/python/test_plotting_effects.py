"""visualize_knockout and visualize_head_effects: what they draw is the sweep's and the
ablation's numbers (bars, colour limits, titles), and bad arguments are refused by name."""
import matplotlib
import numpy as np
import pytest

import attnscope

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def toy_trace(request):
    toy = request.getfixturevalue("toy_model")
    return toy.run([[5, 9, 14, 5, 9, 21, 30, 5, 9]])


def test_knockout_figure_draws_attention_above_effects(toy_trace):
    sweep = attnscope.knockout_sweep(toy_trace, 7, bands=3, target=[9, 14])
    fig = attnscope.visualize_knockout(sweep, target=1, top_k=2)
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 6  # attention above, Δ log p below, per band
    for b in range(3):
        up, down = axes[2 * b], axes[2 * b + 1]
        heights = np.array([p.get_height() for p in up.patches])
        assert np.allclose(heights, sweep.attention_from(b).numpy(), atol=1e-12)
        assert abs(heights.sum() - 1) < 1e-5  # the row of one query's attention (head and layer mean)
        d = np.array([p.get_height() for p in down.patches])
        assert np.allclose(d, sweep.delta_logp[b, :, 1].numpy())
        name = sweep.bands[b][0]
        assert up.get_title().startswith(f"{name}: from 7 ") and "rank corr(attention, −Δ log p)" in up.get_title()
        top = [int(i) for i in np.argsort(d, kind="stable")[:2] if d[i] < 0]
        assert down.get_xlabel().count("(") == len(top)
        if top:
            assert f"1 {sweep.labels[sweep.keys[top[0]]]} ({sweep.keys[top[0]]})" in down.get_xlabel()
    assert "each edge 7 → key removed alone" in fig._suptitle.get_text()
    for kw, msg in [(dict(target=2), r"target 2: expected an index into the sweep's 2 target\(s\) \(0..1\)"),
                    (dict(top_k=-1), r"top_k")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.visualize_knockout(sweep, **kw)
    with pytest.raises(ValueError, match="expected a KeySweep"):
        attnscope.visualize_knockout(toy_trace)


def test_head_effects_figure_is_centred_and_beside_the_atlas(toy_trace):
    eff = attnscope.head_effects(toy_trace, progress=False)
    fig = attnscope.visualize_head_effects(eff, atlas=toy_trace, scores=("prev", "sink"), top=2)
    grids = [a for a in fig.axes if a.images]
    assert [a.get_title().split(" ")[0] for a in grids] == ["Δ", "Δ", "prev", "sink"]
    lo, hi = grids[0].images[0].get_clim()
    assert lo == -hi and hi == pytest.approx(float(eff.delta_logp.abs().max()))
    assert np.allclose(grids[0].images[0].get_array().data, eff.delta_logp.numpy())
    assert grids[2].images[0].get_clim() == (0.0, 1.0)
    (l, h), d = eff.top(1)[0]
    assert f"L{l}H{h} {d:+.2f}" in fig._suptitle.get_text()
    sym = attnscope.visualize_head_effects(eff, scale="symlog")
    assert type(sym.axes[0].images[0].norm).__name__ == "SymLogNorm"
    for kw, msg in [(dict(scale="log"), r"scale 'log': expected 'linear' or 'symlog'"),
                    (dict(top=-1), r"top=-1: expected an int >= 0")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.visualize_head_effects(eff, **kw)
    other = attnscope.head_atlas(toy_trace)
    other.model_id = "w:0000"
    with pytest.raises(ValueError, match="atlas"):
        attnscope.visualize_head_effects(eff, atlas=other)
