"""The head atlas: one row of scores per (layer, head), from a trace's row statistics.

Scores (means over the real query rows where the score is defined; docs/python.md "Head atlas"):
  self       weight of a query on itself
  prev       weight on the previous token                         (previous-token heads)
  distance   mean attention distance Σⱼ p·|i−j|, tokens            (looking back)
  local      mass on keys within `local_window` tokens             (local vs global)
  duplicate  mass on earlier keys with the query's id              (duplicate-token heads)
  induction  mass on keys that follow an earlier copy of the query (induction heads, Olsson et al.)
  sink       weight on the first real token                        (attention sinks)
  entropy    attention entropy of the rows, nats                   (broad vs narrow)
  learned_sink  share of the softmax taken by learned sink logits  (models with them: GPT-OSS)

With learned sinks a row's weights over the real keys sum to 1 − learned_sink; every other
score is taken over the real keys as they are (not renormalised), as transformers returns them.
"""
import torch

from .identity import model_of
from .windows import shared_span, token_range

SCORES = ("self", "prev", "distance", "local", "duplicate", "induction", "sink", "entropy", "learned_sink")
_CAPTURE = {"self": "row_self", "prev": "row_prev", "distance": "row_distance", "local": "row_local",
            "duplicate": "row_duplicate", "induction": "row_induction", "sink": "sink_mass_rows",
            "entropy": "attn_entropy"}
# Row statistics of the dataset stats, in the C++ order (DatasetStats::row_stats).
_ROW_ORDER = ("self", "prev", "distance", "local", "duplicate", "induction")


class HeadAtlas:
    """Scores per head: `scores` {name: Tensor[L, H]} (float64, NaN where no row defines the
    score), `counts` {name: Tensor[L, H]} (rows averaged), `layers` (the model layer of each
    row), `n_heads`, `source` (what was measured), `span` (the query rows measured: per
    sequence, (first, stop) counted from its first real token; None for a dataset's).
    `atlas["induction"]` is one score; `to_pandas()` gives the long table (layer, head, one
    column per score)."""

    def __init__(self, scores, counts, layers, source="", span=None):
        self.scores, self.counts = dict(scores), dict(counts)
        self.layers = [int(x) for x in layers]
        first = next(iter(self.scores.values()))
        self.n_heads = int(first.shape[1])
        self.source, self.span = source, span
        self.model_id, self.model_name = "", ""  # the model measured (attnscope.identity)

    def __getitem__(self, name):
        if name not in self.scores:
            raise ValueError(f"score {name!r}: expected one of {', '.join(self.scores)}")
        return self.scores[name]

    def __repr__(self):
        return (f"<attnscope.HeadAtlas {len(self.layers)} layers x {self.n_heads} heads, "
                f"scores {', '.join(self.scores)}{'; ' + self.source if self.source else ''}>")

    def to_pandas(self):
        """DataFrame with one row per (layer, head) and one column per score (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:  # an optional dependency
            raise ImportError("HeadAtlas.to_pandas needs pandas: pip install pandas") from e
        rows = {"layer": [l for l in self.layers for _ in range(self.n_heads)],
                "head": [h for _ in self.layers for h in range(self.n_heads)]}
        for name, t in self.scores.items():
            rows[name] = t.flatten().tolist()
        return pd.DataFrame(rows)

    def top(self, score, k=5, *, largest=True):
        """The k (layer, head) pairs with the largest (or smallest) `score`; NaN never ranks."""
        return top_heads(self, score, k, largest=largest)


def head_atlas(source, *, rows=None):
    """HeadAtlas of a Trace (captured with "all", the default; a trace that keeps its model
    computes missing row statistics now) or of a DatasetTrace from `aggregate_dataset` (its
    "row_stats" part). `rows=(start, stop)`: only these query positions of a trace (e.g. the
    second half of a repeated sequence); negative values count from the end."""
    if getattr(source, "is_dataset", False):
        if rows is not None:
            raise ValueError("rows= applies to a trace; a dataset atlas averages every position")
        return _dataset_atlas(source)
    names = list(_CAPTURE.values())
    source.ensure(names)
    T = source.input_ids.shape[1]
    sl = slice(*token_range(rows, T, name="rows")) if rows is not None else slice(0, T)
    layers = source.get("aggregate_layers").tolist()
    scores, counts = {}, {}
    capture = dict(_CAPTURE, **({"learned_sink": "sink_share"} if "sink_share" in source.captures else {}))
    for name, cap in capture.items():
        x = source.get(cap)[..., sl].double()          # [L, B, H, t]
        ok = ~x.isnan()
        n = ok.sum((1, 3)).double()                     # [L, H]
        scores[name] = torch.where(n > 0, x.nan_to_num(0).sum((1, 3)) / n.clamp_min(1), float("nan"))
        counts[name] = n
    b, _ = source.input_ids.shape
    what = f"{b} sequence{'s' if b > 1 else ''} of {T} tokens" + (f", rows {sl.start}..{sl.stop - 1}" if rows else "")
    atlas = HeadAtlas(scores, counts, layers, what, _span(source.attention_mask, sl))
    atlas.model_id, atlas.model_name = model_of(source)
    return atlas


def _span(mask, sl):
    """Per row, the real query positions in `sl` as (first, stop) from the row's first real token."""
    out = []
    for row in mask.bool():
        real = row.nonzero().flatten()
        lo = int(real[0]) if len(real) else 0
        inside = real[(real >= sl.start) & (real < sl.stop)]
        out.append((int(inside[0]) - lo, int(inside[-1]) + 1 - lo) if len(inside) else (0, 0))
    return tuple(out)


