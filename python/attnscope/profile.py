"""Token profiles: how one query position attends, layer by layer, in numbers that answer the
seed's checklist (docs/python.md "Token profiles"):
  broad or narrow?   entropy against its uniform maximum (breadth = H / log n, n = keys it sees)
  looks back?        mean distance (tokens) and the mass beyond the local window
  self spike?        weight on itself
  where?             the top keys of the head-mean row, with their weights
and how these change from the first layer to the last; and each score against the same
score of the trace's other real tokens (same layer, same head), from the row statistics that
one run captures for every token: is this token's attention unusual, or what every token does?
"""
import numpy as np
import torch

from .marks import high_entropy_positions
from .windows import token_range, token_window

PROFILE_SCORES = ("entropy", "breadth", "distance", "beyond_local", "self", "prev", "sink", "learned_sink")
# The scores every row's statistics give (the capture names; docs/capture.md "Row statistics").
# breadth has none: the number of keys each row sees is not captured for every row.
BASELINE_SCORES = ("entropy", "distance", "beyond_local", "self", "prev", "sink", "learned_sink")
_ROWS = {"entropy": "attn_entropy", "distance": "row_distance", "local": "row_local", "self": "row_self",
         "prev": "row_prev", "sink": "sink_mass_rows"}
BAND = (0.1, 0.5, 0.9)  # the quantiles of the other tokens drawn as a band and a median


class TokenProfile:
    """Profile of query `position` of row `batch`: `heads` {score: Tensor[L, H]} (per head),
    `layers` {score: Tensor[L]} (mean over heads), `top_keys` [L] lists of (key position,
    label, weight) of the head-mean row, `keys_seen` [L, H] (keys with nonzero weight), `label`,
    `local_window`. Scores: entropy (nats), breadth (entropy / log keys_seen, 0 = one key, 1 =
    uniform), distance (tokens), beyond_local (mass farther than local_window), self, prev,
    sink (weight on the first real token), learned_sink (the share of the softmax taken by
    learned sink logits, 1 − Σ over the real keys: 0 for models without them).
    `sees_later`: True when the row puts weight on a key after itself (an encoder; False for a
    causal row, which is the same in any text that shares tokens 0..position).

    Against the other real tokens of the trace (None when the trace has no row statistics and
    no model to compute them): `percentile` {score: Tensor[L, H]} (the share of other tokens
    with a lower score in that layer and head, ties counted half: 0.5 = ordinary),
    `layer_percentile` {score: Tensor[L]} (the head mean against theirs), `band` {score:
    Tensor[L, 3]} (their head means' 10th, 50th and 90th percentiles), `n_baseline` (tokens),
    `baseline` (which: "the response", "the text", "positions s..e").
    `to_pandas()`: one row per layer."""

    def __init__(self, position, batch, label, layer_ids, heads, top_keys, keys_seen, local_window):
        self.position, self.batch, self.label = position, batch, label
        self.layer_ids, self.heads, self.top_keys = list(layer_ids), heads, top_keys
        self.keys_seen, self.local_window = keys_seen, local_window
        self.layers = {k: v.nanmean(1) for k, v in heads.items()}
        self.sees_later = False
        self.percentile = self.layer_percentile = self.band = None
        self.n_baseline, self.baseline = 0, ""
        self.model_id, self.model_name = "", ""  # the model measured (attnscope.identity)

    def strongest(self, score, *, largest=True):
        """Per layer, the head with the largest (or smallest) `score` -> (Tensor[L] values,
        Tensor[L] head indices): a spike lives in single heads, which the head mean hides."""
        if score not in self.heads:
            raise ValueError(f"score {score!r}: expected one of {', '.join(self.heads)}")
        t = self.heads[score].nan_to_num(float("-inf") if largest else float("inf"))
        v, h = (t.max(1) if largest else t.min(1))
        return torch.where(v.isinf(), float("nan"), v), h

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
        if self.layer_percentile is not None:
            pct = {k: float(v.nanmean()) for k, v in self.layer_percentile.items()}
            lines.append(f"against {self.n_baseline} other tokens of {self.baseline} (mean percentile over layers, "
                         "0.5 = ordinary): " + ", ".join(f"{k} {v:.2f}" for k, v in pct.items()
                                                         if k != "learned_sink" or learned))
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


