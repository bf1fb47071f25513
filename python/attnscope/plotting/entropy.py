"""visualize_entropy: the predictive entropy along the sequence — where the model hesitated —
with the marks, the chosen token and its top alternatives at the peaks, and the prompt/response
divider."""
import numpy as np

from ..figure import check_options as _check_options, closing_on_error, grid as _grid, ticks as _ticks
from ..marks import (ENTROPY_QUANTILE, HIGH_ENTROPY_COLOR, MAX_MARKS, _entropy_label, _prompt_divider,
                     high_entropy_positions)
from .data import _check_batch, _labels, _window
from .style import _axes_legend, _legend, _plain_text

LINE = "#4c72b0"
PROB = "#55a868"


def visualize_entropy(trace, *, batch=0, tokens=None, alternatives=3, show_prob=False,
                      entropy_quantile=ENTROPY_QUANTILE, entropy_threshold=None, max_marks=MAX_MARKS,
                      max_labels=80, width=None, height=None, ax=None):
    """Predictive entropy (nats) at each position: the entropy at i is that of the distribution
    that chose token i+1. Marked positions (the same as on the other figures) get a yellow dot
    and a rank number (1 = highest entropy); under the axis, one line per mark gives the token
    it chose with its probability and up to `alternatives` of the trace's top-k alternatives
    with theirs (from `topk_ids`/`topk_probs`). Generated traces
    show the response by default (the distributions its tokens were drawn from), with the
    dashed prompt/response divider when the window holds both.

    tokens: None (generated: "response"; else the real tokens), (start, stop) or "response", as
    in visualize_attention. show_prob: also the chosen token's probability (right axis, green);
    exact where the chosen token is among the top-k, else drawn as a hollow marker at the k-th
    probability, an upper bound. Returns the Figure, or the Axes when given `ax=`."""
    _check_batch(trace, batch)
    _check_options(max_labels=max_labels, top_k=alternatives)
    if width is not None and not (isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0):
        raise ValueError(f"width {width!r} must be a size in inches > 0")
    if height is not None and not (isinstance(height, (int, float)) and not isinstance(height, bool) and height > 0):
        raise ValueError(f"height {height!r} must be a size in inches > 0")
    if tokens is None and getattr(trace, "is_generated", False):
        tokens = "response"
    s, e = _window(trace, batch, tokens)
    if tokens == "response":
        s = max(s - 1, 0)  # the prompt's last position drew the first response token
    T = trace.input_ids.shape[1]
    ent = trace.entropy[batch].double().numpy()
    if not np.isfinite(ent[s:e]).any():
        raise ValueError("this trace has no predictive entropy (a model without logits, e.g. an encoder)")
    labels = _labels(trace, batch)
    ids = trace.input_ids[batch].tolist()
    has_topk = trace.topk_ids is not None and trace.topk_ids.numel() > 0
    k_ids = trace.topk_ids[batch].tolist() if has_topk else None
    k_p = trace.topk_probs[batch].double().numpy() if has_topk else None
    hi = high_entropy_positions(trace, batch=batch, entropy_threshold=entropy_threshold,
                                entropy_quantile=entropy_quantile, max_marks=max_marks)
    hi = [int(p) for p in hi if s <= p < e]
    hi_label = _entropy_label(entropy_threshold, entropy_quantile, len(hi))
    if height is None:  # the plot's own 2.8 in, plus a line per mark's note under it
        height = 2.8 + 0.13 * len(hi)
    if width is None:
        width = min(max(6.0, 0.11 * (e - s) + 2.0), 14.0)  # a notebook cell / a paper's full width at most
    fig, axes, own = _grid(1, 1, (width, height), ax)
    ax_ = axes[0]
    with closing_on_error(fig, own):
        x = np.arange(s, e)
        ax_.plot(x, ent[s:e], color=LINE, lw=1.2, marker="." if e - s <= 300 else None, ms=3)
        ax_.plot(hi, ent[hi], ls="none", marker="o", ms=6, color=HIGH_ENTROPY_COLOR, markeredgecolor="black",
                 markeredgewidth=0.5, zorder=5)
        top = np.nanmax(ent[s:e])
        notes = []
        rank = {p: r + 1 for r, p in enumerate(sorted(hi, key=lambda q: -ent[q]))}  # 1 = the highest entropy
        level, last = 0, None
        for p in hi:  # left to right; a number close to the previous one goes a line higher
            level = level + 1 if last is not None and p - last < max(1.0, (e - s) / 60) else 0
            last = p
            ax_.annotate(str(rank[p]), (p, ent[p]), xytext=(0, 5 + 8 * level), textcoords="offset points",
                         ha="center", va="bottom", fontsize=7, fontweight="bold", color="0.15")
        for p in sorted(hi, key=lambda q: rank[q]):
            r = rank[p] - 1
            notes.append(f"{r + 1}  at {p} {labels[p]}: {_note(trace, batch, p, ids, k_ids, k_p, alternatives, T)}")
        ax_.set_ylim(0, top * 1.3 + 1e-9)  # room for the rank numbers
        ax_.set_xlim(s - 0.5, e - 0.5)
        ax_.set_ylabel("entropy (nats)")
        xl = ax_.set_xlabel("\n".join(["position i (the distribution at i chose token i+1)"] + notes),
                            fontsize=7 if notes else None, loc="left" if notes else "center")
        xl.set_parse_math(False)
        _prompt_divider(ax_, trace, "x", color="0.35", window=(s, e))
        _ticks(ax_, labels[s:e], "x", max_labels, hi, start=s)
        if show_prob:
            _chosen_prob(ax_, s, e, ids, k_ids, k_p, T)
        title = "Where the model hesitated: predictive entropy"
        if getattr(trace, "is_generated", False) and tokens == "response":
            title += " over the response"
        ax_.set_title(title, fontsize=9)
        if ax is not None:
            return _axes_legend(ax_, hi, hi_label)
        _legend(fig, hi, hi_label)
    return fig


