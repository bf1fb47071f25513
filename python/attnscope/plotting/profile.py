"""visualize_token_profile: one query's attention layer by layer (attnscope.token_profile), as
the seed's checklist asks: broad or narrow, looking back, self spikes, where it looks — each
against what the trace's other tokens do, and with the strongest single head of each score."""
import textwrap

import numpy as np

from ..figure import closing_on_error, subplots
from ..identity import same_model
from ..profile import BAND, TokenProfile, token_profile
from ..windows import shared_span

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
# the percentile panel: breadth has no baseline, entropy stands for it (same colour)
_PCT = {"entropy": "#1b9e77", "distance": "black", "beyond_local": "#d95f02", "self": "#7570b3",
        "prev": "#e7298a", "sink": "#666666", "learned_sink": "#e6ab02"}
_SPIKES = ("self", "prev", "sink")  # the strongest head of these is named on the left panel


def _compared(trace, profile, compare, compare_position, compare_batch, top, one_model):
    """(this profile, the compared one, a note): the compared trace's row at the same token
    (aligned on the first real tokens), or, when this causal row precedes the first token that
    differs, both rows at that token — before it one model's two rows are the same by construction."""
    if isinstance(compare, TokenProfile):
        return profile, compare, ""
    if compare_position is not None or trace is None:
        pos = profile.position if compare_position is None else compare_position
        return profile, token_profile(compare, pos, batch=compare_batch, top=top), ""
    sh = shared_span(trace, compare, batch_a=profile.batch, batch_b=compare_batch)
    q = profile.position - sh.start_a
    if one_model and q < sh.length and not profile.sees_later and (sh.fork is None or q < sh.fork):
        if sh.fork is None:
            raise ValueError(f"compare: both traces hold the same tokens up to position {sh.start_a + sh.length - 1} "
                             f"and the row of position {profile.position} sees only keys up to itself, so the two "
                             "profiles are identical; pass compare_position= or a position after the shared tokens")
        d = sh.start_a + sh.fork
        note = (f"position {profile.position} precedes the first token that differs ({d}): its causal row is the "
                f"same in both traces, so both are profiled at {d}")
        return (token_profile(trace, d, batch=profile.batch, top=top),
                token_profile(compare, sh.start_b + sh.fork, batch=compare_batch, top=top), note)
    real_b = int(compare.attention_mask[compare_batch].sum())
    if q >= real_b:
        raise ValueError(f"compare: position {profile.position} is token {q} of row {profile.batch} from its first "
                         f"real token; the compared row holds {real_b} tokens (pass compare_position=)")
    return profile, token_profile(compare, sh.start_b + q, batch=compare_batch, top=top), ""


def visualize_token_profile(trace, position=None, *, batch=0, top=3, profile=None, compare=None,
                            compare_position=None, compare_batch=0, allow_different_models=False):
    """Three panels for query `position` of row `batch` (or a TokenProfile given as `profile`):
    left, the head-mean scores per layer (breadth, mass beyond the local window, self, previous
    token, first token; 0..1) with the mean distance in tokens on the right axis, and per layer
    the strongest single head of each score as a small triangle (the strongest self, previous-
    and first-token heads named: a spike lives in single heads); middle, each head-mean score's
    percentile among the trace's other real tokens in the same layer (grey band: their 10th to
    90th percentile, i.e. ordinary; entropy stands for breadth); right, where it looks: the
    `top` keys of each layer's head-mean row (dot area = weight), keys labelled by their tokens.

    compare: another Trace (a branch, a variant prompt; or a TokenProfile), drawn dashed and in
    orange. Its row is the one at the same token, rows aligned on their first real tokens; when
    this position comes before the first token that differs, a causal row is the same in both,
    so both are drawn at that token and the title says why (`compare_position=` overrides).
    Two models' profiles are refused unless allow_different_models=True (then the title says
    so). Returns the Figure."""
    given = profile is not None
    if profile is None:
        if position is None:
            raise ValueError("position=None: give the query position to profile (or profile=)")
        profile = token_profile(trace, position, batch=batch, top=top)
    elif not isinstance(profile, TokenProfile):
        raise ValueError(f"profile: expected a TokenProfile, got {type(profile).__name__}")
    other, models, note = None, "", ""
    if compare is not None:
        models = same_model(profile, compare, allow_different_models=allow_different_models, what="compare")
        profile, other, note = _compared(None if given else trace, profile, compare, compare_position, compare_batch,
                                         top, not models)
        if list(other.layer_ids) != list(profile.layer_ids):
            raise ValueError(f"compare: the profiles cover different layers ({profile.layer_ids[:3]}... vs "
                             f"{other.layer_ids[:3]}...): traces of one model, captured alike, compare")
    fig, axes = subplots(1, 3, (15.0, 4.4))
    ax, pct, where = axes[0]
    with closing_on_error(fig, True):
        _means_panel(fig, ax, profile, other)
        p = profile
        ax.set_title(f"Token profile: position {p.position} “{p.label}” (row {p.batch}), local window "
                     f"±{p.local_window}" + "".join(f"\n{textwrap.fill(x, 90)}" for x in (note, models) if x),
                     fontsize=8).set_parse_math(False)
        _percentile_panel(pct, profile)
        _where_panel(where, profile, other)
    return fig


