"""Colour normalisation, masked cells and legends shared by the figure families."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.lines import Line2D

from ..marks import HIGH_ENTROPY_COLOR, _upper_empty


UNIFORM_RANGE = 16.0  # scale="uniform" spans 1/16 .. 16 times the uniform share by default


def _norm(scale, vmin, vmax, gamma):
    if scale == "uniform":
        return mcolors.LogNorm(vmin=vmin, vmax=vmax, clip=False)
    if scale == "linear":
        return mcolors.Normalize(vmin=vmin, vmax=vmax)
    if scale == "log":
        return mcolors.LogNorm(vmin=max(vmin, 1e-6), vmax=vmax)
    if scale == "sqrt":
        return mcolors.PowerNorm(gamma=0.5, vmin=vmin, vmax=vmax)
    if scale == "power":
        return mcolors.PowerNorm(gamma=gamma, vmin=vmin, vmax=vmax)
    raise ValueError(f"scale {scale!r}: expected 'uniform', 'sqrt', 'linear', 'log' or 'power'")


def _scale_label(scale, gamma):
    """What the colorbar says about its scale."""
    return {"uniform": "attention ÷ uniform (1 / keys seen), log scale",
            "sqrt": "attention (√ scale)", "log": "attention (log scale)", "linear": "attention",
            "power": f"attention (power scale, γ = {gamma:g})"}[scale]


def _colorbar_ticks(cb, norm, scale):
    """Ticks evenly spaced in colour, at rounded values, for the power/√ scales (matplotlib's
    value-spaced ticks bunch up at the top there); powers of 2 as fractions for "uniform"."""
    if scale == "uniform":
        lo, hi = float(norm.vmin), float(norm.vmax)
        k0, k1 = int(np.ceil(np.log2(lo) - 1e-9)), int(np.floor(np.log2(hi) + 1e-9))
        step = max(1, int(np.ceil((k1 - k0) / 8)))
        ks = [k for k in range(k0, k1 + 1) if k % step == 0] or [k0]
        cb.set_ticks([2.0 ** k for k in ks])
        cb.set_ticklabels([f"{2 ** k:g}" if k >= 0 else f"1/{2 ** -k:g}" for k in ks])
        cb.minorticks_off()
        return
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


def _prepare(m, mask_first, scale=None):
    """Map as float numpy; the masked (future) half of a causal map becomes NaN, drawn blank in
    MASKED_COLOR rather than in the colour of 0, so real zeros and masked cells differ.
    scale="uniform": each row divided by its uniform share, 1 / (keys with weight > 0 in the
    row, i.e. the keys the query sees): 1 = as much as if the query attended evenly. A row's
    zeros inside what it sees (a sliding window's far keys) are clipped to the scale's bottom."""
    a = m.numpy().astype(float) if hasattr(m, "numpy") else np.array(m, dtype=float)
    if a.ndim == 2 and a.shape[0] == a.shape[1] and _upper_empty(a):
        a[np.triu_indices(a.shape[0], 1)] = np.nan
    if scale == "uniform":
        seen = np.nansum(a > 0, axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            a = np.where(np.isnan(a), np.nan, np.maximum(a * seen, 1e-12))
    if mask_first:  # hide the sink column so the rest gets the colour range
        a[:, 0] = np.nan
    return a


def _default_vmin(a, scale):
    """0 for attention on a linear/power scale (masked cells no longer hold the zeros that set
    it); the smallest value for a log scale; 1/UNIFORM_RANGE for "uniform"."""
    if scale == "uniform":
        return 1.0 / UNIFORM_RANGE
    return float(np.nanmin(a)) if scale == "log" else min(0.0, float(np.nanmin(a)))


def _default_vmax(a, scale):
    """The largest value; UNIFORM_RANGE for "uniform" (white = uniform sits in the middle)."""
    return UNIFORM_RANGE if scale == "uniform" else float(np.nanmax(a))


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
