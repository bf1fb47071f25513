"""Figure scaffolding shared by the figure functions: the Figure class they return (TrueType
fonts when saved, shown once in Jupyter), grids, token tick labels sized to fit, and closing a
half-built figure when a call fails."""
import contextlib
import math
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .files import atomic_path
from .marks import HIGH_ENTROPY_COLOR

# Journals reject Type 3 fonts: embed TrueType (Type 42) in PDF/PS, keep SVG text as text.
SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}


def _inline_active():
    """True under Jupyter's matplotlib-inline backend, which itself shows every open figure when
    a cell ends (and closes it)."""
    return "inline" in matplotlib.get_backend() and matplotlib.is_interactive()


class PaperFigure(Figure):
    """A matplotlib Figure that saves with TrueType fonts (SAVE_RC) and is shown ONCE in Jupyter:
    under the inline backend, displaying it (as a cell's value, or by the backend at the cell's
    end) renders it with the notebook's figure formats and closes it in pyplot, so the backend
    does not show it a second time."""

    def savefig(self, fname, *args, **kwargs):
        # The saved file holds everything drawn (legends and colorbar labels may reach past a
        # narrow grid's edge), as Jupyter's inline display does; pass bbox_inches=None for the
        # exact figure size. A file name is written whole or not at all (attnscope.files).
        kwargs.setdefault("bbox_inches", "tight")
        with matplotlib.rc_context(SAVE_RC):
            if not isinstance(fname, (str, os.PathLike)):
                return super().savefig(fname, *args, **kwargs)
            fname = os.fspath(fname)
            ext = os.path.splitext(fname)[1].lstrip(".").lower()
            if not ext:  # matplotlib's own rule: the default format's extension is appended
                ext = matplotlib.rcParams["savefig.format"]
                fname = f"{fname}.{ext}"
            kwargs.setdefault("format", ext)
            with atomic_path(fname) as tmp:
                super().savefig(tmp, *args, **kwargs)

    @property
    def _ipython_display_(self):  # IPython looks this up; AttributeError = its usual display
        if not _inline_active():
            raise AttributeError("_ipython_display_")
        return self._display_once

    def _display_once(self):
        from IPython import get_ipython
        from IPython.display import display
        ip = get_ipython()
        data = {}
        if ip is not None:
            for mime, f in ip.display_formatter.formatters.items():
                if mime == "text/plain":
                    continue
                try:
                    printer = f.lookup_by_type(Figure)
                except KeyError:
                    continue
                out = printer(self)
                if out is not None:
                    data[mime] = out
        data["text/plain"] = repr(self)
        display(data, raw=True)
        if plt.fignum_exists(self.number):
            plt.close(self)


def subplots(nrows, ncols, figsize):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, constrained_layout=True,
                             FigureClass=PaperFigure)
    fig.get_layout_engine().set(h_pad=0.1)  # titles clear of the top edge
    return fig, axes


@contextlib.contextmanager
def closing_on_error(fig, own):
    """Closes a figure this call made when drawing it fails, so Jupyter shows no empty panels."""
    try:
        yield
    except BaseException:
        if own:
            plt.close(fig)
        raise


MAX_WIDTH = 16.0  # inches: the widest default figure (wider ones wrap their panels into rows)


