"""visualize_attention_diff: what changed between two traces of one model — a prompt and its
variant, an answer and its branch — as b − a of their head-mean (or head) maps, position by
position over the length they share, on a diverging scale centred at 0."""
import numpy as np
from matplotlib import colors as mcolors

from ..figure import (check_options as _check_options, closing_on_error, columns as _columns, grid as _grid,
                      outer_labels, ticks as _ticks)
from ..identity import same_model
from ..windows import shared_span
from .data import _check_batch, _ensure, _layer_map, _layers, _range
from .style import _cmap

DIVERGE_COLOR = "#2ca02c"
MASKED_DIFF = "0.72"  # darker than the scale's white 0, so a masked cell never reads as "no change"


ZOOM, ZOOM_BEFORE = 128, 96  # the default window at a fork: 96 positions before it, the rest after


def _zoom(m, d):
    """(start, stop) of the default window: all m positions, or ZOOM of them around the fork d."""
    if d is None or m <= ZOOM:
        return 0, m
    s = max(0, min(d - ZOOM_BEFORE, m - ZOOM))
    return s, s + ZOOM


def visualize_attention_diff(a, b, layer_indices, *, head_idx=None, batch_a=0, batch_b=0, cmap="RdBu_r",
                             vmax=None, tokens=None, max_labels=None, ncols=None, panel=2.6,
                             allow_different_models=False):
    """One panel per layer: the attention map of `b` minus that of `a` (head mean, or
    `head_idx`), query i -> key j, over the m positions both rows hold, aligned on their first
    real tokens (attnscope.windows.shared_span: left padding skipped, unequal lengths cut to
    the shorter). A diverging scale centred at 0 shared by
    every panel (`vmax`: its half-range; default the largest |difference|); cells a causal map
    masks are mid-grey, never the white of 0. The first position whose token differs is marked by green lines (a
    causal model's rows before it are identical: 0). Tick labels are a's tokens, "a→b" where
    they differ. By default a long pair (more than 128 shared positions) with a fork is zoomed to
    128 positions around it (96 before, the rest after; the title says so): the rows before the
    fork are the same, and a late fork in 2000 positions would be a sliver. tokens: (start,
    stop) within the m shared positions (negative counts from their end) for any other window.
    Returns the Figure.

    Refused with a message: traces of two models (same shape is not the same model; pass
    allow_different_models=True to compare two models on purpose, and the title says so),
    rows with padding between their tokens, layers or heads out of range."""
    for name, t in (("a", a), ("b", b)):
        if not hasattr(t, "input_ids") or not hasattr(t, "labels"):
            raise ValueError(f"{name}: expected an attnscope.Trace, got {type(t).__name__}")
    models = same_model(a, b, allow_different_models=allow_different_models, what="visualize_attention_diff")
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        raise ValueError(f"the traces come from different models: a has {a.n_layers} layers x {a.n_heads} heads, "
                         f"b has {b.n_layers} x {b.n_heads}")
    layers = _layers(a, layer_indices, head_idx)
    _check_batch(a, batch_a)
    _check_batch(b, batch_b)
    _check_options(vmax=vmax, max_labels=max_labels, ncols=ncols, panel=panel)
    if vmax is not None and vmax <= 0:
        raise ValueError(f"vmax {vmax!r} must be > 0 (the half-range of the scale)")
    m, d, oa, ob = shared_span(a, b, batch_a=batch_a, batch_b=batch_b)
    s, e = _zoom(m, d) if tokens is None else _range(tokens, m, "the traces share")
    names = [f"layer_map/L{l}" if head_idx is None else f"head_map/L{l}H{head_idx}" for l in layers]
    _ensure(a, names)
    _ensure(b, names)
    diffs = []
    for l in layers:
        ma = np.asarray(_layer_map(a, l, head_idx, batch_a), dtype=float)[oa:oa + m, oa:oa + m]
        mb = np.asarray(_layer_map(b, l, head_idx, batch_b), dtype=float)[ob:ob + m, ob:ob + m]
        dm = mb - ma
        if not np.triu(np.abs(ma) + np.abs(mb), 1).any():  # causal: the future half is masked
            dm[np.triu_indices(m, 1)] = np.nan
        diffs.append(dm[s:e, s:e])
    half = vmax if vmax is not None else max(max(float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 0.0
                                                 for x in diffs), 1e-9)
    norm = mcolors.TwoSlopeNorm(vcenter=0.0, vmin=-half, vmax=half)
    la, lb = a.labels[batch_a], b.labels[batch_b]
    labels = [la[oa + i] if la[oa + i] == lb[ob + i] else f"{la[oa + i]}→{lb[ob + i]}" for i in range(s, e)]
    if max_labels is None:
        max_labels = max(4, int(panel * 72 * 0.62 / (5.5 * 1.3)))
    fig, axes, _ = _grid(len(layers), ncols, panel)
    ncol = _columns(len(layers), ncols, panel)
    with closing_on_error(fig, True):
        for k, (ax, l, dm) in enumerate(zip(axes, layers, diffs)):
            im = ax.imshow(dm, cmap=_cmap(cmap).with_extremes(bad=MASKED_DIFF), norm=norm, interpolation="nearest",
                           extent=(s - 0.5, e - 0.5, e - 0.5, s - 0.5))
            if d is not None and s <= d < e:
                ax.axvline(d - 0.5, color=DIVERGE_COLOR, lw=1.0)
                ax.axhline(d - 0.5, color=DIVERGE_COLOR, lw=1.0)
            ax.set_title(f"L{l} {'Avg' if head_idx is None else f'H{head_idx}'}: b − a", fontsize=9)
            _ticks(ax, labels, "both", max_labels, [d] if d is not None else [], fontsize=5.5, start=s)
            outer_labels(ax, k % ncol == 0, k + ncol >= len(layers))
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label("attention b − a", fontsize=9)
        cb.ax.tick_params(labelsize=7)
        where = f"first different token at {d}" if d is not None else "same tokens"
        said = [f"{m} shared positions" + (" from each row's first real token" if oa or ob else ""),
                f"{where} (green)"]
        if tokens is None and (s, e) != (0, m):
            said.append(f"zoomed to {s}..{e - 1} around the fork (tokens=(start, stop) for others)")
        t = fig.suptitle(", ".join(said) + (f"\n{models}" if models else ""), fontsize=9)
        t.set_parse_math(False)
    return fig