def compared_atlases(atlas, other):
    """(a, b, note): the atlases of `atlas` and `other` (HeadAtlas or Trace each) over the same
    query rows, so that b − a measures the heads and not the lengths: mean distance grows with
    the keys a row can see. Two traces of one row each are measured on rows 0..m−1 from their
    first tokens (the shared prefix up to the fork, then an equal window of each); atlases
    of other spans are refused by name. `note` says which rows were compared."""
    note = ""
    if not isinstance(atlas, HeadAtlas) and not isinstance(other, HeadAtlas) and not any(
            getattr(x, "is_dataset", False) for x in (atlas, other)):
        if atlas.input_ids.shape[0] == other.input_ids.shape[0] == 1:
            sh = shared_span(atlas, other)
            m = sh.length
            a, b = head_atlas(atlas, rows=(sh.start_a, sh.start_a + m)), head_atlas(other, rows=(sh.start_b, sh.start_b + m))
            if int(atlas.attention_mask.sum()) != m or int(other.attention_mask.sum()) != m:
                note = (f"rows 0..{m - 1} of each: the same tokens" if sh.fork is None else
                        f"rows 0..{m - 1} of each: the shared prefix to the fork at {sh.fork}, then {m - sh.fork} "
                        "tokens of each")
            return a, b, note
    a = atlas if isinstance(atlas, HeadAtlas) else head_atlas(atlas)
    b = other if isinstance(other, HeadAtlas) else head_atlas(other)
    if a.layers != b.layers or a.n_heads != b.n_heads:
        raise ValueError(f"compare: atlases of {len(a.layers)} layers x {a.n_heads} heads and "
                         f"{len(b.layers)} x {b.n_heads}: compare atlases of one model")
    if a.span != b.span:
        def said(x):
            return "no rows (a dataset's, or made by hand)" if x.span is None else "rows " + ", ".join(f"{s}..{e - 1}" for s, e in x.span)
        raise ValueError(f"compare: the atlases measure different query rows ({said(a)} vs {said(b)}, from each "
                         "sequence's first token): mean distance and the positional scores grow with the keys a row "
                         "sees, so the difference would measure the lengths; pass two traces of one sequence each "
                         "(aligned on the shared prefix and an equal window after the fork) or atlases of equal "
                         "rows (head_atlas(trace, rows=(start, stop)))")
    return a, b, note


def _dataset_atlas(ds):
    stats = ds.stats
    if not stats.parts.row_stats:
        raise ValueError("this dataset has no row statistics: aggregate it with parts including 'row_stats'")
    means, counts = stats.row_stats(), stats.row_stat_counts()   # [6, L, H]
    scores = {name: means[i].double().cpu() for i, name in enumerate(_ROW_ORDER)}
    cnt = {name: counts[i].double().cpu() for i, name in enumerate(_ROW_ORDER)}
    if stats.parts.received:
        scores["sink"] = stats.alpha()[..., 0].double().cpu()
        cnt["sink"] = torch.full_like(scores["sink"], float(stats.n_sequences))
    learned = stats.learned_sink()                               # [L, H] or None (no learned sinks)
    if learned is not None:
        scores["learned_sink"] = learned.double().cpu()
        cnt["learned_sink"] = torch.full_like(scores["learned_sink"], float(stats.n_sequences))
    if stats.parts.attn_entropy:
        scores["entropy"] = stats.head_entropy().double().cpu()
        cnt["entropy"] = torch.full_like(scores["entropy"], float(stats.n_sequences))
    atlas = HeadAtlas(scores, cnt, range(stats.n_layers), f"dataset of {stats.n_sequences} sequences")
    atlas.model_id, atlas.model_name = model_of(ds)
    return atlas


def top_heads(atlas, score, k=5, *, largest=True):
    """The k (layer, head) pairs of `atlas` (a HeadAtlas) with the largest (or smallest)
    `score`, best first, as the figure functions take them; heads with a NaN score never rank."""
    if not isinstance(atlas, HeadAtlas):
        raise ValueError(f"top_heads: expected a HeadAtlas (attnscope.head_atlas(trace)), got {type(atlas).__name__}")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k={k!r}: expected a positive int")
    t = atlas[score].flatten()
    ok = (~t.isnan()).nonzero().flatten()
    order = t[ok].argsort(descending=largest, stable=True)[:k]
    H = atlas.n_heads
    return [(atlas.layers[int(i) // H], int(i) % H) for i in ok[order]]
