"""Attention knockout against an independent reference: transformers' own model (random small
configs) run with an attention function written here — eager softmax(q·kᵀ·scale + causal
mask) with −∞ at the removed edges in the chosen layers and heads — fp32, to 1e-5 in log p.
Both the SDPA export (attnscope::sdpa sites: −∞ in the mask) and the eager one (softmax sites:
renormalised probabilities) are checked, on GQA (Llama, 4 query heads over 2 KV heads), a
sliding window (Mistral), GPT-2's own attention, learned sinks with alternating windows
(GPT-OSS: the sinks stay in the softmax's denominator) and logit softcapping (Gemma 2)."""
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
    cap = kwargs.get("softcap") or getattr(module, "attn_logit_softcapping", None)  # Gemma 2
    if cap:
        s = torch.tanh(s / cap) * cap
    T = s.shape[-1]
    hide = torch.ones(T, T, dtype=torch.bool).triu(1) if getattr(module, "is_causal", True) else \
        torch.zeros(T, T, dtype=torch.bool)  # BERT: every key
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
@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2", "gpt_oss", "gemma2", "bert_mlm"])
def test_knockout_equals_an_eager_intervention(tmp_path, family, attention):
    if family == "gpt_oss" and attention == "sdpa":
        pytest.skip("GPT-OSS has no SDPA attention (its sinks): its eager export goes through the graph route")
    model, m = exported(tmp_path, family, attention)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 64, (1, 12), generator=g)
    trace = m.run(ids)
    cases = [(10, [2, 5, 9], None, None), (7, [0], [1], None), (11, [3, 4, 6, 10], [0], [1, 3])]
    if family in ("mistral", "gpt_oss", "gemma2"):  # window 4 (GPT-OSS, Gemma 2: layer 0): keys i-3..i only
        cases = [(10, [8, 9], None, None), (7, [5], [1], None), (11, [9, 10], [0], [1, 3])]
    if family == "bert_mlm":  # keys after the query too
        cases = [(4, [7, 9], None, None), (6, [0, 11], [1], None), (2, [3], [0], [1, 3])]
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


def exported(tmp_path, family, attention):
    """(transformers model, attnscope Model of its export): test_export_hf's small configs, or
    the family matrix's (hf_families) for the others."""
    from hf_families import FAMILIES
    from test_export_hf import FAMILIES as SMALL
    if family == "bert_mlm":  # an encoder with a language-model head: each position predicts its own token
        torch.manual_seed(0)
        model = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, initializer_range=0.25)).eval()  # peaked attention: heads differ by position
    elif family in SMALL:
        model = make(family)
    else:
        torch.manual_seed(0)
        model = FAMILIES[family]().eval()
    path = tmp_path / f"{family}-{attention}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, path, attention=attention, fallback=family in ("gpt_oss", "gemma2"))
    return model, attnscope.load(str(path), device="cpu")


@pytest.mark.parametrize("family,attention", [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"),
                                              ("gpt2", "eager"), ("gpt_oss", "eager"), ("gemma2", "eager")])
def test_key_sweep_equals_eager_interventions(tmp_path, family, attention):
    """Every row of the batched decode step is the eager intervention of its one key, per band."""
    model, m = exported(tmp_path, family, attention)
    assert m.decode_intervenes  # the graph pass put the operators into the traced decode too
    ids = torch.randint(3, 64, (1, 12), generator=torch.Generator().manual_seed(5))
    trace = m.run(ids)
    position = 10
    sweep = attnscope.knockout_sweep(trace, position, bands={"first": [0], "second": [1]}, target=list(range(64)))
    assert sweep.method.startswith("one batched decode step")
    window = 4 if family in ("mistral", "gpt_oss", "gemma2") else None
    seen = list(range(position + 1)) if window is None else list(range(position - window + 1, position + 1))
    plain = reference_logp(model, ids, position, [], None, [])
    assert (sweep.logp_before - plain).abs().max() < 1e-5
    moved = 0
    for b, (_, layers) in enumerate(sweep.bands):
        for i, key in enumerate(sweep.keys):
            if key not in seen or len(seen) == 1:
                continue  # outside the window: removing it changes nothing, as the sweep also says
            want = reference_logp(model, ids, position, layers, None, [key])
            assert (sweep.logp_after[b, i] - want).abs().max() < 1e-5, (family, layers, key)
            moved = max(moved, float((want - plain).abs().max()))
    assert moved > 1e-4  # some removal changes the prediction: the test can fail
    assert sweep.delta_logp.shape == (2, position + 1, 64) and sweep.changed.shape == (2, position + 1)


