"""Which positions a figure, the view or an atlas covers: `tokens=(start, stop)` / "response"
parsed and checked in one place. Below plotting, view and atlas (it imports nothing of the
package), so all of them read a range the same way and refuse a bad one with the same words."""
from typing import NamedTuple, Optional

import numpy as np


def token_range(tokens, T, what="the trace has", name="tokens"):
    """(start, stop) of `name`=(start, stop) over T positions: negative counts from the end,
    None = the edge; a ValueError naming the value otherwise."""
    ok = isinstance(tokens, (tuple, list)) and len(tokens) == 2 and all(
        t is None or (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) for t in tokens)
    if not ok:
        raise ValueError(f"{name} {tokens!r}: expected (start, stop) ints, 'response' or None")
    s, e = (0 if tokens[0] is None else int(tokens[0])), (T if tokens[1] is None else int(tokens[1]))
    if not (-T <= s < T and -T < e <= T):
        raise ValueError(f"{name} {tokens!r} out of range: {what} {T} positions (0..{T - 1})")
    s, e = s % T, (e % T if e < 0 else e)
    if s >= e:
        raise ValueError(f"{name} {tokens!r} selects no positions: start must come before stop")
    return s, e


def token_window(trace, batch, tokens):
    """(start, stop): the positions to draw, stop exclusive. tokens=None: the row's real tokens
    (padding left out); (start, stop): those positions (token_range); "response": a generated
    trace's answer."""
    T = trace.input_ids.shape[1]
    real = np.nonzero(trace.attention_mask[batch].numpy())[0]
    lo, hi = (int(real[0]), int(real[-1]) + 1) if len(real) else (0, T)
    if tokens is None:
        return lo, hi
    if isinstance(tokens, str):
        if tokens != "response":
            raise ValueError(f"tokens {tokens!r}: expected (start, stop), 'response' or None")
        p = getattr(trace, "prompt_len", -1)
        if p is None or p < 0:
            raise ValueError("tokens='response' needs a generated trace (Model.generate)")
        if p >= hi:
            raise ValueError(f"tokens='response': row {batch} has no response tokens")
        return max(p, lo), hi
    return token_range(tokens, T)


class SharedSpan(NamedTuple):
    """What two traces' rows share, counted from each row's first real token: `length` (the
    positions both hold), `fork` (the first of them whose token differs; None when all are the
    same), `start_a`/`start_b` (each row's first real position, past any left padding)."""
    length: int
    fork: Optional[int]
    start_a: int
    start_b: int


def _real_span(trace, batch, name):
    """(first, stop) of row `batch`'s real tokens; a ValueError if they are not contiguous."""
    real = np.nonzero(trace.attention_mask[batch].numpy())[0]
    if not len(real):
        raise ValueError(f"trace {name} row {batch} holds no real token")
    lo, hi = int(real[0]), int(real[-1]) + 1
    if hi - lo != len(real):
        raise ValueError(f"trace {name} row {batch} has padding between its tokens (positions {lo}..{hi - 1}): "
                         "rows are aligned from their first real token; run each text alone")
    return lo, hi


def shared_span(a, b, *, batch_a=0, batch_b=0):
    """SharedSpan of row `batch_a` of trace `a` and row `batch_b` of trace `b`: the rows are
    aligned on their first real tokens (left padding skipped), so a prompt and its branch, or two
    variants of a text, compare token by token. Below the fork a causal row is the same in both."""
    (la, ha), (lb, hb) = _real_span(a, batch_a, "a"), _real_span(b, batch_b, "b")
    m = min(ha - la, hb - lb)
    ia, ib = a.input_ids[batch_a, la:la + m].tolist(), b.input_ids[batch_b, lb:lb + m].tolist()
    d = next((i for i in range(m) if ia[i] != ib[i]), None)
    return SharedSpan(m, d, la, lb)
