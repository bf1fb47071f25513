"""High predictive entropy marks and the prompt/response divider, for the figure functions.

The predictive entropy at position i is that of the distribution predicting token i+1 (nats).
Marked by default: the top 20 % of a sequence's entropies, at most the 8 highest, and for a
generated trace only the distributions its response was drawn from.
"""
import math

import numpy as np

HIGH_ENTROPY_COLOR = "#ffd700"


def _valid(trace, batch):
    return trace.attention_mask[batch].bool().numpy()


ENTROPY_QUANTILE = 0.8  # default: the top 20 % of a sequence's predictive entropies
MAX_MARKS = 8           # default cap: the 8 highest of those, so the marks stay readable


def _entropy_region(trace, batch, region):
    """Positions whose predictive entropy may be marked: real tokens; for a generated trace
    (region "auto" or "response") only the distributions the response was drawn from."""
    T = trace.input_ids.shape[1]
    ok = _valid(trace, batch).copy()
    if region not in ("auto", "response", "all"):
        raise ValueError(f"region {region!r}: expected 'auto', 'response' or 'all'")
    p = getattr(trace, "prompt_len", -1)
    if region != "all" and p is not None and p >= 0:
        ok[: max(p - 1, 0)] = False
        ok[T - 1:] = False  # the last position predicts beyond the response
    elif region == "response":
        raise ValueError("region='response' needs a generated trace (Model.generate)")
    return ok


def high_entropy_positions(trace, *, batch=0, entropy_quantile=ENTROPY_QUANTILE, entropy_threshold=None,
                           max_marks=MAX_MARKS, region="auto"):
    """Positions with high predictive entropy (the entropy at i is that of the distribution
    predicting token i+1), sorted: those above the `entropy_quantile` of this sequence's
    entropies (default 0.8: the top 20 %), or above `entropy_threshold` nats when given; at
    most `max_marks` of them (the highest; None = no cap). region: "auto" (the response of a
    generated trace, else every real token), "response" or "all". `entropy_threshold=False`
    (or `entropy_quantile=False` with no threshold): none."""
    if entropy_threshold is False or (entropy_threshold is None and (entropy_quantile is None or entropy_quantile is False)):
        return np.array([], dtype=int)
    if max_marks is not None and (isinstance(max_marks, bool) or not isinstance(max_marks, (int, np.integer))
                                  or max_marks < 1):
        raise ValueError(f"max_marks {max_marks!r} must be an int >= 1 (or None for no cap)")
    ent = trace.entropy[batch].numpy().astype(float)
    ok = _entropy_region(trace, batch, region) & np.isfinite(ent)
    if not ok.any():
        return np.array([], dtype=int)
    if entropy_threshold is not None:
        if isinstance(entropy_threshold, bool) or not isinstance(entropy_threshold, (int, float)) \
                or not math.isfinite(entropy_threshold):
            raise ValueError(f"entropy_threshold {entropy_threshold!r} must be a finite number of nats (or None / False)")
        cut = float(entropy_threshold)
    else:
        if isinstance(entropy_quantile, bool) or not isinstance(entropy_quantile, (int, float)) \
                or not 0 < entropy_quantile < 1:
            raise ValueError(f"entropy_quantile {entropy_quantile!r} must be in (0, 1)")
        cut = float(np.quantile(ent[ok], entropy_quantile))
    pos = np.nonzero(ok & (ent > cut))[0]
    if max_marks is not None and len(pos) > max_marks:
        pos = np.sort(pos[np.argsort(-ent[pos], kind="stable")[:max_marks]])
    return pos


def _entropy_label(entropy_threshold, entropy_quantile, n=None):
    what = (f"> {entropy_threshold} nats" if entropy_threshold is not None and entropy_threshold is not False
            else f"top {1 - entropy_quantile:.0%} of the sequence")
    shown = f", the {n} highest" if n == MAX_MARKS else ""
    return f"high predictive entropy: {what}{shown}\n(the entropy at i is that of the prediction of token i+1)"


def _marks_line(positions, labels, window=None, width=100):
    """Every mark named with its position and token ("marked: 12 ␣the · 15 ␣cat"), wrapped to
    lines of about `width` characters: tick labels of close marks may lack the room. Only the
    marks inside `window` = (start, stop), when given. "" when there are none."""
    lo, hi = window or (0, len(labels))
    items = [f"{int(p)} {labels[int(p)]}" for p in positions if lo <= p < hi]
    if not items:
        return ""
    lines, cur = [], "marked:"
    for it in items:
        it = it if len(it) <= 40 else it[:39] + "…"
        if len(cur) + len(it) + 3 > width and cur != "marked:":
            lines.append(cur)
            cur = "   "
        cur += (" " if cur.endswith(":") or not cur.strip() else " · ") + it
    return "\n".join(lines + [cur])


def _crosshairs(ax, positions, stop, causal=False, start=0):
    """Yellow crosshairs on a map drawn over positions start..stop-1: a thin translucent line
    along row i and column i (for a causal map only over the cells that hold attention: row i
    up to the diagonal, column i below it), and a solid marker on the left and bottom edges so
    each mark is found without covering the map. Positions outside the window are skipped."""
    positions = [int(p) for p in positions if start <= p < stop]
    lo, hi = start - 0.5, stop - 0.5
    for p in positions:
        ax.plot([lo, p if causal else hi], [p, p], color=HIGH_ENTROPY_COLOR, lw=0.6, alpha=0.45)
        ax.plot([p, p], [p if causal else lo, hi], color=HIGH_ENTROPY_COLOR, lw=0.6, alpha=0.45)
    if len(positions):
        kw = dict(color=HIGH_ENTROPY_COLOR, markeredgecolor="black", markeredgewidth=0.4, ms=5,
                  clip_on=False, ls="none", zorder=5)
        ax.plot(np.full(len(positions), lo), positions, marker=">", **kw)
        ax.plot(positions, np.full(len(positions), hi), marker="^", **kw)
    ax.set_xlim(lo, hi)
    ax.set_ylim(hi, lo)


def _upper_empty(a):
    """True when nothing lies above the diagonal (a causal map)."""
    up = np.triu(np.nan_to_num(a, nan=0.0), 1)
    return not np.any(up)


def _prompt_divider(ax, trace, axes="both", color="white", window=None):
    """Generated traces: a dashed line between the prompt and the response (when it falls
    inside `window` = (start, stop), if given)."""
    p = getattr(trace, "prompt_len", -1)
    if p is None or p <= 0 or p >= trace.input_ids.shape[1]:
        return
    if window is not None and not window[0] < p < window[1]:
        return
    style = dict(color=color, lw=0.9, ls=(0, (3, 2)), alpha=0.9)
    if axes in ("both", "x"):
        ax.axvline(p - 0.5, **style)
    if axes == "both":
        ax.axhline(p - 0.5, **style)
