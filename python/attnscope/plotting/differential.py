"""visualize_differential_attention: a differential head's two softmax maps and the difference
A₁ − λ·A₂ its output uses (attnscope.differential)."""
import matplotlib.colors as mcolors
import numpy as np

from ..differential import differential_map
from ..figure import check_options as _check_options, closing_on_error, panel_for_labels, subplots, ticks as _ticks
from ..marks import (ENTROPY_QUANTILE, MAX_MARKS, _crosshairs, _entropy_label, _marks_line, _upper_empty,
                     high_entropy_positions)
from .data import _check_batch, _labels, _window
from .style import UNIFORM_RANGE, _cmap, _colorbar_ticks, _legend, _norm, _scale_label


PANEL_MAX = 5.0  # inches: three panels a row stay within a page (figure.MAX_WIDTH)


def _seen(a):
    """[T, 1]: keys each row of a map can see (its nonzero weights), at least 1."""
    return np.maximum(1, (np.nan_to_num(a) > 0).sum(-1, keepdims=True))


def visualize_differential_attention(trace, layers_heads, *, batch=0, tokens=None, max_labels=None, panel=None,
                                     entropy_quantile=ENTROPY_QUANTILE, max_marks=MAX_MARKS):
    """One row per differential head (layer, h) with h < H/2 (DiffLlama): its two softmax maps A₁
    (head h) and A₂ (head h + H/2), and the difference D = A₁ − λ·A₂ the model multiplies with V.
    Every panel shows weight × keys the row sees, so rows of any length compare (1 = an even
    share): A₁ and A₂ on the log scale of visualize_attention (1/16..16), D on a scale centred at
    0 (RdBu_r: red where A₁ wins, blue where λ·A₂ cancels it) whose limits are the 99th
    percentile of |D| (a few early rows would take the whole scale). Titles name the heads and λ.
    tokens: None (the row's real tokens), (start, stop) or "response", as visualize_attention.
    High-entropy positions get yellow crosshairs. Returns the Figure."""
    pairs = list(layers_heads)
    if not pairs:
        raise ValueError("layers_heads is empty: give at least one (layer, head) pair")
    _check_batch(trace, batch)
    _check_options(max_labels=max_labels or 1, panel=panel)
    s, e = _window(trace, batch, tokens)
    maps = [differential_map(trace, l, h, batch=batch) for l, h in pairs]  # checks each pair by name
    hi = high_entropy_positions(trace, batch=batch, entropy_quantile=entropy_quantile, max_marks=max_marks)
    labels = _labels(trace, batch)
    side = panel or min(PANEL_MAX, panel_for_labels(e - s, 3.5))
    if max_labels is None:  # what a panel of this side holds at 7 pt
        max_labels = max(8, int((side - 1.8) * 72 / (7 * 1.25)))
    fig, axes = subplots(len(pairs), 3, (3 * side * 1.1, side * len(pairs)))
    with closing_on_error(fig, True):
        for row, ((l, h), (a1, a2, d, lam)) in zip(axes, zip(pairs, maps)):
            a1, a2, d = (x[s:e, s:e].numpy() for x in (a1, a2, d))
            seen = _seen(a1)
            r1, r2, rd = a1 * seen, a2 * seen, d * seen
            lim = float(max(np.nanpercentile(np.abs(rd[np.isfinite(rd) & (a1 > 0)]), 99) if (a1 > 0).any() else 0, 1e-6))
            second = h + trace.n_heads // 2
            uniform = _norm("uniform", 1 / UNIFORM_RANGE, UNIFORM_RANGE, 0.5)
            panels = ((r1, f"L{l} H{h}: A₁", "viridis", uniform, _scale_label("uniform", 0.5)),
                      (r2, f"L{l} H{second}: A₂", "viridis", uniform, _scale_label("uniform", 0.5)),
                      (np.where(a1 > 0, rd, np.nan), f"L{l} A₁ − λ·A₂ (λ = {lam:.3g})", "RdBu_r",
                       mcolors.Normalize(-lim, lim), "(A₁ − λ·A₂) × keys seen (0 = white)"))
            for ax, (a, title, cmap, norm, what) in zip(row, panels):
                im = ax.imshow(np.where(a > 0, a, np.nan) if cmap == "viridis" else a, cmap=_cmap(cmap), norm=norm,
                               interpolation="nearest", extent=(s - 0.5, e - 0.5, e - 0.5, s - 0.5))
                _crosshairs(ax, hi, e, _upper_empty(np.nan_to_num(a1)), start=s)
                ax.set_title(title, fontsize=9).set_parse_math(False)
                ax.set_xlabel("key")
                ax.set_ylabel("query")
                _ticks(ax, labels[s:e], "both", max_labels, hi, start=s)
                cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend="both")
                cb.set_label(what, fontsize=8)
                if cmap == "viridis":
                    _colorbar_ticks(cb, im.norm, "uniform")
        label = _entropy_label(None, entropy_quantile, len(hi))
        named = _marks_line(hi, labels, (s, e))
        _legend(fig, hi, f"{label}\n{named}" if named else label)
    return fig
