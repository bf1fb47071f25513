"""The fused route at SDPA sites (q·kᵀ of a block, then one pass per row: softmax, entropy and
the aggregates, csrc/attnscope/fused_sdpa.cpp) against the materialised route (the same
attention written with softmax -> attnscope::capture) and against probabilities computed here in
float64: padded, causal, windowed, encoder (bidirectional, broadcast mask), additive-bias and
grouped-query masks; with and without a head-mean map (which takes the per-block path)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import attnscope
from attnscope._lib import load_library

load_library()


@pytest.fixture(autouse=True)
def two_threads():
    """Rows are cut into one part per thread: test with two even where the run gives one
    (pytest-xdist workers compute on one thread each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


B, T, C, H, KV, D, V = 2, 11, 32, 4, 2, 8, 50
KINDS = ["is_causal", "causal_padded", "left_padded", "window_padded", "encoder", "alibi_additive",
         "lowest_additive", "left_padded_lowest"]


def allowed(kind, mask):
    """[B, 1|1, T|1, T] bool of what each query may see (the model's real mask)."""
    T = mask.shape[1]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    real = mask.bool()[:, None, None, :]
    if kind == "encoder":
        return real  # [B, 1, 1, T]: broadcast over the queries
    causal = (j <= i)[None, None]
    if kind == "window_padded":
        causal = causal & (j > i - 3)[None, None]
    return causal & real


class Layer(torch.nn.Module):
    def __init__(self, kind, route):
        super().__init__()
        self.kind, self.route = kind, route
        self.emb = torch.nn.Embedding(V, C)
        self.q = torch.nn.Linear(C, H * D)
        self.k = torch.nn.Linear(C, KV * D)
        self.v = torch.nn.Linear(C, KV * D)
        self.out = torch.nn.Linear(H * D, V)
        self.slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625]).view(1, H, 1, 1)

    def mask_of(self, attention_mask):
        """(SDPA attn_mask or None, is_causal, additive [B, H|1, T, T] for the materialised route)."""
        ok = allowed(self.kind, attention_mask)
        T = attention_mask.shape[1]
        if self.kind == "is_causal":
            return None, True, torch.zeros(T, T).masked_fill(~ok[0, 0], float("-inf"))
        if self.kind in ("alibi_additive", "lowest_additive", "left_padded_lowest"):
            dist = (torch.arange(T)[None, :] - torch.arange(T)[:, None]).float()
            bias = self.slopes * dist if self.kind == "alibi_additive" else torch.zeros(1, 1, T, T)
            hide = float("-inf") if self.kind == "alibi_additive" else torch.finfo(torch.float32).min
            if self.kind == "left_padded_lowest":  # transformers' own left-padded causal mask
                bias = torch.zeros(1, 1, T, T)
            add = bias.masked_fill(~ok, hide)
            return add, False, add
        return ok, False, torch.zeros(ok.shape).masked_fill(~ok, float("-inf"))

    def forward(self, ids, attention_mask):
        B, T = ids.shape
        x = self.emb(ids)
        q = self.q(x).view(B, T, H, D).transpose(1, 2)
        k = self.k(x).view(B, T, KV, D).transpose(1, 2)
        v = self.v(x).view(B, T, KV, D).transpose(1, 2)
        m, causal, add = self.mask_of(attention_mask)
        scale = D ** -0.5
        if self.route == "fused":  # archives before format 4: capture on the query, then SDPA
            q = torch.ops.attnscope.capture_sdpa(q, k, m, causal, scale, 0)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=scale, enable_gqa=True)
        elif self.route == "op":  # attnscope::sdpa: while capturing, the output from the same probabilities
            o = torch.ops.attnscope.sdpa(q, k, v, m, 0.0, causal, scale, True, 0)
        else:
            kr, vr = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
            p = torch.softmax(q @ kr.transpose(-1, -2) * scale + add, dim=-1).nan_to_num(0.0)
            p = torch.ops.attnscope.capture(p, 0)
            o = p @ vr
        return self.out(o.transpose(1, 2).reshape(B, T, H * D))

    def reference(self, ids, attention_mask):
        """Probabilities [B, H, T, T] in float64, written out here."""
        B, T = ids.shape
        with torch.no_grad():
            x = self.emb(ids).double()
            q = (x @ self.q.weight.double().T + self.q.bias.double()).view(B, T, H, D).transpose(1, 2)
            k = (x @ self.k.weight.double().T + self.k.bias.double()).view(B, T, KV, D).transpose(1, 2)
            _, _, add = self.mask_of(attention_mask)
            s = q @ k.repeat_interleave(H // KV, 1).transpose(-1, -2) / math.sqrt(D) + add.double()
            return torch.softmax(s, -1).nan_to_num(0.0)


def inputs(t=T):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (B, t), generator=g)
    mask = torch.ones(B, t, dtype=torch.long)
    mask[1, t - 3:] = 0  # right padding: every real query still sees a key
    return ids, mask


