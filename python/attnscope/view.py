"""Interactive attention view for Jupyter (and any browser): `attnscope.show(trace)`.

A self-contained HTML fragment — a layers x heads overview of thumbnails (click one to open
it), tokens in a row; hover or click one to see what it attends to, or what attends to it, for
any layer and head (or the head mean), and its profile across layers; high-entropy tokens
underlined in yellow. No server, network or notebook extension: the maps travel in the page as
16-bit fixed point (resolution 1.5e-5; the lower triangle only for causal maps), bounded by
`max_cells` values (counted as lower triangles; a bidirectional map stores its full square). Data come from the trace (missing maps are computed once when it keeps its model).
"""
import base64
import html
import json
import math
import os
import re
import sys
import time
import uuid

import numpy as np

from .budget import check_bytes
from .files import write_atomic
from .identity import same_model
from .streaming import in_kernel
from .windows import token_window

VIEW_BYTES_PER_CELL = 16  # fp32 map cells, their quantised copy, the base64 text and the page string

MAX_CELLS = 4_000_000  # 16-bit values in the page: ~10.7 MB of base64 at most
THUMB_TILES = 24  # tiles across each thumbnail of the layers x heads overview
MAX_TILES = 384   # tiles across a whole trace for the pages' tile means: [L, H, 384, 384] floats pooled
PROFILE = ("row_self", "row_prev", "row_local", "sink_mass_rows", "row_distance")  # hover profile, head means


class AttentionView:
    """The HTML of one view. Jupyter displays it (`_repr_html_`); `save(path)` writes a
    standalone .html file; `html` is the fragment."""

    def __init__(self, fragment, title):
        self.html, self.title = fragment, title

    def _repr_html_(self):
        return self.html

    def __repr__(self):
        return f"<attnscope.AttentionView {self.title!r}: {len(self.html) / 1e6:.1f} MB of HTML>"

    def save(self, path):
        """Writes a standalone HTML page (UTF-8) and returns its path."""
        path = os.fspath(path)
        if not path.lower().endswith((".html", ".htm")):
            raise ValueError(f"path {path!r}: expected a .html file")
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
                f"</head><body>\n{self.html}\n</body></html>\n")
        return write_atomic(path, page)


