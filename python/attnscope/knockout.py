"""Does the attention matter? Attention knockout (Geva et al. 2023): remove the edges from a
query position to chosen keys before the softmax, in chosen layers and heads, and measure what
the prediction at that position loses. Duck-typed on a Trace that keeps its model."""
import math

import torch

__all__ = ["knockout", "KnockoutEffect"]


class KnockoutEffect:
    """The effect of one knockout on the prediction at `position` (the distribution choosing
    token position+1): for each target token, log p before and after and Δ log p (after −
    before); predictive entropy before and after (nats); the top-1 token before and after and
    whether it `changed`. `keys`, `layers` (None = all attention layers), `heads` (None = all)
    say what was removed."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def delta_logp(self):
        return [a - b for a, b in zip(self.logp_after, self.logp_before)]

    def __repr__(self):
        where = f"layers {self.layers if self.layers is not None else 'all'}, heads " \
                f"{self.heads if self.heads is not None else 'all'}"
        lines = [f"<attnscope.KnockoutEffect position {self.position} → keys {self.keys} removed ({where})>"]
        for (tid, lab), b, a in zip(self.targets, self.logp_before, self.logp_after):
            lines.append(f"  log p({lab!r}) {b:.4f} → {a:.4f} (Δ {a - b:+.4f}; p {math.exp(b):.3f} → {math.exp(a):.3f})")
        lines.append(f"  entropy {self.entropy_before:.4f} → {self.entropy_after:.4f} nats; top-1 "
                     f"{self.top1_before[1]!r} → {self.top1_after[1]!r}{' (changed)' if self.changed else ''}")
        return "\n".join(lines)


def _positions(v, name, T):
    items = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise ValueError(f"{name} {v!r}: expected a position or a list of positions (0..{T - 1})")
    items = list(items)
    if not items:
        raise ValueError(f"{name} is empty: give at least one key position")
    for x in items:
        if isinstance(x, bool) or not isinstance(x, int) or not -T <= x < T:
            raise ValueError(f"{name}: {x!r} is not a position of this {T}-token row ({-T}..{T - 1})")
    return sorted({x % T for x in items})


def _targets(trace, model, target, position, batch, base):
    """[(id, label)] of the tokens whose log p is reported."""
    if target is None:
        ids, mask = trace.input_ids[batch], trace.attention_mask[batch]
        nxt = position + 1
        tid = int(ids[nxt]) if nxt < ids.shape[0] and bool(mask[nxt]) else int(base.argmax())
        return [(tid, trace.token_label(tid))]
    items = list(target) if isinstance(target, (list, tuple, range)) else [target]
    ids = [model.token_id(t, name="target") for t in items]
    return [(t, trace.token_label(t)) for t in ids]


def knockout(trace, position, *, keys, layers=None, heads=None, target=None, batch=0):
    """KnockoutEffect on the prediction at `position` of row `batch` when the attention from
    `position` to `keys` (a position or a list; negative counts from the end) is removed before
    the softmax in `layers` (model layers, None = every attention layer) and `heads` (None =
    every head). `target`: the token(s) whose log p is reported (default the token that follows
    in the trace, or the model's top-1 at the last position; an id, a one-token str, or a list
    for contrast). One forward of the row twice (as it is, and knocked out)."""
    model = getattr(trace, "model", None)
    if model is None:
        raise ValueError("knockout needs a trace that keeps its model (Model.run / generate; not one read from a file "
                         "or released)")
    B, T = trace.input_ids.shape
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch < B:
        raise ValueError(f"batch {batch!r} out of range: the trace has {B} rows")
    if isinstance(position, bool) or not isinstance(position, int) or not -T <= position < T:
        raise ValueError(f"position {position!r} out of range: the trace has {T} tokens ({-T}..{T - 1})")
    position %= T
    mask = trace.attention_mask[batch]
    if not bool(mask[position]):
        raise ValueError(f"position {position} of row {batch} is padding: it predicts nothing")
    keys = _positions(keys, "keys", T)
    for j in keys:
        if not bool(mask[j]):
            raise ValueError(f"keys: position {j} of row {batch} is padding: no query attends to it")
        if model.causal and j > position:
            raise ValueError(f"keys: position {j} is after the query {position}: a causal model's query never sees it")
    seen = [j for j in range(T) if bool(mask[j]) and (j <= position or not model.causal)]
    if set(seen) <= set(keys):
        raise ValueError(f"keys: removing every key position {position} sees ({seen[0]}..{seen[-1]}) leaves its "
                         "attention nothing to attend to: keep at least one")
    row = trace.input_ids[batch:batch + 1].repeat(2, 1)
    remove = torch.zeros(2, T, T, dtype=torch.bool)
    remove[1, position, keys] = True
    logits = model.logits(row, trace.attention_mask[batch:batch + 1].repeat(2, 1), remove=remove, layers=layers,
                          heads=heads)[:, position].double()
    logp = torch.log_softmax(logits, -1)                                  # [2, V]
    targets = _targets(trace, model, target, position, batch, logp[0])
    ent = [float(-(p.exp() * p).sum()) for p in logp]
    top = [int(p.argmax()) for p in logp]
    return KnockoutEffect(position=position, keys=keys, layers=layers, heads=heads, targets=targets,
                          logp_before=[float(logp[0, t]) for t, _ in targets],
                          logp_after=[float(logp[1, t]) for t, _ in targets],
                          entropy_before=ent[0], entropy_after=ent[1],
                          top1_before=(top[0], trace.token_label(top[0])), top1_after=(top[1], trace.token_label(top[1])),
                          changed=top[0] != top[1])
