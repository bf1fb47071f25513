"""Comparisons that cannot mislead (two traces aligned on their first real tokens, by one rule:
attnscope.windows.shared_span) and token questions with a baseline (a token's scores against
the trace's other tokens, from the row statistics), each checked against a computation written
here from the traces' own maps and rows."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import attnscope  # noqa: E402
from attnscope.profile import percentile_of, row_scores  # noqa: E402
from attnscope.windows import shared_span  # noqa: E402

A = [7, 5, 9, 12, 3, 40, 22, 7, 18, 2, 33, 41, 8]
B = [7, 5, 9, 12, 30, 40, 22, 7, 18]  # differs at 4, shorter


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def run(model, ids, pad=0):
    """ids run alone, or after `pad` left-padding positions (random ids, masked)."""
    if not pad:
        return model.run(torch.tensor([ids]))
    return model.run(torch.tensor([[11] * pad + ids]), attention_mask=torch.tensor([[0] * pad + [1] * len(ids)]))


def test_shared_span_skips_left_padding_and_finds_the_fork(toy_model):
    a, b = run(toy_model, A), run(toy_model, B, pad=3)
    assert shared_span(a, b) == (len(B), 4, 0, 3)
    assert shared_span(a, a) == (len(A), None, 0, 0)
    with pytest.raises(ValueError, match="each row's tokens must be one contiguous run .* row 0 has padding between"):
        toy_model.run(torch.tensor([A]), attention_mask=torch.tensor([[1, 1, 0] + [1] * (len(A) - 3)]))


def test_diff_aligns_a_left_padded_row_and_zooms_to_a_late_fork(toy_model):
    a, b, bp = run(toy_model, A), run(toy_model, B), run(toy_model, B, pad=3)
    want = attnscope.visualize_attention_diff(a, b, [1]).axes[0].get_images()[0].get_array()
    got = attnscope.visualize_attention_diff(a, bp, [1])
    assert np.ma.allclose(got.axes[0].get_images()[0].get_array(), want, atol=1e-6)
    assert "from each row's first real token" in got._suptitle.get_text()
    # 300 shared positions, fork at 280: the default window is 128 positions around it
    g = torch.Generator().manual_seed(3)
    long = torch.randint(2, 60, (300,), generator=g).tolist()
    other = long[:280] + [(long[280] % 50) + 3] + long[281:]
    la, lb = run(toy_model, long), run(toy_model, other)
    fig = attnscope.visualize_attention_diff(la, lb, [0])
    img = fig.axes[0].get_images()[0]
    assert img.get_extent() == [171.5, 299.5, 299.5, 171.5]   # 172..299: 108 before the fork, 20 after
    assert "zoomed to 172..299 around the fork" in fig._suptitle.get_text()
    full = la.get("layer_map/L0")[0].numpy()
    diff = lb.get("layer_map/L0")[0].numpy() - full
    assert np.allclose(np.ma.filled(img.get_array(), 0.0), np.tril(diff)[172:300, 172:300], atol=1e-7)
    fig = attnscope.visualize_attention_diff(la, lb, [0], tokens=(0, None))
    assert fig.axes[0].get_images()[0].get_extent() == [-0.5, 299.5, 299.5, -0.5]
    assert "zoomed" not in fig._suptitle.get_text()


def test_atlas_compare_uses_equal_rows(toy_model):
    a, b = run(toy_model, A), run(toy_model, B, pad=2)
    fig = attnscope.visualize_head_atlas(a, ["distance"], compare=b)
    m = len(B)
    want = (attnscope.head_atlas(b, rows=(2, 2 + m))["distance"] - attnscope.head_atlas(a, rows=(0, m))["distance"])
    assert np.allclose(np.ma.filled(fig.axes[0].images[0].get_array(), np.nan), want.numpy(), equal_nan=True)
    title = fig._suptitle.get_text()
    assert f"rows 0..{m - 1} of each: the shared prefix to the fork at 4, then {m - 4} tokens of each" in title
    # the whole-trace atlases differ in the rows they measure: refused, never subtracted
    with pytest.raises(ValueError, match=r"compare: the atlases measure different query rows \(rows 0..12 vs "
                                         r"rows 0..8, from each sequence's first token\)"):
        attnscope.visualize_head_atlas(attnscope.head_atlas(a), compare=b)
    # equal spans compare as they are, also between atlases
    same = attnscope.head_atlas(run(toy_model, A[:m]))
    other = attnscope.head_atlas(b)
    fig = attnscope.visualize_head_atlas(same, ["self"], compare=other)
    assert same.span == other.span == ((0, m),)
    assert np.allclose(np.ma.filled(fig.axes[0].images[0].get_array(), np.nan),
                       (other["self"] - same["self"]).numpy(), equal_nan=True)


def test_profile_compare_at_the_fork_of_a_causal_row(toy_model):
    a, b = run(toy_model, A), run(toy_model, B, pad=1)
    fig = attnscope.visualize_token_profile(a, 2, compare=b)
    assert "position 2 precedes the first token that differs (4)" in fig.axes[0].get_title()
    solid = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "-"]
    dashed = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "--"]
    assert np.allclose(solid[0].get_ydata(), attnscope.token_profile(a, 4).layers["breadth"].numpy())
    assert np.allclose(dashed[0].get_ydata(), attnscope.token_profile(b, 5).layers["breadth"].numpy())
    fig = attnscope.visualize_token_profile(a, 6, compare=b)  # after the fork: the same token, row b's position 7
    assert np.allclose([l for l in fig.axes[0].get_lines() if l.get_linestyle() == "--"][0].get_ydata(),
                       attnscope.token_profile(b, 7).layers["breadth"].numpy())
    with pytest.raises(ValueError, match="the two profiles are identical"):
        attnscope.visualize_token_profile(a, 3, compare=run(toy_model, A[:6]))
    with pytest.raises(ValueError, match="position 10 is token 10 of row 0 from its first real token; the compared "
                                         "row holds 9 tokens"):
        attnscope.visualize_token_profile(a, 10, compare=b)


def test_baseline_percentiles_equal_a_count_over_the_other_tokens(toy_model):
    t = run(toy_model, A + B)
    T = len(A + B)
    prof = attnscope.token_profile(t, 9, baseline="all")
    # independent: each other token's own profile (its attention rows), counted here
    others = [attnscope.token_profile(t, q, baseline="all") for q in range(T) if q != 9]
    for k in ("entropy", "distance", "beyond_local", "self", "sink"):
        vals = torch.stack([o.heads[k] for o in others], -1)                      # [L, H, N]
        mine = prof.heads[k].unsqueeze(-1)
        want = ((vals < mine - 1e-6).sum(-1) + 0.5 * ((vals - mine).abs() <= 1e-6).sum(-1)) / len(others)
        assert torch.allclose(prof.percentile[k], want.double(), atol=1e-9), k
        means = torch.stack([o.layers[k] for o in others], -1)                    # [L, N]
        assert torch.allclose(prof.band[k][:, 1], means.quantile(0.5, dim=-1).double(), atol=1e-5), k
    assert prof.n_baseline == T - 1 and prof.baseline == "the text"
    assert "prev" in prof.percentile and "breadth" not in prof.percentile
    # the row statistics are the profile's scores (same definitions), for every row
    rows = row_scores(t)
    for q in (0, 5, 17):
        p = attnscope.token_profile(t, q)
        for k in ("entropy", "distance", "beyond_local", "self", "prev", "sink"):
            assert torch.allclose(rows[k][..., q].nan_to_num(-1), p.heads[k].nan_to_num(-1), atol=1e-5), (q, k)
    sub = attnscope.token_profile(t, 9, baseline=(5, 15))
    assert sub.n_baseline == 9 and sub.baseline == "positions 5..14"
    assert torch.equal(percentile_of(torch.tensor(2.0), torch.tensor([1.0, 2.0, 3.0, float("nan")])),
                       torch.tensor(0.5))


def test_profile_table_in_one_pass(toy_model):
    t = run(toy_model, A + B)
    tab = attnscope.profile_table(t, [3, 9, -1], baseline="all")
    assert [r["position"] for r in tab.rows] == [3, 9, len(A + B) - 1] and len(tab) == 3
    for r in tab.rows:
        p = attnscope.token_profile(t, r["position"], baseline="all")
        for k in ("entropy", "distance", "self", "sink"):
            assert r[k] == pytest.approx(float(p.heads[k].nanmean()), abs=1e-5)
            v = p.heads[k].nan_to_num(float("-inf"))
            assert r[f"{k}_top"] == pytest.approx(float(v.max()), rel=1e-6, abs=1e-6)
            w = int(v.flatten().argmax())
            assert r[f"{k}_head"] == f"L{w // 4}H{w % 4}"
    assert "positions against the other tokens of the text (22 in all)" in repr(tab)
    df = tab.to_pandas()
    assert {"self", "self_pct", "self_top", "self_head", "self_top_pct"} <= set(df.columns)
    with pytest.raises(ValueError, match="position 99 out of range: the trace has 22 tokens"):
        attnscope.profile_table(t, [99])
    with pytest.raises(ValueError, match="baseline 'mine': expected 'auto', 'all' or"):
        attnscope.profile_table(t, [1], baseline="mine")
    bare = toy_model.run(torch.tensor([A]), capture={"from_tokens": [9]})
    bare.release()  # no row statistics and no model to compute them
    with pytest.raises(ValueError, match="profile_table needs the row statistics"):
        attnscope.profile_table(bare, [9])


def test_profile_figure_shows_the_baseline_and_the_strongest_heads(toy_model):
    t = run(toy_model, A + B)
    fig = attnscope.visualize_token_profile(t, 9)
    ax, pct = fig.axes[0], fig.axes[1]
    prof = attnscope.token_profile(t, 9)
    tri = [l for l in ax.get_lines() if l.get_marker() == "^" and len(l.get_xdata())]
    v, h = prof.strongest("self")
    assert any(np.allclose(l.get_ydata(), v.numpy()) for l in tri)
    i = int(v.argmax())
    assert f"self L{prof.layer_ids[i]}H{int(h[i])} {float(v[i]):.2f}" in ax.get_xlabel()
    assert pct.get_title().startswith("Against 21 other tokens of the text")
    assert pct.get_ylim() == (-0.02, 1.02)
    lines = {l.get_label(): l for l in pct.get_lines()}
    assert np.allclose(lines["self"].get_ydata(), prof.layer_percentile["self"].numpy())
    plt.close(fig)
    bare = toy_model.run(torch.tensor([A]), capture={"from_tokens": [9]})
    bare.release()
    assert attnscope.token_profile(bare, 9).percentile is None
    fig = attnscope.visualize_token_profile(bare, 9)
    assert "no baseline: the trace has no row statistics" in fig.axes[1].texts[0].get_text()
