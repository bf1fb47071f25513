"""LiveView: the interactive view as a Jupyter widget that asks the kernel for what it shows.

The self-contained page (attnscope.view) carries every map it can show, so a long trace gets
tile means or nothing. The widget carries the tokens, entropy, overview and profiles only; each
row it shows (query i's attention, or key i's column, in one layer and head) is asked of the
kernel over the widget's comm (anywidget, a standard Jupyter widget), cut from that layer's
exact maps, which the kernel computes in one run of the kept model and keeps for a few layers.
The same script (view_core.js) draws both. anywidget is optional: `pip install anywidget`.
"""
import collections
import json
import os

import numpy as np

from .budget import check_bytes

CACHE_BYTES = 1 << 30  # maps kept between requests (the least recently used are dropped)
LAYER_AT_ONCE = 512 << 20  # a layer's H + 1 maps in one run when they fit in this, else the one asked for


def live_available():
    """True when anywidget can be imported (the widget's only dependency)."""
    try:
        import anywidget  # noqa: F401
    except ImportError:
        return False
    return True


class RowServer:
    """The kernel's side of the widget: a request {layer, head (-1: head mean), pos (absolute),
    dir ("from" | "to")} -> the row over the view's window lo..hi as float32, cut from exact
    maps of `trace` (computed with one run while the trace keeps its model, least recently used
    dropped beyond CACHE_BYTES)."""

    def __init__(self, trace, batch, lo, hi, layers):
        self.trace, self.batch, self.lo, self.hi = trace, batch, lo, hi
        self.layers, self.maps, self.bytes = set(layers), collections.OrderedDict(), 0

    def row(self, layer, head, pos, direction):
        H = self.trace.n_heads
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r}: the view offers layers {sorted(self.layers)}")
        if isinstance(head, bool) or not isinstance(head, int) or not -1 <= head < H:
            raise ValueError(f"head {head!r}: expected -1 (mean of heads) or 0..{H - 1}")
        if isinstance(pos, bool) or not isinstance(pos, int) or not self.lo <= pos < self.hi:
            raise ValueError(f"position {pos!r}: the view shows {self.lo}..{self.hi - 1}")
        if direction not in ("from", "to"):
            raise ValueError(f"dir {direction!r}: expected 'from' or 'to'")
        m = self._map(layer, head)                                           # [T, T]
        r = m[pos, self.lo:self.hi] if direction == "from" else m[self.lo:self.hi, pos]
        return np.ascontiguousarray(r.numpy(), dtype="<f4")

    def _name(self, layer, head):
        return f"layer_map/L{layer}" if head < 0 else f"head_map/L{layer}H{head}"

    def _map(self, layer, head):
        key = self._name(layer, head)
        if key in self.maps:
            self.maps.move_to_end(key)
            return self.maps[key]
        B, T = self.trace.input_ids.shape
        H, kept = self.trace.n_heads, T * T * 4                 # bytes of one map of one row, what is kept
        names = [self._name(layer, h) for h in range(-1, H)] if (H + 1) * B * kept <= LAYER_AT_ONCE else [key]
        check_bytes(len(names) * B * kept, f"{len(names)} attention maps of {T} tokens for the view",
                    "show a window (tokens=(start, stop))")
        before = set(self.trace.captures)
        try:
            self.trace.ensure(names)
            caps = self.trace.captures
            if key not in caps:
                raise ValueError(f"the trace has no {key} and cannot compute it (read from a file or released its "
                                 "model): the live view needs a trace that keeps its model")
            for n in names:
                if n in caps and n not in self.maps:
                    self.maps[n] = caps[n][self.batch]
                    self.bytes += kept
        finally:  # the trace does not keep what the view computed
            for n in names:
                if n not in before and n in self.trace.captures:
                    self.trace.drop(n)
        self.maps.move_to_end(key)
        while self.bytes > CACHE_BYTES and len(self.maps) > 1:
            self.maps.popitem(last=False)
            self.bytes -= kept
        return self.maps[key]

    def handle(self, content):
        """A widget message -> (reply, buffers): the row, or the error's words."""
        req = content.get("req") if isinstance(content, dict) else None
        try:
            if not isinstance(content, dict) or content.get("kind") != "row":
                raise ValueError(f"expected a row request, got {content!r:.80}")
            r = self.row(content.get("layer"), content.get("head"), content.get("pos"), content.get("dir"))
            return {"kind": "row", "req": req}, [r.tobytes()]
        except ValueError as e:
            return {"kind": "error", "req": req, "message": str(e)}, []


def view_sources():
    """(the page's HTML template, the script both the page and the widget run)."""
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "view_template.html"), encoding="utf-8") as f:
        template = f.read()
    with open(os.path.join(here, "view_core.js"), encoding="utf-8") as f:
        return template, f.read()


def _esm():
    template, core = view_sources()
    markup = template.split("<script>", 1)[0] + "</div>"
    return core + "\nconst MARKUP = " + json.dumps(markup) + ";\n" + _GLUE


_GLUE = """
export default {
  render({ model, el }) {
    const uid = "attnscope-" + Math.random().toString(16).slice(2, 14);
    el.innerHTML = MARKUP.split("__ID__").join(uid).replace("__TITLE__", "");
    const root = el.querySelector(".attnscope-view");
    root.querySelector(".as-title b").textContent = model.get("title");
    let next = 0;
    const waiting = {};
    model.on("msg:custom", (msg, buffers) => {
      const done = waiting[msg.req];
      delete waiting[msg.req];
      if (!done) return;
      if (msg.kind === "error") { root.querySelector(".as-info").textContent = msg.message; return; }
      const b = buffers[0];
      done(Array.from(new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4)));
    });
    const live = { request(layer, head, pos, dir, done) {
      const req = ++next;
      waiting[req] = done;
      model.send({ kind: "row", req: req, layer: layer, head: head, pos: pos, dir: dir });
    } };
    attnscopeView(root, model.get("data"), uid, live);
  }
};
"""

try:
    import anywidget
    import traitlets
except ImportError:
    anywidget = None

if anywidget is not None:
    class LiveView(anywidget.AnyWidget):
        """The view as a widget: displayed by Jupyter; rows asked of the kernel (RowServer).
        `save(path)` writes the self-contained page instead (attnscope.show(..., live=False))."""
        _esm = traitlets.Unicode(_esm()).tag(sync=True)
        data = traitlets.Dict().tag(sync=True)
        title = traitlets.Unicode().tag(sync=True)

        def __init__(self, trace, data, title, *, batch=0, page=None):
            super().__init__(data=data, title=title)
            lo = data["offset"]
            self._page = page
            self.rows = RowServer(trace, batch, lo, lo + len(data["tokens"]), data["layers"])
            self.on_msg(self._reply)

        def __repr__(self):
            return f"<attnscope.LiveView {self.title!r}: rows asked of the kernel>"

        def _reply(self, _, content, buffers):
            reply, out = self.rows.handle(content)
            self.send(reply, out)

        def save(self, path, **kwargs):
            """Writes the self-contained page of the same trace and window (show(..., live=False);
            kwargs: its max_cells, heads, title)."""
            return self._page(**kwargs).save(path)
else:
    class LiveView:
        def __init__(self, *args, **kwargs):
            raise ValueError("show(..., live=True) needs anywidget (a Jupyter widget): pip install anywidget, "
                             "or show(..., live=False) for the self-contained page")