def _means_panel(fig, ax, p, other):
    layers = np.array(p.layer_ids)
    learned = any(float(x.layers["learned_sink"].nan_to_num(0).max()) > 1e-4 for x in (p, other) if x is not None)
    named = []
    for name, (color, text) in _LINES.items():
        if name == "learned_sink" and not learned:
            continue
        ax.plot(layers, p.layers[name].numpy(), "-o", ms=3, lw=1.2, color=color, label=text)
        if other is not None:
            ax.plot(layers, other.layers[name].numpy(), "--", lw=1.2, color=color)
        v, h = p.strongest(name)
        ax.plot(layers, v.numpy(), "^", ms=3, color=color, alpha=0.55, linestyle="none")
        if name in _SPIKES and not v.isnan().all():
            i = int(v.nan_to_num(-1).argmax())
            named.append(f"{name} L{p.layer_ids[i]}H{int(h[i])} {float(v[i]):.2f}")
    ax.plot([], [], "^", ms=3, color="0.4", linestyle="none", label="▲ strongest head of the layer")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer" + (f"\nstrongest heads: {', '.join(named)}" if named else ""), fontsize=7)
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
    leg = fig.legend(lines[0] + more[0], lines[1] + more[1], fontsize=6, loc="outside lower left", ncols=4,
                     frameon=False)
    for t in leg.get_texts():
        t.set_parse_math(False)


def _percentile_panel(ax, p):
    layers = np.array(p.layer_ids)
    if p.layer_percentile is None:
        ax.text(0.5, 0.5, "no baseline: the trace has no row statistics\n(capture 'all', or keep the model)",
                ha="center", va="center", fontsize=7, transform=ax.transAxes)
        ax.set_axis_off()
        return
    lo, hi = BAND[0], BAND[-1]
    ax.axhspan(lo, hi, color="0.9", zorder=0)
    ax.axhline(0.5, color="0.6", lw=0.6, zorder=0)
    learned = float(p.layers["learned_sink"].nan_to_num(0).max()) > 1e-4
    for name, color in _PCT.items():
        if name not in p.layer_percentile or (name == "learned_sink" and not learned):
            continue
        ax.plot(layers, p.layer_percentile[name].numpy(), "-", lw=1.1, color=color,
                label=name if name != "distance" else "distance (dotted left)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("percentile among the other tokens")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False)
    ax.set_title(f"Against {p.n_baseline} other tokens of {p.baseline} (same layer, head mean)\n"
                 f"grey: {lo:.0%}–{hi:.0%}, ordinary; entropy stands for breadth", fontsize=8)


def _where_panel(where, p, other):
    """One column per distinct key (in position order), a dot per (layer, key)."""
    layers = np.array(p.layer_ids)
    weight = {}
    for keys in p.top_keys + (other.top_keys if other is not None else []):
        for pos, _, w in keys:
            weight[pos] = weight.get(pos, 0.0) + w
    shown = sorted(sorted(weight, key=lambda x: -weight[x])[:_MAX_KEYS])
    col = {x: c for c, x in enumerate(shown)}
    labels = {}
    for prof, shift, color in ((p, 0.0, "#2c7fb8"), (other, 0.25, "#ff7f0e")):
        if prof is None:
            continue
        xs, ys, ws = [], [], []
        for y, keys in zip(layers, prof.top_keys):
            for pos, lab, w in keys:
                if pos in col:
                    xs.append(col[pos] + shift), ys.append(y), ws.append(w)
                    labels.setdefault(pos, lab)
        where.scatter(xs, ys, s=np.array(ws) * 120 + 4, color=color, alpha=0.8, edgecolors="none")
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