def test_key_sweep_padding_chunks_and_forward_route(tmp_path, monkeypatch):
    """A left-padded row sweeps as it does alone; chunked decode calls (a small memory budget)
    and the forward-per-key route (archives whose decode does not intervene) agree with it."""
    _, m = exported(tmp_path, "llama", "sdpa")
    alone = m.run([[7, 3, 9, 12, 5, 8, 2, 11]])
    padded = m.run([[1, 1, 7, 3, 9, 12, 5, 8, 2, 11], [4, 6, 9, 7, 3, 9, 12, 5, 8, 2]],
                   attention_mask=[[0, 0] + [1] * 8, [1] * 10])
    want = attnscope.knockout_sweep(alone, 6, bands=2, target=[3, 5])
    got = attnscope.knockout_sweep(padded, 8, bands=2, target=[3, 5])
    assert got.keys == [k + 2 for k in want.keys] and [n for n, _ in got.bands] == [n for n, _ in want.bands]
    assert (got.logp_after - want.logp_after).abs().max() < 1e-5
    monkeypatch.setenv("ATTNSCOPE_MAX_BYTES", "40000")  # one or two rows per decode call
    assert (attnscope.knockout_sweep(alone, 6, bands=2, target=[3, 5]).logp_after - want.logp_after).abs().max() < 1e-5
    monkeypatch.delenv("ATTNSCOPE_MAX_BYTES")
    monkeypatch.setattr(type(m), "decode_intervenes", property(lambda self: False))
    fwd = attnscope.knockout_sweep(alone, 6, bands=2, target=[3, 5])
    assert fwd.method.startswith("a forward of the prefix per key")
    assert (fwd.logp_after - want.logp_after).abs().max() < 1e-5
    single = attnscope.knockout(alone, 6, keys=[2], layers=want.bands[1][1], target=[3, 5])
    assert (want.logp_after[1, 2] - torch.tensor(single.logp_after, dtype=torch.float64)).abs().max() < 1e-5


def test_key_sweep_errors(toy_model):
    t = toy_model.run([[5, 9, 14, 5, 9, 21, 30, 5]])
    for kw, msg in [
        (dict(position=0), r"position 0 sees only itself: removing its one key leaves nothing"),
        (dict(position=5, layers=[0], bands=2), r"give layers= or bands=, not both"),
        (dict(position=5, bands=0), r"bands 0: expected a number of bands 1..3 or a \{name: layers\} dict"),
        (dict(position=5, bands={}), r"bands is empty"),
        (dict(position=5, bands={"x": [9]}), r"knockout layers: layer 9 is not an attention layer"),
        (dict(position=5, keys=[6]), r"keys: position 6 is after the query 5"),
    ]:
        with pytest.raises(ValueError, match=msg):
            attnscope.knockout_sweep(t, **kw)
    sweep = attnscope.knockout_sweep(t, 5, bands=2)
    assert sweep.keys == list(range(6)) and sweep.targets[0][0] == 30 and "most used keys" in repr(sweep)
    assert sweep.top(2)[0][1] == float(sweep.delta_logp[0, :, 0].min())
    pd = pytest.importorskip("pandas")
    df = sweep.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * 6 and list(df["key"][:6]) == list(range(6))
    assert df[f"delta_logp {sweep.targets[0][1]}"].tolist()[6:] == sweep.delta_logp[1, :, 0].tolist()


def test_logits_over_a_cache_refuses_what_does_not_fit(tmp_path, toy_model):
    _, m = exported(tmp_path, "llama", "sdpa")
    ids = torch.tensor([[7, 3, 9, 12, 5, 8]])
    k, v = m.prefill(ids[:, :5])
    want = m.logits(ids)[0, 5]
    assert (m.logits(ids[:, 5:], past=(k, v))[0, -1] - want).abs().max() < 1e-4  # one decode step = the forward
    for kw, msg in [
        (dict(past=(k,)), r"past: expected \(k, v\), each Tensor\[L, B, KV, P, D\]"),
        (dict(past=(k, v[:, :, :, :3])), r"past: expected the caches k, v \[L, 1, KV, P, D\] of the 1 rows"),
        (dict(past=(k, v), attention_mask=torch.ones(1, 4, dtype=torch.long)),
         r"attention_mask over a KV cache: expected \[1, 6\] \(cached \+ new positions\)"),
        (dict(past=(k, v), remove=torch.zeros(1, 1, 1, dtype=torch.bool)), r"remove: expected a bool Tensor\[1, 6, 6\]"),
    ]:
        with pytest.raises(ValueError, match=msg):
            m.logits(ids[:, 5:], **kw)
    with pytest.raises(ValueError, match="logits over a KV cache: this archive has no decode method"):
        toy_model.logits(ids[:, 5:], past=(k, v))