def token_profile(trace, position, *, batch=0, top=3, baseline="auto"):
    """TokenProfile of query `position` (negative counts from the end) of row `batch` of a
    Trace: its attention row in every aggregate layer (Trace.attention_from: captured, or one
    run while the trace keeps its model), scored head by head. `top`: keys listed per layer.
    baseline: the tokens it is measured against (baseline_tokens): "auto" (a generated trace's
    response, else every real token), "all", or (start, stop)."""
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
    prof.sees_later = bool((rows[..., i + 1:] > 0).any())
    prof.model_id, prof.model_name = getattr(trace, "model_id", ""), getattr(trace, "model_name", "")
    _set_baseline(prof, trace, *baseline_tokens(trace, batch, baseline))
    return prof


def baseline_tokens(trace, batch, baseline):
    """(Tensor[T] bool, words): the real tokens of row `batch` a profile is measured against. Mean
    distance, entropy and the first token's weight change with the keys a row sees, so the
    default compares like with like where it can: a generated trace's response ("auto")."""
    T = trace.input_ids.shape[1]
    if isinstance(baseline, str) and baseline in ("auto", "all"):
        gen = baseline == "auto" and getattr(trace, "is_generated", False)
        s, e = token_window(trace, batch, "response" if gen else None)
        what = "the response" if gen else "the text"
    elif isinstance(baseline, str):
        raise ValueError(f"baseline {baseline!r}: expected 'auto', 'all' or (start, stop)")
    else:
        s, e = token_range(baseline, T, name="baseline")
        what = f"positions {s}..{e - 1}"
    keep = torch.zeros(T, dtype=torch.bool)
    keep[s:e] = True
    return keep & trace.attention_mask[batch].bool(), what


def row_scores(trace, *, batch=0):
    """{score: Tensor[L, H, T]} (float64) of every query row of row `batch`, from the row
    statistics (captured with "all", or one run while the trace keeps its model), NaN where a
    row does not define the score (padding; prev of a first token); None when the trace has
    neither. The scores are the TokenProfile's, but breadth (the keys each row sees are not kept)
    and learned_sink for models without learned sinks."""
    names = list(_ROWS.values()) + ["aggregate_layers"]
    trace.ensure(names)
    if any(n not in trace.captures for n in names) or int(trace.spec.get("sink_tokens", 1)) > 1:
        return None  # sink_tokens > 1 made "sink" the mass of several first tokens
    get = {k: trace.get(c)[:, batch].double() for k, c in _ROWS.items()}      # [L, H, T]
    share = trace.get("sink_share")[:, batch].double() if "sink_share" in trace.captures else None
    sinks = 0.0 if share is None else share.nan_to_num(0)      # what the real keys did not get
    out = {k: get[k] for k in ("entropy", "distance", "self", "prev", "sink")}
    out["beyond_local"] = (1 - sinks - get["local"]).clamp_min(0)
    if share is not None:  # models with learned sinks only
        out["learned_sink"] = sinks.clone()
    pad = ~trace.attention_mask[batch].bool()
    return {k: v.masked_fill(pad, float("nan")) for k, v in out.items()}


def percentile_of(value, others):
    """Share of `others` [..., N] below `value` [...] (ties half), NaN-free entries only."""
    ok = ~others.isnan()
    n = ok.sum(-1).double()
    below = ((others < value.unsqueeze(-1)) & ok).sum(-1) + 0.5 * ((others == value.unsqueeze(-1)) & ok).sum(-1)
    return torch.where((n > 0) & ~value.isnan(), below / n.clamp_min(1), float("nan"))


def _set_baseline(prof, trace, keep, what):
    scores = row_scores(trace, batch=prof.batch)
    if scores is None:
        return
    keep = keep.clone()
    keep[prof.position] = False
    prof.n_baseline, prof.baseline = int(keep.sum()), what
    prof.percentile, prof.layer_percentile, prof.band = {}, {}, {}
    q = torch.tensor(BAND, dtype=torch.float64)
    for k in (k for k in BASELINE_SCORES if k in scores):
        mine, others = scores[k][..., prof.position], scores[k][..., keep]   # [L, H], [L, H, N]
        prof.percentile[k] = percentile_of(mine, others)
        means = others.nanmean(1)                                             # [L, N]: head means
        prof.layer_percentile[k] = percentile_of(mine.nanmean(1), means)
        prof.band[k] = torch.stack([m[~m.isnan()].quantile(q) if (~m.isnan()).any() else
                                    torch.full((3,), float("nan"), dtype=torch.float64) for m in means])


