"""Does this head matter? Head ablation: the output of one attention head (Σ_j p_ij v_j, before
the output projection) is replaced by zeros, or by its mean over the row's real positions, and
the prediction is compared with the model's own. `head_effects` sweeps every L × H head, several
heads per forward (one per batch row). Duck-typed on a Trace that keeps its model."""
import torch

from .budget import memory_budget
from .knockout import checked_query, target_tokens, predicted_position
from .streaming import Progress

__all__ = ["head_effects", "HeadEffects"]


class HeadEffects:
    """`head_effects`' result over the heads of the model's layers (rows of layers that are not
    attention layers, and heads not swept, are NaN). Per head: delta_logp (Tensor[L, H]) the
    change of Σ log p of the `targets` at `positions` (nats; negative = the head helped predict
    them), delta_entropy (Tensor[L, H]) the mean change of the predictive entropy there, and
    changed (Tensor[L, H]) the number of those positions whose top-1 token changes. `logp_before`
    is Σ log p without ablation; `mode` is "zero" or "mean"."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def to_pandas(self):
        """DataFrame, one row per swept (layer, head): Δ log p, Δ entropy, top-1 changes (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:  # an optional dependency
            raise ImportError("HeadEffects.to_pandas needs pandas: pip install pandas") from e
        L, H = self.delta_logp.shape
        done = [(l, h) for l in range(L) for h in range(H) if bool(torch.isfinite(self.delta_logp[l, h]))]
        return pd.DataFrame({"layer": [l for l, _ in done], "head": [h for _, h in done],
                             "delta_logp": [float(self.delta_logp[l, h]) for l, h in done],
                             "delta_entropy": [float(self.delta_entropy[l, h]) for l, h in done],
                             "top1_changes": [int(self.changed[l, h]) for l, h in done]})

    def top(self, n=5):
        """The `n` heads whose ablation lowers log p most: [((layer, head), Δ log p)]."""
        d = torch.nan_to_num(self.delta_logp, nan=float("inf")).flatten()
        order = torch.argsort(d)[:n]
        H = self.delta_logp.shape[1]
        return [((int(i) // H, int(i) % H), float(d[i])) for i in order if torch.isfinite(d[i])]

    def __repr__(self):
        what = f"{len(self.positions)} position(s) {self.positions[0]}..{self.positions[-1]}"
        top = ", ".join(f"L{l}H{h} {d:+.3f}" for (l, h), d in self.top(5))
        return (f"<attnscope.HeadEffects {self.mode} ablation of {int(torch.isfinite(self.delta_logp).sum())} heads at "
                f"{what}: Σ log p before {self.logp_before:.4f}; most needed heads (Δ log p) {top}>")


def _answer_positions(trace, model, batch, mask):
    """Positions whose predicted token is a real token: the answer's when the trace was
    generated; every real position of an encoder (each predicts its own token)."""
    real = [j for j in range(mask.shape[0]) if bool(mask[j])]
    if not model.causal:
        return real
    start = trace.prompt_len - 1 if trace.is_generated else real[0]
    return [j for j in real[:-1] if j >= start]


def _chosen_heads(model, layers, heads):
    attn = list(model.attention_layers)
    for name, v, valid in (("layers", layers, attn), ("heads", heads, range(model.n_heads))):
        for x in (v or []):
            if isinstance(x, bool) or not isinstance(x, int) or x not in valid:
                raise ValueError(f"{name}: {x!r} is not one of this model's {name} ({valid[0]}..{valid[-1]})")
    return [(l, h) for l in (layers or attn) for h in (heads or range(model.n_heads))]


def head_effects(trace, *, position=None, target=None, mode="zero", layers=None, heads=None, batch=0,
                 progress=True):
    """HeadEffects of ablating each head of `layers` × `heads` (None = all) in turn: its output
    replaced by zeros (`mode` "zero") or by its mean over the row's real positions ("mean"). The
    effect is measured at `position` on `target` (as in `knockout`), or, with position=None, on
    the whole answer: Σ log p of every real next token after the prompt (of a generated trace;
    of the whole text otherwise; an encoder with a language-model head: of every token at its
    own position). One forward per head, batched; a progress bar counts heads."""
    model, T, mask, _ = checked_query(trace, -1 if position is None else position, batch)
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode {mode!r}: expected 'zero' or 'mean'")
    real = [j for j in range(T) if bool(mask[j])]
    ids = trace.input_ids[batch, real][None]                              # [1, T'] the real tokens
    if position is None:
        positions = _answer_positions(trace, model, batch, mask)
        if not positions:
            raise ValueError("head_effects: the row has no next token to predict (one real token): give position=")
        tgt = [int(trace.input_ids[batch, predicted_position(model, j)]) for j in positions]
        targets = [(t, trace.token_label(t)) for t in tgt]
    else:
        positions = [position % T]
    at = torch.tensor([real.index(j) for j in positions])
    if model.causal and mode == "zero":  # a causal prediction at p depends on tokens 0..p only (a
        ids = ids[:, :int(at.max()) + 1]  # mean over positions takes every position: not cut)
    todo = _chosen_heads(model, layers, heads)
    L, H = model.n_layers, model.n_heads
    bytes_row = len(real) * (8 * max(1, model.vocab_size) + 64 * H * len(real))
    chunk = max(1, min(len(todo), 32, memory_budget() // 4 // max(1, bytes_row)))
    base = torch.log_softmax(model.logits(ids)[0, at].double(), -1)      # [n_pos, V]
    if position is not None:
        targets = target_tokens(trace, model, target, positions[0], batch, base[0])
        tgt = [t for t, _ in targets]
    pick = (lambda lp: lp[:, torch.arange(len(at)), tgt]) if position is None else (lambda lp: lp[:, 0, tgt])
    ent0 = -(base.exp() * base).sum(-1)                                   # [n_pos]
    top0 = base.argmax(-1)
    out = {k: torch.full((L, H), float("nan"), dtype=torch.float64) for k in ("d", "e", "c")}
    bar = Progress(len(todo), desc=f"{mode} ablation", unit="head", show=bool(progress))
    try:
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            ablate = torch.zeros(len(part), L, H, dtype=torch.bool)
            for r, (l, h) in enumerate(part):
                ablate[r, l, h] = True
            lp = torch.log_softmax(model.logits(ids.expand(len(part), -1), ablate=ablate,
                                                ablate_mode=mode)[:, at].double(), -1)   # [c, n_pos, V]
            d = pick(lp).sum(-1) - pick(base[None]).sum(-1)
            e = (-(lp.exp() * lp).sum(-1) - ent0).mean(-1)
            c = (lp.argmax(-1) != top0).sum(-1)
            for r, (l, h) in enumerate(part):
                out["d"][l, h], out["e"][l, h], out["c"][l, h] = d[r], e[r], c[r]
            bar.advance(len(part))
    finally:
        bar.close()
    return HeadEffects(mode=mode, positions=positions, targets=targets, logp_before=float(pick(base[None]).sum()),
                       delta_logp=out["d"], delta_entropy=out["e"], changed=out["c"],
                       model_id=trace.model_id, model_name=trace.model_name)
