"""Long traces: maps drawn as tile means computed by the core during the run (pooled maps), so a
panel shows every query and key of a 4000-token trace honestly — a few hundred pixels cannot
show 4000 rows, and nearest-neighbour sampling of a full map would show one row in ten."""
import math

import numpy as np

from .data import _check_layer

POOL_ABOVE = 512  # tokens in a window above which a figure draws pooled maps (pool=None)
POOL_TILES = 256  # tiles across a drawn window
POOL_BUDGET = 1 << 26  # floats the pooled maps of a run may hold (256 MB): caps the tile count


def pool_tiles(trace, start, stop, pool):
    """Tiles over the whole trace for drawing [start, stop), or None for full maps. pool: None =
    auto (pooled above POOL_ABOVE tokens), False = never, an int = that many tiles."""
    if pool is False:
        return None
    T = trace.input_ids.shape[1]
    if pool is None or pool is True:
        if stop - start <= POOL_ABOVE:
            return None
        # Auto: only where pooled maps exist or can be computed (a dataset trace or a file without
        # its model draws its full maps, as before).
        can = getattr(trace, "pooled_maps", None) is not None and (
            getattr(trace, "can_compute", False) or "pooled_map" in trace.captures)
        if not can:
            return None
        L, B, H = trace.n_layers, trace.input_ids.shape[0], trace.n_heads
        cap = max(16, int(math.isqrt(POOL_BUDGET // max(1, L * B * H))))
        return min(T, cap, math.ceil(POOL_TILES * T / (stop - start)))
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or not 1 <= pool <= 65536:
        raise ValueError(f"pool={pool!r}: expected None (auto), False or a tile count in 1..65536")
    return int(pool)


def pooled(trace, n, layer, head, batch, scale):
    """(values [m, m] over the trace's tiles, bounds [m + 1]) of `layer`, head `head` (None: the
    head mean); scale "uniform": the tile mean over a uniform query's (the figures' ratio);
    tiles nothing can see are NaN (drawn as masked)."""
    _check_layer(trace, layer)
    pm, pu, bounds = trace.pooled_maps(n)
    layers = trace.captures["aggregate_layers"].tolist()
    if layer not in layers:
        raise ValueError(f"layer {layer} has no pooled map in this trace (it has layers {layers})")
    i = layers.index(layer)
    m = pm[i, batch]
    m = (m.mean(0) if head is None else m[head]).double().numpy()
    u = pu[i, batch].double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        a = m / u if scale == "uniform" else m.copy()
    a[~(u > 0)] = np.nan
    if scale == "uniform":
        a = np.where(np.isnan(a), np.nan, np.maximum(a, 1e-12))
    return a, np.array(bounds)


def draw_pooled(ax, a, bounds, start, stop, cmap, norm):
    """Draws the tiles of `a` that meet [start, stop) in token coordinates (edges at the tile
    bounds, so marks and labels keep their positions); hatches the masked tiles above the
    diagonal. Returns the QuadMesh."""
    sel = np.nonzero((bounds[1:] > start) & (bounds[:-1] < stop))[0]
    edges = np.clip(np.append(bounds[sel], bounds[sel[-1] + 1]), start, stop) - 0.5
    sub = a[np.ix_(sel, sel)]
    mesh = ax.pcolormesh(edges, edges, np.ma.masked_invalid(sub), cmap=cmap, norm=norm, shading="flat")
    ax.set_xlim(start - 0.5, stop - 0.5)
    ax.set_ylim(stop - 0.5, start - 0.5)
    m = len(sel)
    if m >= 2 and np.isnan(sub[np.triu_indices(m, 1)]).all():
        from matplotlib.patches import Polygon
        from .style import MASKED_HATCH
        e = edges
        pts = [(e[1], e[0]), (e[m], e[0]), (e[m], e[m - 1])]
        for k in range(m - 2, -1, -1):
            pts += [(e[k + 1], e[k + 1]), (e[k + 1], e[k])]
        ax.add_patch(Polygon(pts, closed=True, fill=False, hatch="////", ec=MASKED_HATCH, lw=0, zorder=1))
    return mesh


def range_labels(labels, bounds, start, stop):
    """Tick labels of positions start..stop-1 for a pooled map: the range of the tile each
    position falls in ("120–135")."""
    tile = np.searchsorted(bounds, np.arange(start, stop), side="right") - 1
    return [f"{bounds[k]}–{bounds[k + 1] - 1}" for k in tile]
