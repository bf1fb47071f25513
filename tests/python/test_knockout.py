"""Attention knockout against an independent reference: transformers' own model (random small
configs) run with an attention function written here — eager softmax(q·kᵀ·scale + causal
mask) with −∞ at the removed edges in the chosen layers and heads — fp32, to 1e-5 in log p.
Both the SDPA export (attnscope::sdpa sites: −∞ in the mask) and the eager one (softmax sites:
renormalised probabilities) are checked, on GQA (Llama, 4 query heads over 2 KV heads), a
sliding window (Mistral), GPT-2's own attention and learned sinks with alternating windows
(GPT-OSS: the sinks stay in the softmax's denominator)."""
import warnings

import pytest
import torch

import attnscope

transformers = pytest.importorskip("transformers")
from test_export_hf import make  # noqa: E402  (the same small random configs)
from transformers import AttentionInterface  # noqa: E402

KNOCK = {}  # layers, heads, (query, keys) of the reference's knockout


def knocked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the knockout: [B, H, T, D] in, ([B, T, H, D], probabilities) out."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    s = (query @ key.transpose(-1, -2)).float() * scaling
    T = s.shape[-1]
    hide = torch.ones(T, T, dtype=torch.bool).triu(1)
    window = getattr(module, "sliding_window", "unset")  # GPT-OSS: per layer; Mistral: the config's
    window = getattr(module.config, "sliding_window", None) if window == "unset" else window
    if window:
        i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
        hide |= i - j >= window
    s = s.masked_fill(hide, float("-inf"))
    layer = getattr(module, "layer_idx", None)
    if KNOCK and (KNOCK["layers"] is None or layer in KNOCK["layers"]):
        q, keys = KNOCK["edge"]
        for h in (range(s.shape[1]) if KNOCK["heads"] is None else KNOCK["heads"]):
            s[:, h, q, keys] = float("-inf")
    sinks = getattr(module, "sinks", None)  # learned sink logits (GPT-OSS): in the softmax, not in the output
    if sinks is not None:
        p = torch.cat([s, sinks.float().view(1, -1, 1, 1).expand(s.shape[0], -1, T, 1)], -1).softmax(-1)[..., :-1]
    else:
        p = s.softmax(-1)
    p = p.to(value.dtype)
    return (p @ value).transpose(1, 2).contiguous(), p


AttentionInterface.register("attnscope_test_knockout", knocked_attention)


def reference_logp(model, ids, position, layers, heads, keys):
    KNOCK.clear()
    KNOCK.update(layers=layers, heads=heads, edge=(position, keys))
    impl = model.config._attn_implementation
    model.set_attn_implementation("attnscope_test_knockout")
    try:
        with torch.no_grad():
            out = model(input_ids=ids).logits[0, position].double().log_softmax(-1)
    finally:
        KNOCK.clear()
        model.set_attn_implementation(impl)
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2", "gpt_oss"])
def test_knockout_equals_an_eager_intervention(tmp_path, family, attention):
    if family == "gpt_oss":
        from hf_families import FAMILIES
        torch.manual_seed(0)
        model = FAMILIES["gpt_oss"]().eval()
    else:
        model = make(family)
    if family == "gpt_oss" and attention == "sdpa":
        pytest.skip("GPT-OSS has no SDPA attention (its sinks): its eager export goes through the graph route")
    path = tmp_path / f"{family}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, path, attention=attention, fallback=family == "gpt_oss")
    m = attnscope.load(str(path), device="cpu")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 64, (1, 12), generator=g)
    trace = m.run(ids)
    cases = [(10, [2, 5, 9], None, None), (7, [0], [1], None), (11, [3, 4, 6, 10], [0], [1, 3])]
    if family in ("mistral", "gpt_oss"):  # window 4 (GPT-OSS: layer 0): query i sees keys i-3..i only
        cases = [(10, [8, 9], None, None), (7, [5], [1], None), (11, [9, 10], [0], [1, 3])]
    for position, keys, layers, heads in cases:
        eff = attnscope.knockout(trace, position, keys=keys, layers=layers, heads=heads, target=list(range(64)))
        plain = reference_logp(model, ids, position, [], None, keys)                 # nothing removed
        want = reference_logp(model, ids, position, layers, heads, keys)
        got_before, got_after = torch.tensor(eff.logp_before), torch.tensor(eff.logp_after)
        assert (got_before - plain).abs().max() < 1e-5, (family, attention, position)
        assert (got_after - want).abs().max() < 1e-5, (family, attention, position, layers, heads)
        assert (want - plain).abs().max() > 1e-4  # the knockout changes the prediction: the test can fail


def test_knockout_effects_and_errors(toy_model):
    t = toy_model.run([[5, 9, 14, 5, 9, 21, 30, 5]])
    eff = attnscope.knockout(t, 6, keys=[1, 4], target=[5, 9])
    assert eff.position == 6 and eff.keys == [1, 4] and [x for x, _ in eff.targets] == [5, 9]
    assert eff.delta_logp == [a - b for a, b in zip(eff.logp_after, eff.logp_before)]
    assert "Δ" in repr(eff) and eff.changed == (eff.top1_before != eff.top1_after)
    default = attnscope.knockout(t, 6, keys=[1])
    assert default.targets[0][0] == 5  # the token that follows position 6
    for kw, msg in [
        (dict(position=3, keys=[5]), r"keys: position 5 is after the query 3: a causal model's query never sees it"),
        (dict(position=3, keys=[0, 1, 2, 3]), r"removing every key position 3 sees \(0..3\) leaves its attention nothing"),
        (dict(position=3, keys=[]), r"keys is empty"),
        (dict(position=3, keys="1"), r"keys '1': expected a position or a list of positions"),
        (dict(position=99, keys=[1]), r"position 99 out of range: the trace has 8 tokens"),
        (dict(position=3, keys=[1], layers=[7]), r"knockout layers: layer 7 is not an attention layer of this model"),
        (dict(position=3, keys=[1], heads=[4]), r"knockout heads: head 4 out of range: the model has 4 heads"),
        (dict(position=3, keys=[1], heads=[True]), r"heads: True is not an index >= 0"),
        (dict(position=3, keys=[1], target=10 ** 6), r"target 1000000 is not a token id of this model"),
    ]:
        with pytest.raises(ValueError, match=msg):
            attnscope.knockout(t, **kw)
    with pytest.raises(ValueError, match="knockout needs a trace that keeps its model"):
        attnscope.knockout(t.release() or t, 3, keys=[1])
