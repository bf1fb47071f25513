"""`attnscope dataset`: files written, one process vs two (torch.distributed, gloo over
loopback, launched by --nproc and by torchrun itself), and its error messages."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import BUILD, ROOT

import attnscope

ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
TOY = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")  # word-level vocabulary t2..t63


def run(*args, launcher=("-m", "attnscope")):
    return subprocess.run([sys.executable, *launcher, *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    if not os.path.exists(TOY):
        pytest.skip("fixtures not built")
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("".join(" ".join(f"t{rng.randint(2, 60)}" for _ in range(rng.randint(3, 14))) + "\n"
                            for _ in range(40)))
    return path


def _common(texts, out):
    return ["dataset", "--model", TOY, "--device", "cpu", "--input", str(texts), "--length", "6",
            "--skip-short", "--batch-size", "3", "--no-progress", "--dpi", "50", "--out", str(out)]


def _same(a, b):
    a, b = attnscope.DatasetTrace.load(a), attnscope.DatasetTrace.load(b)
    assert a.n_sequences == b.n_sequences
    for name, t in a.stats.state.items():
        # fp64 sums of fp32 values; batches differ between the runs, so fp32 rounding differs
        assert torch.allclose(t, b.stats.state[name], rtol=1e-6, atol=1e-6), name
    assert (a.get("layer_map/L2") - b.get("layer_map/L2")).abs().max() < 1e-6


def test_single_process_writes_everything(texts, tmp_path):
    r = run(*_common(texts, tmp_path), "--num", "20")
    assert r.returncode == 0, r.stderr
    assert "20 sequences of 6 tokens, 3 layers x 4 heads" in r.stdout
    for f in ("attention_layers.png", "head_summary_sink.png", "head_summary_entropy.png", "head_atlas.png",
              "attention_patterns.png", "dataset.safetensors", "summary.json"):
        assert (tmp_path / f).stat().st_size > 300, f
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_sequences"] == 20 and len(s["sink1_per_layer"]) == 3 and 0 <= s["sink1"] <= 1
    atlas = attnscope.head_atlas(attnscope.DatasetTrace.load(tmp_path / "dataset.safetensors"))
    assert s["top_heads"]["prev"] == [list(p) for p in atlas.top("prev", 5)] and len(s["top_heads"]["induction"]) == 5


def test_two_processes_equal_one(texts, tmp_path):
    one, two, tr = tmp_path / "one", tmp_path / "two", tmp_path / "torchrun"
    assert run(*_common(texts, one), "--num", "21").returncode == 0
    r = run(*_common(texts, two), "--num", "21", "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert "21 sequences of 6 tokens, 3 layers x 4 heads, 2 processes" in r.stdout
    _same(one / "dataset.safetensors", two / "dataset.safetensors")
    # torchrun's own launcher (its parser claims --num: the long spelling is --num-sequences)
    r = run("--standalone", "--nproc-per-node", "2", "-m", "attnscope", *_common(texts, tr),
            "--num-sequences", "21", launcher=("-m", "torch.distributed.run"))
    assert r.returncode == 0, r.stderr
    _same(one / "dataset.safetensors", tr / "dataset.safetensors")


def test_errors(texts, tmp_path):
    r = run("dataset", "--model", TOY, "--device", "cpu", "--input", str(tmp_path / "none.txt"),
            "--out", str(tmp_path))
    assert r.returncode == 1 and "none.txt: cannot read it as UTF-8 text" in r.stderr
    c = _common(texts, tmp_path)
    c.remove("--skip-short")
    r = run(*c, "--num", "20")
    assert r.returncode == 1 and "fewer than length=6" in r.stderr and "--skip-short" in r.stderr
    r = run(*_common(texts, tmp_path), "--num", "500")
    assert r.returncode == 1 and "num=500 asked" in r.stderr
