"""Attention rollout (Abnar & Zuidema 2020) against an independent reference: the product over
layers of 0.5·A + 0.5·I (rows renormalised), A the head mean of transformers' eager attentions,
fp32 to 1e-5; folded by the core layer by layer. Padding, sinks and windows included; the
figure draws the capture's numbers."""
import matplotlib
import numpy as np
import pytest
import torch

import attnscope

matplotlib.use("Agg")
transformers = pytest.importorskip("transformers")
from test_knockout import exported  # noqa: E402


def reference(model, ids):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(input_ids=ids, output_attentions=True).attentions
    T = ids.shape[1]
    R, eye = torch.eye(T, dtype=torch.float64), torch.eye(T, dtype=torch.float64)
    for a in att:
        m = 0.5 * a[0].double().mean(0) + 0.5 * eye
        R = (m / m.sum(-1, keepdim=True)) @ R
    return R


@pytest.mark.parametrize("family,attention", [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"),
                                              ("gpt2", "eager"), ("gpt_oss", "eager"),
                                              ("gemma2", "eager"), ("bert", "sdpa")])
def test_rollout_equals_the_product_of_eager_maps(tmp_path, family, attention):
    model, m = exported(tmp_path, family, attention)
    ids = torch.randint(3, 64, (1, 13), generator=torch.Generator().manual_seed(2))
    got = m.run(ids, capture={"rollout": True}).captures["rollout"][0].double()
    want = reference(model, ids)
    assert (got - want).abs().max() < 1e-5, family
    assert (got.sum(-1) - 1).abs().max() < 1e-5 and (want - torch.eye(13)).abs().max() > 1e-2


def test_rollout_of_a_padded_row_and_with_other_captures(tmp_path):
    _, m = exported(tmp_path, "llama", "sdpa")
    row = [7, 3, 9, 12, 5, 8, 2, 11]
    alone = m.run([row], capture={"rollout": True}).captures["rollout"][0]
    both = m.run([[1, 1] + row, [4] * 10], attention_mask=[[0, 0] + [1] * 8, [1] * 10],
                 capture={"rollout": True, "layer_maps": [1], "received": True})
    r = both.captures["rollout"][0]
    assert torch.isnan(r[:2]).all() and (r[2:, :2] == 0).all()  # padded rows undefined, padded keys get nothing
    assert (r[2:, 2:] - alone).abs().max() < 1e-5
    assert set(both.captures) >= {"rollout", "layer_map/L1", "received_mean"} and "layer_map/L0" not in both.captures
    with pytest.raises(ValueError, match="rollout folds the head-mean maps, but layer_map_head is 1"):
        m.run([row], capture={"rollout": True, "layer_map_head": 1})


def test_rollout_figure(toy_model):
    t = toy_model.run([[5, 9, 14, 5, 9, 21, 30, 5, 9]])
    fig = attnscope.visualize_rollout(t, 7, top_k=2)
    heat, bars = fig.axes[0], fig.axes[1]
    R = t.captures["rollout"][0].double().numpy()  # computed on demand
    heights = np.array([p.get_height() for p in bars.containers[-1]])
    want = R[7].copy()
    want[0] = 0  # the first token is off the scales
    assert np.allclose(heights, want)
    assert f"first token {t.labels[0][0]} (0): {100 * R[7, 0]:.2f} % of the row" in bars.get_xlabel()
    assert bars.get_title() == f"Rollout row of 7 {t.labels[0][7]}"
    lo, hi = heat.images[0].norm.vmin, heat.images[0].norm.vmax
    assert hi == pytest.approx(np.nanmax(R[:, 1:])) and lo == pytest.approx(hi * 1e-3)
    full = attnscope.visualize_rollout(t, 7, mask_first=False)
    assert "first token" not in full.axes[1].get_xlabel()
    for kw, msg in [(dict(token_idx=20), r"token_idx 20 out of range"), (dict(top_k=-1), r"top_k")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.visualize_rollout(t, **kw)
