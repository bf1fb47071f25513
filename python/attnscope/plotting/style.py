"""Colour normalisation, masked cells and legends shared by the figure families."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.lines import Line2D

from ..marks import HIGH_ENTROPY_COLOR, _upper_empty


UNIFORM_RANGE = 16.0  # scale="uniform" spans 1/16 .. 16 times the uniform share by default


def _norm(scale, vmin, vmax, gamma):
    if scale == "uniform":
        if vmin > 0 and vmax > 1 > vmin and abs(np.log2(vmin) + np.log2(vmax)) > 1e-9:
            return _centred_log(vmin, vmax)
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


def _centred_log(lo, hi):
    """Log scale with 1 (an even share) in the middle of the colours whatever the range: lo..1
    spans the lower half and 1..hi the upper, each in log2, so white stays "uniform" on RdBu_r
    when the bottom reaches lower than the top reaches up."""
    a, b = -np.log2(lo), np.log2(hi)

    def forward(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log2(np.maximum(np.asarray(x, dtype=float), 1e-300))
        return np.where(y < 0, y / a, y / b)

    def inverse(y):
        y = np.asarray(y, dtype=float)
        return np.where(y < 0, 2.0 ** (y * a), 2.0 ** (y * b))
    return mcolors.FuncNorm((forward, inverse), vmin=lo, vmax=hi, clip=False)


def _scale_label(scale, gamma, lo=None, up=None, skipped=False):
    """What the colorbar says about its scale, and how its default range was chosen: the
    bottom of "uniform" at the cells' BOTTOM_QUANTILE when that is below 1/16, the top of a raw
    scale without the first key's column (`skipped`: it saturates)."""
    text = {"uniform": "attention ÷ uniform (1 / keys seen), log scale",
            "sqrt": "attention (√ scale)", "log": "attention (log scale)", "linear": "attention",
            "power": f"attention (power scale, γ = {gamma:g})"}[scale]
    if scale == "uniform" and lo is not None and lo < 1.0 / UNIFORM_RANGE:
        text += f"\nbottom: {BOTTOM_QUANTILE:.0%} of the cells lie below (first key left out)"
    elif skipped:
        text += "\ntop: the largest cell but the first key's (it saturates)"
    return text


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
        exact = lo + (hi - lo) * u ** (1 / norm.gamma)
        v = exact
        for digits in (1, 2):  # one significant digit inside (two where one lands off its place), the ends exact
            v = float(f"{exact:.{digits}g}") if 0 < u < 1 else exact
            if abs(float(norm(v)) - u) < 0.05:
                break
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


BOTTOM_QUANTILE = 0.05  # "uniform": at most this share of the cells sits below the scale
BOTTOM_LIMIT = 2.0 ** -20


def _others(a, skip):
    """The cells of `a` but column `skip` (the first real key: a sink would set any range)."""
    if skip is None or not 0 <= skip < a.shape[1] or a.shape[1] < 2:
        return a
    return np.delete(a, skip, axis=1)


def _default_vmin(a, scale, skip=None):
    """0 for attention on a linear/power scale (masked cells no longer hold the zeros that set
    it); the smallest value for a log scale. "uniform": 1/UNIFORM_RANGE, or lower, to the power
    of 2 below the cells' BOTTOM_QUANTILE (the first key's column left out) when more of them
    than that lie below 1/16 — at 2000 tokens most cells of a real model's map get far less than
    an even share, and a fixed bottom would paint them all in its darkest colour."""
    if scale == "uniform":
        cells = _others(a, skip)
        cells = cells[np.isfinite(cells) & (cells > 0)]
        q = float(np.quantile(cells, BOTTOM_QUANTILE)) if cells.size else 1.0
        return max(BOTTOM_LIMIT, min(1.0 / UNIFORM_RANGE, 2.0 ** np.floor(np.log2(q))))
    return float(np.nanmin(a)) if scale == "log" else min(0.0, float(np.nanmin(a)))


def _default_vmax(a, scale, skip=None):
    """UNIFORM_RANGE for "uniform" (white = uniform sits in the middle); else the largest value
    but the first key's column (`skip`), whose sink would leave every other cell dark."""
    if scale == "uniform":
        return UNIFORM_RANGE
    rest = _others(a, skip)
    top = float(np.nanmax(rest)) if np.isfinite(rest).any() else float("nan")
    return top if top > 0 else float(np.nanmax(a))


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
