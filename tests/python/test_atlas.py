"""The head atlas and token profiles against references written here from transformers' eager
attentions (fp32 model, float64 reference, 1e-5; distances relative to their size), on several
families (grouped-query, learned positions, an encoder, sliding windows with soft-capping), with
padding; top_heads; the probes on the default model; the figures."""
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from hf_families import FAMILIES, V
from reference_stats import atlas_reference, rows_alone

import attnscope

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

transformers = pytest.importorskip("transformers")

T, W = 14, 2


def export(tmp_path, family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, tmp_path / "m.pt", attention="sdpa")
    ref = model
    if model._can_set_attn_implementation():
        ref.set_attn_implementation("eager")
    return attnscope.load(str(tmp_path / "m.pt"), device="cpu"), ref


def inputs():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, V, (2, T), generator=g)
    ids[:, 8:] = ids[:, 2:8]         # a repeated run: duplicates and induction keys
    mask = torch.ones_like(ids)
    mask[1, :3] = 0                  # left padding in row 1
    return ids, mask


def close(got, want, what, rel=False):
    got, want = got.double(), want.double()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at different places"
    tol = 1e-5 * max(1.0, want.nan_to_num(0).abs().max().item()) if rel else 1e-5
    d = (got.nan_to_num(0) - want.nan_to_num(0)).abs().max().item()
    assert d <= tol, f"{what}: max abs diff {d:.3g}"


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gemma2"])
def test_atlas_and_profile_equal_eager_reference(tmp_path, family):
    m, ref = export(tmp_path, family)
    ids, mask = inputs()
    t = m.run(ids, capture={"received": True, "attn_entropy": True, "sink_tokens": 1, "row_stats": True,
                            "local_window": W}, attention_mask=mask)
    with torch.no_grad():
        att = rows_alone(ref, ids, mask)[0]  # a padded row's reference: its tokens alone
    valid = mask.bool()
    want = atlas_reference(att, ids, valid, W)
    atlas = attnscope.head_atlas(t)
    assert set(atlas.scores) == set(attnscope.atlas.SCORES) - {"learned_sink"}  # no learned sinks here
    assert atlas.layers == list(range(len(att)))
    for name in atlas.scores:
        close(atlas[name], want[name], f"{family} atlas {name}", rel=name == "distance")
    # rows=(start, stop): the second copy only
    part = attnscope.head_atlas(t, rows=(8, T))
    want = atlas_reference(att, ids, valid, W, rows=slice(8, T))
    for name in part.scores:
        close(part[name], want[name], f"{family} atlas rows 8.. {name}", rel=name == "distance")
    # the token profile of a query in the repeat, row 1 (left-padded)
    pos = 11
    prof = attnscope.token_profile(t, pos, batch=1)
    rows = torch.stack([a[1, :, pos].double() for a in att])               # [L, H, T]
    ent = -(rows * rows.clamp_min(1e-300).log()).sum(-1)
    d = (pos - torch.arange(T)).abs().double()
    seen = (rows > 0).sum(-1)
    close(prof.heads["entropy"], ent, f"{family} profile entropy")
    close(prof.heads["breadth"], ent / seen.double().log(), f"{family} profile breadth")
    close(prof.heads["distance"], (rows * d).sum(-1), f"{family} profile distance", rel=True)
    close(prof.heads["beyond_local"], (rows * (d > W)).sum(-1), f"{family} profile beyond_local")
    close(prof.heads["self"], rows[..., pos], f"{family} profile self")
    close(prof.heads["prev"], rows[..., pos - 1], f"{family} profile prev")
    close(prof.heads["sink"], rows[..., 3], f"{family} profile sink (first real token of row 1)")
    top = rows.mean(1).topk(3, -1)
    assert [[p for p, _, _ in k] for k in prof.top_keys] == top.indices.tolist()
    close(torch.tensor([[x for _, _, x in k] for k in prof.top_keys]), top.values, f"{family} top keys")
    assert prof.label == t.labels[1][pos]


def test_top_heads_ranking_and_errors():
    s = torch.tensor([[0.1, float("nan"), 0.9], [0.5, 0.95, 0.2]], dtype=torch.float64)
    atlas = attnscope.HeadAtlas({"induction": s}, {"induction": torch.ones(2, 3)}, [4, 7])
    assert attnscope.top_heads(atlas, "induction", k=3) == [(7, 1), (4, 2), (7, 0)]
    assert atlas.top("induction", 2, largest=False) == [(4, 0), (7, 2)]
    assert attnscope.top_heads(atlas, "induction", k=50)[-1] == (4, 0)  # NaN never ranks: 5 heads
    assert len(attnscope.top_heads(atlas, "induction", k=50)) == 5
    with pytest.raises(ValueError, match="score 'prev': expected one of induction"):
        attnscope.top_heads(atlas, "prev")
    with pytest.raises(ValueError, match="k=0: expected a positive int"):
        attnscope.top_heads(atlas, "induction", k=0)
    with pytest.raises(ValueError, match="expected a HeadAtlas"):
        attnscope.top_heads({"induction": s}, "induction")
    df = atlas.to_pandas()
    assert list(df.columns) == ["layer", "head", "induction"] and df.shape == (6, 3)
    assert df.loc[(df["layer"] == 7) & (df["head"] == 1), "induction"].item() == pytest.approx(0.95)


