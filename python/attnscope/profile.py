"""Token profiles: how one query position attends, layer by layer, in numbers that answer the
seed's checklist (docs/python.md "Token profiles"):
  broad or narrow?   entropy against its uniform maximum (breadth = H / log n, n = keys it sees)
  looks back?        mean distance (tokens) and the mass beyond the local window
  self spike?        weight on itself
  where?             the top keys of the head-mean row, with their weights
and how these change from the first layer to the last.
"""
import torch

PROFILE_SCORES = ("entropy", "breadth", "distance", "beyond_local", "self", "prev", "sink", "learned_sink")


class TokenProfile:
    """Profile of query `position` of row `batch`: `heads` {score: Tensor[L, H]} (per head),
    `layers` {score: Tensor[L]} (mean over heads), `top_keys` [L] lists of (key position,
    label, weight) of the head-mean row, `keys_seen` [L, H] (keys with nonzero weight), `label`,
    `local_window`. Scores: entropy (nats), breadth (entropy / log keys_seen, 0 = one key, 1 =
    uniform), distance (tokens), beyond_local (mass farther than local_window), self, prev,
    sink (weight on the first real token), learned_sink (the share of the softmax taken by
    learned sink logits, 1 − Σ over the real keys: 0 for models without them).
    `to_pandas()`: one row per layer."""

    def __init__(self, position, batch, label, layer_ids, heads, top_keys, keys_seen, local_window):
        self.position, self.batch, self.label = position, batch, label
        self.layer_ids, self.heads, self.top_keys = list(layer_ids), heads, top_keys
        self.keys_seen, self.local_window = keys_seen, local_window
        self.layers = {k: v.nanmean(1) for k, v in heads.items()}
        self.model_id, self.model_name = "", ""  # the model measured (attnscope.identity)

    def __repr__(self):
        lines = [f"<attnscope.TokenProfile position {self.position} {self.label!r} (row {self.batch}), "
                 f"{len(self.layer_ids)} layers; mean over heads>",
                 f"{'layer':>5} {'breadth':>7} {'entropy':>7} {'dist':>7} {'>local':>6} {'self':>5} {'prev':>5} "
                 f"{'sink':>5}  top keys"]
        for i, l in enumerate(self.layer_ids):
            v = {k: float(t[i]) for k, t in self.layers.items()}
            keys = ", ".join(f"{p}:{lab} {w:.2f}" for p, lab, w in self.top_keys[i])
            lines.append(f"{l:>5} {v['breadth']:>7.2f} {v['entropy']:>7.2f} {v['distance']:>7.1f} "
                         f"{v['beyond_local']:>6.2f} {v['self']:>5.2f} {v['prev']:>5.2f} {v['sink']:>5.2f}  {keys}")
        learned = float(self.layers["learned_sink"].nan_to_num(0).max()) > 1e-4
        for name, v in self.stages().items():
            lines.append(f"{name:>6} layers: breadth {v['breadth']:.2f}, distance {v['distance']:.1f} tokens, "
                         f"beyond the local window {v['beyond_local']:.2f}, self {v['self']:.2f}, first token {v['sink']:.2f}"
                         + (f", learned sinks {v['learned_sink']:.2f}" if learned else ""))
        return "\n".join(lines)

    def stages(self):
        """{"early", "middle", "late": {score: mean}}: the head-mean scores averaged over the first,
        middle and last third of the layers (how the attention changes with depth)."""
        n = len(self.layer_ids)
        cuts = [0, max(1, n // 3), max(1, n // 3) + max(1, (n - n // 3) // 2), n]
        out = {}
        for name, a, b in zip(("early", "middle", "late"), cuts[:-1], cuts[1:]):
            if b > a:
                out[name] = {k: float(v[a:b].nanmean()) for k, v in self.layers.items()}
        return out

    def to_pandas(self):
        """DataFrame, one row per layer: the head means and the top keys (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("TokenProfile.to_pandas needs pandas: pip install pandas") from e
        rows = {"layer": self.layer_ids}
        rows.update({k: v.tolist() for k, v in self.layers.items()})
        rows["top_keys"] = [[(p, lab, round(w, 4)) for p, lab, w in keys] for keys in self.top_keys]
        return pd.DataFrame(rows)


def token_profile(trace, position, *, batch=0, top=3):
    """TokenProfile of query `position` (negative counts from the end) of row `batch` of a
    Trace: its attention row in every aggregate layer (Trace.attention_from: captured, or one
    run while the trace keeps its model), scored head by head. `top`: keys listed per layer."""
    if isinstance(top, bool) or not (isinstance(top, int) and top >= 1):
        raise ValueError(f"top={top!r}: expected an int >= 1")
    rows = trace.attention_from(position, batch=batch).double()        # [L, H, T] (checks position)
    T = rows.shape[-1]
    i = position % trace.input_ids.shape[1]
    if not bool(trace.attention_mask[batch, i]):
        raise ValueError(f"position {position} of row {batch} is padding: it has no attention")
    w = int(trace.spec.get("local_window", 8))
    j = torch.arange(T, dtype=torch.float64)
    d = (i - j).abs()
    real = trace.attention_mask[batch].bool()
    first = int(real.nonzero()[0])
    seen = (rows > 0).sum(-1)                                           # [L, H]
    ent = -(rows * rows.clamp_min(1e-300).log()).sum(-1)
    heads = {
        "entropy": ent,
        "breadth": torch.where(seen > 1, ent / seen.double().clamp_min(2).log(), float("nan")),
        "distance": (rows * d).sum(-1),
        "beyond_local": (rows * (d > w)).sum(-1),
        "self": rows[..., i],
        "prev": rows[..., i - 1] if i >= 1 and bool(real[i - 1]) else torch.full_like(ent, float("nan")),
        "sink": rows[..., first],
        # what the real keys did not get: learned sink logits (GPT-OSS); rounding only elsewhere
        "learned_sink": (1 - rows.sum(-1)).clamp_min(0),
    }
    mean_row = rows.mean(1)                                             # [L, T]
    k = min(top, T)
    weights, where = mean_row.topk(k, -1)
    labels = trace.labels[batch]
    top_keys = [[(int(p), labels[int(p)], float(x)) for x, p in zip(wr, pr) if x > 0]
                for wr, pr in zip(weights, where)]
    layers = trace.get("aggregate_layers").tolist() if "aggregate_layers" in trace.captures else list(range(rows.shape[0]))
    prof = TokenProfile(i, batch, labels[i], layers, heads, top_keys, seen, w)
    prof.model_id, prof.model_name = getattr(trace, "model_id", ""), getattr(trace, "model_name", "")
    return prof