def _note(trace, batch, p, ids, k_ids, k_p, alternatives, T):
    """'chose ␣cat 0.41; alternatives ␣dog 0.32 · ␣cow 0.10' for the distribution at p (it
    chose token p+1), from the trace's top-k."""
    if p + 1 >= T or not trace.attention_mask[batch, p + 1]:
        return "(the last position: its choice is beyond the sequence)"
    chosen = ids[p + 1]
    text = f"chose {trace.labels[batch][p + 1]}"
    if k_ids is None:
        return text
    row = k_ids[p]
    q, exact = _chosen_p(p, ids, k_ids, k_p)
    text += f" {q:.2f}" if exact else f" (< {q:.2f}, not in the top {len(row)})"
    alts = [(i, q) for i, q in zip(row, k_p[p]) if i != chosen][:alternatives]
    if alts:
        text += "; alternatives " + " · ".join(f"{trace.token_label(i, batch)} {q:.2f}" for i, q in alts)
    return text


def _chosen_p(p, ids, k_ids, k_p):
    """(probability, exact) of the token chosen at p (token p+1): exact when it is among the
    top-k, else the k-th probability (an upper bound)."""
    row = k_ids[p]
    if ids[p + 1] in row:
        return float(k_p[p, row.index(ids[p + 1])]), True
    return float(k_p[p, -1]), False


def _chosen_prob(ax, s, e, ids, k_ids, k_p, T):
    """The chosen token's probability on a right axis: exact when it is among the top-k,
    else the k-th probability drawn hollow (an upper bound)."""
    if k_ids is None:
        return
    xs, ys, bx, by = [], [], [], []
    for p in range(s, min(e, T - 1)):
        q, exact = _chosen_p(p, ids, k_ids, k_p)
        (xs if exact else bx).append(p)
        (ys if exact else by).append(q)
    twin = ax.twinx()
    twin.plot(xs, ys, ls="none", marker="s", ms=2, color=PROB, alpha=0.8, label="p(chosen token)")
    if bx:
        twin.plot(bx, by, ls="none", marker="s", ms=2.5, mfc="none", color=PROB, label="below the k-th probability")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("p(chosen token)", color=PROB)
    twin.tick_params(axis="y", colors=PROB)
    _plain_text(twin.legend(loc="upper right", fontsize=6.5, frameon=False).get_texts())
