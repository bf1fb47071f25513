"""Does the attention matter, drawn: visualize_knockout puts what a token looked at (its
attention to each earlier key) above what it used (the change of log p when that one edge is
removed: attnscope.knockout_sweep); visualize_head_effects draws the layers x heads grid of head
ablation effects (attnscope.head_effects) beside head atlas scores."""
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import SymLogNorm

from ..ablation import HeadEffects
from ..atlas import HeadAtlas, head_atlas
from ..figure import check_options, closing_on_error, panel_for_labels, rank_labels, subplots, ticks
from ..identity import same_model
from ..knockout import KeySweep
from .atlas import _STYLE


def _bars(ax, x, v, color):
    """Bars up to a few hundred keys; beyond, lines (a bar narrower than a pixel vanishes)."""
    if len(x) <= 400:
        ax.bar(x, v, color=color, width=0.8)
    else:
        ax.vlines(x, 0, v, colors=color, linewidth=0.8)


def visualize_knockout(sweep, *, target=0, top_k=3, max_labels=80, panel=None):
    """Per band of `sweep` (a KeySweep), two rows over the keys: above, the attention from the
    query to each key (mean over the heads and the band's layers: "looked at"); below, Δ log p of
    target `target` (an index into sweep.targets) when that one edge is removed ("used"; red
    bars lower it). The `top_k` keys whose removal costs most are numbered on both rows and named
    in the x label; the title gives Spearman's rank correlation between attention and −Δ log p.
    Returns the Figure."""
    if not isinstance(sweep, KeySweep):
        raise ValueError(f"visualize_knockout: expected a KeySweep (attnscope.knockout_sweep), got "
                         f"{type(sweep).__name__}")
    n_t = len(sweep.targets)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n_t:
        raise ValueError(f"target {target!r}: expected an index into the sweep's {n_t} target(s) (0..{n_t - 1})")
    check_options(top_k=top_k, max_labels=max_labels, panel=panel)
    keys, n = sweep.keys, len(sweep.keys)
    x = np.arange(n)
    labels = [f"{sweep.labels[k]}" for k in keys]
    w, h = panel or (panel_for_labels(min(n, max_labels or 1), 5.0), 2.2)
    nb = len(sweep.bands)
    fig, axes = subplots(2 * nb, 1, (w, 2 * h * nb + 0.6))
    axes = np.asarray(axes).reshape(-1)
    tid, tlab = sweep.targets[target]
    with closing_on_error(fig, True):
        for b, (name, _) in enumerate(sweep.bands):
            att = sweep.attention_from(b).numpy()
            d = sweep.delta_logp[b, :, target].numpy()
            top = [int(i) for i in np.argsort(d, kind="stable")[:top_k] if d[i] < 0]
            up, down = axes[2 * b], axes[2 * b + 1]
            _bars(up, x, att, "#4c72b0")
            up.scatter(x[top], att[top], s=14, color="#e31a1c", zorder=3)  # visible at any length
            rank_labels(up, top, att, n)
            up.set_xlim(-0.6, n - 0.4)
            up.set_ylim(0, max(float(att.max()), 1e-9) * 1.3)
            up.set_ylabel("attention\n(looked at)", fontsize=7)
            up.set_xticks([])
            rho = sweep.rank_correlation(b, target)
            up.set_title(f"{name}: from {sweep.position} {sweep.query_label}, predicting {tlab} "
                         f"(log p {float(sweep.logp_before[target]):.3f}); rank corr(attention, −Δ log p) "
                         f"{rho:.2f}", fontsize=8).set_parse_math(False)
            _bars(down, x, d, np.where(d < 0, "#d6604d", "#4393c3"))
            down.scatter(x[top], d[top], s=14, color="#e31a1c", zorder=3)
            down.axhline(0, color="0.3", lw=0.6)
            lo, hi = min(float(d.min()), 0.0), max(float(d.max()), 0.0)
            pad = 0.12 * max(hi - lo, 1e-9)
            down.set_ylim(lo - pad, hi + pad)
            down.set_xlim(-0.6, n - 0.4)
            for r, i in enumerate(top):
                down.annotate(str(r + 1), (i, d[i]), xytext=(0, -9), textcoords="offset points", ha="center",
                              fontsize=7, color="#e31a1c")
            down.set_ylabel("Δ log p\n(used)", fontsize=7)
            ticks(down, labels, "x", max_labels)
            down.set_xticks(down.get_xticks())
            named = "   ".join(f"{r + 1} {labels[i]} ({keys[i]}) {d[i]:+.3f}" for r, i in enumerate(top))
            down.set_xlabel(f"key position{chr(10) + 'most used: ' + named if named else ''}",
                            fontsize=7).set_parse_math(False)
        fig.suptitle(f"Attention knockout sweep: each edge {sweep.position} → key removed alone "
                     f"({sweep.method})", fontsize=8)
    return fig


