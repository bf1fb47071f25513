"""Does the attention matter? Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual
Associations"): remove the edges from a query position to chosen keys before the softmax, in
chosen layers and heads, and measure what the prediction at that position loses. `knockout` is
one intervention; `knockout_sweep` removes each earlier key in turn (per layer band), as one
batched decode step over the cached prefix. Duck-typed on a Trace that keeps its model."""
import math

import torch

from .budget import memory_budget
from .streaming import Progress

__all__ = ["knockout", "knockout_sweep", "KnockoutEffect", "KeySweep"]


class KnockoutEffect:
    """The effect of one knockout on the prediction at `position` (the distribution choosing
    token position+1; in an encoder with a language-model head, the token at `position`): for
    each target token, log p before and after and Δ log p (after −
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


class KeySweep:
    """`knockout_sweep`'s result: the prediction at `position` with the edge position → key
    removed, for every key of `keys`, in the layers of each band of `bands` [(name, layers)].
    logp_before (Tensor[n_targets]) and logp_after (Tensor[n_bands, n_keys, n_targets]) of the
    `targets` [(id, label)]; entropy_before (float) and entropy_after (Tensor[n_bands, n_keys]),
    nats; top1_before (id, label) and top1_after (Tensor[n_bands, n_keys] ids). `method` says how
    it ran. Δ log p = delta_logp (Tensor[n_bands, n_keys, n_targets]). `attention`
    (Tensor[L', H, n_keys], L' = `attention_layers`): the model's own attention from `position`
    to each key, what attention_from(band) averages: "looked at" beside "used"."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def delta_logp(self):
        return self.logp_after - self.logp_before

    @property
    def changed(self):
        """Tensor[n_bands, n_keys] bool: the top-1 token changed."""
        return self.top1_after != self.top1_before[0]

    def attention_from(self, band=0):
        """Tensor[n_keys]: the attention from `position` to each key, mean over the heads (the
        sweep's `heads`, or all) and the band's layers."""
        layers = self.bands[band][1]
        rows = [i for i, l in enumerate(self.attention_layers) if layers is None or l in layers]
        a = self.attention[rows]
        return (a if self.heads is None else a[:, list(self.heads)]).mean((0, 1))

    def rank_correlation(self, band=0, target=0):
        """Spearman's rank correlation between the attention to each key (attention_from) and
        −Δ log p of removing it: near 1 when what the query looks at most is what it uses most
        (NaN for fewer than 3 keys or constant values; ties ranked in key order)."""
        a, u = self.attention_from(band), -self.delta_logp[band, :, target]
        if len(a) < 3 or bool((a == a[0]).all()) or bool((u == u[0]).all()):
            return float("nan")
        ra, ru = (x.argsort(stable=True).argsort().double() for x in (a, u))
        return float(torch.corrcoef(torch.stack([ra, ru]))[0, 1])

    def to_pandas(self):
        """DataFrame, one row per (band, key): the key's token, the attention to it (band mean),
        Δ log p of each target, the entropy after and whether the top-1 changed (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:  # an optional dependency
            raise ImportError("KeySweep.to_pandas needs pandas: pip install pandas") from e
        rows = []
        for b, (name, _) in enumerate(self.bands):
            att = self.attention_from(b)
            for i, k in enumerate(self.keys):
                row = {"band": name, "key": k, "token": self.labels[k], "attention": float(att[i])}
                for t, (_, lab) in enumerate(self.targets):
                    row[f"delta_logp {lab}"] = float(self.delta_logp[b, i, t])
                row["entropy_after"] = float(self.entropy_after[b, i])
                row["top1_changed"] = bool(self.changed[b, i])
                rows.append(row)
        return pd.DataFrame(rows)

    def top(self, n=5, *, band=0, target=0):
        """The `n` keys whose removal lowers log p of `target` most in `band`: [(key, Δ log p)]."""
        d = self.delta_logp[band, :, target]
        order = torch.argsort(d)[:n]
        return [(self.keys[int(i)], float(d[i])) for i in order]

    def __repr__(self):
        lab = self.targets[0][1]
        lines = [f"<attnscope.KeySweep position {self.position}: {len(self.keys)} keys removed one at a time "
                 f"({self.method})>", f"  log p({lab!r}) before {float(self.logp_before[0]):.4f}"]
        for b, (name, _) in enumerate(self.bands):
            top = ", ".join(f"{k} {self.labels[k]!r} {d:+.3f}" for k, d in self.top(3, band=b))
            lines.append(f"  {name}: most used keys (Δ log p) {top}")
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


def predicted_position(model, position):
    """The position whose token the distribution at `position` predicts: the next one in a
    causal LM, the same one in an encoder with a language-model head (masked LM)."""
    return position + 1 if model.causal else position


def target_tokens(trace, model, target, position, batch, base):
    """[(id, label)] of the tokens whose log p is reported."""
    if target is None:
        ids, mask = trace.input_ids[batch], trace.attention_mask[batch]
        nxt = predicted_position(model, position)
        tid = int(ids[nxt]) if nxt < ids.shape[0] and bool(mask[nxt]) else int(base.argmax())
        return [(tid, trace.token_label(tid))]
    items = list(target) if isinstance(target, (list, tuple, range)) else [target]
    ids = [model.token_id(t, name="target") for t in items]
    return [(t, trace.token_label(t)) for t in ids]


def checked_query(trace, position, batch):
    """(model, T, the row's mask, position in 0..T-1) after checking the arguments."""
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
    return model, T, mask, position


def _checked_keys(keys, model, T, mask, position, batch):
    keys = _positions(keys, "keys", T)
    for j in keys:
        if not bool(mask[j]):
            raise ValueError(f"keys: position {j} of row {batch} is padding: no query attends to it")
        if model.causal and j > position:
            raise ValueError(f"keys: position {j} is after the query {position}: a causal model's query never sees it")
    return keys


def knockout(trace, position, *, keys, layers=None, heads=None, target=None, batch=0):
    """KnockoutEffect on the prediction at `position` of row `batch` when the attention from
    `position` to `keys` (a position or a list; negative counts from the end) is removed before
    the softmax in `layers` (model layers, None = every attention layer) and `heads` (None =
    every head). `target`: the token(s) whose log p is reported (default the token that follows
    in the trace, or the model's top-1 at the last position; in an encoder with a language-model
    head, the token at `position` itself; an id, a one-token str, or a list for contrast). One
    forward of the row twice (as it is, and knocked out)."""
    model, T, mask, position = checked_query(trace, position, batch)
    keys = _checked_keys(keys, model, T, mask, position, batch)
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
    targets = target_tokens(trace, model, target, position, batch, logp[0])
    ent = [float(-(p.exp() * p).sum()) for p in logp]
    top = [int(p.argmax()) for p in logp]
    return KnockoutEffect(position=position, keys=keys, layers=layers, heads=heads, targets=targets,
                          logp_before=[float(logp[0, t]) for t, _ in targets],
                          logp_after=[float(logp[1, t]) for t, _ in targets],
                          entropy_before=ent[0], entropy_after=ent[1],
                          top1_before=(top[0], trace.token_label(top[0])), top1_after=(top[1], trace.token_label(top[1])),
                          changed=top[0] != top[1])



def _bands(model, layers, bands):
    """[(name, layers or None)]: one band over `layers`, or `bands` contiguous bands of the
    attention layers (an int: early / middle / late for 3), or {name: layers}."""
    if bands is None:
        return [("all layers" if layers is None else f"layers {list(layers)}", layers)]
    if layers is not None:
        raise ValueError("give layers= or bands=, not both: bands choose the layers of each sweep")
    attn = list(model.attention_layers)
    if isinstance(bands, dict):
        if not bands:
            raise ValueError("bands is empty: give at least one {name: layers}")
        return [(str(k), v) for k, v in bands.items()]
    if isinstance(bands, bool) or not isinstance(bands, int) or not 1 <= bands <= len(attn):
        raise ValueError(f"bands {bands!r}: expected a number of bands 1..{len(attn)} or a {{name: layers}} dict")
    names = {3: ["early", "middle", "late"], 2: ["early", "late"]}.get(bands)
    out = []
    for b in range(bands):
        part = attn[b * len(attn) // bands:(b + 1) * len(attn) // bands]
        out.append((f"{names[b] + ' ' if names else ''}layers {part[0]}–{part[-1]}", part))
    return out


def _chunk_rows(model, prefix_len, n):
    """Interventions per decode call: the rows' grown caches (each layer's cat, with room for
    an archive whose decode still stacks them) and logits within a quarter of the budget."""
    L, KV = model.n_layers, max(1, model.n_kv_heads)
    per_row = 3 * L * KV * (prefix_len + 1) * (model.head_dim + max(model.v_head_dim, model.head_dim)) * 4 \
        + 8 * max(1, model.vocab_size)
    return max(1, min(n, 128, memory_budget() // 4 // per_row))


def _sweep_logits(model, ids, keys, pos, band, heads, bar):
    """Logits [1 + n_keys, V] at `pos` of the real tokens `ids` [T']: as they are, then with the
    edge pos → key removed for each key, in the band's layers and `heads`."""
    n = len(keys)
    if model.decode_intervenes:
        past = model.prefill(ids[None, :pos])
        rows, out = 1 + n, []
        chunk = _chunk_rows(model, pos, rows)
        for s in range(0, rows, chunk):
            c = min(chunk, rows - s)
            remove = torch.zeros(c, pos + 1, pos + 1, dtype=torch.bool)
            for r in range(c):
                if s + r > 0:
                    remove[r, pos, keys[s + r - 1]] = True
            kv = tuple(x.expand(-1, c, -1, -1, -1) for x in past)
            out.append(model.logits(ids[pos:pos + 1][None].expand(c, 1), remove=remove, layers=band, heads=heads,
                                    past=kv)[:, -1])
            bar.advance(c)
        return torch.cat(out)
    row = ids[:pos + 1][None]                     # a causal prediction at pos sees tokens 0..pos only
    out = [model.logits(row)[:, pos]]
    chunk = max(1, min(n, 16))
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        remove = torch.zeros(c, pos + 1, pos + 1, dtype=torch.bool)
        for r in range(c):
            remove[r, pos, keys[s + r]] = True
        out.append(model.logits(row.expand(c, -1), remove=remove, layers=band, heads=heads)[:, pos])
        bar.advance(c)
    return torch.cat(out)


def knockout_sweep(trace, position, *, keys=None, layers=None, bands=None, heads=None, target=None, batch=0,
                   progress=True):
    """KeySweep: which earlier tokens did the prediction at `position` use? For each key j of
    `keys` (default every real position the query sees, itself included), the prediction with the
    one edge position → j removed before the softmax, in `layers` (None = every attention layer)
    and `heads` (None = all), or in each band of `bands` (an int: that many contiguous bands of
    the attention layers, 3 = early / middle / late; or {name: layers}). `target` as in
    `knockout`. Removing edges from `position` changes only that row's computation, so on an
    archive whose decode method intervenes (Model.decode_intervenes) the prefix is cached once
    and every intervention is one row of one batched decode step; otherwise each is a forward of
    the first position+1 tokens. Causal models only. A progress bar counts the rows (progress=False:
    none)."""
    model, T, mask, position = checked_query(trace, position, batch)
    if not model.causal:
        raise ValueError("knockout_sweep: an encoder's rows all see each other, so removing one edge changes every "
                         "row after the first layer: use knockout() for each key")
    real = [j for j in range(T) if bool(mask[j])]
    seen = [j for j in real if j <= position]
    keys = seen if keys is None else _checked_keys(keys, model, T, mask, position, batch)
    if len(seen) < 2:
        raise ValueError(f"position {position} sees only itself: removing its one key leaves nothing to attend to")
    band_list = _bands(model, layers, bands)
    ids = trace.input_ids[batch, real]
    pos = real.index(position)
    rk = [real.index(j) for j in keys]
    bar = Progress(len(band_list) * (1 + len(keys)), desc="knockout sweep", unit="row", show=bool(progress))
    logps, base = [], None
    try:
        for _, band in band_list:
            lg = torch.log_softmax(_sweep_logits(model, ids, rk, pos, band, heads, bar).double(), -1)  # [1 + n, V]
            base = lg[0] if base is None else base
            logps.append(lg[1:])
    finally:
        bar.close()
    logp = torch.stack(logps)                                           # [n_bands, n_keys, V]
    seen_by = model.run(ids[None, :pos + 1], capture={"from_tokens": [pos], "top_k": 0,  # what the query looked at
                                                      "predictive_entropy": False})
    att = seen_by.captures["from"][:, 0, :, 0].double()                # [L', H, pos + 1]
    targets = target_tokens(trace, model, target, position, batch, base)
    tid = torch.tensor([t for t, _ in targets])
    top0 = int(base.argmax())
    return KeySweep(position=position, batch=batch, keys=keys, bands=band_list, heads=heads, targets=targets,
                    labels={j: trace.token_label(int(trace.input_ids[batch, j])) for j in keys},
                    query_label=trace.token_label(int(trace.input_ids[batch, position])),
                    logp_before=base[tid], logp_after=logp[..., tid], attention=att[..., rk],
                    attention_layers=seen_by.captures["aggregate_layers"].tolist(),
                    model_id=trace.model_id, model_name=trace.model_name,
                    entropy_before=float(-(base.exp() * base).sum()), entropy_after=-(logp.exp() * logp).sum(-1),
                    top1_before=(top0, trace.token_label(top0)), top1_after=logp.argmax(-1),
                    method="one batched decode step over the cached prefix" if model.decode_intervenes
                    else "a forward of the prefix per key (this archive's decode does not intervene)")
