"""attnscope.show: the interactive HTML view, driven in a real headless browser (Debian's
chromium): the saved page is loaded, tokens are hovered and clicked, controls changed, and
what the page then shows (weights, top-5 list, marks) is compared with the trace's maps."""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import BUILD

import attnscope
from attnscope.marks import high_entropy_positions

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (tools/setup.sh installs Debian's)")

# Steps run in the page after the view's own script: each records what the page shows.
HARNESS = """<script>
(function () {
  var root = document.querySelector('.attnscope-view');
  var toks = root.querySelectorAll('.as-tok');
  function state() {
    return {w: Array.prototype.map.call(toks, function (s) { return s.dataset.w === undefined ? null : +s.dataset.w; }),
            summary: (root.querySelector('.as-summary') || {}).textContent || root.querySelector('.as-info').textContent,
            top: Array.prototype.map.call(root.querySelectorAll('.as-item'), function (e) { return +e.dataset.j; }),
            sel: Array.prototype.map.call(root.querySelectorAll('.as-tok.as-sel'), function (s) { return +s.dataset.i; }),
            high: Array.prototype.map.call(root.querySelectorAll('.as-tok.as-high'), function (s) { return +s.dataset.i; }),
            heads: root.querySelector('.as-head').options.length,
            divider: root.querySelectorAll('.as-divider').length,
            note: root.querySelector('.as-note').textContent, n: toks.length,
            layer: root.querySelector('.as-layer').value, head: root.querySelector('.as-head').value,
            thumbs: root.querySelectorAll('.as-overview canvas').length,
            cur: Array.prototype.map.call(root.querySelectorAll('.as-overview canvas.as-cur'), function (c) { return [+c.dataset.l, +c.dataset.h]; }),
            profile: root.querySelector('.as-profile').dataset.values ? JSON.parse(root.querySelector('.as-profile').dataset.values) : null,
            pooled: (root.querySelector('.as-pooled') || {}).textContent || "",
            knock: Array.prototype.map.call(root.querySelectorAll('.as-knock'), function (e) { return e.textContent; }),
            bg: Array.prototype.map.call(toks, function (s) { return s.style.background; }),
            swept: Array.prototype.map.call(root.querySelectorAll('.as-tok.as-swept'), function (s) { return +s.dataset.i; }),
            strip: Array.prototype.map.call(root.querySelectorAll('.as-strip span'), function (b) { return [b.dataset.e === "" ? null : +b.dataset.e, b.className]; })};
  }
  function set(cls, v) { var el = root.querySelector(cls); el.value = v; el.dispatchEvent(new Event('change')); }
  function hover(i) { toks[i].dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); }
  var out = {};
  var steps = __STEPS__;
  steps.forEach(function (s, k) {
    if (s.layer !== undefined) set('.as-layer', String(s.layer));
    if (s.head !== undefined) set('.as-head', String(s.head));
    if (s.colour !== undefined) set('.as-colour', String(s.colour));
    if (s.dir) { var r = root.querySelector('input[value="' + s.dir + '"]'); r.checked = true; r.dispatchEvent(new Event('change')); }
    if (s.thumb) root.querySelector('.as-overview canvas[data-l="' + s.thumb[0] + '"][data-h="' + s.thumb[1] + '"]')
      .dispatchEvent(new MouseEvent('click', {bubbles: true}));
    if (s.hover !== undefined) hover(s.hover);
    if (s.click !== undefined) toks[s.click].dispatchEvent(new MouseEvent('click', {bubbles: true}));
    if (s.leave) root.querySelector('.as-tokens').dispatchEvent(new MouseEvent('mouseleave'));
    out[k] = state();
  });
  var pre = document.createElement('pre'); pre.id = 'as-result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def drive(view, tmp_path, steps):
    page = tmp_path / "view.html"
    view.save(page)
    text = page.read_text(encoding="utf-8").replace("</body>", HARNESS.replace("__STEPS__", json.dumps(steps)) + "</body>")
    driven = tmp_path / "driven.html"
    driven.write_text(text, encoding="utf-8")
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", driven.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="as-result">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not run to the end: {r.stderr[-2000:]}"
    return [v for _, v in sorted(json.loads(html.unescape(m[1])).items(), key=lambda kv: int(kv[0]))]


@pytest.fixture(scope="module")
def model():
    return attnscope.load(device="cpu", progress=False)


@pytest.fixture(scope="module")
def answer(model):
    return model.generate("Is 91 a prime number?", chat=True, max_new_tokens=12)


@needs_browser
def test_hover_click_and_controls_show_the_traces_numbers(answer, tmp_path):
    view = attnscope.show(answer)
    T, k = answer.input_ids.shape[1], answer.input_ids.shape[1] - 3
    steps = [{"hover": k}, {"layer": 14, "head": 4}, {"dir": "to"}, {"head": -1, "layer": 0, "dir": "from", "click": 5},
             {"hover": 9}, {"click": 5}, {"leave": True}]
    s = drive(view, tmp_path, steps)
    assert all(st["n"] == T for st in s)
    maps = {(l, h): (answer.get(f"layer_map/L{l}") if h < 0 else answer.get(f"head_map/L{l}H{h}"))[0].numpy()
            for l, h in [(0, -1), (14, 4)]}

    def check(st, row, sel):
        got = np.array(st["w"], dtype=float)
        assert np.abs(got - row).max() <= 1e-4  # 16-bit fixed point, shown to 4 decimals
        assert st["top"] == list(np.argsort(-row, kind="stable")[:5])
        assert st["sel"] == [sel]

    check(s[0], maps[(0, -1)][k], k)  # first layer offered, head mean, "attends to"
    assert s[0]["summary"].startswith(f"\u201c{answer.labels[0][k]}\u201d (position {k}")
    assert "layer 0, mean of heads, attends to:" in s[0]["summary"]
    check(s[1], maps[(14, 4)][k], k)  # controls redraw the hovered token
    assert "layer 14, head 4, attends to:" in s[1]["summary"]
    col = maps[(14, 4)][:, k]
    got = np.array(s[2]["w"], dtype=float)  # what attends to k: column k; only queries >= k can
    assert np.abs(got - col).max() <= 1e-4 and s[2]["top"][0] >= k and "is attended by:" in s[2]["summary"]
    check(s[3], maps[(0, -1)][5], 5)  # clicked: pinned on 5
    check(s[4], maps[(0, -1)][5], 5)  # hovering elsewhere keeps the pin
    assert s[5]["sel"] == [9] or s[5]["sel"] == []  # second click unpins (the hover state is shown again)
    assert s[6]["sel"] == [] and s[6]["w"] == [None] * T  # leaving clears
    assert s[0]["high"] == [int(p) for p in high_entropy_positions(answer)]
    assert s[0]["divider"] == 1 and s[0]["heads"] == answer.n_heads + 1


@needs_browser
def test_padded_row_bidirectional_model_and_hostile_token_text(tmp_path):
    fix = os.path.join(BUILD, "fixtures", "toy_bidirectional.pt")
    if not os.path.exists(fix):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    import torch
    m = attnscope.load(fix, device="cpu")
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    t = m.run(ids, attention_mask=mask)
    t.labels[1][0] = "</script><b>x"  # token text is data, never markup
    t.labels[1][1] = "<!--<script>"   # would switch a <script> element into its escaped state
    view = attnscope.show(t, batch=1, heads=True)
    s = drive(view, tmp_path, [{"hover": 3}, {"dir": "to", "layer": 1, "head": 1}])
    assert s[0]["n"] == 4  # padding left out
    row = t.get("layer_map/L0")[1, 3, :4].numpy()
    assert np.abs(np.array(s[0]["w"]) - row).max() <= 1e-4
    assert sum(w > 0 for w in s[0]["w"][3:]) == 1 and s[0]["w"][0] > 0  # bidirectional: keys on both sides
    col = t.get("head_map/L1H1")[1, :4, 3].numpy()
    assert np.abs(np.array(s[1]["w"]) - col).max() <= 1e-4
    assert "\\u003c/script>\\u003cb>x" in view.html and "<!--" not in view.html.split("<script>")[1]  # escaped in the JSON


def test_bounded_size_and_what_is_left_out(model, tmp_path):
    t = model.run("The cat sat on the mat because it was warm.")
    v = attnscope.show(t, max_cells=30 * 66 * 2)  # room for head means, not for 9 heads each
    assert '"heads": false' in v.html and "Per-head maps left out" in v.html
    assert not any(n.startswith("head_map") for n in t.captures)  # computed for the view, then dropped
    with pytest.raises(ValueError, match=r"needs 1,980 cells, more than max_cells=100: pass fewer layers"):
        attnscope.show(t, max_cells=100)
    with pytest.raises(ValueError, match=r"per-head maps of 30 layers x 9 heads x 11 tokens need"):
        attnscope.show(t, heads=True, max_cells=30 * 66 * 2)
    small = attnscope.show(t, layers=[0, 29], heads=True)
    assert '"layers": [0, 29]' in small.html and repr(small).startswith("<attnscope.AttentionView")
    assert small._repr_html_() == small.html


def test_bad_arguments(model):
    t = model.run("a b c")
    for kw, msg in [({"batch": 3}, r"batch 3 out of range: the trace has 1 sequence\(s\) \(0..0\)"),
                    ({"layers": [30]}, r"layers: 30 out of range: the trace has 30 layers \(0..29\)"),
                    ({"layers": []}, r"layers is empty"),
                    ({"heads": "some"}, r"heads 'some': expected True, False or 'auto'"),
                    ({"max_cells": 0}, r"max_cells 0 must be an int >= 1")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.show(t, **kw)
    with pytest.raises(ValueError, match=r"trace: expected an attnscope.Trace, got str"):
        attnscope.show("trace")
    with pytest.raises(ValueError, match=r"path 'x.png': expected a .html file"):
        attnscope.show(t, layers=[0]).save("x.png")


def test_file_trace_without_maps_says_how(model, tmp_path):
    t = model.run("a b c", capture={"layer_maps": [0]})
    t.save(tmp_path / "t.safetensors")
    back = attnscope.Trace.load(str(tmp_path / "t.safetensors"))
    assert attnscope.show(back, layers=[0]).html  # what the file holds is enough
    with pytest.raises(ValueError, match=r"no head-mean map of layer 1 and cannot compute it"):
        attnscope.show(back, layers=[0, 1])


@needs_browser
def test_overview_thumbnails_profile_and_progress(answer, tmp_path, capsys):
    """The layers x heads overview (one thumbnail per map plus the head mean; a click opens
    it), the hovered token's profile (head means of the row statistics, from the trace), and the
    progress line while the view computes."""
    view = attnscope.show(answer)
    err = capsys.readouterr().err
    assert "attnscope.show: computing" in err and "done in" in err
    k = answer.input_ids.shape[1] - 2
    s = drive(view, tmp_path, [{"hover": k}, {"thumb": [14, 4]}, {"thumb": [3, -1]}])
    L, H = answer.n_layers, answer.n_heads
    # the entropy strip: one bar per token, the trace's entropy, marks yellow, the hovered one red
    ent = answer.entropy[0].tolist()
    assert [e for e, _ in s[0]["strip"]] == pytest.approx([round(x, 4) for x in ent], abs=1e-4)
    marked = [int(p) for p in high_entropy_positions(answer)]
    assert [i for i, (_, c) in enumerate(s[0]["strip"]) if "as-high" in c] == marked
    assert [i for i, (_, c) in enumerate(s[0]["strip"]) if "as-sel" in c] == [k]
    assert s[0]["thumbs"] == L * (H + 1) and s[0]["cur"] == [[0, -1]]
    assert (s[1]["layer"], s[1]["head"], s[1]["cur"]) == ("14", "4", [[14, 4]])
    assert "layer 14, head 4, attends to:" in s[1]["summary"]
    assert (s[2]["layer"], s[2]["head"]) == ("3", "-1")
    prof = s[0]["profile"]
    for name, cap in [("self", "row_self"), ("prev", "row_prev"), ("local", "row_local"), ("first token", "sink_mass_rows")]:
        want = answer.get(cap)[:, 0, :, k].double().mean(1).numpy()
        assert np.abs(np.array(prof[name], dtype=float) - want).max() <= 2e-5, name   # 16-bit fixed point
    d = answer.get("row_distance")[:, 0, :, k].double().mean(1).numpy()
    assert np.abs(np.array(prof["distance"], dtype=float) - d).max() <= 2e-5 * answer.input_ids.shape[1]


@needs_browser
def test_long_trace_per_head_rows_from_tiles(model, tmp_path):
    """When per-head maps do not fit max_cells, heads come as tile means pooled by the core
    (head means stay exact): a hovered token's weights are its tile's means."""
    t = model.run("The cat sat on the mat because it was warm. " * 6)
    T = t.input_ids.shape[1]
    budget = 30 * T * (T + 1) // 2 + 30 * 9 * 16 * 16                    # head means + 16 x 16 tiles per head
    view = attnscope.show(t, max_cells=budget)
    assert '"heads": false' in view.html and "tile means of" in view.html
    k = T - 5
    s = drive(view, tmp_path, [{"layer": 14, "head": 2, "hover": k}])
    pm, _, bounds = t.pooled_maps(16)
    tile = np.searchsorted(bounds, np.arange(T), side="right") - 1
    want = pm[14, 0, 2].numpy()[tile[k]][tile]
    assert np.abs(np.array(s[0]["w"], dtype=float) - want).max() <= 1e-4
    assert s[0]["pooled"].startswith("(head 2: tile means over tokens")


@needs_browser
def test_zoomed_view_keeps_absolute_positions(answer, tmp_path):
    view = attnscope.show(answer, tokens=(5, 15))
    s = drive(view, tmp_path, [{"hover": 7, "layer": 14, "head": 4}])
    assert s[0]["n"] == 10 and "Zoomed in on positions 5..14" in s[0]["note"]
    row = answer.get("head_map/L14H4")[0, 12, 5:15].numpy()       # token 7 of the window = position 12
    assert np.abs(np.array(s[0]["w"], dtype=float) - row).max() <= 1e-4
    assert "(position 12" in s[0]["summary"]
    resp = attnscope.show(answer, tokens="response", heads=False)
    assert f'"offset": {answer.prompt_len}' in resp.html
    for kw, msg in [({"tokens": (20, 10)}, r"tokens \(20, 10\) selects no positions: start must come before stop"),
                    ({"tokens": (0, 10 ** 6)}, r"out of range: the trace has \d+ positions"),
                    ({"tokens": "all"}, r"tokens 'all': expected \(start, stop\), 'response' or None")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.show(answer, **kw)


def test_save_failure_names_the_file_and_leaves_no_temporary(model, tmp_path, monkeypatch):
    view = attnscope.show(model.run("a b c"), layers=[0])
    real = os.replace

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full_disk)
    target = tmp_path / "view.html"
    with pytest.raises(OSError, match=r"cannot write '.*view.html': No space left on device; its old contents \(if any\) are kept"):
        view.save(target)
    monkeypatch.setattr(os, "replace", real)
    assert list(tmp_path.iterdir()) == []


@needs_browser
def test_knockout_sweep_of_a_clicked_token(answer, tmp_path):
    """A swept token lists, per band, the keys whose removal costs most (the sweep's numbers),
    and colour "Δ log p" shades the keys by that cost instead of attention."""
    p = answer.input_ids.shape[1] - 2
    sweep = attnscope.knockout_sweep(answer, p, bands=2)
    view = attnscope.show(answer, knockout=sweep)
    s = drive(view, tmp_path, [{"click": p}, {"colour": 1}, {"colour": "attention"}, {"hover": 3}])
    assert s[0]["swept"] == [p]
    assert len(s[0]["knock"]) == 2
    for b, (name, _) in enumerate(sweep.bands):
        line = s[0]["knock"][b]
        assert line.startswith(f"Knockout, {name}: removing the edge to each key alone, log p(")
        key, d = sweep.top(1, band=b)[0]
        assert f"({key}) {d:+.3f}" in line
    shade = [1.0 if x.startswith("rgb(") else float(x.split(",")[-1].rstrip(")")) if x else 0.0
             for x in s[1]["bg"]]  # a browser writes alpha 1 as rgb(...)
    d = sweep.delta_logp[1, :, 0].numpy()
    want = np.clip(-d / max(-d.min(), 1e-12), 0, 1)
    assert all(x.split("(")[1].startswith("214, 96, 77") for x in s[1]["bg"][:p + 1])
    assert np.abs(np.array(shade[:p + 1]) - want).max() < 2e-3
    assert s[2]["bg"][0].split("(")[1].startswith("31, 119, 180") and s[2]["knock"]  # back to attention, lines kept
    assert s[3]["knock"] == [] or s[3]["sel"] == [p]  # the pin stays on the swept token


def test_knockout_arguments_of_the_view(answer):
    sweep = attnscope.knockout_sweep(answer, 3)
    sweep.model_id = "w:0000000000000000"  # as a sweep of other weights says
    for kw, msg in [(dict(knockout=[object()]), r"knockout: expected KeySweeps"),
                    (dict(knockout=sweep), r"knockout: the first comes from"),
                    (dict(knockout=attnscope.knockout_sweep(answer, 5), tokens=(8, 20)),
                     r"knockout: the sweep's query 5 is outside the positions shown \(8..19\)")]:
        with pytest.raises(ValueError, match=msg):
            attnscope.show(answer, **kw)