def test_atlas_and_profile_errors(toy_model):
    t = toy_model.run([5, 6, 7, 5, 6, 7])
    with pytest.raises(ValueError, match=r"rows \(4, 2\) selects no positions: start must come before stop"):
        attnscope.head_atlas(t, rows=(4, 2))
    with pytest.raises(ValueError, match="position 9 out of range: the trace has 6 tokens"):
        attnscope.token_profile(t, 9)
    with pytest.raises(ValueError, match="top=0: expected an int >= 1"):
        attnscope.token_profile(t, 2, top=0)
    padded = toy_model.run(torch.tensor([[5, 6, 7], [1, 5, 6]]), attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]))
    with pytest.raises(ValueError, match="position 0 of row 1 is padding"):
        attnscope.token_profile(padded, 0, batch=1)
    with pytest.raises(ValueError, match="length=1: expected an int >= 2"):
        toy_model.head_atlas("induction", length=1)
    t.release()
    with pytest.raises(ValueError, match=r"no model to compute it: capture with from_tokens=\[2\]"):
        attnscope.token_profile(t, 2)


def test_figures(toy_model):
    atlas = toy_model.head_atlas("induction", length=8, batch=2)
    assert "rows 8..15" in atlas.source and "2 sequences of 16 tokens" in atlas.source
    fig = attnscope.visualize_head_atlas(atlas, top=2)
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"][: len(atlas.scores)]
    titles = [a.get_title() for a in axes]
    best = atlas.top("induction", 2)
    want = "induction\n" + ", ".join(f"L{l}H{h} {atlas['induction'][l, h]:.2f}" for l, h in best)
    assert want in titles
    prev_ax = axes[titles.index(next(x for x in titles if x.startswith("prev")))]
    assert prev_ax.images[0].get_clim() == (0.0, 1.0)
    plt.close(fig)
    with pytest.raises(ValueError, match="score 'nope'"):
        attnscope.visualize_head_atlas(atlas, ["nope"])
    t = toy_model.run([5, 6, 7, 8, 5, 6, 7, 8])
    fig = attnscope.visualize_token_profile(t, 6)
    ax, where = fig.axes[0], fig.axes[2]
    assert ax.get_title().startswith(f"Token profile: position 6 “{t.labels[0][6]}” (row 0)")
    assert ax.get_xlabel().startswith("layer\nstrongest heads: self L")
    prof = attnscope.token_profile(t, 6)
    keys = sorted({p for k in prof.top_keys for p, _, _ in k})
    assert [x.get_text() for x in where.get_xticklabels()] == [f"{p} {t.labels[0][p]}" for p in keys]
    assert [x.get_color() for x in where.get_xticklabels()].count("#e31a1c") == (6 in keys)
    plt.close(fig)


def test_default_model_probe_finds_induction_and_previous_token_heads():
    """One call on the default model (SmolLM2-135M): repeated random tokens. Its best induction
    head puts most of its attention on the token after the earlier copy, its best
    previous-token head on the previous token; a random head does neither."""
    from attnscope.models import default_model_path
    m = attnscope.load(default_model_path(), device="cpu", progress=False)
    atlas = m.head_atlas("induction", length=32, batch=2)
    (l, h), = atlas.top("induction", 1)
    assert atlas["induction"][l, h] > 0.5, atlas["induction"].max()
    (lp, hp), = atlas.top("prev", 1)
    assert atlas["prev"][lp, hp] > 0.5
    assert atlas["induction"].nanmedian() < 0.2  # most heads are not induction heads


def test_compare_profiles_and_atlases(toy_model):
    """Side by side: a trace and its variant — the profile figure draws both (the compared one
    dashed), the atlas figure draws compare − atlas centred at 0, numbers from each one's own
    token_profile / head_atlas."""
    a = toy_model.run([5, 6, 7, 8, 5, 6, 7, 8])
    b = toy_model.run([5, 6, 7, 9, 5, 6, 7, 9])
    fig = attnscope.visualize_token_profile(a, 6, compare=b)
    ax = fig.axes[0]
    pa, pb = attnscope.token_profile(a, 6), attnscope.token_profile(b, 6)
    solid = [l for l in ax.get_lines() if l.get_linestyle() == "-"]
    dashed = [l for l in ax.get_lines() if l.get_linestyle() == "--"]
    assert len(solid) == len(dashed) == 5
    assert np.allclose(solid[0].get_ydata(), pa.layers["breadth"].numpy())
    assert np.allclose(dashed[0].get_ydata(), pb.layers["breadth"].numpy())
    assert len(fig.axes[2].collections) == 2                              # this one's keys, the compared one's
    plt.close(fig)
    fig = attnscope.visualize_head_atlas(attnscope.head_atlas(a), ["prev", "self"], compare=b)
    im = fig.axes[0].images[0]
    want = (attnscope.head_atlas(b)["prev"] - attnscope.head_atlas(a)["prev"]).numpy()
    assert np.allclose(np.ma.filled(im.get_array(), np.nan), want, equal_nan=True)
    lo, hi = im.get_clim()
    assert lo == -hi and hi == pytest.approx(np.nanmax(np.abs(want))) and im.get_cmap().name == "RdBu_r"
    plt.close(fig)
    other = attnscope.HeadAtlas({"prev": torch.zeros(2, 4)}, {"prev": torch.ones(2, 4)}, [0, 1])
    with pytest.raises(ValueError, match="compare: atlases of 3 layers x 4 heads and 2 x 4"):
        attnscope.visualize_head_atlas(attnscope.head_atlas(a), compare=other)
