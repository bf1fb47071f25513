"""Head ablation against an independent reference: transformers' own model (random small
configs, fp32) with a forward pre-hook on the attention's output projection that replaces one
head's slice of its input (the head's output Σ_j p_ij v_j) by zeros or by its mean over the
positions, to 1e-5 in log p. SDPA sites (the output is changed) and softmax sites (the
probabilities are: the output is linear in them) are both checked, on GQA, a window, GPT-2 and
learned sinks, softcapping (Gemma 2) and an encoder with an
LM head (BERT: every position predicts its own token)."""

import pytest
import torch

import attnscope

transformers = pytest.importorskip("transformers")
from test_knockout import exported  # noqa: E402


def out_proj(model, layer):
    if hasattr(model, "transformer"):  # GPT-2
        return model.transformer.h[layer].attn.c_proj
    if hasattr(model, "bert"):
        return model.bert.encoder.layer[layer].attention.output.dense
    return model.model.layers[layer].self_attn.o_proj


def reference_logp(model, ids, layer, head, mode):
    """log p [T, V] with head `head` of `layer` ablated by a hook on its output projection."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def hook(_, args):
        x = args[0].clone()
        part = x[..., head * D:(head + 1) * D]
        x[..., head * D:(head + 1) * D] = 0 if mode == "zero" else part.mean(1, keepdim=True)
        return (x,) + args[1:]

    handle = out_proj(model, layer).register_forward_pre_hook(hook) if layer is not None else None
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits[0].double().log_softmax(-1)
    finally:
        if handle:
            handle.remove()


@pytest.mark.parametrize("family,attention", [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"),
                                              ("gpt2", "eager"), ("gpt2", "sdpa"), ("gpt_oss", "eager"),
                                              ("gemma2", "eager"), ("bert_mlm", "sdpa")])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_head_ablation_equals_a_hooked_forward(tmp_path, family, attention, mode):
    model, m = exported(tmp_path, family, attention)
    ids = torch.randint(3, 64, (1, 11), generator=torch.Generator().manual_seed(7))
    trace = m.run(ids)
    eff = attnscope.head_effects(trace, mode=mode, progress=False)     # the whole text: Σ log p of tokens 1..10
    plain = reference_logp(model, ids, None, None, mode)
    at, nxt = torch.arange(10), ids[0, 1:]
    if not m.causal:  # a masked LM: every position predicts its own token
        at, nxt = torch.arange(11), ids[0]
    base = plain[at, nxt].sum()
    assert abs(eff.logp_before - float(base)) < 1e-5
    moved = 0
    for layer in range(m.n_layers):
        for head in range(m.n_heads):
            want = reference_logp(model, ids, layer, head, mode)
            got = torch.log_softmax(m.logits(ids, ablate=_one(m, layer, head), ablate_mode=mode)[0].double(), -1)
            assert (got - want).abs().max() < 1e-5, (family, attention, mode, layer, head)
            d = float(want[at, nxt].sum() - base)
            assert abs(float(eff.delta_logp[layer, head]) - d) < 1e-5
            moved = max(moved, abs(d))
    assert moved > 1e-3  # ablating some head changes the prediction: the test can fail


def _one(m, layer, head, rows=1):
    a = torch.zeros(rows, m.n_layers, m.n_heads, dtype=torch.bool)
    a[:, layer, head] = True
    return a


def test_mean_ablation_uses_the_real_positions_and_decode_takes_zero(tmp_path):
    _, m = exported(tmp_path, "llama", "sdpa")
    row = [7, 3, 9, 12, 5, 8, 2, 11]
    alone = m.logits(torch.tensor([row]), ablate=_one(m, 1, 2), ablate_mode="mean")[0]
    padded = m.logits(torch.tensor([[1, 1] + row]), torch.tensor([[0, 0] + [1] * 8]), ablate=_one(m, 1, 2),
                      ablate_mode="mean")[0, 2:]
    assert (alone - padded).abs().max() < 1e-5  # the mean is over the row's real positions only
    ids = torch.tensor([row])
    past = m.prefill(ids[:, :7])
    with pytest.raises(ValueError, match="ablate mode 'mean' over a KV cache: a mean over positions needs every"):
        m.logits(ids[:, 7:], past=past, ablate=_one(m, 1, 2), ablate_mode="mean")
    for kw, msg in [(dict(ablate=torch.zeros(1, 5, 4, dtype=torch.bool)), r"ablate: expected a bool Tensor\[1, 2, 4\]"),
                    (dict(ablate=_one(m, 0, 0), ablate_mode="median"), r"ablate_mode 'median': expected 'zero' or 'mean'"),
                    (dict(layers=[0]), r"layers=/heads= choose where `remove` applies: give remove= too")]:
        with pytest.raises(ValueError, match=msg):
            m.logits(ids, **kw)


def test_head_effects_at_a_position_and_on_an_answer(toy_model):
    t = toy_model.run([[5, 9, 14, 5, 9, 21, 30, 5]])
    one = attnscope.head_effects(t, position=6, target=[5, 9], layers=[1, 2], heads=[0, 3], progress=False)
    assert torch.isnan(one.delta_logp[0]).all() and torch.isnan(one.delta_logp[1, 1])
    assert torch.isfinite(one.delta_logp[1, 0]) and one.positions == [6] and [x for x, _ in one.targets] == [5, 9]
    if __import__("importlib").util.find_spec("pandas"):
        df = one.to_pandas()
        assert len(df) == 4 and df["delta_logp"].tolist() == [float(one.delta_logp[l, h]) for l in (1, 2) for h in (0, 3)]
    assert "ablation of 4 heads" in repr(one) and one.top(1)[0][1] == float(torch.nan_to_num(
        one.delta_logp, nan=1e9).min())
    gen = t.model.generate([5, 9, 14], max_new_tokens=4, progress=False)
    ans = attnscope.head_effects(gen, progress=False, layers=[0])
    assert ans.positions == list(range(gen.prompt_len - 1, gen.input_ids.shape[1] - 1))
    for kw, msg in [(dict(mode="half"), r"mode 'half': expected 'zero' or 'mean'"),
                    (dict(layers=[5]), r"layers: 5 is not one of this model's layers \(0..2\)"),
                    (dict(heads=[True]), r"heads: True is not one of this model's heads"),
                    (dict(position=40), r"position 40 out of range: the trace has 8 tokens")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.head_effects(t, progress=False, **kw)