def visualize_head_effects(effects, *, atlas=None, scores=("induction", "prev", "sink"), top=5, scale="linear",
                           allow_different_models=False):
    """The layers x heads grid of `effects` (a HeadEffects): Δ log p when each head is ablated
    (red = the head helped the prediction; diverging scale centred at 0), and Δ predictive
    entropy; the `top` most needed heads ringed and named. scale "symlog" spreads the colours of
    the effects logarithmically beyond 1 % of the largest (one dominant head no longer hides the
    rest). With `atlas` (a HeadAtlas, or a trace whose atlas is computed) its `scores` follow as
    grids of the same shape, so what a head does stands beside whether it matters. Returns the
    Figure."""
    if not isinstance(effects, HeadEffects):
        raise ValueError(f"visualize_head_effects: expected a HeadEffects (attnscope.head_effects), got "
                         f"{type(effects).__name__}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top={top!r}: expected an int >= 0")
    if scale not in ("linear", "symlog"):
        raise ValueError(f"scale {scale!r}: expected 'linear' or 'symlog'")
    grids = [("Δ log p (nats); red = the head helped", effects.delta_logp, "RdBu", True),
             ("Δ entropy (nats); orange = more unsure without it", effects.delta_entropy, "PuOr_r", True)]
    models = ""
    if atlas is not None:
        atlas = atlas if isinstance(atlas, HeadAtlas) else head_atlas(atlas)
        models = same_model(effects, atlas, allow_different_models=allow_different_models, what="atlas")
        for s in scores:
            full = torch.full_like(effects.delta_logp, float("nan"))
            full[atlas.layers] = atlas[s].to(full.dtype)
            grids.append((s, full, *_STYLE.get(s, ("viridis", None, s))[:1], False))
    L, H = effects.delta_logp.shape
    pw, ph = min(4.0, max(2.4, 0.28 * H + 1.4)), min(6.5, max(2.4, 0.16 * L + 1.2))
    fig, axes = subplots(1, len(grids), (pw * len(grids), ph))
    axes = np.asarray(axes).reshape(-1)
    best = effects.top(top) if top else []
    with closing_on_error(fig, True):
        for ax, (name, values, cmap, centred) in zip(axes, grids):
            v = values.numpy()
            finite = v[np.isfinite(v)]
            norm = None
            if centred:
                half = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
                vmin, vmax = -half, half
                if scale == "symlog":
                    norm, vmin, vmax = SymLogNorm(0.01 * half, vmin=-half, vmax=half), None, None
            else:
                lim = _STYLE.get(name, (None, None))[1]
                vmin, vmax = lim or ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
            im = ax.imshow(np.ma.masked_invalid(v), cmap=colormaps[cmap].with_extremes(bad="#d9d9d9"), vmin=vmin,
                           vmax=vmax, norm=norm, aspect="auto", interpolation="nearest")  # grey: not swept
            for r, ((l, h), _) in enumerate(best):
                ax.scatter([h], [l], s=40, facecolors="none", edgecolors="#e31a1c" if r == 0 else "black",
                           linewidths=1.2)
            ax.set_title(name, fontsize=7)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            ax.set_yticks(range(0, L, max(1, int(np.ceil(L / 16)))))
            ax.set_xticks(range(0, H, max(1, int(np.ceil(H / 16)))))
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, shrink=0.9).ax.tick_params(labelsize=6)
        where = (f"at position {effects.positions[0]}" if len(effects.positions) == 1 else
                 f"over {len(effects.positions)} positions {effects.positions[0]}..{effects.positions[-1]}")
        named = ", ".join(f"L{l}H{h} {d:+.2f}" for (l, h), d in best)
        fig.suptitle(f"Head ablation ({effects.mode}) {where}: Σ log p {effects.logp_before:.3f} before; "
                     f"most needed (ringed, red = first): {named}" + (f"\n{models}" if models else ""),
                     fontsize=8).set_parse_math(False)
    return fig
