"""Value-weighted attention (Kobayashi et al. 2020, the value vectors alone) against an
independent reference: transformers' eager attentions α and the value states from a hook on
v_proj, rows α_ij‖v_j‖ renormalised, then received (mean and max over the queries that see a
key) and row entropy; fp32 to 1e-5. GQA, a window and padding; softmax sites refused by name."""
import pytest
import torch

import attnscope

transformers = pytest.importorskip("transformers")
from test_knockout import exported  # noqa: E402


def reference(model, ids):
    """(weighted rows [L, H, T, T], value norms [L, H, T]) of one unpadded row."""
    vals = {}
    layers = model.model.layers
    hooks = [layer.self_attn.v_proj.register_forward_hook(lambda mod, a, o, l=l: vals.__setitem__(l, o))
             for l, layer in enumerate(layers)]
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(input_ids=ids, output_attentions=True).attentions
    finally:
        for h in hooks:
            h.remove()
    cfg, T = model.config, ids.shape[1]
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    rows, norms = [], []
    for l, a in enumerate(att):
        n = vals[l][0].double().view(T, KV, -1).norm(dim=-1).T.repeat_interleave(H // KV, 0)  # [H, T]
        w = a[0].double() * n[:, None, :]
        rows.append(w / w.sum(-1, keepdim=True))
        norms.append(n)
    return torch.stack(rows), torch.stack(norms), torch.stack([a[0] for a in att]).double()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_value_weighted_aggregates_and_maps(tmp_path, family):
    model, m = exported(tmp_path, family, "sdpa")
    ids = torch.randint(3, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    t = m.run(ids, capture={"value_weighted": True, "heads": [(1, 2)]})
    w, n, alpha = reference(model, ids)
    seen = (alpha > 0).double().sum(2)                                      # [L, H, T] queries seeing key j
    assert (t.captures["vw_received_mean"][:, 0].double() - w.sum(2) / seen).abs().max() < 1e-5
    assert (t.captures["vw_received_max"][:, 0].double() - w.amax(2)).abs().max() < 1e-5
    ent = -(w * w.clamp_min(1e-300).log()).sum(-1)
    assert (t.captures["vw_attn_entropy"][:, 0].double() - ent).abs().max() < 1e-5
    assert (t.captures["vw_value_norm"][:, 0].double() - n).abs().max() < 1e-4 * n.max()
    assert (attnscope.value_weighted_map(t, 1, 2) - w[1, 2]).abs().max() < 1e-5
    assert (w - alpha).abs().max() > 1e-2  # the weighting moves the rows: the test can fail


def test_value_weighted_padding_and_refusals(tmp_path):
    _, m = exported(tmp_path, "llama", "sdpa")
    row = [7, 3, 9, 12, 5, 8, 2, 11]
    alone = m.run([row], capture={"value_weighted": True})
    both = m.run([[1, 1] + row, [4] * 10], attention_mask=[[0, 0] + [1] * 8, [1] * 10],
                 capture={"value_weighted": True})
    for name in ("vw_received_mean", "vw_attn_entropy", "vw_value_norm"):
        a, b = alone.captures[name][:, 0], both.captures[name][:, 0, ..., 2:]
        assert (a - b).abs().max() < 1e-5, name
    assert torch.isnan(both.captures["vw_value_norm"][:, 0, :, :2]).all()
    _, eager = exported(tmp_path, "llama", "eager")
    with pytest.raises(ValueError, match="value_weighted: layer 0's attention is a softmax site"):
        eager.run([row], capture={"value_weighted": True})
    for kw, msg in [(dict(layer=5, head=0), r"layer 5 out of range"), (dict(layer=0, head=-1), r"head -1 out of range"),
                    (dict(layer=0, head=0, batch=3), r"batch 3 out of range")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.value_weighted_map(alone, **kw)
