"""The three figure functions. Data come from a Trace (computed by the C++ core); this module
only selects, validates and draws.

High-entropy tokens (marks.py): the predictive entropy at position i is the entropy of the
distribution that predicts token i+1 (nats); by default the top 20 % of the sequence, at most 8,
get yellow marks on heatmaps (edge markers, labels, thin row/column lines) and yellow bars.
"""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.lines import Line2D

from .figure import check_options as _check_options, closing_on_error, grid as _grid, panel_for_labels, \
    rank_labels as _rank_labels, subplots, ticks as _ticks
from .marks import (ENTROPY_QUANTILE, HIGH_ENTROPY_COLOR, MAX_MARKS, _crosshairs, _entropy_label,  # noqa: F401
                    _prompt_divider, _upper_empty, high_entropy_positions)

PATTERN_TYPES = ("mean", "max", "specific_token")


# ---------------------------------------------------------------- data selection + validation
def _check_layer(trace, layer):
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < trace.n_layers:
        raise ValueError(f"layer {layer!r} out of range: the trace has {trace.n_layers} layers "
                         f"(0..{trace.n_layers - 1})")


def _check_head(trace, head):
    if not isinstance(head, (int, np.integer)) or not 0 <= head < trace.n_heads:
        raise ValueError(f"head {head!r} out of range: the trace has {trace.n_heads} heads "
                         f"(0..{trace.n_heads - 1})")


def _pairs(trace, layers_heads):
    pairs = list(layers_heads)
    if not pairs:
        raise ValueError("layers_heads is empty: give at least one (layer, head) pair")
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"layers_heads entry {p!r} is not a (layer, head) pair")
        _check_layer(trace, p[0])
        _check_head(trace, p[1])
    return pairs


def _check_batch(trace, batch):
    B = trace.input_ids.shape[0]
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 0 <= batch < B:
        raise ValueError(f"batch {batch!r} out of range: the trace has {B} sequence(s) (0..{B - 1})")


def _ensure(trace, names):
    """Asks the trace to compute what this figure needs and lacks, in one run (a Trace that
    keeps its model does; files and dataset traces have what they have)."""
    ensure = getattr(trace, "ensure", None)
    if ensure is not None:
        ensure(names)


def _has_from(trace, token_idx):
    pos = [p % trace.input_ids.shape[1] for p in trace.spec.get("from_tokens", [])] if "from" in trace.captures else []
    return token_idx in pos


def _capture(trace, name, hint):
    if name not in trace.captures:
        if getattr(trace, "is_dataset", False):
            raise ValueError(f"the dataset trace has no {name!r}: {trace.missing_hint(name)}")
        why = (" (it was read from a file or released its model, so it cannot compute it)"
               if hasattr(trace, "can_compute") and not trace.can_compute else "")
        raise ValueError(f"the trace has no {name!r}{why}: run with capture={hint}")
    return trace.captures[name]


def _head_map(trace, layer, head, batch):
    return _capture(trace, f"head_map/L{layer}H{head}", f"{{'heads': [({layer}, {head})]}}")[batch]


def _layer_map(trace, layer, head, batch):
    if head is None:
        return _capture(trace, f"layer_map/L{layer}", f"{{'layer_maps': [{layer}]}}")[batch]
    name = f"head_map/L{layer}H{head}"
    if name in trace.captures:
        return trace.captures[name][batch]
    if f"layer_map/L{layer}" in trace.captures and trace.spec.get("layer_map_head") == head:
        return trace.captures[f"layer_map/L{layer}"][batch]
    if getattr(trace, "is_dataset", False):
        raise ValueError(f"the dataset trace has no map of layer {layer} head {head}: "
                         f"{trace.missing_hint('head_map')}")
    raise ValueError(f"the trace has no map of layer {layer} head {head}: run with "
                     f"capture={{'heads': [({layer}, {head})]}}")


def _aggregate(trace, name, layer, head, batch):
    t = _capture(trace, name, "'all'")
    layers = trace.captures["aggregate_layers"].tolist()
    if layer not in layers:
        raise ValueError(f"layer {layer} has no aggregates in this trace (it has {layers}): "
                         f"run with capture={{'received': True}} and layers including {layer}")
    return t[layers.index(layer), batch, head]


def _labels(trace, batch):
    return list(trace.labels[batch])


def _norm(scale, vmin, vmax, gamma):
    if scale == "linear":
        return mcolors.Normalize(vmin=vmin, vmax=vmax)
    if scale == "log":
        return mcolors.LogNorm(vmin=max(vmin, 1e-6), vmax=vmax)
    if scale == "power":
        return mcolors.PowerNorm(gamma=gamma, vmin=vmin, vmax=vmax)
    raise ValueError(f"scale {scale!r}: expected 'linear', 'log' or 'power'")


