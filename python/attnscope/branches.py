"""Turning points: take another token where the model hesitated and see where the answer goes.

`branch(answer, position, rank=2)` forces an alternative at one position of a generated answer
and lets the model continue with the answer's own settings; `turning_points(answer)` runs the
branches at the most uncertain positions and tells which ones change the final answer.
Positions follow the marks: the distribution at position i chose token i+1, so branching at i
replaces token i+1.
"""
import re
from collections.abc import Sequence

from .marks import high_entropy_positions
from .streaming import Progress

NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def final_answer(text, answer_of=None):
    """What counts as a text's final answer. answer_of: None (default: the last number in the
    text, commas dropped), a regex (its last match; group 1 when it has groups) or a callable
    text -> str. None when nothing matches."""
    if callable(answer_of):
        return answer_of(text)
    pattern = NUMBER if answer_of is None else answer_of
    if not isinstance(pattern, str):
        raise ValueError(f"answer_of {answer_of!r}: expected None (the last number), a regex or a callable")
    try:
        found = list(re.finditer(pattern, text))
    except re.error as e:
        raise ValueError(f"answer_of {pattern!r} is not a regular expression ({e})") from None
    if not found:
        return None
    m = found[-1]
    out = m.group(1) if m.re.groups else m.group(0)
    return out.replace(",", "") if answer_of is None else out


def _generated(answer):
    g = getattr(answer, "generation", None)
    if not g or getattr(answer, "model", None) is None:
        raise ValueError("branch needs a generated trace that keeps its model (Model.generate; not one read "
                         "from a file or released)")
    if answer.input_ids.shape[0] != 1:
        raise ValueError(f"branch works on one answer: this trace has {answer.input_ids.shape[0]} rows")
    return g


def _span(answer):
    """(first, last) positions that may fork: the prompt's last position (it chose the first
    answer token) up to the one before the answer's last real token."""
    real = [i for i, m in enumerate(answer.attention_mask[0].tolist()) if m]
    return answer.prompt_len - 1, real[-1] - 1


def branch(answer, position, *, rank=None, token=None, max_new_tokens=None, temperature=None, seed=None,
           progress=False, _past=None, _capture=True):
    """The answer with a different token at `position + 1`, continued by the model -> Trace.

    position: where the model chose (the distribution at `position` chose token position+1;
    the marks' positions), from the prompt's last position to the answer's second last.
    rank: force the rank-th most likely token of that distribution (1 = the most likely; from
    the trace's top-k); token: force this token instead (a str that is one token, or an id).
    The continuation uses the answer's settings (greedy, or its temperature/top-k/top-p/seed
    and stop ids) unless `temperature`/`seed` are given; max_new_tokens defaults to what is
    left of the answer's own budget. The returned Trace's prompt ends where the answer's did,
    and `trace.fork` says where it forked: position, chosen and forced token with their
    probabilities and rank."""
    g = _generated(answer)
    if (rank is None) == (token is None):
        raise ValueError("branch: give exactly one of rank= (1 = the most likely token) or token=")
    lo, hi = _span(answer)
    if isinstance(position, bool) or not isinstance(position, int) or not lo <= position <= hi:
        raise ValueError(f"position {position!r} out of range: the answer's choices are at {lo}..{hi} "
                         "(the distribution at i chose token i+1)")
    ids = answer.input_ids[0].tolist()
    chosen = ids[position + 1]
    k_ids = answer.topk_ids[0, position].tolist() if answer.topk_ids is not None and answer.topk_ids.numel() else []
    k_p = answer.topk_probs[0, position].tolist() if k_ids else []
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= len(k_ids):
            raise ValueError(f"rank {rank!r} out of range: the trace keeps the top {len(k_ids)} tokens at each "
                             f"position (1..{len(k_ids)}; capture top_k for more)")
        forced = k_ids[rank - 1]
    else:
        forced = answer.model.token_id(token, name="token")
    if forced == chosen:
        raise ValueError(f"the answer already chose {answer.token_label(forced)!r} at position {position}: "
                         "pick another rank or token")
    model = answer.model
    used = position + 1 - answer.prompt_len  # answer tokens kept before the forced one
    if max_new_tokens is None:
        max_new_tokens = max(1, int(g.get("max_new_tokens", used + 2)) - used - 1)
    prefix = ids[: position + 1] + [forced]  # one row: its prompt has no padding
    t = model.generate([prefix], max_new_tokens=max_new_tokens, progress=progress,
                       temperature=g["temperature"] if temperature is None else temperature,
                       top_k=g.get("top_k", 0), top_p=g.get("top_p", 1.0),
                       seed=g.get("seed", 0) if seed is None else seed, stop=g.get("stop_ids"),
                       capture=answer.capture_spec,  # what the answer captured
                       _past=None if _past is None else tuple(x[:, :, :, : position + 1] for x in _past),
                       _capture=_capture)
    p_of = dict(zip(k_ids, k_p))
    fork = {"position": position, "chosen_id": chosen, "chosen": answer.token_label(chosen),
            "chosen_p": p_of.get(chosen), "forced_id": forced, "forced": answer.token_label(forced),
            "forced_p": p_of.get(forced), "rank": k_ids.index(forced) + 1 if forced in k_ids else None}
    t.set_generation(answer.prompt_len, {**t.generation, "fork": fork})
    return t


