"""visualize_turning_points: the answer as a path along its positions, with the branches of a
turning_points() table leaving it where they forked — which hesitations change the answer."""
import textwrap

import numpy as np

from ..figure import subplots
from ..marks import HIGH_ENTROPY_COLOR

TRUNK = "#4c72b0"
SAME = "0.45"
CHANGED = "#c44e52"


def visualize_turning_points(table, *, width=None, wrap=70):
    """One row per branch of `table` (attnscope.turning_points): the answer runs along the top
    from its first to its last position, its predictive entropy drawn under it; each branch
    leaves the answer at its position and ends in a note — the forced token with its
    probability against the chosen one, the end of its continuation and its final answer, red
    where the final answer changed. Returns the Figure."""
    rows = getattr(table, "rows", None)
    branches = getattr(table, "branches", None)
    if rows is None or branches is None:
        raise ValueError(f"table: expected the TurningPoints of attnscope.turning_points, got {type(table).__name__}")
    if not rows:
        raise ValueError("the table has no branches: nothing to draw")
    if isinstance(wrap, bool) or not isinstance(wrap, int) or wrap < 20:
        raise ValueError(f"wrap {wrap!r} must be an int >= 20 (characters per line of a note)")
    branches = getattr(branches, "forks", branches)  # their ids and masks only: captures not needed
    answer_span = [b.prompt_len for b in branches]
    p0 = min(answer_span) - 1
    last = max(int(b.attention_mask[0].sum()) - 1 for b in branches)
    last = max(last, max(r["position"] for r in rows) + 1)
    n = len(rows)
    if width is None:
        width = 11.0
    fig, axes = subplots(1, 1, (width, 1.6 + 0.62 * n))
    ax = axes[0, 0]
    ax.plot([p0, last], [0, 0], color=TRUNK, lw=3, solid_capstyle="round")
    ax.text(p0, 0.18, f"answer: {textwrap.shorten(str(rows[0]['original_answer']), 40)}", fontsize=8,
            color=TRUNK, va="bottom").set_parse_math(False)
    xs = sorted({r["position"] for r in rows})
    ax.plot(xs, np.zeros(len(xs)), ls="none", marker="o", ms=7, color=HIGH_ENTROPY_COLOR, markeredgecolor="black",
            markeredgewidth=0.5, zorder=5)
    for k, r in enumerate(rows):
        y = -(k + 1)
        color = CHANGED if r["changed"] else SAME
        p = r["position"]
        ax.plot([p, p + 0.6, last], [0, y, y], color=color, lw=1.4 if r["changed"] else 1.0)
        cp = "" if r["chosen_p"] is None else f" {r['chosen_p']:.2f}"
        ap = "" if r["alternative_p"] is None else f" {r['alternative_p']:.2f}"
        tail = textwrap.shorten(" ".join(str(r["continuation"]).split()), wrap, placeholder="…")
        note = (f"at {p}: {r['alternative']}{ap} instead of {r['chosen']}{cp} → answer {r['answer']}"
                f"{'  (changed)' if r['changed'] else ''}\n…{tail}")
        t = ax.text(last + 0.03 * (last - p0 + 1), y, note, fontsize=7, va="center", ha="left", color=color)
        t.set_parse_math(False)
    ax.set_ylim(-(n + 0.7), 0.9)
    ax.set_xlim(p0 - 0.02 * (last - p0 + 1), last + 0.95 * (last - p0 + 1))  # the right half holds the notes
    ax.set_xticks([t for t in ax.get_xticks() if p0 <= t <= last])
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("position in the sequence (a branch at i replaces token i+1)")
    changed = sum(bool(r["changed"]) for r in rows)
    ax.set_title(f"Turning points: {changed} of {n} branches change the answer", fontsize=9)
    return fig
