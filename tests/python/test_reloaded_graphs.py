"""Graph-pass sites in archives reloaded by torch.jit.load, whose graphs carry no tensor ranks:
a softmax named by a positive dim index (dim=3 on [B, H, T, T], dim=2 on [B*H, T, T]) is
still found (checked at run time), while a softmax over another dim is not taken for attention."""
import torch

import attnscope

V, D, H = 32, 16, 2


class PositiveDim(torch.nn.Module):
    def __init__(self, style):
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.emb = torch.nn.Embedding(V, D)
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.out = torch.nn.Linear(D, V)
        self.probs = None

    def forward(self, ids, mask):
        B, T = ids.shape
        x = self.emb(ids)
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)   # [B, H, T, d]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = causal[None, None] & mask.bool()[:, None, None, :]
        s = q @ k.transpose(-1, -2) / (D // H) ** 0.5
        s = s.masked_fill(~allowed, -1e9)
        # a softmax over the query dim (2 of [B, H, T, 1]), between products: not attention,
        # which only the run can tell in a rank-less graph
        gate = torch.softmax(s.mean(-1, keepdim=True) @ torch.ones(1, 1), dim=2)
        if self.style == "4d":
            p = torch.softmax(s, dim=3)
        else:
            p = torch.softmax(s.reshape(B * H, T, T), dim=2).view(B, H, T, T)
        self.probs = p
        y = (p * gate) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def test_positive_softmax_dim_found_after_reload(tmp_path):
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    for style in ("4d", "3d"):
        mod = PositiveDim(style).eval()
        path = tmp_path / f"{style}.pt"
        torch.jit.save(torch.jit.trace(mod, (ids, mask)), str(path))
        m = attnscope.load(str(path), device="cpu")
        assert m.n_layers == 1 and m.n_heads == H and m.causal  # from the dry run at load
        t = m.run(ids, capture={"heads": [(0, 0), (0, 1)]}, attention_mask=mask)
        with torch.no_grad():
            mod(ids, mask)
        ok = mask.bool()[:, :, None]
        for h in range(H):
            got, want = t.get(f"head_map/L0H{h}"), mod.probs[:, h]
            assert (got - want).masked_fill(~ok, 0).abs().max() <= 1e-6, style
            assert got.masked_select(~ok.expand_as(got)).isnan().all()
        assert len(m.describe().split("site ")) - 1 >= 2  # both softmax sites instrumented, one idle