class Branches(Sequence):
    """The branches of a TurningPoints table as Traces, in row order, captured when first looked
    at: branches[i] runs the capture pass over branch i's ids (with what the answer captured)
    once and keeps the Trace. `forks[i]` is branch i before that (ids, tokens, generation and
    fork; no attention, entropy NaN): what the table and the turning-points figure need."""

    def __init__(self, forks, spec):
        self.forks, self._spec, self._done = list(forks), spec, {}

    def __len__(self):
        return len(self.forks)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # IndexError as a list gives it
        if i not in self._done:
            bare = self.forks[i]
            if self._spec is None or bare.model is None:  # captured already, or its model released
                self._done[i] = bare
            else:
                t = bare.model.run(bare.input_ids, capture=self._spec, attention_mask=bare.attention_mask)
                t.set_generation(bare.prompt_len, bare.generation)
                self._done[i] = t
        return self._done[i]


class TurningPoints:
    """The table turning_points() returns: `rows` (a dict per branch), `to_pandas()`, Markdown
    as str(), an HTML table in Jupyter, and `branches` (the Traces, in row order, each captured
    when first looked at; see Branches)."""

    COLUMNS = ("position", "entropy", "chosen", "chosen_p", "alternative", "alternative_p", "rank",
               "continuation", "answer", "original_answer", "changed")

    def __init__(self, rows, branches, note=""):
        self.rows = rows
        self.branches = branches if isinstance(branches, Branches) else Branches(branches, None)
        self.note = note  # how the positions were chosen, when not by the marks (said under the table)

    def __len__(self):
        return len(self.rows)

    def to_pandas(self):
        import pandas as pd
        return pd.DataFrame(self.rows, columns=self.COLUMNS)

    def __str__(self):
        def cell(v):
            s = f"{v:.3f}" if isinstance(v, float) else str(v)
            return s.replace("|", "\\|").replace("\n", "↵")
        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(cell(r[c]) for c in self.COLUMNS) + " |" for r in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else []))

    def _repr_html_(self):
        import html
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(f'{r[c]:.3f}' if isinstance(r[c], float) else str(r[c]))}"
                                        "</td>" for c in self.COLUMNS) + "</tr>" for r in self.rows)
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def turning_points(answer, *, k=5, alternatives=3, max_new_tokens=None, answer_of=None, positions=None,
                   progress=True, reuse_prefix=True):
    """Which hesitations change the answer: at the answer's `k` most uncertain positions (the
    marks, or `positions`), force each of the `alternatives` most likely other tokens and let
    the model continue (branch()). Returns a TurningPoints table, one row per branch: position,
    entropy (nats), chosen token and p, alternative and p, rank, the branch's continuation,
    its final answer, the original's, and whether it changed. answer_of: what counts as the
    final answer (default the last number; a regex or a callable, see final_answer).
    reuse_prefix: compute the answer's KV cache once and start every branch from its prefix
    (archives with the decode method), so a branch computes only its own new tokens; False
    regenerates each branch from its whole prompt (the same tokens, slower)."""
    _generated(answer)
    for name, v in (("k", k), ("alternatives", alternatives)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} {v!r} must be an int >= 1")
    kept = answer.topk_ids.shape[-1] if answer.topk_ids is not None else 0
    if alternatives > kept:
        raise ValueError(f"alternatives {alternatives}: the answer keeps the top {kept} tokens at each position "
                         "(capture={'top_k': ...} when generating keeps more)")
    positions, note = _positions(answer, k, positions)
    original = final_answer(answer.response, answer_of)
    ids = answer.input_ids[0].tolist()
    rows, traces = [], []
    past = None
    if reuse_prefix and answer.model.has_decode and bool(answer.attention_mask[0].all()):
        past = answer.model.prefill(answer.input_ids[:, :max(positions) + 1]) if len(positions) else None
    bar = Progress(len(positions) * alternatives, desc="branches", unit="branch") if progress else None
    try:
        for p in positions:
            k_ids = answer.topk_ids[0, p].tolist()
            alts = [r + 1 for r, i in enumerate(k_ids) if i != ids[p + 1]][:alternatives]
            for rank in alts:
                t = branch(answer, int(p), rank=rank, max_new_tokens=max_new_tokens, _past=past, _capture=False)
                f = t.generation["fork"]
                text = t.response
                got = final_answer(text, answer_of)
                rows.append({"position": int(p), "entropy": float(answer.entropy[0, p]), "chosen": f["chosen"],
                             "chosen_p": f["chosen_p"], "alternative": f["forced"], "alternative_p": f["forced_p"],
                             "rank": rank, "continuation": text[-200:], "answer": got,
                             "original_answer": original, "changed": got != original})
                traces.append(t)
                if bar is not None:
                    bar()
    finally:
        if bar is not None:
            bar.close()
    return TurningPoints(rows, Branches(traces, answer.capture_spec), note)


def _positions(answer, k, positions):
    """(positions to branch at, most uncertain first; a note when they are not the marks)."""
    lo, hi = _span(answer)
    if positions is not None:
        if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
            raise ValueError(f"positions {positions!r}: expected a list of positions ({lo}..{hi})")
        positions = list(positions)
        bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, int) or not lo <= p <= hi]
        if bad:
            raise ValueError(f"positions: {bad[0]!r} is not a position the answer chose at: expected ints in "
                             f"{lo}..{hi} (the distribution at i chose token i+1)")
        return positions, ""
    marks = high_entropy_positions(answer, max_marks=k).tolist()
    if marks or hi < lo:
        note = "" if marks else "The answer has no token to branch at (it is empty)."
        return sorted(marks, key=lambda p: -float(answer.entropy[0, p])), note
    # Too short for the quantile to mark anything (a 1-token answer has one distribution): its
    # most uncertain positions are still choices the model made.
    span = sorted(range(lo, hi + 1), key=lambda p: -float(answer.entropy[0, p]))[:k]
    return span, (f"No position of this {hi - lo + 1}-choice answer is above the marks' entropy quantile; "
                  f"its {len(span)} most uncertain position(s) are used.")
