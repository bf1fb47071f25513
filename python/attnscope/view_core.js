// The view's behaviour, shared by the self-contained page (the maps travel in D) and the live
// widget (live.request asks the kernel for a row): attnscopeView(root, D, uid, live).
function attnscopeView(root, D, uid, live) {
  "use strict";
  var T = D.tokens.length, tri = D.causal;
  function decode(b64) {
    var s = atob(b64), n = s.length >> 1, a = new Uint16Array(n);
    for (var k = 0; k < n; k++) a[k] = s.charCodeAt(2 * k) | (s.charCodeAt(2 * k + 1) << 8);
    return a;
  }
  var maps = {};  // "l/h" (h = -1: head mean) -> Uint16Array, decoded on first use
  var P = D.pooled, tileOf = [];  // long traces: per-head maps as tile means (P.bounds relative to the view)
  if (P) for (var i0 = 0, k0 = 0; i0 < T; i0++) { while (P.bounds[k0 + 1] <= i0) k0++; tileOf.push(k0); }
  function pooledMap(l, h) { return !live && P && !((l + "/" + h) in D.maps); }
  function map(l, h) {
    var key = l + "/" + h;
    if (!(key in maps)) maps[key] = decode(key in D.maps ? D.maps[key] : P.maps[key]);
    return maps[key];
  }
  function w(m, i, j, pooled) {  // attention of query i on key j (a tile's mean when pooled)
    if (pooled) { var n = P.bounds.length - 1; return m[tileOf[i] * n + tileOf[j]] / 65535; }
    if (tri) return j > i ? 0 : m[i * (i + 1) / 2 + j] / 65535;
    return m[i * T + j] / 65535;
  }
  // A row of weights (dir "from": query i's row; "to": key i's column) -> done(vals, pooled):
  // from the page's maps at once, or from the kernel (live), stale answers ignored by the caller.
  function rowOf(l, h, i, dir, done) {
    if (live) { live.request(l, h, D.offset + i, dir, function (vals) { done(vals, false); }); return; }
    var pooled = pooledMap(l, h), m = map(l, h), vals = [];
    for (var j = 0; j < T; j++) vals.push(dir === "from" ? w(m, i, j, pooled) : w(m, j, i, pooled));
    done(vals, pooled);
  }
  var layerSel = root.querySelector(".as-layer"), headSel = root.querySelector(".as-head");
  D.layers.forEach(function (l) { layerSel.add(new Option(String(l), String(l))); });
  headSel.add(new Option("mean of heads", "-1"));
  if (D.heads || D.pooled || live) for (var h = 0; h < D.n_heads; h++)
    headSel.add(new Option(String(h) + (D.heads || live ? "" : " (tile means)"), String(h)));
  var box = root.querySelector(".as-tokens"), info = root.querySelector(".as-info");
  var spans = [];
  D.tokens.forEach(function (t, i) {
    if (i === D.prompt_len && D.prompt_len > 0) {
      var d = document.createElement("span");
      d.className = "as-divider"; d.textContent = "| answer:"; box.appendChild(d);
    }
    var s = document.createElement("span");
    s.className = "as-tok" + (D.high.indexOf(i) >= 0 ? " as-high" : "");
    s.textContent = t; s.dataset.i = String(i);
    var e = D.entropy[i];
    s.title = "position " + (D.offset + i) + (e === null ? "" : ", predictive entropy " + e.toFixed(3) + " nats");
    box.appendChild(s); spans.push(s);
  });
  // The entropy strip: one bar per token, the curve to scan first; hovering a bar shows its token.
  var strip = root.querySelector(".as-strip"), bars = [], emax = 0;
  D.entropy.forEach(function (e) { if (e !== null && e > emax) emax = e; });
  D.tokens.forEach(function (t, i) {
    var b = document.createElement("span"), e = D.entropy[i];
    b.style.height = (e === null || emax <= 0 ? 0 : Math.max(1, 34 * e / emax)).toFixed(1) + "px";
    b.className = D.high.indexOf(i) >= 0 ? "as-high" : "";
    b.dataset.i = String(i); b.dataset.e = e === null ? "" : String(e);
    b.title = "position " + (D.offset + i) + " " + t + (e === null ? "" : ": " + e.toFixed(3) + " nats");
    strip.appendChild(b); bars.push(b);
  });
  if (emax <= 0) { strip.style.display = "none"; root.querySelector(".as-strip-title").style.display = "none"; }
  var pinned = -1, current = -1;
  function fmt(x) { return x.toFixed(4); }
  function dirNow() { return root.querySelector('input[name="' + uid + '-dir"]:checked').value; }
  function show(i) {
    current = i;
    var l = +layerSel.value, h = +headSel.value, dir = dirNow(), waiting = true;
    rowOf(l, h, i, dir, function (vals, pooled) {
      waiting = false;
      if (current === i && +layerSel.value === l && +headSel.value === h && dirNow() === dir) render(i, l, h, dir, vals, pooled);
    });
    if (waiting) { info.textContent = "Layer " + l + (h < 0 ? ", mean of heads" : ", head " + h) + ": asking the kernel for the row of position " + (D.offset + i) + "\u2026"; info.dataset.waiting = "1"; }
  }
  function render(i, l, h, dir, vals, pooled) {
    delete info.dataset.waiting;
    var seen = [];
    for (var j = 0; j < T; j++) seen.push(!tri || (dir === "from" ? j <= i : j >= i));
    var skip0 = root.querySelector(".as-skip0").checked;
    var top = 0;
    for (j = skip0 ? 1 : 0; j < T; j++) top = Math.max(top, vals[j]);
    var K = D.knockout && D.knockout[i], band = colourSel.value === "attention" ? -1 : +colourSel.value;
    var used = K && band >= 0 ? K.delta[band] : null, most = 0;
    if (used) used.forEach(function (d) { if (d !== null && -d > most) most = -d; });
    spans.forEach(function (s, j) {
      var a = top > 0 ? Math.min(1, vals[j] / top) : 0;
      if (used) a = used[j] !== null && most > 0 ? Math.max(0, Math.min(1, -used[j] / most)) : 0;
      s.style.background = (used ? "rgba(214,96,77," : "rgba(31,119,180,") + a.toFixed(3) + ")";
      s.style.color = a > 0.6 ? "#fff" : "";
      s.dataset.w = fmt(vals[j]);
      s.classList.toggle("as-unseen", !seen[j]);
      s.classList.toggle("as-sel", j === i);
    });
    var order = vals.map(function (v, j) { return j; }).filter(function (j) { return seen[j]; });
    if (pooled) order = order.filter(function (j) { return j === 0 || tileOf[j] !== tileOf[j - 1] || !seen[j - 1]; });
    order = order.sort(function (a, b) { return vals[b] - vals[a] || a - b; }).slice(0, 5);
    var head = h < 0 ? "mean of heads" : "head " + h;
    var e = D.entropy[i];
    info.innerHTML = "";
    var line = document.createElement("div");
    line.className = "as-summary";
    line.textContent = "\u201c" + D.tokens[i] + "\u201d (position " + (D.offset + i) + (e === null ? "" :
      ", predictive entropy " + e.toFixed(3) + " nats") + "), layer " + l + ", " + head + ", " +
      (dir === "from" ? "attends to:" : "is attended by:");
    info.appendChild(line);
    var list = document.createElement("div");
    list.className = "as-top";
    order.forEach(function (j) {
      var it = document.createElement("span");
      it.className = "as-item"; it.dataset.j = String(j);
      var b = document.createElement("b");
      if (pooled) {  // one tile: its mean weight per key, never one token's weight
        var a0 = Math.max(P.bounds[tileOf[j]], 0), a1 = Math.min(P.bounds[tileOf[j] + 1], T) - 1;
        b.textContent = D.tokens[a0] + "\u2026" + D.tokens[a1];
        it.appendChild(b);
        it.appendChild(document.createTextNode(" (tokens " + (D.offset + a0) + "\u2013" + (D.offset + a1) + ", mean per key) " + fmt(vals[j])));
      } else {
        b.textContent = D.tokens[j];
        it.appendChild(b);
        it.appendChild(document.createTextNode(" (" + (D.offset + j) + ") " + fmt(vals[j])));
      }
      list.appendChild(it);
    });
    info.appendChild(list);
    if (K) knockLines(i, K);
    if (pooled) {
      var pn = document.createElement("div");
      pn.className = "as-pooled";
      pn.textContent = "(" + (h < 0 ? "mean of heads" : "head " + h) + ": tile means over tokens " +
        (D.offset + Math.max(0, P.bounds[tileOf[i]])) + "\u2013" + (D.offset + Math.min(T, P.bounds[tileOf[i] + 1]) - 1) +
        " and each key's tile: this page is too small for per-token rows; in Jupyter, show(trace, live=True) " +
        "asks the kernel for exact rows)";
      info.appendChild(pn);
    }
    showProfile(i);
    bars.forEach(function (b, j) { b.classList.toggle("as-sel", j === i); });
  }
  // The knockout sweep of a token (attnscope.knockout_sweep, given to show): per band, the keys
  // whose edge from it, removed alone, lowers log p of the target most.
  var colourSel = root.querySelector(".as-colour");
  function knockLines(i, K) {
    K.bands.forEach(function (name, b) {
      var d = K.delta[b], order = d.map(function (v, j) { return j; }).filter(function (j) { return d[j] !== null && d[j] < 0; })
        .sort(function (a, c) { return d[a] - d[c] || a - c; }).slice(0, 5);
      var line = document.createElement("div");
      line.className = "as-knock";
      line.textContent = "Knockout, " + name + ": removing the edge to each key alone, log p(\u201c" + K.target +
        "\u201d) " + K.logp.toFixed(3) + " drops most for: ";
      order.forEach(function (j) {
        var it = document.createElement("span");
        it.className = "as-item";
        var bb = document.createElement("b"); bb.textContent = D.tokens[j];
        it.appendChild(bb);
        it.appendChild(document.createTextNode(" (" + (D.offset + j) + ") " + (d[j] >= 0 ? "+" : "") + d[j].toFixed(3)));
        line.appendChild(it);
      });
      if (!order.length) line.appendChild(document.createTextNode("no key (each removal alone leaves it as it is or raises it)"));
      info.appendChild(line);
    });
  }
  if (D.knockout) {
    root.querySelector(".as-knock-ctl").style.display = "";
    (D.knockout_bands || []).forEach(function (name, b) { colourSel.add(new Option("\u0394 log p, " + name, String(b))); });
    Object.keys(D.knockout).forEach(function (i) { spans[+i].classList.add("as-swept"); });
  }
  // The hovered token's profile across the layers offered (head means of the row statistics).
  var prof = D.profile ? decode(D.profile) : null, profBox = root.querySelector(".as-profile");
  var PN = ["self", "prev", "local", "first token", "distance", "learned sinks"],
      PC = ["#7570b3", "#e7298a", "#1b9e77", "#666", "#000", "#e6ab02"];
  var LINES = D.learned_sinks ? [0, 1, 2, 3, 5] : [0, 1, 2, 3];  // row 4 (distance) is the text
  function pv(s, li, i) { var v = prof[(s * D.layers.length + li) * T + i]; return v === 65535 ? null : v / 65534; }
  function showProfile(i) {
    if (!prof) return;
    var L = D.layers.length, W = 260, Hh = 64, x = function (li) { return 4 + (L > 1 ? li * (W - 8) / (L - 1) : 0); };
    var svg = '<svg width="' + W + '" height="' + (Hh + 4) + '">', vals = {};
    LINES.forEach(function (s) {
      var pts = [], row = [];
      for (var li = 0; li < L; li++) { var v = pv(s, li, i); row.push(v); if (v !== null) pts.push(x(li).toFixed(1) + "," + (2 + (1 - v) * Hh).toFixed(1)); }
      vals[PN[s]] = row;
      svg += '<polyline fill="none" stroke-width="1.5" stroke="' + PC[s] + '" points="' + pts.join(" ") + '"/>';
    });
    svg += "</svg>";
    var d = [];
    for (var li = 0; li < L; li++) d.push(pv(4, li, i) === null ? null : pv(4, li, i) * D.distance_top);
    vals.distance = d;
    profBox.innerHTML = svg;
    var legend = document.createElement("div");
    legend.textContent = "Across layers " + D.layers[0] + "→" + D.layers[L - 1] + " (head means): " +
      LINES.map(function (s) { return PN[s] + " (" + ["purple", "pink", "green", "grey", "", "gold"][s] + ")"; }).join(", ") +
      " — weight 0..1; mean distance " + (d[0] === null ? "?" : d[0].toFixed(1)) + " → " +
      (d[L - 1] === null ? "?" : d[L - 1].toFixed(1)) + " tokens; local = within ±" + D.local_window + " tokens";
    profBox.appendChild(legend);
    profBox.dataset.values = JSON.stringify(vals);
  }
  // Layers x heads overview: one thumbnail per map, clicking one selects it.
  var ov = root.querySelector(".as-overview");
  if (D.thumbs) {
    var n = D.thumbs.n, raw = atob(D.thumbs.data), H1 = D.n_heads + 1;
    // columns = layers, rows = heads (then the head mean): wide and short, like a notebook cell
    var L0 = D.layers.length;
    ov.style.gridTemplateColumns = "3em repeat(" + L0 + ", 24px)";
    ov.appendChild(document.createElement("span"));
    D.layers.forEach(function (l) { var c = document.createElement("span"); c.textContent = "L" + l; ov.appendChild(c); });
    for (var hh = 0; hh < H1; hh++) {
      var lab = document.createElement("span"); lab.textContent = hh < D.n_heads ? "H" + hh : "mean"; ov.appendChild(lab);
      D.layers.forEach(function (l, li) {
        var cv = document.createElement("canvas"); cv.width = n; cv.height = n;
        var hd = hh < D.n_heads ? hh : -1;
        cv.dataset.l = String(l); cv.dataset.h = String(hd);
        cv.title = "layer " + l + ", " + (hd < 0 ? "mean of heads" : "head " + hd);
        if (hd >= 0 && !D.heads && !D.pooled && !live) { cv.style.opacity = "0.35"; cv.title += " (not in this view)"; }
        var ctx = cv.getContext("2d"), img = ctx.createImageData(n, n);
        for (var q = 0; q < n * n; q++) {
          var code = raw.charCodeAt((li * H1 + hh) * n * n + q), r, g, b;
          if (code === 0) { r = g = b = 235; } else {
            var t = (code - 1) / 254;  // 0 = 1/16 of uniform (blue), 0.5 = uniform (white), 1 = 16x (red)
            if (t < 0.5) { var a = t / 0.5; r = 33 + a * 214; g = 102 + a * 145; b = 172 + a * 75; }
            else { var a2 = (t - 0.5) / 0.5; r = 247 - a2 * 69; g = 247 - a2 * 223; b = 247 - a2 * 204; }
          }
          img.data[4 * q] = r; img.data[4 * q + 1] = g; img.data[4 * q + 2] = b; img.data[4 * q + 3] = 255;
        }
        ctx.putImageData(img, 0, 0);
        ov.appendChild(cv);
      });
    }
    ov.addEventListener("click", function (ev) {
      var d = ev.target.dataset;
      if (!d || d.l === undefined) return;
      layerSel.value = d.l;
      if (headSel.querySelector('option[value="' + d.h + '"]')) headSel.value = d.h;
      markCurrent(); redraw();
    });
  } else {
    root.querySelector(".as-ov-box").style.display = "none";
  }
  function markCurrent() {
    ov.querySelectorAll("canvas").forEach(function (cv) {
      cv.classList.toggle("as-cur", cv.dataset.l === layerSel.value && cv.dataset.h === headSel.value);
    });
  }
  markCurrent();
  function clear() {
    current = -1;
    spans.forEach(function (s) { s.style.background = ""; s.style.color = ""; s.classList.remove("as-sel", "as-unseen"); delete s.dataset.w; });
    info.textContent = "Hover over a token to see its attention; click to pin it.";
    if (profBox) { profBox.innerHTML = ""; delete profBox.dataset.values; }
    bars.forEach(function (b) { b.classList.remove("as-sel"); });
  }
  box.addEventListener("mouseover", function (ev) {
    var i = ev.target.dataset && ev.target.dataset.i;
    if (i !== undefined && pinned < 0) show(+i);
  });
  box.addEventListener("mouseleave", function () { if (pinned < 0) clear(); });
  strip.addEventListener("mouseover", function (ev) {
    var i = ev.target.dataset && ev.target.dataset.i;
    if (i !== undefined && pinned < 0) show(+i);
  });
  strip.addEventListener("click", function (ev) {
    var i = ev.target.dataset && ev.target.dataset.i;
    if (i === undefined) return;
    pinned = pinned === +i ? -1 : +i;
    if (pinned >= 0) show(pinned); else clear();
  });
  box.addEventListener("click", function (ev) {
    var i = ev.target.dataset && ev.target.dataset.i;
    if (i === undefined) return;
    pinned = pinned === +i ? -1 : +i;
    if (pinned >= 0) show(pinned); else clear();
  });
  function redraw() { markCurrent(); if (current >= 0) show(current); }
  [layerSel, headSel, root.querySelector(".as-skip0"), colourSel].forEach(function (el) { el.addEventListener("change", redraw); });
  root.querySelectorAll('input[name="' + uid + '-dir"]').forEach(function (el) { el.addEventListener("change", redraw); });
  root.querySelector(".as-note").textContent = D.note;
}