def export(tmp_path, kind, route, t=T):
    torch.manual_seed(0)
    layer = Layer(kind, route).eval()
    ids, mask = inputs(t)
    if kind == "is_causal":
        mask = torch.ones_like(mask)
    if kind.startswith("left_padded"):  # the padded queries see no key at all: rows of -inf
        mask = mask.flip(1)
    path = tmp_path / f"{kind}-{route}.pt"
    meta = {"num_layers": 1, "num_heads": H, "vocab_size": V, "causal": kind != "encoder"}
    torch.jit.save(torch.jit.trace(layer, (ids, mask), check_trace=False), str(path),
                   _extra_files={"attnscope.json": json.dumps(meta)})
    return layer, path, ids, mask


SPECS = {
    "aggregates+heads": dict(received=True, attn_entropy=True, sink_tokens=2, from_tokens=[-1, 3],
                             heads=[(0, 1), (0, 3)], top_k=0, row_stats=True, local_window=3, pooled_maps=4),
    "with head-mean map": dict(received=True, attn_entropy=True, sink_tokens=2, from_tokens=[2],
                               layer_maps=[0], top_k=0),
    "one head only": dict(heads=[(0, 2)], top_k=0),
}


def close(a, b, tol=1e-5):
    a, b = a.double(), b.double()
    assert torch.equal(a.isnan(), b.isnan())
    return (a.nan_to_num(0) - b.nan_to_num(0)).abs().max().item() < tol


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("route", ["fused", "op", "op-blocks", "op-softmax"])
def test_fused_equals_materialised_and_reference(tmp_path, monkeypatch, kind, spec, route):
    # op-blocks / op-softmax: attnscope::sdpa through the GPU's ATen block route, run on the CPU
    # (ATTNSCOPE_SDPA_ROUTE): probabilities exp(q·kᵀ·scale + mask − lse) with the flash kernel's
    # log-sum-exp and entropy −Σ p·(z − lse), or a softmax per block.
    if "-" in route:
        route, sdpa_route = route.split("-")
        monkeypatch.setenv("ATTNSCOPE_SDPA_ROUTE", sdpa_route)
    layer, fused_path, ids, mask = export(tmp_path, kind, route)
    _, mat_path, _, _ = export(tmp_path, kind, "materialised")
    fused = attnscope.load(str(fused_path), device="cpu").run(ids, capture=SPECS[spec], attention_mask=mask)
    mat = attnscope.load(str(mat_path), device="cpu").run(ids, capture=SPECS[spec], attention_mask=mask)
    names = sorted(n for n in mat.captures if n != "aggregate_layers")
    assert names and names == sorted(n for n in fused.captures if n != "aggregate_layers")
    for n in names:
        assert close(fused.get(n), mat.get(n)), (kind, spec, n)
    # and against float64 probabilities: maps exactly, entropy and the received mean by formula
    p = layer.reference(ids, mask)
    q_ok = mask.bool()
    for (l, h) in SPECS[spec].get("heads", []):
        got = fused.get(f"head_map/L{l}H{h}")
        assert close(got[q_ok], p[:, h][q_ok]), (kind, h)
    if "attn_entropy" in SPECS[spec]:
        ent = -(p * p.clamp_min(1e-300).log()).sum(-1)  # [B, H, T]
        got = fused.get("attn_entropy")[0]
        assert close(got.permute(0, 2, 1)[q_ok], ent.permute(0, 2, 1)[q_ok])
        see = allowed(kind, mask).expand(B, 1, T, T)[:, 0] & q_ok[:, :, None]  # [B, Tq, Tk]
        count = see.sum(1).double()  # valid queries that can see each key
        mean = (p * q_ok[:, None, :, None]).sum(2) / count[:, None, :]
        got = fused.get("received_mean")[0]
        assert close(got, torch.where(count[:, None, :] > 0, mean, float("nan")))
        assert close(fused.get("received_count")[0], count[:, None, :].expand(B, H, T))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sdpa_route", ["auto", "blocks", "softmax"])
