"""The 2D figures: visualize_attention (one heatmap per (layer, head)) and
visualize_attention_layers (the paper-style grid, one map per layer, one shared colorbar)."""
import numpy as np

from ..figure import (check_options as _check_options, closing_on_error, columns as _columns, fit_height,
                      grid as _grid, labels_for_panel, outer_labels, panel_for_labels, ticks as _ticks)
from ..marks import (ENTROPY_QUANTILE, _marks_line, MAX_MARKS, _crosshairs, _entropy_label, _prompt_divider, _upper_empty,
                     high_entropy_positions)
from .data import _check_batch, _ensure, _head_map, _labels, _layer_map, _layers, _pairs, _sink_rows, _window
from .pooled import draw_pooled, pool_tiles, pooled, range_labels
from .style import (_axes_legend, _cmap, _colorbar_ticks, _default_vmax, _default_vmin, _hatch_masked, _legend, _norm,
                    _prepare, _scale_label)


def visualize_attention(trace, layers_heads, *, batch=0, cmap="viridis", vmin=None, vmax=None,
                        scale="uniform", gamma=0.5, mask_first=False, entropy_quantile=ENTROPY_QUANTILE,
                        entropy_threshold=None, max_marks=MAX_MARKS, max_labels=80, ncols=None, panel=None,
                        tokens=None, pool=None, ax=None):
    """Grid of heatmaps, one per (layer, head): row = query i, column = key j, token labels on
    both axes (every token up to `max_labels`, then thinned; the panel grows to fit them when
    `panel` is None), title "Layer L Head H", a colorbar each.

    Needs the full maps `head_map/L{l}H{h}` (capture={'heads': [...]}): `Tensor[B, T, T]`.
    High-entropy positions (entropy at i predicts token i+1) get yellow crosshairs.
    tokens: which positions to draw — None (the row's real tokens: padding left out),
    (start, stop) to zoom in (queries and keys start..stop-1; the colour scale fits what is
    shown), or "response" (a generated trace's answer). Axes keep absolute positions.
    scale: "uniform" (default: each row over its uniform share 1/keys seen, log scale 1/16..16,
    so structure shows at any length), or the raw weights "sqrt", "linear", "log", "power".
    pool: None (default) draws windows of more than 512 tokens as tile means computed by the
    core (Trace.pooled_maps; about 256 tiles across the window, axes labelled by tile ranges,
    marks still named), False always the full maps, an int that many tiles over the trace.
    Returns the Figure, or the Axes when given `ax=` (one pair)."""
    pairs = _pairs(trace, layers_heads)
    _check_batch(trace, batch)
    _check_options(vmin=vmin, vmax=vmax, scale=scale, gamma=gamma, max_labels=max_labels, ncols=ncols, panel=panel)
    s, e = _window(trace, batch, tokens)
    n_pool = pool_tiles(trace, s, e, pool)
    if not n_pool:
        _ensure(trace, [f"head_map/L{l}H{h}" for l, h in pairs])
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    named = _marks_line(hi, _labels(trace, batch), (s, e))
    labels = _labels(trace, batch)[s:e]
    if n_pool:
        tiles = {(l, h): pooled(trace, n_pool, l, h, batch, scale) for l, h in pairs}
        labels = _pooled_labels(_labels(trace, batch), next(iter(tiles.values()))[1], s, e, hi)
    skip = None if mask_first else _first_column(trace, batch, s, e, n_pool)
    if panel is None:  # room for the labels, wrapped into a grid at most MAX_HEIGHT tall
        panel = fit_height(len(pairs), ncols, panel_for_labels(min(len(labels), max_labels or 1), 4.0))
        if max_labels:
            max_labels = min(max_labels, labels_for_panel(panel))
    fig, axes, own = _grid(len(pairs), ncols, panel, ax)
    with closing_on_error(fig, own):
        for ax_, (l, h) in zip(axes, pairs):
            if n_pool:
                a, bounds = tiles[(l, h)]
                if mask_first:
                    a = a.copy()
                    a[:, 0] = np.nan
            else:
                a = _prepare(_head_map(trace, l, h, batch), mask_first, scale)[s:e, s:e]
            lo = _default_vmin(a, scale, skip) if vmin is None else vmin
            up = _default_vmax(a, scale, skip) if vmax is None else vmax
            skipped = vmax is None and scale != "uniform" and up < float(np.nanmax(a))
            if n_pool:
                im = draw_pooled(ax_, a, bounds, s, e, _cmap(cmap), _norm(scale, lo, up, gamma))
            else:
                im = ax_.imshow(a, cmap=_cmap(cmap), norm=_norm(scale, lo, up, gamma), interpolation="nearest",
                                extent=(s - 0.5, e - 0.5, e - 0.5, s - 0.5))
                _hatch_masked(ax_, a, s)
            _crosshairs(ax_, hi, e, _upper_empty(a), start=s)
            _prompt_divider(ax_, trace, window=(s, e))
            sink = _sink_rows(trace, l, h, batch, s, e)
            ax_.set_title(f"Layer {l} Head {h}" + _sink_title(sink, "\n"))
            _sink_strip(ax_, sink, s, e)
            ax_.set_xlabel("key")
            ax_.set_ylabel("query")
            _ticks(ax_, labels, "both", max_labels, hi, start=s)
            cb = fig.colorbar(im, ax=ax_, fraction=0.046, pad=0.04 if sink is None else 0.12,
                              extend="both" if scale == "uniform" else "max" if skipped else "neither")
            cb.set_label(_scale_label(scale, gamma, lo if vmin is None else None, up, skipped)
                         + (_pool_note(bounds) if n_pool else ""), fontsize=8)
            _colorbar_ticks(cb, im.norm, scale)
        if ax is not None:
            return _axes_legend(axes[0], hi, hi_label)
        _legend(fig, hi, f"{hi_label}\n{named}" if named else hi_label)
    return fig


