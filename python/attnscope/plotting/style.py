"""Colour normalisation, masked cells and legends shared by the figure families."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.lines import Line2D

from ..marks import HIGH_ENTROPY_COLOR, _upper_empty


def _norm(scale, vmin, vmax, gamma):
    if scale == "linear":
        return mcolors.Normalize(vmin=vmin, vmax=vmax)
    if scale == "log":
        return mcolors.LogNorm(vmin=max(vmin, 1e-6), vmax=vmax)
    if scale == "sqrt":
        return mcolors.PowerNorm(gamma=0.5, vmin=vmin, vmax=vmax)
    if scale == "power":
        return mcolors.PowerNorm(gamma=gamma, vmin=vmin, vmax=vmax)
    raise ValueError(f"scale {scale!r}: expected 'sqrt', 'linear', 'log' or 'power'")


def _scale_label(scale, gamma):
    """What the colorbar says about its scale."""
    return {"sqrt": "attention (√ scale)", "log": "attention (log scale)", "linear": "attention",
            "power": f"attention (power scale, γ = {gamma:g})"}[scale]


def _colorbar_ticks(cb, norm, scale):
    """Ticks evenly spaced in colour, at rounded values, for the power/√ scales (matplotlib's
    value-spaced ticks bunch up at the top there)."""
    if scale not in ("sqrt", "power"):
        return
    lo, hi = float(norm.vmin), float(norm.vmax)
    if not hi > lo:
        return
    vals = []
    for u in np.linspace(0, 1, 6):
        v = lo + (hi - lo) * u ** (1 / norm.gamma)
        v = float(f"{v:.1g}") if 0 < u < 1 else v  # one significant digit inside, the ends exact
        if lo <= v <= hi and (not vals or v > vals[-1]):
            vals.append(v)
    cb.set_ticks(vals)
    cb.set_ticklabels([f"{v:.3g}" for v in vals])


MASKED_COLOR = "0.93"  # cells no query can attend to (after the diagonal of a causal map)
MASKED_HATCH = "0.62"


def _hatch_masked(ax, a, start):
    """Hatches the masked half of a causal map (`a`: the drawn window, NaN where masked, from
    position `start`), so masked cells never read as any value, in any colour map."""
    from matplotlib.patches import Polygon
    n = a.shape[0]
    if n < 2 or not np.isnan(a[np.triu_indices(n, 1)]).all():
        return
    s, e = start, start + n
    pts = [(s + 0.5, s - 0.5), (e - 0.5, s - 0.5), (e - 0.5, e - 1.5)]
    for i in range(e - 2, s - 1, -1):  # the staircase along the diagonal, bottom row first
        pts += [(i + 0.5, i + 0.5), (i + 0.5, i - 0.5)]
    ax.add_patch(Polygon(pts, closed=True, fill=False, hatch="////", ec=MASKED_HATCH, lw=0, zorder=1))


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
        leg = ax.legend(handles=[Line2D([], [], color=HIGH_ENTROPY_COLOR, lw=2, label=label)],
                        loc="upper right", fontsize=7)
        _plain_text(leg.get_texts())
    return ax


def _legend(fig, positions, label):
    if len(positions):
        leg = fig.legend(handles=[Line2D([], [], color=HIGH_ENTROPY_COLOR, lw=2, label=label)],
                         loc="outside lower center", fontsize=8, frameon=False)
        _plain_text(leg.get_texts())


def _plain_text(texts):
    """Token text is data, never markup: a '$' in a token must not start mathtext."""
    for t in texts:
        t.set_parse_math(False)
