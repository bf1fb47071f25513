"""The attnscope command line: demo, plot, run (exit codes, files written, messages)."""
import os
import subprocess
import sys

import pytest
from conftest import BUILD, ROOT

ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
TOY = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "attnscope", *args], env=ENV, capture_output=True, text=True)


def test_help():
    r = cli("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "plot" in r.stdout
    for sub in ("demo", "generate", "plot", "run"):
        assert cli(sub, "--help").returncode == 0


def test_demo_default_model(tmp_path):
    r = cli("demo", "--out", str(tmp_path), "--dpi", "60")
    assert r.returncode == 0, r.stderr
    for f in ("attention_heads.png", "attention_patterns.png", "attention_layers.png", "entropy.png"):
        assert (tmp_path / f).stat().st_size > 10_000, f
    assert "Q: Is 3599 a prime number?" in r.stdout and "A: " in r.stdout
    assert "| position | token | next token | entropy (nats) | top-5 alternatives |" in r.stdout
    for f in ("high_entropy_tokens.md", "trace.safetensors", "response.txt"):
        assert (tmp_path / f).exists(), f


def test_generate_command(tmp_path):
    r = cli("generate", "--prompt", "What is the capital of France?", "--chat", "--max-new-tokens", "20",
            "--out", str(tmp_path), "--dpi", "50")
    assert r.returncode == 0, r.stderr
    assert "Paris" in (tmp_path / "response.txt").read_text()
    table = (tmp_path / "high_entropy_tokens.md").read_text().splitlines()
    assert table[0].endswith("| top-5 alternatives |") and len(table) >= 3
    assert table[2].count(",") >= 4   # five alternatives with probabilities
    import attnscope
    t = attnscope.Trace.load(tmp_path / "trace.safetensors")
    assert t.is_generated and t.generation["kv_cache"] is True
    r = cli("generate", "--prompt", "hi", "--max-new-tokens", "0", "--out", str(tmp_path))
    assert r.returncode == 1 and "max_new_tokens 0 must be an int >= 1" in r.stderr


@pytest.mark.parametrize("kind,extra", [("heads", ["--layers-heads", "0:1,2:3"]),
                                        ("patterns", ["--layers-heads", "1:0", "--pattern", "max"]),
                                        ("layers", ["--layers", "0,1,2"]),
                                        ("entropy", [])])
def test_plot_kinds(tmp_path, kind, extra):
    if not os.path.exists(TOY):
        pytest.skip("fixtures not built")
    out = tmp_path / f"{kind}.svg"
    r = cli("plot", "--model", TOY, "--device", "cpu", "--text", "t2 t3 t4", "--kind", kind, *extra, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1000


def test_run_and_errors(tmp_path):
    if not os.path.exists(TOY):
        pytest.skip("fixtures not built")
    r = cli("run", "--model", TOY, "--device", "cpu", "--text", "t2 t3", "--layers-heads", "0:0", "--save", str(tmp_path / "t.st"))
    assert r.returncode == 0 and "head_map/L0H0" in r.stdout
    r = cli("plot", "--model", TOY, "--device", "cpu", "--text", "t2", "--kind", "heads", "--layers-heads", "9:0", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 1 and "layer 9 out of range" in r.stderr
    r = cli("plot", "--model", TOY, "--text", "t2", "--kind", "heads", "--layers-heads", "a:b", "--out", "x.png")
    assert r.returncode != 0 and "is not a list of LAYER:HEAD pairs" in r.stderr


def test_plot_checks_its_output_before_loading_and_never_leaves_a_torn_file(tmp_path):
    # A nonexistent model shows the checks run before loading: the error is about --out.
    for out, msg in [(str(tmp_path), "is a folder: expected a file path ending in .png, .svg, .pdf"),
                     (str(tmp_path / "x.jpg"), "expected a .png, .svg or .pdf file"),
                     (str(tmp_path / "nope" / "x.png"), "does not exist")]:
        r = cli("plot", "--model", "/nonexistent.pt", "--text", "a", "--kind", "heads", "--out", out)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    if not os.path.exists(TOY):
        pytest.skip("fixtures not built")
    r = cli("plot", "--model", TOY, "--device", "cpu", "--text", "t2 t3", "--kind", "layers",
            "--out", str(tmp_path / "ok.svg"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.svg"]  # written through a temporary, renamed


def test_save_figure_failure_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from attnscope.cli import save_figure
    fig = plt.figure()

    def enospc(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fig, "savefig", enospc)
    with pytest.raises(OSError, match=r"cannot write '.*f.svg': No space left on device"):
        save_figure(fig, str(tmp_path / "f.svg"), 100)
    assert list(tmp_path.iterdir()) == []
    plt.close("all")


@pytest.mark.parametrize("args, message", [
    (["demo", "--dpi", "100000"], "argument --dpi: 100000 out of range: expected 10..1200"),
    (["demo", "--dpi", "x"], "argument --dpi: 'x' is not an integer"),
    (["dataset", "--input", "a.txt", "--out", "o", "--nproc", "0"], "argument --nproc: 0 out of range: expected 1..1024"),
    (["dataset", "--input", "a.txt", "--out", "o", "--nproc", "-1"], "argument --nproc: -1 out of range"),
    (["generate", "--prompt", "hi", "--system", "be brief", "--out", "o"], "--system needs --chat"),
])
def test_careless_options_are_refused_before_any_work(args, message):
    r = cli(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
