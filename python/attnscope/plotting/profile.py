"""visualize_token_profile: one query's attention layer by layer (attnscope.token_profile), as
the seed's checklist asks: broad or narrow, looking back, self spikes, where it looks."""
import numpy as np

from ..figure import closing_on_error, subplots
from ..identity import same_model
from ..profile import TokenProfile, token_profile

_MAX_KEYS = 24  # columns of the "where it looks" panel
# score -> (colour, legend text); all in [0, 1]
_LINES = {
    "breadth": ("#1b9e77", "breadth: entropy / its uniform maximum"),
    "beyond_local": ("#d95f02", "mass beyond the local window"),
    "self": ("#7570b3", "weight on itself"),
    "prev": ("#e7298a", "weight on the previous token"),
    "sink": ("#666666", "weight on the first token"),
    "learned_sink": ("#e6ab02", "share taken by learned sinks"),  # drawn only for models with them
}


def visualize_token_profile(trace, position=None, *, batch=0, top=3, profile=None, compare=None,
                            compare_position=None, compare_batch=0, allow_different_models=False):
    """Two panels for query `position` of row `batch` (or a TokenProfile given as `profile`):
    left, the head-mean scores per layer (breadth, mass beyond the local window, self, previous
    token, first token; 0..1) with the mean distance in tokens on the right axis; right, where
    it looks: the `top` keys of each layer's head-mean row (dot area = weight), keys labelled
    by their tokens. compare: another Trace (a branch, a variant prompt; or a TokenProfile) whose
    profile at `compare_position` (default: the same position) is drawn dashed on the left and
    in orange on the right, side by side with this one; two models' profiles are refused unless
    allow_different_models=True (then the title says so). Returns the Figure."""
    if profile is None:
        if position is None:
            raise ValueError("position=None: give the query position to profile (or profile=)")
        profile = token_profile(trace, position, batch=batch, top=top)
    elif not isinstance(profile, TokenProfile):
        raise ValueError(f"profile: expected a TokenProfile, got {type(profile).__name__}")
    other, models = None, ""
    if compare is not None:
        if isinstance(compare, TokenProfile):
            other = compare
        else:
            pos = profile.position if compare_position is None else compare_position
            other = token_profile(compare, pos, batch=compare_batch, top=top)
        models = same_model(profile, other, allow_different_models=allow_different_models, what="compare")
        if list(other.layer_ids) != list(profile.layer_ids):
            raise ValueError(f"compare: the profiles cover different layers ({profile.layer_ids[:3]}... vs "
                             f"{other.layer_ids[:3]}...): traces of one model, captured alike, compare")
    p = profile
    layers = np.array(p.layer_ids)
    fig, axes = subplots(1, 2, (10.0, 4.2))
    ax, where = axes[0]
    with closing_on_error(fig, True):
        learned = any(float(x.layers["learned_sink"].nan_to_num(0).max()) > 1e-4 for x in (p, other) if x is not None)
        for name, (color, text) in _LINES.items():
            if name == "learned_sink" and not learned:
                continue
            ax.plot(layers, p.layers[name].numpy(), "-o", ms=3, lw=1.2, color=color, label=text)
            if other is not None:
                ax.plot(layers, other.layers[name].numpy(), "--", lw=1.2, color=color)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("share of the attention (mean over heads)")
        dist = ax.twinx()
        dist.plot(layers, p.layers["distance"].numpy(), ":", lw=1.2, color="black", label="mean distance (tokens)")
        if other is not None:
            dist.plot(layers, other.layers["distance"].numpy(), "-.", lw=1.0, color="black",
                      label=f"compared: dashed (position {other.position} “{other.label}”)")
        dist.set_ylabel("mean distance (tokens)")
        dist.set_ylim(bottom=0)
        lines = ax.get_legend_handles_labels()
        more = dist.get_legend_handles_labels()
        fig.legend(lines[0] + more[0], lines[1] + more[1], fontsize=6, loc="outside lower left", ncols=3,
                   frameon=False)
        ax.set_title(f"Token profile: position {p.position} “{p.label}” (row {p.batch}), "
                     f"local window ±{p.local_window}" + (f"\n{models}" if models else ""),
                     fontsize=8).set_parse_math(False)
        # where it looks: one column per distinct key (in position order), a dot per (layer, key)
        weight = {}
        for keys in p.top_keys + (other.top_keys if other is not None else []):
            for pos, _, w in keys:
                weight[pos] = weight.get(pos, 0.0) + w
        shown = sorted(sorted(weight, key=lambda x: -weight[x])[:_MAX_KEYS])
        col = {x: c for c, x in enumerate(shown)}
        xs, ys, ws = [], [], []
        for y, keys in zip(layers, p.top_keys):
            for pos, _, w in keys:
                if pos in col:
                    xs.append(col[pos]), ys.append(y), ws.append(w)
        where.scatter(xs, ys, s=np.array(ws) * 120 + 4, color="#2c7fb8", alpha=0.8, edgecolors="none")
        labels = {pos: lab for keys in p.top_keys for pos, lab, _ in keys}
        if other is not None:  # the compared profile's keys, in orange, a quarter column right
            ox, oy, ow = [], [], []
            for y, keys in zip(layers, other.top_keys):
                for pos, lab, w in keys:
                    if pos in col:
                        ox.append(col[pos] + 0.25), oy.append(y), ow.append(w)
                        labels.setdefault(pos, lab)
            where.scatter(ox, oy, s=np.array(ow) * 120 + 4, color="#ff7f0e", alpha=0.8, edgecolors="none")
        short = {x: labels[x] if len(labels[x]) <= 16 else labels[x][:15] + "…" for x in shown}
        where.set_xticks(range(len(shown)), [f"{x} {short[x]}" for x in shown], rotation=90, fontsize=6)
        for x, t in zip(shown, where.get_xticklabels()):
            t.set_parse_math(False)  # token text is data, never markup
            if x == p.position:
                t.set_color("#e31a1c")
        where.set_xlim(-0.6, len(shown) - 0.4)
        where.set_ylabel("layer")
        dropped = len(weight) - len(shown)
        where.set_title(f"Where it looks: top {max(len(k) for k in p.top_keys)} keys per layer (area = weight"
                        + ("; orange = compared" if other is not None else "")
                        + ("; red label = the query" if p.position in col else "") + ")"
                        + (f"\n{dropped} keys of little weight left out" if dropped else ""), fontsize=8)
        where.set_ylim(layers.min() - 0.5, layers.max() + 0.5)
    return fig
