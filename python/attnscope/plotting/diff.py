"""visualize_attention_diff: what changed between two traces of one model — a prompt and its
variant, an answer and its branch — as b − a of their head-mean (or head) maps, position by
position over the length they share, on a diverging scale centred at 0."""
import numpy as np
from matplotlib import colors as mcolors

from ..figure import (check_options as _check_options, closing_on_error, columns as _columns, grid as _grid,
                      ticks as _ticks)
from ..identity import same_model
from .data import _check_batch, _ensure, _layer_map, _layers, _range
from .style import _cmap

DIVERGE_COLOR = "#2ca02c"
MASKED_DIFF = "0.72"  # darker than the scale's white 0, so a masked cell never reads as "no change"


def _aligned(a, b, batch_a, batch_b):
    """(m, d): the positions both rows hold (0..m-1, no left padding) and the first position
    whose token differs (None when the shared positions hold the same tokens)."""
    rows = []
    for name, t, r in (("a", a, batch_a), ("b", b, batch_b)):
        mask = t.attention_mask[r].tolist()
        if not mask[0]:
            raise ValueError(f"trace {name} row {r} is left-padded: traces are compared position by position "
                             "from their first token; run each text alone (batch of one)")
        rows.append(t.input_ids[r].tolist()[: sum(mask)])
    m = min(len(rows[0]), len(rows[1]))
    d = next((i for i in range(m) if rows[0][i] != rows[1][i]), None)
    return m, d


def visualize_attention_diff(a, b, layer_indices, *, head_idx=None, batch_a=0, batch_b=0, cmap="RdBu_r",
                             vmax=None, tokens=None, max_labels=None, ncols=None, panel=2.6,
                             allow_different_models=False):
    """One panel per layer: the attention map of `b` minus that of `a` (head mean, or
    `head_idx`), query i -> key j, over positions 0..m-1 both traces hold (traces of different
    lengths are aligned on their first m positions). A diverging scale centred at 0 shared by
    every panel (`vmax`: its half-range; default the largest |difference|); cells a causal map
    masks are mid-grey, never the white of 0. The first position whose token differs is marked by green lines (a
    causal model's rows before it are identical: 0). Tick labels are a's tokens, "a→b" where
    they differ. tokens: (start, stop) within the m shared positions to zoom in (negative
    counts from their end). Returns the Figure.

    Refused with a message: traces of two models (same shape is not the same model; pass
    allow_different_models=True to compare two models on purpose, and the title says so),
    left-padded rows, layers or heads out of range."""
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
    m, d = _aligned(a, b, batch_a, batch_b)
    s, e = (0, m) if tokens is None else _range(tokens, m, "the traces share")
    names = [f"layer_map/L{l}" if head_idx is None else f"head_map/L{l}H{head_idx}" for l in layers]
    _ensure(a, names)
    _ensure(b, names)
    diffs = []
    for l in layers:
        ma = np.asarray(_layer_map(a, l, head_idx, batch_a), dtype=float)[:m, :m]
        mb = np.asarray(_layer_map(b, l, head_idx, batch_b), dtype=float)[:m, :m]
        dm = mb - ma
        if not np.triu(np.abs(ma) + np.abs(mb), 1).any():  # causal: the future half is masked
            dm[np.triu_indices(m, 1)] = np.nan
        diffs.append(dm[s:e, s:e])
    half = vmax if vmax is not None else max(max(float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 0.0
                                                 for x in diffs), 1e-9)
    norm = mcolors.TwoSlopeNorm(vcenter=0.0, vmin=-half, vmax=half)
    la, lb = a.labels[batch_a], b.labels[batch_b]
    labels = [la[i] if la[i] == lb[i] else f"{la[i]}→{lb[i]}" for i in range(s, e)]
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
            ax.tick_params(labelleft=k % ncol == 0, labelbottom=k + ncol >= len(layers), length=2)
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label("attention b − a", fontsize=9)
        cb.ax.tick_params(labelsize=7)
        where = f"first different token at {d}" if d is not None else "same tokens"
        t = fig.suptitle(f"{m} shared positions, {where} (green)" + (f"\n{models}" if models else ""), fontsize=9)
        t.set_parse_math(False)
    return fig