MASKED_COLOR = "0.93"  # cells no query can attend to (after the diagonal of a causal map)


def _prepare(m, mask_first):
    """Map as float numpy; the masked (future) half of a causal map becomes NaN, drawn blank in
    MASKED_COLOR rather than in the colour of 0, so real zeros and masked cells differ."""
    a = m.numpy().astype(float) if hasattr(m, "numpy") else np.array(m, dtype=float)
    if a.ndim == 2 and a.shape[0] == a.shape[1] and _upper_empty(a):
        a[np.triu_indices(a.shape[0], 1)] = np.nan
    if mask_first:  # hide the sink column so the rest gets the colour range
        a[:, 0] = np.nan
    return a


def _default_vmin(a, scale):
    """0 for attention on a linear/power scale (masked cells no longer hold the zeros that set
    it); the smallest value for a log scale."""
    return float(np.nanmin(a)) if scale == "log" else min(0.0, float(np.nanmin(a)))


def _cmap(name):
    return plt.get_cmap(name).with_extremes(bad=MASKED_COLOR)


def _axes_legend(ax, positions, label):
    if len(positions):
        ax.legend(handles=[Line2D([], [], color=HIGH_ENTROPY_COLOR, lw=2, label=label)],
                  loc="upper right", fontsize=7)
    return ax


def _legend(fig, positions, label):
    if len(positions):
        fig.legend(handles=[Line2D([], [], color=HIGH_ENTROPY_COLOR, lw=2, label=label)],
                   loc="outside lower center", fontsize=8, frameon=False)


# ---------------------------------------------------------------- the three figures
def visualize_attention(trace, layers_heads, *, batch=0, cmap="viridis", vmin=None, vmax=None,
                        scale="linear", gamma=0.5, mask_first=False, entropy_quantile=ENTROPY_QUANTILE,
                        entropy_threshold=None, max_marks=MAX_MARKS, max_labels=80, ncols=None, panel=None,
                        ax=None):
    """Grid of heatmaps, one per (layer, head): row = query i, column = key j, token labels on
    both axes (every token up to `max_labels`, then thinned; the panel grows to fit them when
    `panel` is None), title "Layer L Head H", a colorbar each.

    Needs the full maps `head_map/L{l}H{h}` (capture={'heads': [...]}): `Tensor[B, T, T]`.
    High-entropy positions (entropy at i predicts token i+1) get yellow crosshairs.
    Returns the Figure, or the Axes when given `ax=` (one pair)."""
    pairs = _pairs(trace, layers_heads)
    _check_batch(trace, batch)
    _check_options(vmin=vmin, vmax=vmax, scale=scale, gamma=gamma, max_labels=max_labels, ncols=ncols, panel=panel)
    _ensure(trace, [f"head_map/L{l}H{h}" for l, h in pairs])
    labels = _labels(trace, batch)
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    if panel is None:
        panel = panel_for_labels(min(len(labels), max_labels or 1), 4.0)
    fig, axes, own = _grid(len(pairs), ncols, panel, ax)
    with closing_on_error(fig, own):
        for ax_, (l, h) in zip(axes, pairs):
            a = _prepare(_head_map(trace, l, h, batch), mask_first)
            lo = _default_vmin(a, scale) if vmin is None else vmin
            up = np.nanmax(a) if vmax is None else vmax
            im = ax_.imshow(a, cmap=_cmap(cmap), norm=_norm(scale, lo, up, gamma), interpolation="nearest")
            _crosshairs(ax_, hi, a.shape[0], _upper_empty(a))
            _prompt_divider(ax_, trace)
            ax_.set_title(f"Layer {l} Head {h}")
            ax_.set_xlabel("key")
            ax_.set_ylabel("query")
            _ticks(ax_, labels, "both", max_labels, hi)
            fig.colorbar(im, ax=ax_, fraction=0.046, pad=0.04)
        if ax is not None:
            return _axes_legend(axes[0], hi, hi_label)
        _legend(fig, hi, hi_label)
    return fig