def _pack(a, causal):
    """[T, T] probabilities -> base64 of little-endian uint16 (round(p * 65535)); row i of a
    causal map keeps only keys 0..i."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0)
    if causal:
        a = a[np.tril_indices(a.shape[0])]  # row-major: row i starts at i(i+1)/2
    q = np.clip(np.rint(a * 65535), 0, 65535).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def _pack_u16(a, top=1.0):
    """Values in [0, top] -> base64 uint16 (round(v / top * 65534)); NaN -> 65535."""
    a = np.asarray(a, dtype=np.float64)
    q = np.where(np.isnan(a), 65535, np.clip(np.rint(np.nan_to_num(a) / top * 65534), 0, 65534)).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def _thumbnails(pm, pu, layers, batch):
    """Overview thumbnails [L, H + 1, n, n] as uint8 base64: 0 = nothing seen, else 1 + 254 ·
    (log2(tile mean ÷ a uniform query's) clipped to ±4, mapped to 0..1); column H = head mean."""
    out = []
    u = pu[:, batch].double().numpy()                                    # [L, n, n]
    m = pm[:, batch].double().numpy()                                    # [L, H, n, n]
    m = np.concatenate([m, m.mean(1, keepdims=True)], 1)                 # + the head mean
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.log2(np.maximum(m / u[:, None], 2.0 ** -4))
    code = np.where((u[:, None] > 0) & np.isfinite(r), 1 + np.rint((np.clip(r, -4, 4) + 4) / 8 * 254), 0)
    for l in layers:
        out.append(code[l])
    return base64.b64encode(np.asarray(out, dtype=np.uint8).tobytes()).decode("ascii")


def _int_list(name, values, n, what):
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
            raise ValueError(f"{name}: {v!r} out of range: the trace has {n} {what} (0..{n - 1})")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} is empty: give at least one")
    return out


def _knockout_data(sweeps, trace, batch, lo, hi):
    """The sweeps (attnscope.knockout_sweep) as the page takes them: {query (window position):
    {bands, target, logp, delta [n_bands][window keys] (None where not swept)}}, and band names."""
    sweeps = [sweeps] if hasattr(sweeps, "delta_logp") else list(sweeps)
    out, names = {}, None
    for sw in sweeps:
        if not all(hasattr(sw, a) for a in ("delta_logp", "keys", "bands", "position", "batch")):
            raise ValueError(f"knockout: expected KeySweeps (attnscope.knockout_sweep), got {type(sw).__name__}")
        same_model(trace, sw, what="knockout")
        if sw.batch != batch:
            raise ValueError(f"knockout: the sweep at {sw.position} is of row {sw.batch}, the view shows row {batch}")
        if not lo <= sw.position < hi:
            raise ValueError(f"knockout: the sweep's query {sw.position} is outside the positions shown ({lo}..{hi - 1})")
        band_names = [n for n, _ in sw.bands]
        if names is not None and band_names != names:
            raise ValueError(f"knockout: sweeps over different bands ({names} and {band_names}): sweep with the same bands")
        names = band_names
        delta = [[None] * (hi - lo) for _ in band_names]
        for b in range(len(band_names)):
            for i, k in enumerate(sw.keys):
                if lo <= k < hi:
                    delta[b][k - lo] = round(float(sw.delta_logp[b, i, 0]), 5)
        out[str(sw.position - lo)] = {"bands": band_names, "target": sw.targets[0][1],
                                      "logp": float(sw.logp_before[0]), "delta": delta}
    return out, names


def show(trace, layers=None, *, heads="auto", batch=0, max_cells=MAX_CELLS, title=None, tokens=None,
         knockout=None, live="auto"):
    """Interactive view of `trace` -> AttentionView (displayed by Jupyter; `.save("x.html")`), or
    in Jupyter a LiveView widget that asks the kernel for the rows it shows (attnscope.live).

    layers: layer indices offered (default all). heads: True (per-head maps and the head mean),
    False (head mean only) or "auto" (per-head maps when they fit in `max_cells`, else tile
    means). batch: the row of a batched trace; its padding is left out. tokens: (start, stop)
    zooms in on those positions (queries and keys; negative counts from the end, None = the
    edge) or "response" (a generated trace's answer); the page keeps absolute positions.
    knockout: a KeySweep or a list of them (attnscope.knockout_sweep on this trace and row, same
    bands): a swept token, underlined in dots, lists under its attention the keys whose removal
    costs most per band, and "colour" can show Δ log p instead of attention. live: "auto" (the
    widget when running in a Jupyter kernel with anywidget installed, the trace keeps its model
    and the page could not hold every exact per-head map), True or False (the HTML page). Maps
    the page lacks are computed in one run when the trace keeps its model, and dropped again
    afterwards; a page whose head means do not fit `max_cells` shows tile means, labelled."""
    if not hasattr(trace, "input_ids") or not hasattr(trace, "labels"):
        raise ValueError(f"trace: expected an attnscope.Trace, got {type(trace).__name__}")
    B, T_all = trace.input_ids.shape
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 0 <= batch < B:
        raise ValueError(f"batch {batch!r} out of range: the trace has {B} sequence(s) (0..{B - 1})")
    if heads not in (True, False, "auto"):
        raise ValueError(f"heads {heads!r}: expected True, False or 'auto'")
    if live not in (True, False, "auto"):
        raise ValueError(f"live {live!r}: expected True, False or 'auto'")
    if isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer)) or max_cells < 1:
        raise ValueError(f"max_cells {max_cells!r} must be an int >= 1")
    L, H = trace.n_layers, trace.n_heads
    layers = list(trace.attention_layers) if layers is None else _int_list("layers", layers, L, "layers")
    valid = np.nonzero(trace.attention_mask[batch].numpy())[0]
    lo, hi = int(valid[0]), int(valid[-1]) + 1  # padding is one contiguous run (checked by the core)
    s, e = token_window(trace, batch, tokens)
    if max(s, lo) >= min(e, hi):
        raise ValueError(f"tokens {tokens!r} selects no real tokens of row {batch} (they are {lo}..{hi - 1})")
    lo, hi = max(s, lo), min(e, hi)
    T = hi - lo
    knock = _knockout_data(knockout, trace, batch, lo, hi) if knockout is not None else (None, None)
    # Budget: assume causal (lower triangle) for the size check; the packing below uses what the
    # maps show (nothing above the diagonal -> triangle, else full).
    mean_cells = len(layers) * (T * (T + 1) // 2)
    exact_heads = mean_cells * (H + 1) <= max_cells
    if heads is True and not exact_heads:
        raise ValueError(f"per-head maps of {len(layers)} layers x {H} heads x {T} tokens need "
                         f"{mean_cells * (H + 1):,} cells, more than max_cells={max_cells:,}: pass fewer layers, "
                         "heads=False or a larger max_cells")
    if live is True or (live == "auto" and heads == "auto" and not exact_heads and in_kernel()):
        from .live import LiveView, live_available
        if live is True or (live_available() and getattr(trace, "can_compute", False)):
            data, title = _page_data(trace, layers, batch, lo, hi, tokens, knock, title, with_heads=True,
                                     note="Live: each row shown is asked of the kernel, exact per token. ")
            def page(**kw):  # LiveView.save: the self-contained page of the same window
                return show(trace, layers, batch=batch, tokens=(lo, hi), knockout=knockout, live=False, **kw)
            return LiveView(trace, data, title, batch=batch, page=page)
    tiles = _tiles_for(trace, layers, H, T, T_all, max_cells, mean_cells)
    if mean_cells > max_cells and not tiles:
        raise ValueError(f"the view of {len(layers)} layers x {T} tokens needs {mean_cells:,} cells, more than "
                         f"max_cells={max_cells:,}: pass fewer layers (layers=[...]) or a larger max_cells")
    with_heads = heads is True or (heads == "auto" and exact_heads)
    with_means = mean_cells <= max_cells
    cells = mean_cells * (H + 1 if with_heads else 1) if with_means else 0
    # Each cell: a float in the trace's maps, then a quantised byte in base64 inside the page's string.
    check_bytes(cells * VIEW_BYTES_PER_CELL, f"the view's {cells:,} cells (max_cells={max_cells:,})",
                "pass fewer layers, heads=False or tokens=(start, stop)")
    maps, causal, with_heads, left_out = _exact_maps(trace, layers, batch, lo, hi, with_means, with_heads,
                                                     heads == "auto")
    pooled = None
    if (not with_heads and heads == "auto" and tiles) or not with_means:
        pooled, said = _pooled(trace, layers, batch, lo, hi, H, tiles, means=not with_means,
                               per_head=heads == "auto")
        causal = causal if with_means else _causal_tiles(trace, layers, batch)
        left_out = said
    data, title = _page_data(trace, layers, batch, lo, hi, tokens, knock, title, with_heads=with_heads,
                             note=left_out)
    data.update(causal=causal, maps=maps, pooled=pooled)
    return AttentionView(_fill(data, title), title)


def _tiles_for(trace, layers, H, T, T_all, max_cells, mean_cells):
    """Tiles across the whole trace for the tile-mean maps that fit what max_cells leaves (0 when
    none fit or the trace cannot pool): a zoom gets finer tiles, only those inside it travel."""
    if not (getattr(trace, "can_compute", False) or "pooled_map" in trace.captures):
        return 0
    left = max_cells - mean_cells if mean_cells <= max_cells else max_cells
    per = len(layers) * (H if mean_cells <= max_cells else H + 1)
    inside = math.isqrt(max(0, left) // max(1, per))           # tiles across the window
    n = min(T_all, MAX_TILES, inside * T_all // max(1, T))
    if "pooled_map" in trace.captures and not getattr(trace, "can_compute", False):
        n = min(n, int(trace.captures["pooled_map"].shape[-1]))
    return n if inside >= 8 else 0


def _exact_maps(trace, layers, batch, lo, hi, with_means, with_heads, auto):
    """({"l/h": packed map}, causal, with_heads, note): the exact maps the page holds."""
    H = trace.n_heads
    names = [f"layer_map/L{l}" for l in layers] if with_means else []
    if with_heads:
        names += [f"head_map/L{l}H{h}" for l in layers for h in range(H)]
    before = set(trace.captures)
    can_compute = getattr(trace, "can_compute", False)
    missing = [n for n in names if n not in before]
    started = time.perf_counter()
    if missing and can_compute:  # a progress line: the run below may take seconds
        print(f"attnscope.show: computing {len(missing)} maps of {hi - lo} tokens ({len(layers)} layers)...",
              file=sys.stderr, flush=True)
    if hasattr(trace, "ensure"):
        trace.ensure(names)
    caps = trace.captures
    note = "Per-head maps left out to stay within max_cells; pass layers=[...] or heads=True. " \
        if auto and not with_heads else ""
    if auto and with_heads and any(n not in caps for n in names if n.startswith("head_map")):
        with_heads, note = False, "Per-head maps are not in this trace (read from a file or released its model). "
    arrays = {}
    try:
        for l in layers if with_means else []:
            if f"layer_map/L{l}" not in caps:
                raise ValueError(f"the trace has no head-mean map of layer {l} and cannot compute it "
                                 f"(read from a file or released its model): run with capture={{'layer_maps': [{l}]}}")
            arrays[f"{l}/-1"] = caps[f"layer_map/L{l}"][batch, lo:hi, lo:hi].numpy()
            for h in range(H) if with_heads else []:
                name = f"head_map/L{l}H{h}"
                if name not in caps:
                    raise ValueError(f"the trace has no map of layer {l} head {h}: run with "
                                     f"capture={{'heads': [({l}, {h})]}} or show(..., heads=False)")
                arrays[f"{l}/{h}"] = caps[name][batch, lo:hi, lo:hi].numpy()
    finally:  # what the view computed is not kept in the trace (B*T^2 floats per map)
        for n in names:
            if n not in before and n in trace.captures and hasattr(trace, "drop"):
                trace.drop(n)
    if missing and can_compute:
        print(f"attnscope.show: done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    causal = all(not np.any(np.triu(np.nan_to_num(a, nan=0.0), 1)) for a in arrays.values())
    return {k: _pack(a, causal) for k, a in arrays.items()}, causal, with_heads, note


def _pooled(trace, layers, batch, lo, hi, H, n, means, per_head):
    """The tile-mean maps inside the window lo..hi ({"bounds": relative to lo, "maps"}) and the
    words that say so: per head (`per_head`), and each layer's head mean (`means`)."""
    pm, _, bounds = trace.pooled_maps(n)
    order = trace.captures["aggregate_layers"].tolist()
    k0 = int(np.searchsorted(bounds, lo, side="right")) - 1
    k1 = int(np.searchsorted(bounds, hi - 1, side="right")) - 1
    heads = (list(range(H)) if per_head else []) + ([-1] if means else [])
    maps = {}
    for l in layers:
        x = pm[order.index(l), batch][:, k0:k1 + 1, k0:k1 + 1].double()        # [H, k, k]
        for h in heads:
            maps[f"{l}/{h}"] = _pack((x.mean(0) if h < 0 else x[h]).numpy(), False)
    widths = np.diff(bounds[k0:k1 + 2])
    what = " and ".join(x for x, on in (("head means", means), ("per-head maps", per_head)) if on)
    said = (f"{what[0].upper()}{what[1:]}: tile means of {int(widths.min())}–{int(widths.max())} tokens (too long "
            "for exact rows in a page; in Jupyter show(trace, live=True) asks the kernel for exact rows). ")
    return {"bounds": [b - lo for b in bounds[k0:k1 + 2]], "maps": maps}, said


def _causal_tiles(trace, layers, batch):
    """Whether the maps are causal, from the pooled uniform tiles (nothing above the diagonal)."""
    _, pu, _ = trace.pooled_maps(int(trace.captures["pooled_map"].shape[-1]))
    return not bool(np.triu(pu[:, batch].double().sum(0).numpy(), 1).any())


def _page_data(trace, layers, batch, lo, hi, tokens, knock, title, *, with_heads, note):
    """What the page (or the widget) shows besides the maps, and its title."""
    from .marks import high_entropy_positions
    T, H = hi - lo, trace.n_heads
    thumbs, profile, dtop = _thumbs_and_profile(trace, layers, batch, lo, hi)
    ent = trace.entropy[batch].numpy().astype(float)[lo:hi]
    high = [int(p) - lo for p in high_entropy_positions(trace, batch=batch) if lo <= int(p) < hi]
    p = getattr(trace, "prompt_len", -1)
    prompt_len = p - lo if p is not None and p > lo else -1
    knock, knock_bands = knock
    note = ("Colour: attention weight relative to the largest shown (first token left out of the scale when "
            "ticked; the numbers are the weights). "
            "Yellow underline: high predictive entropy (top 20 % of the sequence, at most 8; the entropy "
            "at i is that of the prediction of token i+1). "
            + (f"Zoomed in on positions {lo}..{hi - 1}: keys outside are not shown. " if tokens is not None else "")
            + note
            + ("Dotted red underline: tokens with a knockout sweep; click one for the keys whose edge, removed "
               "alone, costs its prediction most; colour \"Δ log p\" shades the keys by that cost. " if knock else ""))
    data = {"tokens": list(trace.labels[batch][lo:hi]), "layers": layers, "n_heads": H, "heads": with_heads,
            "causal": bool(getattr(getattr(trace, "model", None), "causal", True)), "maps": {}, "offset": lo,
            "prompt_len": prompt_len, "pooled": None, "thumbs": thumbs, "profile": profile, "distance_top": dtop,
            "learned_sinks": "sink_share" in trace.captures, "knockout": knock, "knockout_bands": knock_bands,
            "local_window": int((getattr(trace, "spec", None) or {}).get("local_window", 8)),
            "entropy": [None if not np.isfinite(e) else round(float(e), 4) for e in ent], "high": high, "note": note}
    title = title if title is not None else (
        f"attnscope — {T} tokens, {len(layers)} layers" + (f", {H} heads" if with_heads else ", head means"))
    return data, title


def _thumbs_and_profile(trace, layers, batch, lo, hi):
    """(overview thumbnails, the hover profile packed, the largest mean distance it holds)."""
    T_all, thumbs = trace.input_ids.shape[1], None
    pooled_maps = getattr(trace, "pooled_maps", None)
    if pooled_maps is not None and (getattr(trace, "can_compute", False) or "pooled_map" in trace.captures):
        try:
            pm, pu, tb = pooled_maps(min(THUMB_TILES, T_all))
            order = trace.captures["aggregate_layers"].tolist()
            if all(l in order for l in layers):
                idx = [order.index(l) for l in layers]
                thumbs = {"n": len(tb) - 1, "data": _thumbnails(pm[idx], pu[idx], range(len(idx)), batch)}
        except ValueError:
            thumbs = None
    if hasattr(trace, "ensure"):
        trace.ensure(list(PROFILE))
    caps = trace.captures
    if not (all(n in caps for n in PROFILE) and "aggregate_layers" in caps):
        return thumbs, None, 1.0
    order = caps["aggregate_layers"].tolist()
    if not all(l in order for l in layers):
        return thumbs, None, 1.0
    idx = [order.index(l) for l in layers]
    vals = [caps[n][idx, batch][..., lo:hi].double().nanmean(1).numpy() for n in PROFILE]  # [L, T] each
    # distance in units of the largest shown: a zoom's rows may look back past the window
    dtop = float(np.nanmax(vals[-1])) if np.isfinite(vals[-1]).any() and np.nanmax(vals[-1]) > 0 else 1.0
    vals[-1] = vals[-1] / dtop
    if "sink_share" in caps:  # learned sinks (GPT-OSS): their share of the row, a sixth line
        vals.append(caps["sink_share"][idx, batch][..., lo:hi].double().nanmean(1).numpy())
    return thumbs, _pack_u16(np.stack(vals)), dtop


def _fill(data, title):
    """The page's HTML: the template with the data, the shared script and a fresh id."""
    from .live import view_sources  # live imports anywidget (when there) on first use only
    template, core = view_sources()
    # JSON inside <script>: every "<" is written \u003c, so no text ("</script>", "<!--<script>")
    # can end the element or switch the parser into its escaped states.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    fill = {"__ID__": "attnscope-" + uuid.uuid4().hex[:12], "__TITLE__": html.escape(title),
            "__DATA__": payload, "__CORE__": core}
    return re.sub("__ID__|__TITLE__|__DATA__|__CORE__", lambda m: fill[m[0]], template)  # one pass: text stays as is