def visualize_attention_layers(trace, layer_indices, head_idx=None, *, batch=0, cmap="RdBu_r",
                               vmin=None, vmax=None, scale="uniform", gamma=0.5, mask_first=False,
                               entropy_quantile=ENTROPY_QUANTILE, entropy_threshold=None, max_marks=MAX_MARKS, paper=True,
                               max_labels=None, ncols=None, panel=2.6, tokens=None, pool=None):
    """Paper-style grid (StreamingLLM Fig. 2): one map per layer, averaged over all heads when
    head_idx is None (capture={'layer_maps': [...]}), else that head; ONE shared colorbar (same
    vmin/vmax on every panel), RdBu_r by default; titles "L{l} Avg" / "L{l} H{h}". Token
    labels on the outer panels (y on the first column, x on the bottom row), thinned to what a
    panel holds (`max_labels`, default from `panel`), high-entropy tokens always named, so the
    stripes the overview shows can be read off; a dataset trace labels positions. `paper`:
    compact fonts. tokens: None (real tokens), (start, stop) or "response", scale ("uniform"
    by default) and pool (tile means above 512 tokens), as in visualize_attention. Returns the
    Figure."""
    layers = _layers(trace, layer_indices, head_idx)
    _check_batch(trace, batch)
    _check_options(vmin=vmin, vmax=vmax, scale=scale, gamma=gamma, max_labels=max_labels, ncols=ncols, panel=panel)
    s, e = _window(trace, batch, tokens)
    n_pool = pool_tiles(trace, s, e, pool)
    if n_pool:
        tiles = [pooled(trace, n_pool, l, head_idx, batch, scale) for l in layers]
        maps, bounds = [a for a, _ in tiles], tiles[0][1]
        if mask_first:
            for a in maps:
                a[:, 0] = np.nan
    else:
        _ensure(trace, [f"layer_map/L{l}" if head_idx is None else f"head_map/L{l}H{head_idx}" for l in layers])
        maps = [_prepare(_layer_map(trace, l, head_idx, batch), mask_first, scale)[s:e, s:e] for l in layers]
    skip = None if mask_first else _first_column(trace, batch, s, e, n_pool)
    lo = min(_default_vmin(m, scale, skip) for m in maps) if vmin is None else vmin
    up = max(_default_vmax(m, scale, skip) for m in maps) if vmax is None else vmax
    skipped = vmax is None and scale != "uniform" and up < max(float(np.nanmax(m)) for m in maps)
    norm = _norm(scale, lo, up, gamma)
    labels = _labels(trace, batch)[s:e]
    if max_labels is None:  # what one panel's map holds (~62 % of the panel after titles, labels and
        max_labels = max(4, int(panel * 72 * 0.62 / (5.5 * 1.3)))  # the colorbar) at 5.5 pt, 30 % spacing
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    named = _marks_line(hi, _labels(trace, batch), (s, e))
    if n_pool:
        labels = _pooled_labels(_labels(trace, batch), bounds, s, e, hi)
    fig, axes, _ = _grid(len(layers), ncols, panel)
    ncol = _columns(len(layers), ncols, panel)
    title_fs = 9 if paper else None
    fs = 5.5 if paper or len(labels) > 48 else None
    with closing_on_error(fig, True):
        for k, (ax, l, m) in enumerate(zip(axes, layers, maps)):
            if n_pool:
                im = draw_pooled(ax, m, bounds, s, e, _cmap(cmap), norm)
            else:
                im = ax.imshow(m, cmap=_cmap(cmap), norm=norm, interpolation="nearest",
                               extent=(s - 0.5, e - 0.5, e - 0.5, s - 0.5))
                _hatch_masked(ax, m, s)
            _crosshairs(ax, hi, e, _upper_empty(m), start=s)
            _prompt_divider(ax, trace, window=(s, e))
            sink = _sink_rows(trace, l, head_idx, batch, s, e)
            ax.set_title((f"L{l} Avg" if head_idx is None else f"L{l} H{head_idx}") + _sink_title(sink, " · "),
                         fontsize=title_fs)
            _sink_strip(ax, sink, s, e)
            _ticks(ax, labels, "both", max_labels, hi, fontsize=fs, start=s)
            left, bottom = k % ncol == 0, k + ncol >= len(layers)
            outer_labels(ax, left, bottom)
        cb = fig.colorbar(im, ax=axes, shrink=0.8,
                          extend="both" if scale == "uniform" else "max" if skipped else "neither")
        cb.set_label(_scale_label(scale, gamma, lo if vmin is None else None, up, skipped)
                     + (_pool_note(bounds) if n_pool else ""), fontsize=title_fs)
        _colorbar_ticks(cb, norm, scale)
        if paper:
            cb.ax.tick_params(labelsize=7)
        _legend(fig, hi, f"{hi_label}\n{named}" if named else hi_label)
        if getattr(trace, "is_dataset", False):
            fig.suptitle(f"mean over {trace.n_sequences} sequences of {trace.length} tokens")
    return fig


