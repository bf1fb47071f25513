"""The live view in a real JupyterLab: a server is started, headless Chromium opens a notebook
and runs it (over the DevTools protocol), the notebook shows a 300-token trace with
show(trace, live=True), and a hovered token in a chosen layer and head gets its exact row from
the kernel, compared here with the trace's own map. Needs jupyterlab and anywidget (the slow
tier, tools/slow.sh, installs them) and chromium; skipped otherwise."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import BUILD

pytest.importorskip("jupyterlab")
pytest.importorskip("anywidget")
websocket = pytest.importorskip("websocket")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium")
TOY = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")
IDS = np.random.default_rng(1).integers(2, 60, 300).tolist()
LAYER, HEAD, K = 2, 1, 290


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout, explain=None):
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {explain()}" if explain else ""))


class Page:
    """One Chromium tab driven over the DevTools protocol (Runtime.evaluate)."""

    def __init__(self, ws_url):
        self.ws, self.n = websocket.create_connection(ws_url, timeout=60), 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                return msg.get("result", {})

    def eval(self, js):
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            return {"error": r["exceptionDetails"].get("exception", {}).get("description", str(r["exceptionDetails"]))}
        return r.get("result", {}).get("value")


@pytest.fixture
def lab(tmp_path):
    if not os.path.exists(TOY):
        pytest.skip("fixtures not built")
    import nbformat
    code = ("import attnscope\n"
            f"m = attnscope.load({TOY!r}, device='cpu')\n"
            f"t = m.run([{IDS!r}])\n"
            "attnscope.show(t, live=True)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "live.ipynb"))
    port, dport, token = free_port(), free_port(), "attnscope-test"
    import attnscope
    here = os.path.dirname(os.path.dirname(os.path.abspath(attnscope.__file__)))  # the kernel imports this copy
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
                               "--LabApp.expose_app_in_browser=True", "--ServerApp.ip=127.0.0.1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    chrome = None
    try:
        def up():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2).status == 200
            except OSError:
                return False
        wait_for("the Jupyter server", up, 60)
        chrome = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                   f"--remote-debugging-port={dport}", f"--user-data-dir={tmp_path / 'chrome'}",
                                   "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def target():
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{dport}/json/list", timeout=2))
            except OSError:
                return None
            return next((t["webSocketDebuggerUrl"] for t in tabs if t.get("type") == "page"), None)
        page = Page(wait_for("chromium's DevTools", target, 30))
        page.call("Page.navigate", url=f"http://127.0.0.1:{port}/lab/tree/live.ipynb?token={token}")
        yield page, tmp_path
    finally:
        for p in (chrome, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)


def test_a_hovered_token_gets_its_exact_row_from_the_kernel(lab, toy_model):
    page, tmp = lab

    def screen():
        return page.eval("document.body.innerText.slice(0, 800)") + "\n" + (tmp / "server.log").read_text()[-3000:]
    wait_for("JupyterLab with the notebook", lambda: page.eval(
        "!!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'))"), 90)
    nb = "(function(){for (const w of window.jupyterapp.shell.widgets('main')) if (w.sessionContext) return w; return null;})()"
    wait_for("the notebook panel", lambda: page.eval(f"!!{nb}"), 60, screen)
    kernel = page.eval(f"(async function(){{var w = {nb}; window.jupyterapp.shell.activateById(w.id);"
                       " await w.sessionContext.ready; return w.context.path + ' ' + w.sessionContext.kernelDisplayName;})()")
    assert isinstance(kernel, str) and kernel.startswith("live.ipynb"), kernel
    page.eval("window.jupyterapp.commands.execute('notebook:run-all-cells').then(function () { return 1; })")
    n = wait_for("the live view", lambda: page.eval("document.querySelectorAll('.attnscope-view .as-tok').length"),
                 120, screen)
    assert n == len(IDS)
    page.eval(f"""(function () {{
      var root = document.querySelector('.attnscope-view');
      function set(c, v) {{ var e = root.querySelector(c); e.value = v; e.dispatchEvent(new Event('change')); }}
      set('.as-layer', '{LAYER}'); set('.as-head', '{HEAD}');
      root.querySelectorAll('.as-tok')[{K}].dispatchEvent(new MouseEvent('mouseover', {{bubbles: true}}));
    }})()""")
    w = wait_for("the row from the kernel", lambda: page.eval(
        "(function(){var r = document.querySelector('.attnscope-view');"
        " if (r.querySelector('.as-info').dataset.waiting) return null;"
        " var t = r.querySelectorAll('.as-tok'); if (t[0].dataset.w === undefined) return null;"
        " return Array.prototype.map.call(t, function(s){ return +s.dataset.w; });})()"), 60)
    want = toy_model.run([IDS], capture={"heads": [(LAYER, HEAD)]}).get(f"head_map/L{LAYER}H{HEAD}")[0, K].numpy()
    assert np.abs(np.array(w) - want).max() <= 1e-4     # 4 decimals on the page: exact per token
    info = page.eval("document.querySelector('.attnscope-view .as-summary').textContent")
    assert f"(position {K}" in info and f"layer {LAYER}, head {HEAD}" in info
