"""visualize_head_atlas: small multiples of the head atlas, one layers x heads grid per score,
with the top heads of each score named."""
import numpy as np

from ..atlas import SCORES, HeadAtlas, compared_atlases, head_atlas, top_heads
from ..figure import closing_on_error, grid
from ..identity import same_model

# (colormap, fixed colour limits or None = the data's range, colorbar label)
_STYLE = {
    "self": ("Purples", (0.0, 1.0), "weight on itself"),
    "prev": ("Purples", (0.0, 1.0), "weight on the previous token"),
    "distance": ("cividis", None, "mean distance (tokens)"),
    "local": ("Greens", (0.0, 1.0), "mass within the local window"),
    "duplicate": ("Oranges", (0.0, 1.0), "mass on earlier copies"),
    "induction": ("Reds", (0.0, 1.0), "mass after earlier copies"),
    "sink": ("Blues", (0.0, 1.0), "weight on the first token"),
    "entropy": ("viridis", None, "attention entropy (nats)"),
    "learned_sink": ("Greys", (0.0, 1.0), "share taken by learned sinks"),  # as the maps' sink strip
}


def visualize_head_atlas(atlas, scores=None, *, top=3, ncols=None, compare=None, allow_different_models=False):
    """One layers x heads grid per score of `atlas` (a HeadAtlas, or a Trace / DatasetTrace
    whose atlas is computed with attnscope.head_atlas), rows = layers, columns = heads. The
    `top` heads of each score are ringed and named in its title (distance and entropy rank
    the largest). `scores`: names to draw (default every score the atlas has, in SCORES order).
    compare: a second atlas (or trace) of the same model: each grid then shows compare − atlas
    on a diverging scale centred at 0, the `top` largest changes ringed. Both are measured on
    the same query rows (attnscope.atlas.compared_atlases): two traces of unequal length on the
    shared prefix plus an equal window after the fork (the title says which rows); atlases of
    unequal rows are refused. Atlases of two models are refused unless
    allow_different_models=True (then the title says so). Returns the Figure."""
    if compare is not None:
        atlas, other, rows = compared_atlases(atlas, compare)
        models = same_model(atlas, other, allow_different_models=allow_different_models, what="compare")
        keep = [s for s in atlas.scores if s in other.scores]
        diff = {s: other[s] - atlas[s] for s in keep}
        said = "; ".join(x for x in (rows, models) if x)
        atlas = HeadAtlas(diff, {s: atlas.counts[s] for s in keep}, atlas.layers,
                          f"difference: ({other.source}) − ({atlas.source})" + (f"; {said}" if said else ""))
    elif not isinstance(atlas, HeadAtlas):
        atlas = head_atlas(atlas)
    names = [s for s in SCORES if s in atlas.scores] if scores is None else list(scores)
    if not names:
        raise ValueError("scores=[]: name at least one score")
    for s in names:
        atlas[s]  # ValueError naming the scores the atlas has
    if not (isinstance(top, int) and top >= 0):
        raise ValueError(f"top={top!r}: expected an int >= 0")
    L, H = len(atlas.layers), atlas.n_heads
    # Panels sized by the grid's shape: heads across (0.28 in each), layers down (0.16 in each).
    panel = (min(4.0, max(2.2, 0.28 * H + 1.3)), min(6.0, max(2.2, 0.16 * L + 1.0)))
    fig, axes, own = grid(len(names), ncols, panel)
    with closing_on_error(fig, own):
        for ax, name in zip(axes, names):
            values = atlas[name].numpy()
            cmap, lim, label = _STYLE.get(name, ("viridis", None, name))
            finite = values[np.isfinite(values)]
            vmin, vmax = lim if lim else ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
            if compare is not None:  # centred at 0: red = more in the compared one
                half = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
                cmap, vmin, vmax, label = "RdBu_r", -half, half, f"Δ {label}"
            im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax,
                           aspect="auto", interpolation="nearest")
            im.cmap.set_bad("#d9d9d9")  # a head no row defines (no duplicates in the text): grey
            if compare is not None:  # the largest changes either way
                mag = HeadAtlas({name: atlas[name].abs()}, {name: atlas.counts[name]}, atlas.layers)
                best = top_heads(mag, name, top) if top else []
            else:
                best = top_heads(atlas, name, top) if top else []
            for rank, (l, h) in enumerate(best):
                y = atlas.layers.index(l)
                ax.scatter([h], [y], s=40, facecolors="none", edgecolors="black" if rank else "#e31a1c",
                           linewidths=1.2)
            named = ", ".join(f"L{l}H{h} {atlas[name][atlas.layers.index(l), h]:.2f}" for l, h in best)
            ax.set_title(f"{name}\n{named}" if named else name, fontsize=7)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            step = max(1, int(np.ceil(L / 16)))
            ax.set_yticks(range(0, L, step), [str(atlas.layers[i]) for i in range(0, L, step)])
            ax.set_xticks(range(0, H, max(1, int(np.ceil(H / 16)))))
            ax.tick_params(labelsize=6)
            cb = fig.colorbar(im, ax=ax, shrink=0.9)
            cb.set_label(label, fontsize=6)
            cb.ax.tick_params(labelsize=6)
        fig.suptitle(f"Head atlas ({atlas.source}); ringed: top {top}, red = first" if top else
                     f"Head atlas ({atlas.source})", fontsize=8)
    return fig