def visualize_attention_patterns(trace, layers_heads, pattern_type="mean", token_idx=None, *,
                                 batch=0, top_k=3, mask_first=False, yscale="linear",
                                 entropy_quantile=ENTROPY_QUANTILE, entropy_threshold=None,
                                 max_marks=MAX_MARKS, max_labels=80, ncols=None, panel=None, ax=None):
    """Bar chart per (layer, head) over key positions, x labels = tokens.

    pattern_type "mean"/"max": attention each position receives, averaged / maximised over the
    queries that can see it (captures received_mean/received_max, capture="all");
    "specific_token": attention FROM position `token_idx` (negative counts from the end; from
    the head's full map, or a `from_tokens` capture). The top_k bars are outlined in red and
    numbered 1..top_k above the bar (staggered so no two collide); the x-axis label lists them
    with their tokens and values. With "max", the first real key of a causal model is 1 by
    construction (its query sees only itself): the axis label says so; mask_first=True leaves
    the first real position out (hatched) so the rest gets the scale. yscale "linear" or "log".
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
    labels = _labels(trace, batch)
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    real = np.nonzero(trace.attention_mask[batch].numpy())[0]
    first = int(real[0]) if len(real) else 0
    if panel is None:
        panel = (panel_for_labels(min(T, max_labels or 1), 4.0), 4.0)
    fig, axes, own = _grid(len(pairs), ncols, panel, ax)
    with closing_on_error(fig, own):
        for ax_, (l, h) in zip(axes, pairs):
            values = _pattern(trace, l, h, pattern_type, token_idx, batch)
            v = np.nan_to_num(values, nan=0.0)
            if mask_first:
                v[first] = 0.0
            bars = ax_.bar(np.arange(T), v, color="#4c72b0", width=0.8)
            if mask_first:
                bars[first].set(height=0, hatch="///")
                ax_.axvspan(first - 0.5, first + 0.5, color="0.9", hatch="///", ec="0.6", lw=0, zorder=0)
            for p in hi:
                bars[p].set_edgecolor(HIGH_ENTROPY_COLOR)
                bars[p].set_linewidth(2)
            top = [int(p) for p in np.argsort(-v, kind="stable")[:top_k] if v[p] > 0]
            levels = _rank_labels(ax_, top, v, T)
            if yscale == "log":
                pos = v[v > 0]
                ax_.set_yscale("log")
                ax_.set_ylim(max(float(pos.min()) * 0.5, 1e-6) if len(pos) else 1e-6,
                             max(float(v.max()), 1e-6) * 10 ** (0.25 + 0.12 * levels))
            else:
                ax_.set_ylim(0, max(float(v.max()), 1e-9) * (1.15 + 0.08 * levels))  # room for the ranks
            _prompt_divider(ax_, trace, "x", color="0.35")
            name = {"mean": "Mean", "max": "Max"}.get(pattern_type) or f"From {token_idx} {labels[token_idx]}"
            ax_.set_title(f"L{l}H{h} {name}")
            xlabel = "key position"
            if top:
                xlabel += "\ntop: " + "   ".join(f"{r + 1} {labels[p]} ({p}) {v[p]:.3f}" for r, p in enumerate(top))
            if pattern_type == "max" and not mask_first and _first_query_sees_only_itself(trace, l, h, batch, first):
                xlabel += f"\nposition {first} is 1 by construction (its query sees only itself); mask_first=True leaves it out"
            ax_.set_xlabel(xlabel, fontsize=7)
            ax_.set_ylabel("attention")
            _ticks(ax_, labels, "x", max_labels, hi)
        if ax is not None:
            return _axes_legend(axes[0], hi, hi_label)
        _legend(fig, hi, hi_label)
    return fig


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


def visualize_attention_layers(trace, layer_indices, head_idx=None, *, batch=0, cmap="RdBu_r",
                               vmin=None, vmax=None, scale="linear", gamma=0.5, mask_first=False,
                               entropy_quantile=ENTROPY_QUANTILE, entropy_threshold=None, max_marks=MAX_MARKS, paper=True,
                               max_labels=None, ncols=None, panel=2.6):
    """Paper-style grid (StreamingLLM Fig. 2): one map per layer, averaged over all heads when
    head_idx is None (capture={'layer_maps': [...]}), else that head; ONE shared colorbar (same
    vmin/vmax on every panel), RdBu_r by default; titles "L{l} Avg" / "L{l} H{h}". Token
    labels on the outer panels (y on the first column, x on the bottom row), thinned to what a
    panel holds (`max_labels`, default from `panel`), high-entropy tokens always named, so the
    stripes the overview shows can be read off; a dataset trace labels positions. `paper`:
    compact fonts. Returns the Figure."""
    layers = list(layer_indices)
    if not layers:
        raise ValueError("layer_indices is empty: give at least one layer")
    for l in layers:
        _check_layer(trace, l)
    if head_idx is not None:
        _check_head(trace, head_idx)
    _check_batch(trace, batch)
    _check_options(vmin=vmin, vmax=vmax, scale=scale, gamma=gamma, max_labels=max_labels, ncols=ncols, panel=panel)
    _ensure(trace, [f"layer_map/L{l}" if head_idx is None else f"head_map/L{l}H{head_idx}" for l in layers])
    maps = [_prepare(_layer_map(trace, l, head_idx, batch), mask_first) for l in layers]
    lo = min(_default_vmin(m, scale) for m in maps) if vmin is None else vmin
    up = max(np.nanmax(m) for m in maps) if vmax is None else vmax
    norm = _norm(scale, lo, up, gamma)
    labels = _labels(trace, batch)
    if max_labels is None:  # what one panel's map holds (~62 % of the panel after titles, labels and
        max_labels = max(4, int(panel * 72 * 0.62 / (5.5 * 1.3)))  # the colorbar) at 5.5 pt, 30 % spacing
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    fig, axes, _ = _grid(len(layers), ncols, panel)
    ncol = ncols or min(len(layers), 4)
    title_fs = 9 if paper else None
    fs = 5.5 if paper or len(labels) > 48 else None
    with closing_on_error(fig, True):
        for k, (ax, l, m) in enumerate(zip(axes, layers, maps)):
            im = ax.imshow(m, cmap=_cmap(cmap), norm=norm, interpolation="nearest")
            _crosshairs(ax, hi, m.shape[0], _upper_empty(m))
            _prompt_divider(ax, trace)
            ax.set_title(f"L{l} Avg" if head_idx is None else f"L{l} H{head_idx}", fontsize=title_fs)
            _ticks(ax, labels, "both", max_labels, hi, fontsize=fs)
            left, bottom = k % ncol == 0, k + ncol >= len(layers)
            ax.tick_params(labelleft=left, labelbottom=bottom, length=2)
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label("attention", fontsize=title_fs)
        if paper:
            cb.ax.tick_params(labelsize=7)
        _legend(fig, hi, hi_label)
        if getattr(trace, "is_dataset", False):
            fig.suptitle(f"mean over {trace.n_sequences} sequences of {trace.length} tokens")
    return fig


HEAD_METRICS = ("sink", "sink_rate", "entropy")


def visualize_head_summary(trace, metric="sink", *, cmap=None, vmin=None, vmax=None,
                           annotate=None, ax=None):
    """Layers x heads grid (row = layer, column = head) of one number per head, so sink heads
    and broad heads stand out:
      "sink":      α₁, mean attention to the first token (Gu et al.'s importance of token 1);
                   heads with α₁ > ε are dotted. Title gives Sink₁ (share of heads with α₁ > ε,
                   per sequence, averaged over sequences).
      "sink_rate": fraction of sequences in which the head has α₁ > ε.
      "entropy":   mean attention entropy of the head's rows (nats).
    `trace`: a DatasetTrace (aggregate_dataset) or a Trace captured with "all" (its sequences
    are the dataset). Values are printed in the cells when `annotate` (default: <= 400 cells).
    Returns the Axes."""
    if metric not in HEAD_METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {HEAD_METRICS}")
    if not getattr(trace, "is_dataset", False):
        from .dataset import DatasetTrace
        trace = DatasetTrace.from_traces([trace])
    need = "attn_entropy" if metric == "entropy" else "received"
    if not getattr(trace.stats.parts, need):
        raise ValueError(f"metric {metric!r} needs the {need!r} part: {trace.missing_hint(need if need != 'received' else 'received_mean')}")
    if metric == "entropy":
        values, label = trace.head_entropy.numpy(), "attention entropy (nats)"
        title = f"Attention entropy per head (mean {values.mean():.2f} nats)"
        cmap = cmap or "viridis"
    else:
        alpha1 = trace.alpha[..., 0].numpy()
        values = alpha1 if metric == "sink" else trace.sink_rate.numpy()
        label = "α₁ (attention to first token)" if metric == "sink" else f"share of sequences with α₁ > {trace.epsilon:g}"
        title = f"Sink₁ = {trace.sink1:.1%} of heads (ε = {trace.epsilon:g})"
        cmap = cmap or "Reds"
        vmin = 0.0 if vmin is None else vmin
        vmax = 1.0 if vmax is None else vmax
    L, H = values.shape
    if ax is None:
        _, axes = subplots(1, 1, (max(3.0, 0.45 * H + 2), max(3.0, 0.22 * L + 1.2)))
        ax = axes[0, 0]
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if metric == "sink":
        ys, xs = np.nonzero(values > trace.epsilon)
        # in the cell's corner, clear of the printed value
        ax.scatter(xs - 0.32, ys - 0.25, s=5, c="black", marker="o", label=f"α₁ > {trace.epsilon:g}")
    if annotate if annotate is not None else L * H <= 400:
        for (y, x), v in np.ndenumerate(values):
            r, g, b, _ = im.cmap(im.norm(v))  # dark text on light cells, light on dark
            ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=5,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.set_title(f"{title}\n{trace.n_sequences} sequences of {trace.length} tokens", fontsize=9)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.tick_params(labelsize=6)
    ax.figure.colorbar(im, ax=ax, label=label)
    return ax
