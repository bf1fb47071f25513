"""visualize_attention_patterns: 1D bars of the attention each position receives (mean or
max over the queries that see it) or that one token sends."""
import numpy as np

from ..figure import (check_options as _check_options, closing_on_error, grid as _grid, leader_labels, panel_for_labels,
                      rank_labels as _rank_labels, spread, ticks as _ticks)
from ..marks import (ENTROPY_QUANTILE, _marks_line, HIGH_ENTROPY_COLOR, MAX_MARKS, _entropy_label, _prompt_divider,
                     high_entropy_positions)
from .data import _aggregate, _check_batch, _ensure, _has_from, _labels, _pairs, _window
from .style import _axes_legend, _legend

PATTERN_TYPES = ("mean", "max", "specific_token")


def visualize_attention_patterns(trace, layers_heads, pattern_type="mean", token_idx=None, *,
                                 batch=0, top_k=3, mask_first=False, yscale="linear",
                                 entropy_quantile=ENTROPY_QUANTILE, entropy_threshold=None,
                                 max_marks=MAX_MARKS, max_labels=80, ncols=None, panel=None, tokens=None,
                                 ax=None):
    """Bar chart per (layer, head) over key positions, x labels = tokens.

    pattern_type "mean"/"max": attention each position receives, averaged / maximised over the
    queries that can see it (captures received_mean/received_max, capture="all");
    "specific_token": attention FROM position `token_idx` (negative counts from the end; from
    the head's full map, or a `from_tokens` capture). The top_k bars are outlined in red and
    numbered 1..top_k above the bar (staggered so no two collide); the x-axis label lists them
    with their tokens and values. With "max", the first real key of a causal model is 1 by
    construction (its query sees only itself): it is never ranked and the axis label says so;
    mask_first=True leaves the first real position out (hatched) so the rest gets the scale.
    yscale "linear" or "log". tokens: None (real tokens), (start, stop) or "response", as in
    visualize_attention (the bars of those positions; ranks among them).
    High-entropy positions get yellow edges. Returns the Figure, or the Axes when given `ax=`
    (one pair)."""
    if pattern_type not in PATTERN_TYPES:
        raise ValueError(f"pattern_type {pattern_type!r}: expected one of {PATTERN_TYPES}")
    pairs = _pairs(trace, layers_heads)
    T = trace.input_ids.shape[1]
    if pattern_type == "specific_token":
        if token_idx is None or isinstance(token_idx, bool) or not isinstance(token_idx, (int, np.integer)) \
                or not -T <= token_idx < T:
            raise ValueError(f"token_idx {token_idx!r} out of range: expected an int in -{T}..{T - 1}")
        token_idx = int(token_idx) % T
    _check_batch(trace, batch)
    _check_options(top_k=top_k, max_labels=max_labels, ncols=ncols, panel=panel, yscale=yscale)
    if pattern_type == "specific_token":
        if not _has_from(trace, token_idx):
            _ensure(trace, [f"head_map/L{l}H{h}" for l, h in pairs])
    else:
        _ensure(trace, [f"received_{pattern_type}"] + (["received_count"] if pattern_type == "max" else []))
    s, e = _window(trace, batch, tokens)
    labels = _labels(trace, batch)
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    named = _marks_line(hi, _labels(trace, batch), (s, e))
    real = np.nonzero(trace.attention_mask[batch].numpy())[0]
    first = int(real[0]) if len(real) else 0
    width = 1 if e - s <= MAX_BARS else -(-(e - s) // BINS)        # tokens per bar
    if panel is None:
        panel = (panel_for_labels(min(e - s, max_labels or 1) if width == 1 else 60, 4.0), 4.0)
    fig, axes, own = _grid(len(pairs), ncols, panel, ax)
    with closing_on_error(fig, own):
        for ax_, (l, h) in zip(axes, pairs):
            values = _pattern(trace, l, h, pattern_type, token_idx, batch)
            v = np.nan_to_num(values, nan=0.0)
            if mask_first:
                v[first] = 0.0
            trivial = pattern_type == "max" and not mask_first and _first_query_sees_only_itself(trace, l, h, batch, first)
            rank = v.copy()
            rank[:s], rank[e:] = -np.inf, -np.inf
            if trivial:
                rank[first] = -np.inf  # 1 by construction: ranking it says nothing about the head
            top = [int(p) for p in np.argsort(-rank, kind="stable")[:top_k] if rank[p] > 0]
            if width == 1:
                bars = ax_.bar(np.arange(s, e), v[s:e], color="#4c72b0", width=0.8)
                height = v
            else:
                bars, height = _binned(ax_, v, s, e, width, pattern_type, first if trivial else None)
            if mask_first and s <= first < e and width == 1:
                bars[first - s].set(height=0, hatch="///")
                ax_.axvspan(first - 0.5, first + 0.5, color="0.9", hatch="///", ec="0.6", lw=0, zorder=0)
            for p in hi:
                if s <= p < e:
                    bars[(p - s) // width].set_edgecolor(HIGH_ENTROPY_COLOR)
                    bars[(p - s) // width].set_linewidth(2)
            levels = _rank_labels(ax_, top, height, e - s, start=s, per_bar=width)
            ax_.set_xlim(s - 0.6, e - 0.4)
            if yscale == "log":
                pos = v[v > 0]
                ax_.set_yscale("log")
                ax_.set_ylim(max(float(pos.min()) * 0.5, 1e-6) if len(pos) else 1e-6,
                             max(float(height[s:e].max()), 1e-6) * 10 ** (0.25 + 0.12 * levels))
            else:
                ax_.set_ylim(0, max(float(height[s:e].max()), 1e-9) * (1.15 + 0.08 * levels))  # room for the ranks
            _prompt_divider(ax_, trace, "x", color="0.35", window=(s, e))
            name = {"mean": "Mean", "max": "Max"}.get(pattern_type) or f"From {token_idx} {labels[token_idx]}"
            ax_.set_title(f"L{l}H{h} {name}").set_parse_math(False)
            xlabel = "key position"
            if top:
                xlabel += "\ntop: " + "   ".join(f"{r + 1} {labels[p]} ({p}) {v[p]:.3f}" for r, p in enumerate(top))
            if trivial and s <= first < e:
                xlabel += f"\nposition {first} is 1 by construction (its query sees only itself): not ranked"
            if width > 1:
                xlabel += "\n" + _BIN_WORDS[pattern_type].format(w=width)
            ax_.set_xlabel(xlabel, fontsize=7).set_parse_math(False)
            ax_.set_ylabel("attention" if width == 1 or pattern_type != "specific_token" else "attention to the range")
            if width == 1:
                _ticks(ax_, labels[s:e], "x", max_labels, hi, start=s)
            else:  # positions on the axis; the marks named under it
                _position_ticks(ax_, labels, s, e, hi)
        if ax is not None:
            return _axes_legend(axes[0], hi, hi_label)
        _legend(fig, hi, f"{hi_label}\n{named}" if named else hi_label)
    return fig


MAX_BARS, BINS = 256, 120  # above MAX_BARS positions the bars are ranges: about BINS of them
_BIN_WORDS = {"mean": "bars of {w} tokens: dark = mean over the range, light = its largest key",
              "max": "bars of {w} tokens: dark = mean over the range, light = its largest key",
              "specific_token": "bars of {w} tokens: the attention to the whole range (its sum)"}


def _binned(ax, v, s, e, w, pattern_type, skip):
    """Bars of w positions each over s..e: the sum of each range for the attention FROM a
    token (its share of the row), else the range's largest key (light) and mean (dark), so a
    spike stays visible. `skip`: a position left out of its range (1 by construction).
    Returns (the bars indexed by range, the bar height at each position)."""
    edges = list(range(s, e, w)) + [e]
    x = np.array(edges[:-1], dtype=float)
    widths = np.diff(edges).astype(float)
    vals = v.astype(float).copy()
    if skip is not None:
        vals[skip] = np.nan
    parts = [vals[a:b] for a, b in zip(edges[:-1], edges[1:])]
    height = np.zeros_like(v, dtype=float)
    if pattern_type == "specific_token":
        tops = np.array([np.nansum(p) for p in parts])
        bars = ax.bar(x, tops, width=widths * 0.9, align="edge", color="#4c72b0")
    else:
        tops = np.array([np.nanmax(p) if np.isfinite(p).any() else 0.0 for p in parts])
        means = np.array([np.nanmean(p) if np.isfinite(p).any() else 0.0 for p in parts])
        bars = ax.bar(x, tops, width=widths * 0.9, align="edge", color="#a6bddb")
        ax.bar(x, means, width=widths * 0.9, align="edge", color="#4c72b0")
    for (a, b), t in zip(zip(edges[:-1], edges[1:]), tops):
        height[a:b] = t
    return bars, height


def _position_ticks(ax, labels, s, e, marked):
    """A binned axis: positions at round numbers, and each mark's token under its tick (spread
    on leader lines where marks crowd)."""
    from matplotlib.ticker import MaxNLocator
    marks = sorted(int(p) for p in marked if s <= int(p) < e)
    axes_pt = ax.get_position().width * ax.figure.get_figwidth() * 72 * 0.85
    gap = 9.0 * (e - s) / max(axes_pt, 1.0)                                 # one 6-pt label, in positions
    slots = spread(marks, gap, s, e - 1)
    at = [int(t) for t in MaxNLocator(nbins=8, integer=True).tick_values(s, e - 1)
          if s <= t < e and all(abs(t - q) >= 3 * gap for q in slots)]
    ax.set_xticks(at + marks, [str(t) for t in at] + [""] * len(marks), fontsize=6)
    leader_labels(ax, marks, [f"{labels[p]} {p}" for p in marks], slots, "x", 6)


def _first_query_sees_only_itself(trace, l, h, batch, first):
    """True when the first real query has one visible key (a causal mask): its max is 1 trivially.
    Read from received_count (queries that see each key): a causal mask, whatever its window,
    lets only the last query see the last key."""
    if "received_count" not in trace.captures or "aggregate_layers" not in trace.captures:
        return False
    layers = trace.captures["aggregate_layers"].tolist()
    if l not in layers:
        return False
    c = trace.captures["received_count"][layers.index(l), batch, h].numpy()
    real = np.nonzero(trace.attention_mask[batch].numpy())[0]
    return len(real) > 1 and c[real[-1]] == 1


def _pattern(trace, l, h, pattern_type, token_idx, batch):
    if pattern_type == "mean":
        return _aggregate(trace, "received_mean", l, h, batch).numpy()
    if pattern_type == "max":
        return _aggregate(trace, "received_max", l, h, batch).numpy()
    name = f"head_map/L{l}H{h}"
    if name in trace.captures:
        return trace.captures[name][batch, token_idx].numpy()
    if "from" in trace.captures:
        pos = [p % trace.input_ids.shape[1] for p in trace.spec.get("from_tokens", [])]
        if token_idx in pos:
            return _aggregate(trace, "from", l, h, batch)[pos.index(token_idx)].numpy()
    raise ValueError(f"the trace has no attention from token {token_idx} at layer {l} head {h}: "
                     f"run with capture={{'from_tokens': [{token_idx}]}} or {{'heads': [({l}, {h})]}}")