def test_sdpa_op_output_equals_sdpa(tmp_path, monkeypatch, kind, sdpa_route):
    # Outside a run attnscope::sdpa is SDPA itself (bit for bit); in a run that captures every
    # head its output comes from the recorder's probabilities: the logits agree to fp32 rounding.
    layer, path, ids, mask = export(tmp_path, kind, "op")
    torch.manual_seed(0)
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, KV, T, D), torch.randn(B, KV, T, D)
    m, causal, _ = layer.mask_of(mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, enable_gqa=True)
    assert torch.equal(torch.ops.attnscope.sdpa(q, k, v, m, 0.0, causal, None, True, 0), want)
    model = attnscope.load(str(path), device="cpu")
    plain = model.run(ids, capture={"top_k": 3}, attention_mask=mask)  # nothing captured: SDPA
    monkeypatch.setenv("ATTNSCOPE_SDPA_ROUTE", sdpa_route)
    full = model.run(ids, capture={"received": True, "attn_entropy": True, "top_k": 3}, attention_mask=mask)
    ok = mask.bool()
    assert close(full.entropy[ok], plain.entropy[ok], 1e-5)
    assert close(full.topk_probs[ok], plain.topk_probs[ok], 1e-6)
    with torch.no_grad():
        logits = layer(ids, mask)
    p = torch.softmax(logits.double(), -1)
    assert close(full.entropy[ok], (-(p * p.log()).sum(-1))[ok], 1e-5)


LONG_SPECS = {
    "aggregates+mean map+head": dict(received=True, attn_entropy=True, sink_tokens=2, from_tokens=[-1],
                                     layer_maps=[0], heads=[(0, 1)], top_k=0, row_stats=True, pooled_maps=37),
    "one head only": dict(heads=[(0, 2)], top_k=0),
}


@pytest.mark.parametrize("kind", ["is_causal", "causal_padded", "window_padded", "encoder"])
@pytest.mark.parametrize("spec", sorted(LONG_SPECS))
@pytest.mark.parametrize("sdpa_route", ["auto", "blocks"])
def test_long_rows_split_into_parts(tmp_path, monkeypatch, kind, spec, sdpa_route):
    # 700 tokens: several blocks of rows, cut into per-thread parts where the work read from the
    # mask is evenly split (causal, windowed and encoder rows cost differently); partial received
    # sums/max merged; a head-mean map (tasks then run every head of their rows, the first
    # writing each row, the others adding); map rows written whole into unfilled memory.
    # Equal to the materialised route.
    spec = LONG_SPECS[spec]
    _, fused_path, ids, mask = export(tmp_path, kind, "op", t=700)
    _, mat_path, _, _ = export(tmp_path, kind, "materialised", t=700)
    monkeypatch.setenv("ATTNSCOPE_SDPA_ROUTE", sdpa_route)  # blocks: several blocks of rows (2^18 elements)
    got = attnscope.load(str(fused_path), device="cpu").run(ids, capture=spec, attention_mask=mask)
    want = attnscope.load(str(mat_path), device="cpu").run(ids, capture=spec, attention_mask=mask)
    names = sorted(n for n in want.captures if n != "aggregate_layers")
    assert names == sorted(n for n in got.captures if n != "aggregate_layers")
    assert len(names) >= (1 if "received" not in spec else 17), names
    for n in names:
        # row_distance is in tokens (up to ~T): 1e-5 relative to the largest, as fp32 can hold it
        tol = 1e-5 * max(1.0, want.get(n).nan_to_num(0).abs().max().item()) if n == "row_distance" else 1e-5
        assert close(got.get(n), want.get(n), tol), (kind, n)


def test_unknown_sdpa_route_is_refused_by_name(tmp_path, monkeypatch):
    _, path, ids, mask = export(tmp_path, "causal_padded", "op")
    model = attnscope.load(str(path), device="cpu")
    monkeypatch.setenv("ATTNSCOPE_SDPA_ROUTE", "fastest")
    with pytest.raises(RuntimeError, match="ATTNSCOPE_SDPA_ROUTE=fastest is not a route: expected auto, blocks or softmax"):
        model.run(ids, capture={"received": True, "top_k": 0}, attention_mask=mask)


@pytest.mark.parametrize("vocab", [2, 50, V])
def test_row_stats_with_few_and_many_copies(tmp_path, vocab):
    # The fused route sums a query's duplicate and induction keys from its list of earlier copies
    # when they are few, and compares every key's ids when they are many (a repeated token):
    # ids from 2 values take the second way almost everywhere, from 50 the first at most rows
    # after the first few, a mix of both mixes them. Equal to the materialised route either way.
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (B, 700), generator=g)
    if vocab == V:  # long runs of one token inside otherwise varied text
        ids[:, 100:300] = 7
    _, fused_path, _, mask = export(tmp_path, "causal_padded", "op", t=700)
    _, mat_path, _, _ = export(tmp_path, "causal_padded", "materialised", t=700)
    spec = dict(row_stats=True, top_k=0)
    got = attnscope.load(str(fused_path), device="cpu").run(ids, capture=spec, attention_mask=mask)
    want = attnscope.load(str(mat_path), device="cpu").run(ids, capture=spec, attention_mask=mask)
    for n in ("row_duplicate", "row_induction", "row_self", "row_prev", "row_local"):
        assert close(got.get(n), want.get(n)), (vocab, n)
    assert got.get("row_duplicate").nan_to_num(0).sum() > 1.0  # duplicates exist and carry weight