def _first_column(trace, batch, s, e, pooled):
    """Column of the drawn window that holds the first real key (its tile when pooled), or None:
    the column a default colour range leaves out."""
    real = np.nonzero(trace.attention_mask[batch].numpy())[0]
    first = int(real[0]) if len(real) else 0
    if not s <= first < e:
        return None
    return 0 if pooled else first - s


def _sink_title(share, sep):
    """Title suffix of a map whose rows lose weight to learned sinks: their mean share."""
    if share is None or not np.isfinite(share).any():
        return ""
    return f"{sep}sinks {np.nanmean(share):.0%}"


def _sink_strip(ax, share, s, e):
    """Learned sinks: a grey strip right of the map, one cell per query row, its share of the
    row's softmax (white 0 .. black 1; the map's own rows sum to 1 minus it)."""
    if share is None or not np.isfinite(share).any():
        return
    strip = ax.inset_axes([1.015, 0.0, 0.04, 1.0])
    strip.imshow(share[:, None], cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest",
                 extent=(0, 1, e - 0.5, s - 0.5))
    strip.set_xticks([])
    strip.set_yticks([])
    strip.set_xlabel("sink", fontsize=6, rotation=90, labelpad=2)  # below: the map's title is above


def _pooled_labels(labels, bounds, s, e, marked):
    """Tick labels of a pooled map: each position's tile range, marked positions their token."""
    out = range_labels(labels, bounds, s, e)
    for p in marked:
        if s <= int(p) < e:
            out[int(p) - s] = labels[int(p)]
    return out


def _pool_note(bounds):
    """What the colorbar adds for a pooled map: the tiles' size."""
    sizes = np.diff(bounds)
    size = f"{sizes.min()}" if sizes.min() == sizes.max() else f"{sizes.min()}–{sizes.max()}"
    return f"\nmeans over tiles of {size} tokens"
