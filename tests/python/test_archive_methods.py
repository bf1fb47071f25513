"""An archive's methods are checked like its forward: a `decode` (KV-cache) method that returns
the wrong number of values or shapes is refused by name, never read past its end."""
import pytest
import torch

import attnscope

V, L, KV, D = 16, 1, 1, 4


class Honest(torch.nn.Module):
    """forward(ids, mask) -> logits [B, T, V]; decode -> (logits, k, v), caches [L, B, KV, T, D]."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 16)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        q = x[:, :, :4].unsqueeze(1)  # one head of width 4: the attention site the core captures
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return x + a.squeeze(1).sum(-1, keepdim=True)

    def grown(self, past, input_ids):
        return torch.cat([past, torch.zeros(1, input_ids.shape[0], 1, input_ids.shape[1], 4)], 3)

    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        return self.emb(input_ids), self.grown(past_k, input_ids), self.grown(past_v, input_ids)


class TwoValues(Honest):
    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        return self.emb(input_ids), self.grown(past_k, input_ids)


class NarrowV(Honest):
    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        k = self.grown(past_k, input_ids)
        return self.emb(input_ids), k, k[:, :, :, :, :1]


class FlatLogits(Honest):
    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        return self.emb(input_ids)[:, :, 0], self.grown(past_k, input_ids), self.grown(past_v, input_ids)


KINDS = {0: Honest, 1: TwoValues, 2: NarrowV, 3: FlatLogits}


def model(kind):
    info = {"family": "toy", "num_layers": L, "num_heads": 1, "num_kv_heads": KV, "head_dim": D, "vocab_size": V}
    return attnscope.from_module(torch.jit.script(KINDS[kind]()), device="cpu", info=info)


@pytest.mark.parametrize("kind,msg", [
    (1, r"decode method returned 2 values; expected \(logits \[B, t, V\], k_cache, v_cache\)"),
    (2, r"decode method returned caches of shapes \[1, 1, 1, 3, 4\] and \[1, 1, 1, 3, 1\]"),
    (3, r"decode method returned logits of shape \[1, 3\]; expected \[1, 3, V\]"),
])
def test_a_decode_that_lies_is_refused_by_name(kind, msg):
    m = model(kind)
    with pytest.raises(ValueError, match=msg):
        m.generate([[1, 2, 3]], max_new_tokens=2, progress=False, capture={"top_k": 0})
    with pytest.raises(ValueError, match=msg):
        m.prefill(torch.tensor([[1, 2, 3]]))


def test_an_honest_decode_generates():
    t = model(0).generate([[1, 2, 3]], max_new_tokens=2, progress=False, capture={"top_k": 0}, stop=[])
    assert t.input_ids.shape == (1, 5) and t.generation["kv_cache"] is True
    k, v = model(0).prefill(torch.tensor([[1, 2, 3]]))
    assert k.shape == (L, 1, KV, 3, D)
