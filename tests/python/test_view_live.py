"""The view opens any trace: a page too small for exact maps shows tile means and says so
(never a refusal while the trace can pool, never a tile mean listed as a token's weight), and
the live widget's two halves — the kernel's RowServer (rows cut from exact maps, checked against
the trace's own maps) and the shared script driven in headless Chromium by a stand-in for the
widget's model that answers as the kernel does, after a delay."""
import html
import json
import re
import subprocess

import numpy as np
import pytest
from test_view import CHROMIUM, drive, needs_browser

import attnscope
from attnscope.live import RowServer, _esm, live_available


@pytest.fixture(scope="module")
def model(toy_model):
    return toy_model  # 3 layers, 4 heads


@pytest.fixture(scope="module")
def long(model):
    ids = np.random.default_rng(0).integers(2, 60, 300).tolist()
    return model.run([ids])


def data_of(view):
    return json.loads(view.html.split("var D = ", 1)[1].split(";\n", 1)[0])


def test_row_server_cuts_rows_from_exact_maps(long):
    rs = RowServer(long, 0, 100, 300, [0, 2])
    for layer, head, pos, d in [(2, 1, 250, "from"), (0, -1, 120, "to"), (2, 3, 299, "to")]:
        m = long.get(f"head_map/L{layer}H{head}" if head >= 0 else f"layer_map/L{layer}")[0].numpy()
        want = m[pos, 100:300] if d == "from" else m[100:300, pos]
        assert np.array_equal(rs.row(layer, head, pos, d), want.astype("<f4"))
        long.drop(f"head_map/L{layer}H{head}" if head >= 0 else f"layer_map/L{layer}")
    assert not any(n.startswith(("head_map", "layer_map")) for n in long.captures)  # the trace keeps nothing
    reply, bufs = rs.handle({"kind": "row", "req": 7, "layer": 2, "head": 0, "pos": 150, "dir": "from"})
    assert reply == {"kind": "row", "req": 7} and len(bufs[0]) == 200 * 4
    for bad, msg in [({"layer": 1}, r"layer 1: the view offers layers \[0, 2\]"),
                     ({"head": 4}, r"head 4: expected -1 \(mean of heads\) or 0..3"),
                     ({"pos": 99}, "position 99: the view shows 100..299"),
                     ({"dir": "up"}, "dir 'up': expected 'from' or 'to'")]:
        req = {"kind": "row", "req": 1, "layer": 0, "head": 0, "pos": 150, "dir": "from", **bad}
        reply, bufs = rs.handle(req)
        assert reply["kind"] == "error" and re.search(msg, reply["message"]) and bufs == []


def test_a_page_too_small_for_exact_maps_shows_tile_means(long):
    T = 300
    budget = 3 * T * (T + 1) // 2 - 1             # not even the head means fit
    view = attnscope.show(long, max_cells=budget, live=False)
    d = data_of(view)
    assert d["maps"] == {} and "Head means and per-head maps: tile means of" in d["note"]
    assert {"0/-1", "2/3"} <= set(d["pooled"]["maps"])
    with pytest.raises(ValueError, match="needs 135,450 cells, more than max_cells=100"):
        attnscope.show(long, max_cells=100, live=False)   # not even 8 x 8 tiles: refused by name


