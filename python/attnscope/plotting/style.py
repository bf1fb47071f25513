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
