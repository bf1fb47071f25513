"""visualize_rollout: attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers") — how much each input token flows into each token's last-layer representation
through the head-mean attention and the residual (0.5·A + 0.5·I per layer), the map and one
token's row."""
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm

from ..figure import check_options, closing_on_error, panel_for_labels, rank_labels, subplots, ticks
from ..marks import high_entropy_positions
from .data import _capture, _check_batch, _ensure, _labels, _window


def visualize_rollout(trace, token_idx=-1, *, batch=0, tokens=None, top_k=3, max_labels=60, mask_first=True):
    """Left: the rollout map [query i, input token j] of row `batch` on a log colour scale (each
    row sums to 1; the shade floor is 1e-3 of the largest value shown); right: the row of
    `token_idx` (negative counts from the end) as bars, its `top_k` input tokens numbered and
    named. In a decoder most of every row flows from the first token (the attention sink):
    mask_first=True (default) draws its column grey and its bar hatched, off the scales, and
    states its share, so the rest can be read. The capture "rollout" is computed when missing
    and the trace keeps its model. tokens: (start, stop) or "response", as in
    visualize_attention. Returns the Figure."""
    _check_batch(trace, batch)
    check_options(top_k=top_k, max_labels=max_labels)
    T = trace.input_ids.shape[1]
    if isinstance(token_idx, bool) or not isinstance(token_idx, (int, np.integer)) or not -T <= token_idx < T:
        raise ValueError(f"token_idx {token_idx!r} out of range: expected an int in -{T}..{T - 1}")
    i = int(token_idx) % T
    if not bool(trace.attention_mask[batch, i]):
        raise ValueError(f"token_idx {i} is padding in row {batch}: its rollout row is undefined")
    _ensure(trace, ["rollout"])
    R = _capture(trace, "rollout", "{'rollout': True}")[batch].double().numpy()
    s, e = _window(trace, batch, tokens)
    labels = _labels(trace, batch)
    hi = [p for p in high_entropy_positions(trace, batch=batch) if s <= p < e]
    n = e - s
    side = panel_for_labels(min(n, max_labels), 4.5)
    fig, axes = subplots(1, 2, (2 * side + 1.0, side))
    ax, bar = np.asarray(axes).reshape(-1)
    first = int(np.nonzero(trace.attention_mask[batch].numpy())[0][0])
    off = mask_first and s <= first < e and first != i
    with closing_on_error(fig, True):
        shown = R[s:e, s:e].copy()
        if off:
            shown[:, first - s] = np.nan
        top = max(float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0, 1e-12)
        floor = top * 1e-3
        # Exact zeros (keys a causal query never sees) below the floor: white, not "bad" grey.
        shown = np.where(shown == 0, floor / 2, shown)
        cmap = colormaps["magma_r"].with_extremes(bad="#d9d9d9", under="#ffffff")
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=LogNorm(vmin=floor, vmax=top),
                       interpolation="nearest", extent=(s - 0.5, e - 0.5, e - 0.5, s - 0.5))
        ticks(ax, labels[s:e], "both", max_labels, hi, start=s)
        ax.set_title("Attention rollout: row i = input tokens flowing into token i", fontsize=8)
        ax.set_xlabel("input token j", fontsize=7)
        ax.set_ylabel("token i", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.85).set_label("rollout (log scale)", fontsize=7)
        row = np.nan_to_num(R[i], nan=0.0)
        x = np.arange(T)
        keep = (x >= s) & (x < e)
        drawn = row.copy()
        if off:  # its bar stays (rank_labels indexes the bars by position), flat and hatched
            drawn[first] = 0.0
            bar.axvspan(first - 0.5, first + 0.5, color="0.9", hatch="///", ec="0.6", lw=0, zorder=0)
        bar.bar(x[keep], drawn[keep], color="#4c72b0", width=0.8)
        if off:
            keep[first] = False
        order = [int(j) for j in np.argsort(-np.where(keep, row, -1), kind="stable")[:top_k] if row[j] > 0]
        rank_labels(bar, order, row, n, start=s)
        bar.set_xlim(s - 0.6, e - 0.4)
        bar.set_ylim(0, max(float(row[keep].max()) if keep.any() else 0, 1e-9) * 1.25)
        bar.set_ylabel("rollout", fontsize=7)
        ticks(bar, labels[s:e], "x", max_labels, hi, start=s)
        named = "   ".join(f"{r + 1} {labels[j]} ({j}) {row[j]:.3g}" for r, j in enumerate(order))
        sink = f"\nfirst token {labels[first]} ({first}): {100 * row[first]:.2f} % of the row, off the scales" if off else ""
        bar.set_xlabel(f"input token j\n{named}{sink}", fontsize=7).set_parse_math(False)
        bar.set_title(f"Rollout row of {i} {labels[i]}", fontsize=8).set_parse_math(False)
    return fig