@needs_browser
def test_tile_means_are_listed_as_tiles_and_zooms_get_finer_tiles(long, tmp_path):
    budget = 3 * 300 * 301 // 2 + 3 * 4 * 40 * 40                 # head means + 40 x 40 tiles per head
    view = attnscope.show(long, max_cells=budget, live=False)
    s = drive(view, tmp_path, [{"layer": 2, "head": 1, "hover": 280}])
    assert "mean per key" in s[0]["pooled"] or "tile means over tokens" in s[0]["pooled"]
    d = data_of(view)
    starts = set(d["pooled"]["bounds"])
    assert set(s[0]["top"]) <= starts            # each listed item is a tile (its first token), never a token
    zoom = data_of(attnscope.show(long, tokens=(200, 260), max_cells=3 * 60 * 61 // 2 + 3 * 4 * 40 * 40, live=False))
    widths = np.diff(zoom["pooled"]["bounds"])
    assert widths.max() <= 2 and "tile means of 1–2 tokens" in zoom["note"]


@needs_browser
def test_a_zoom_keeps_the_distance_it_measured(long, tmp_path):
    view = attnscope.show(long, tokens=(250, 260), live=False)
    s = drive(view, tmp_path, [{"hover": 5}])
    want = long.get("row_distance")[:, 0, :, 255].double().mean(1).numpy()     # about 100 tokens, not ≤ 10
    got = np.array(s[0]["profile"]["distance"], dtype=float)
    assert want.max() > 10 and np.abs(got - want).max() <= 2e-5 * data_of(view)["distance_top"]


LIVE_HARNESS = """<script type="module">
__ESM__
var D = __DATA__, ROWS = __ROWS__, handlers = [], sent = [];
var model = {get: function (k) { return {data: D, title: "live <b>view</b>"}[k]; },
             on: function (ev, f) { handlers.push(f); },
             send: function (msg) { sent.push(msg); setTimeout(function () {
               var r = ROWS[msg.layer + "/" + msg.head + "/" + msg.pos + "/" + msg.dir];
               var reply = r ? {kind: "row", req: msg.req} : {kind: "error", req: msg.req, message: "no such row"};
               var buf = new Float32Array(r || []);
               handlers.forEach(function (f) { f(reply, r ? [new DataView(buf.buffer)] : []); }); }, 50); }};
var el = document.createElement("div"); document.body.appendChild(el);
widget.render({model: model, el: el});
var root = el.querySelector(".attnscope-view"), toks = root.querySelectorAll(".as-tok"), out = {};
function state() {
  return {w: Array.prototype.map.call(toks, function (s) { return s.dataset.w === undefined ? null : +s.dataset.w; }),
          info: root.querySelector(".as-info").textContent, title: root.querySelector(".as-title").innerHTML,
          heads: root.querySelector(".as-head").options.length, sent: sent.length};
}
function set(cls, v) { var e = root.querySelector(cls); e.value = v; e.dispatchEvent(new Event("change")); }
set(".as-layer", "2"); set(".as-head", "1");
toks[__K__].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
out[0] = state();
setTimeout(function () {
  out[1] = state();
  set(".as-head", "-1");
  setTimeout(function () {
    out[2] = state();
    var pre = document.createElement("pre"); pre.id = "as-result"; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 300);
}, 300);
</script>"""


@needs_browser
def test_the_widget_script_asks_for_rows_and_draws_the_answers(long, tmp_path):
    """The widget's script with a stand-in model: a hovered token first says it is asking the
    kernel, then shows the row the kernel sent (RowServer's exact row), per token."""
    lo, k = 100, 150
    data, _ = attnscope.view._page_data(long, [0, 1, 2], 0, lo, 300, (lo, 300), (None, None), None,
                                        with_heads=True, note="")
    rs = RowServer(long, 0, lo, 300, [0, 1, 2])
    rows = {f"2/{h}/{lo + k}/from": rs.row(2, h, lo + k, "from").tolist() for h in (1, -1)}
    esm = _esm().replace("export default", "var widget =")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
            + LIVE_HARNESS.replace("__ESM__", esm).replace("__DATA__", json.dumps(data))
            .replace("__ROWS__", json.dumps(rows)).replace("__K__", str(k)) + "</body></html>")
    path = tmp_path / "live.html"
    path.write_text(page, encoding="utf-8")
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--allow-file-access-from-files", "--dump-dom", path.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="as-result">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not run to the end: {r.stderr[-2000:]}"
    s = json.loads(html.unescape(m[1]))
    assert "asking the kernel for the row of position 250" in s["0"]["info"] and s["0"]["sent"] == 1
    assert s["0"]["heads"] == 4 + 1 and s["0"]["title"] == "<b>live &lt;b&gt;view&lt;/b&gt;</b>"  # text, not markup
    for step, h in (("1", 1), ("2", -1)):
        got = np.array([np.nan if x is None else x for x in s[step]["w"]], dtype=float)
        assert np.abs(got - np.array(rows[f"2/{h}/{lo + k}/from"])).max() <= 1e-4, step
    assert "head 1" in s["1"]["info"] and "mean of heads" in s["2"]["info"]


@pytest.mark.skipif(not live_available(), reason="anywidget is not installed (pip install anywidget)")
def test_live_view_widget_answers_its_messages(long):
    from attnscope.live import LiveView
    v = attnscope.show(long, live=True, tokens=(250, 300))
    assert isinstance(v, LiveView) and v.data["maps"] == {} and v.data["offset"] == 250
    sent = []
    v.send = lambda content, buffers=None: sent.append((content, buffers))
    v._reply(v, {"kind": "row", "req": 3, "layer": 1, "head": 2, "pos": 260, "dir": "from"}, [])
    want = long.get("head_map/L1H2")[0, 260, 250:300].numpy().astype("<f4")
    assert sent[0][0] == {"kind": "row", "req": 3} and sent[0][1][0] == want.tobytes()
    assert "export default" in v._esm and "attnscopeView" in v._esm
