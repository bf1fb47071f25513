"""The graph pass on attention written in ways a model family might: scores clamped before the
softmax (clamp_min, torch.maximum, the two-tensor torch.max as XGLM writes it) and learned sink
columns appended to the scores and sliced off after the softmax (GPT-OSS). Each archive is also
saved and reloaded, whose graph carries no tensor ranks (the sink slice's dim is then checked
at run time). References: the module's own probabilities, fp32."""
import pytest
import torch

from test_reloaded_graphs import D, H, V, PositiveDim

import attnscope


class Toy(PositiveDim):
    """The reloaded-graphs toy (embedding, one attention, LM head) with the attention written in
    `style`, and a learned sink logit per head."""

    def __init__(self, style):
        super().__init__(style)
        self.sinks = torch.nn.Parameter(torch.randn(H))

    def forward(self, ids, mask):
        B, T = ids.shape
        x = self.emb(ids)
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)   # [B, H, T, d]
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
        s = (q @ k.transpose(-1, -2) / (D // H) ** 0.5).masked_fill(~allowed, torch.finfo(torch.float32).min)
        s = s + torch.zeros_like(s).masked_fill(~allowed, -1e30)   # an additive mask that may overflow
        if self.style == "clamp_min":
            s = s.clamp_min(torch.finfo(torch.float32).min)
        elif self.style == "maximum":
            s = torch.maximum(s, torch.full_like(s, torch.finfo(torch.float32).min))
        elif self.style in ("max2", "sink"):
            s = torch.max(s, torch.full((), torch.finfo(torch.float32).min))
        if self.style == "sink":
            col = self.sinks.view(1, H, 1, 1).expand(B, H, T, 1)
            z = torch.cat([s, col], -1)
            p = torch.softmax(z - z.max(-1, keepdim=True).values, -1)[..., :-1]
        else:
            p = torch.softmax(s, -1)
        self.probs = p
        return self.out((p @ v).transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("style", ["clamp_min", "maximum", "max2", "sink"])
def test_sites_behind_clamps_and_sink_slices(tmp_path, style):
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mod = Toy(style).eval()
    with torch.no_grad():
        mod(ids, mask)
    want = mod.probs
    path = tmp_path / f"{style}.pt"
    torch.jit.save(torch.jit.trace(mod, (ids, mask)), str(path))
    for reload in (False, True):
        if reload:  # a graph without ranks
            torch.jit.save(torch.jit.load(str(path)), str(path))
        m = attnscope.load(str(path), device="cpu")
        assert ("softmax with sink" in m.describe()) == (style == "sink")
        t = m.run(ids, capture={"heads": [(0, 0), (0, 1)], "received": True, "attn_entropy": True}, attention_mask=mask)
        ok = mask.bool()[:, :, None]
        for h in range(H):
            got = t.get(f"head_map/L0H{h}")
            assert (got - want[:, h]).masked_fill(~ok, 0).abs().max() <= 1e-6, (style, reload)
        if style == "sink":
            share = (1 - want.sum(-1)).masked_fill(~mask.bool()[:, None], float("nan"))
            got = t.get("sink_share")[0]
            assert torch.equal(got.isnan(), share.isnan())
            assert (got - share).nan_to_num(0).abs().max() <= 1e-6 and share.nan_to_num(0).max() > 0.05
        else:
            assert "sink_share" not in t.captures


def test_a_slice_that_keeps_the_last_column_is_no_sink_site(tmp_path):
    """softmax(...)[..., 1:] drops the FIRST column: not trailing sink columns, so no site."""
    class Lead(Toy):
        def forward(self, ids, mask):
            B, T = ids.shape
            x = self.emb(ids)
            q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
            s = q @ k.transpose(-1, -2)
            z = torch.cat([self.sinks.view(1, H, 1, 1).expand(B, H, T, 1), s], -1)
            p = torch.softmax(z, -1)[..., 1:]
            return self.out((p @ v).transpose(1, 2).reshape(B, T, D))
    ids = torch.randint(0, V, (1, 5))
    torch.jit.save(torch.jit.trace(Lead("sink").eval(), (ids, torch.ones_like(ids))), str(tmp_path / "l.pt"))
    with pytest.raises(ValueError, match="no attention site found"):
        attnscope.load(str(tmp_path / "l.pt"), device="cpu")
