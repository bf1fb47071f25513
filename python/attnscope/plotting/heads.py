"""visualize_head_summary: one number per (layer, head) as a layers x heads grid."""
import numpy as np

from ..figure import subplots

HEAD_METRICS = ("sink", "sink_rate", "entropy")


def visualize_head_summary(trace, metric="sink", *, cmap=None, vmin=None, vmax=None,
                           annotate=None, ax=None):
    """Layers x heads grid (row = layer, column = head) of one number per head, so sink heads
    and broad heads stand out:
      "sink":      α₁, mean attention to the first token (Gu et al.'s importance of token 1);
                   heads with α₁ > ε are dotted. Title gives Sink₁ (share of heads with α₁ > ε,
                   per sequence, averaged over sequences).
      "sink_rate": fraction of sequences in which the head has α₁ > ε.
      "entropy":   mean attention entropy of the head's rows (nats).
    `trace`: a DatasetTrace (aggregate_dataset) or a Trace captured with "all" (its sequences
    are the dataset). Values are printed in the cells when `annotate` (default: <= 400 cells).
    Returns the Axes."""
    if metric not in HEAD_METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {HEAD_METRICS}")
    if not getattr(trace, "is_dataset", False):
        from ..dataset import DatasetTrace
        trace = DatasetTrace.from_traces([trace])
    need = "attn_entropy" if metric == "entropy" else "received"
    if not getattr(trace.stats.parts, need):
        raise ValueError(f"metric {metric!r} needs the {need!r} part: {trace.missing_hint(need if need != 'received' else 'received_mean')}")
    if metric == "entropy":
        values, label = trace.head_entropy.numpy(), "attention entropy (nats)"
        title = f"Attention entropy per head (mean {values.mean():.2f} nats)"
        cmap = cmap or "viridis"
    else:
        alpha1 = trace.alpha[..., 0].numpy()
        values = alpha1 if metric == "sink" else trace.sink_rate.numpy()
        label = "α₁ (attention to first token)" if metric == "sink" else f"share of sequences with α₁ > {trace.epsilon:g}"
        title = f"Sink₁ = {trace.sink1:.1%} of heads (ε = {trace.epsilon:g})"
        cmap = cmap or "Reds"
        vmin = 0.0 if vmin is None else vmin
        vmax = 1.0 if vmax is None else vmax
    L, H = values.shape
    if ax is None:
        _, axes = subplots(1, 1, (max(3.0, 0.45 * H + 2), max(3.0, 0.22 * L + 1.2)))
        ax = axes[0, 0]
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if metric == "sink":
        ys, xs = np.nonzero(values > trace.epsilon)
        # in the cell's corner, clear of the printed value
        ax.scatter(xs - 0.32, ys - 0.25, s=5, c="black", marker="o", label=f"α₁ > {trace.epsilon:g}")
    if annotate if annotate is not None else L * H <= 400:
        for (y, x), v in np.ndenumerate(values):
            r, g, b, _ = im.cmap(im.norm(v))  # dark text on light cells, light on dark
            ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=5,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.set_title(f"{title}\n{trace.n_sequences} sequences of {trace.length} tokens", fontsize=9)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.tick_params(labelsize=6)
    ax.figure.colorbar(im, ax=ax, label=label)
    return ax