class ProfileTable:
    """Token profiles of several positions against the trace's other real tokens, from one run's
    row statistics. `rows`: one dict per position: position, label, next_entropy (nats, the
    mark's own), and per score s: s (mean over layers and heads), s_pct (its percentile among
    the other real tokens' means, 0.5 = ordinary), s_top and s_head (the strongest layer and
    head: a spike lives in single heads) and s_top_pct (its percentile among the other tokens'
    strongest). `to_pandas()`."""

    def __init__(self, rows, scores, n_tokens, baseline):
        self.rows, self.scores, self.n_tokens, self.baseline = rows, scores, n_tokens, baseline

    def __len__(self):
        return len(self.rows)

    def to_pandas(self):
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("ProfileTable.to_pandas needs pandas: pip install pandas") from e
        return pd.DataFrame(self.rows)

    def __repr__(self):
        head = f"{'pos':>5} {'token':<14} {'H(next)':>7}  " + "  ".join(f"{s[:12]:>27}" for s in self.scores)
        lines = [f"<attnscope.ProfileTable {len(self.rows)} positions against the other tokens of {self.baseline} "
                 f"({self.n_tokens} in all): mean (percentile), strongest value@head (percentile)>", head]
        for r in self.rows:
            cells = "  ".join(f"{r[s]:>5.2f} ({r[s + '_pct']:.2f}) {r[s + '_top']:.2f}@{r[s + '_head']:<6}"
                              f"({r[s + '_top_pct']:.2f})"
                              for s in self.scores)
            lines.append(f"{r['position']:>5} {r['label'][:14]:<14} {r['next_entropy']:>7.2f}  {cells}")
        return "\n".join(lines)


def profile_table(trace, positions=None, *, batch=0, baseline="auto"):
    """ProfileTable of query `positions` of row `batch` (default: the high-entropy marks,
    attnscope.high_entropy_positions) against the trace's other real tokens of `baseline` (as
    token_profile's) — every score but breadth, from the row statistics one run captured for
    every token: no run per position."""
    B = trace.input_ids.shape[0]
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 0 <= batch < B:
        raise ValueError(f"batch {batch!r} out of range: the trace has {B} rows")
    scores = row_scores(trace, batch=batch)
    if scores is None:
        raise ValueError("profile_table needs the row statistics (capture 'all', or a trace that keeps its "
                         "model), captured with sink_tokens <= 1")
    T = trace.input_ids.shape[1]
    if positions is None:
        positions = high_entropy_positions(trace, batch=batch)
    pos = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not -T <= p < T:
            raise ValueError(f"position {p!r} out of range: the trace has {T} tokens (valid: {-T}..{T - 1})")
        if not bool(trace.attention_mask[batch, int(p) % T]):
            raise ValueError(f"position {p} of row {batch} is padding: it has no attention")
        pos.append(int(p) % T)
    real, what = baseline_tokens(trace, batch, baseline)
    layers = trace.get("aggregate_layers").tolist()
    H = next(iter(scores.values())).shape[1]
    rows = [{"position": p, "label": trace.labels[batch][p], "next_entropy": float(trace.entropy[batch, p])}
            for p in pos]
    for k, t in scores.items():
        mean = t.flatten(0, 1).nanmean(0)                                     # [T]
        flat = t.flatten(0, 1).nan_to_num(float("-inf"))
        top, where = flat.max(0)                                              # [T]
        top = torch.where(top.isinf(), float("nan"), top)
        for r, p in zip(rows, pos):
            others = real.clone()
            others[p] = False
            r[k], r[f"{k}_pct"] = float(mean[p]), float(percentile_of(mean[p], mean[others]))
            w = int(where[p])
            r[f"{k}_top"], r[f"{k}_head"] = float(top[p]), f"L{layers[w // H]}H{w % H}"
            r[f"{k}_top_pct"] = float(percentile_of(top[p], top[others]))
    return ProfileTable(rows, list(scores), int(real.sum()), what)