def columns(n, ncols, width):
    """Columns of a grid of n panels `width` inches wide: `ncols` when given, else at most 4,
    wrapping into rows so the figure stays within MAX_WIDTH (a notebook cell or a page)."""
    return ncols or max(1, min(n, 4, int(MAX_WIDTH // width)))


def grid(n, ncols, panel, ax=None):
    """(figure, axes, own): n panels of `panel` inches (a number, or (width, height)), or the
    caller's one Axes."""
    if ax is not None:  # draw into the caller's Axes: one panel only
        if n != 1:
            raise ValueError(f"ax= draws one panel, but {n} were asked for: pass one (layer, head) "
                             "or one layer, or leave ax=None for a grid")
        return ax.figure, [ax], False
    w, h = panel if isinstance(panel, tuple) else (panel, panel)
    ncols = columns(n, ncols, w)
    nrows = math.ceil(n / ncols)
    fig, axes = subplots(nrows, ncols, (w * ncols, h * nrows))
    for a in axes.flat[n:]:
        a.set_visible(False)
    return fig, list(axes.flat[:n]), True


MAX_HEIGHT = 12.0  # inches: a default grid wraps into more columns (smaller panels) to stay within it
MIN_PANEL = 3.0


def fit_height(n, ncols, panel):
    """Panel side (inches) of a grid of n panels at most `panel`, shrunk (not below MIN_PANEL)
    until the grid, wrapping into up to 4 columns, is at most MAX_HEIGHT tall."""
    p = float(panel)
    while p > MIN_PANEL and math.ceil(n / columns(n, ncols, p)) * p > MAX_HEIGHT:
        p = max(MIN_PANEL, p - 0.25)
    return p


def labels_for_panel(panel):
    """Token labels one map of a `panel`-inch panel holds at 5.5 pt with 25 % spacing."""
    return max(4, int((panel - 1.8) * 72 / (5.5 * 1.25)))


def label_fontsize(n):
    """Tick label size for n token labels: 7 pt up to 48, then smaller down to 5.5 pt."""
    return 7.0 if n <= 48 else 6.0 if n <= 64 else 5.5


def panel_for_labels(n, base):
    """Panel side (inches) whose map fits n labels at label_fontsize(n) with 25 % spacing, plus
    room for the title, the rotated x labels and the colorbar; at least `base`."""
    return max(base, n * label_fontsize(n) * 1.25 / 72 + 1.8)


def ticks(ax, labels, axis, max_labels, marked=(), fontsize=None, start=0):
    """Token labels, thinned to about `max_labels` so no two overlap. Marked (high-entropy)
    positions always get a tick and come first for a label (bold on yellow); a marked position
    within one label's height of another marked label keeps its tick and yellow marker but not
    its text. `labels` are those of positions start, start+1, ... (a window of the sequence);
    `marked` holds absolute positions."""
    n = len(labels)
    marked = [int(p) - start for p in marked]
    step = max(1, math.ceil(n / max_labels)) if max_labels else n + 1
    marked = sorted(int(p) for p in marked if 0 <= int(p) < n)
    named = []
    if max_labels:
        for p in marked:  # marks first, greedily left to right
            if all(abs(p - q) >= step for q in named):
                named.append(p)
        for i in range(0, n, step):
            if all(abs(i - q) >= step for q in named):
                named.append(i)
    moved = []
    if max_labels and any(p not in named for p in marked):
        # every mark named: those a crowd pushed off their place on leader lines (leader_labels)
        slots = spread(marked, step, 0, n - 1)
        moved = [(p, q) for p, q in zip(marked, slots) if abs(p - q) > 1e-9]
        away = {p for p, _ in moved}
        named = [i for i in named if i not in away and all(abs(i - q) >= step for _, q in moved)]
        named += [p for p in marked if p not in away and p not in named]
    idx = sorted(set(named) | set(marked)) if max_labels else []
    text = {i: labels[i] for i in named}
    fs = fontsize or label_fontsize(len(named) + len(moved))
    at = [start + i for i in idx]
    if axis in ("x", "both"):
        ax.set_xticks(at)
        ax.set_xticklabels([text.get(i, "") for i in idx], rotation=90, fontsize=fs)
    if axis in ("y", "both"):
        ax.set_yticks(at)
        ax.set_yticklabels([text.get(i, "") for i in idx], fontsize=fs)
    for getter in (ax.get_xticklabels, ax.get_yticklabels):
        for t in getter():
            t.set_parse_math(False)  # token text is data: a '$' must not start mathtext
    mark = set(named) & set(marked)
    for getter in ((ax.get_xticklabels,) if axis == "x" else (ax.get_yticklabels,) if axis == "y"
                   else (ax.get_xticklabels, ax.get_yticklabels)):
        for i, t in zip(idx, getter()):
            if i in mark:
                t.set_fontweight("bold")
                t.set_bbox(dict(facecolor=HIGH_ENTROPY_COLOR, edgecolor="none", pad=0.5, alpha=0.8))
    if moved:
        for a in ("x", "y") if axis == "both" else (axis,):
            leader_labels(ax, [start + p for p, _ in moved], [labels[p] for p, _ in moved],
                          [start + q for _, q in moved], a, fs)


def outer_labels(ax, left, bottom):
    """A grid's panel names tokens only on its outer sides: tick labels (and marks' leader
    labels) on the left when `left`, at the bottom when `bottom`."""
    ax.tick_params(labelleft=left, labelbottom=bottom, length=2)
    for t in list(ax.texts):
        if (t.get_gid() == "leader-x" and not bottom) or (t.get_gid() == "leader-y" and not left):
            t.remove()


def spread(positions, gap, lo, hi):
    """Label slots for sorted `positions`: at least `gap` apart, within lo..hi, each as near its
    position as its neighbours allow (a crowd at the end of an axis fans out backwards)."""
    xs = [float(p) for p in positions]
    for i in range(1, len(xs)):
        xs[i] = max(xs[i], xs[i - 1] + gap)
    if xs and xs[-1] > hi:
        xs[-1] = hi
        for i in range(len(xs) - 2, -1, -1):
            xs[i] = min(xs[i], xs[i + 1] - gap)
    return [max(lo, x) for x in xs]


def leader_labels(ax, positions, texts, slots, axis, fontsize):
    """Marked tokens named at `slots` in the tick-label band, each on a thin line to its own
    tick at `positions` (bold on yellow, as the marks' tick labels)."""
    for p, text, q in zip(positions, texts, slots):
        if axis == "x":
            kw = dict(xy=(p, 0), xycoords=("data", "axes fraction"), xytext=(q, -4),
                      textcoords=("data", "offset points"), rotation=90, ha="center", va="top")
        else:
            kw = dict(xy=(0, p), xycoords=("axes fraction", "data"), xytext=(-4, q),
                      textcoords=("offset points", "data"), ha="right", va="center")
        t = ax.annotate(text, fontsize=fontsize, fontweight="bold", annotation_clip=False,
                        bbox=dict(facecolor=HIGH_ENTROPY_COLOR, edgecolor="none", pad=0.5, alpha=0.8),
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.35", shrinkA=0, shrinkB=0), **kw)
        t.set_parse_math(False)
        t.set_gid(f"leader-{axis}")  # a grid that hides an inner panel's tick labels hides these too
    # the axis label clears these texts as it clears tick labels (the layout does not see them)
    ticks_len = max((len(x.get_text()) for x in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())),
                    default=0)
    extra = (max((len(x) for x in texts), default=0) - ticks_len) * fontsize * 0.62 + 6
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.labelpad = max(target.labelpad, extra)


def check_options(*, vmin=None, vmax=None, scale="uniform", gamma=0.5, max_labels=1, ncols=None, panel=None,
                   top_k=0, yscale="linear"):
    """ValueError naming the option for values that would draw a wrong or empty figure."""
    def num(name, v):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v)):
            raise ValueError(f"{name} {v!r} must be a finite number (or None)")
    num("vmin", vmin)
    num("vmax", vmax)
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise ValueError(f"vmin {vmin!r} must be below vmax {vmax!r}")
    if scale not in ("uniform", "sqrt", "linear", "log", "power"):
        raise ValueError(f"scale {scale!r}: expected 'uniform', 'sqrt', 'linear', 'log' or 'power'")
    if scale in ("log", "uniform") and vmin is not None and vmin <= 0:
        raise ValueError(f"vmin {vmin!r} must be > 0 with scale={scale!r}")
    if scale == "power" and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
        raise ValueError(f"gamma {gamma!r} must be a number > 0")
    for name, v, least in (("max_labels", max_labels, 0), ("ncols", ncols, 1), ("top_k", top_k, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least):
            raise ValueError(f"{name} {v!r} must be an int >= {least}" + (" (0: none)" if least == 0 else ""))
    if panel is not None and not (isinstance(panel, (int, float)) and not isinstance(panel, bool) and panel > 0):
        raise ValueError(f"panel {panel!r} must be a size in inches > 0")
    if yscale not in ("linear", "log"):
        raise ValueError(f"yscale {yscale!r}: expected 'linear' or 'log'")


def rank_labels(ax, top, v, T, start=0, per_bar=1):
    """Rank numbers above the top bars; a number within ~2 bars of one already placed goes one
    line higher, so none overlap. `top` and `v` are indexed by absolute position (`v`: the
    height of the bar each position is drawn in); the bars drawn cover positions
    start..start+T-1, `per_bar` positions each. Returns the number of extra lines used."""
    placed, most = [], 0
    axes_pt = ax.get_position().width * ax.figure.get_figwidth() * 72 * 0.85  # after the layout, about
    width = max(1.0, 7.0 / max(axes_pt / T, 1e-9))  # bars one 7-pt label spans
    for r, p in enumerate(top):
        level = 0
        while any(abs(p - q) < width and lv == level for q, lv in placed):
            level += 1
        near = [q for q, _ in placed if abs(p - q) < width]
        y = max([v[p]] + [v[q] for q in near])  # stacked above the tallest neighbour, not its own bar
        placed.append((p, level))
        most = max(most, level)
        ax.annotate(str(r + 1), (p, y), xytext=(0, 2 + 8 * level), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, color="#c44e52", fontweight="bold")
    for c in ax.containers[:1] if per_bar > 1 else ax.containers[-1:]:
        for p in top:
            c[(p - start) // per_bar].set_edgecolor("#c44e52")
            c[(p - start) // per_bar].set_linewidth(2)
    return most
