"""Generation you can watch: the progress bar, the token stream (same tokens and trace as a
plain call; leaving early stops the generation), stop=[] never stopping early, bad stop lists
refused by message, and the CLI's --view."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import BUILD, ROOT

import attnscope

FIX = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")


@pytest.fixture(scope="module")
def toy():
    if not os.path.exists(FIX):
        pytest.skip("fixtures not built")
    return attnscope.load(FIX, device="cpu")


@pytest.fixture(scope="module")
def default():
    return attnscope.load(device="cpu", progress=False)


def test_progress_bar_counts_tokens(toy, capsys):
    t = toy.generate(torch.tensor([3, 5, 7]), max_new_tokens=4, stop=[])
    err = capsys.readouterr().err
    assert "generating" in err and "4/4" in err and "tok" in err
    assert t.generation["steps"] == 4
    toy.generate(torch.tensor([3, 5, 7]), max_new_tokens=4, stop=[], progress=False)
    assert "generating" not in capsys.readouterr().err


def test_stream_yields_the_same_tokens_and_trace(default):
    plain = default.generate("The capital of France is", max_new_tokens=8, stop=[], progress=False)
    s = default.generate("The capital of France is", max_new_tokens=8, stop=[], progress=False, stream=True)
    assert isinstance(s, attnscope.TokenStream)
    pieces = list(s)
    assert len(pieces) == 8
    assert "".join(pieces) == plain.response
    assert torch.equal(s.trace.input_ids, plain.input_ids)
    assert torch.allclose(s.trace.entropy, plain.entropy, equal_nan=True)


def test_leaving_the_stream_early_stops_generation(default):
    s = default.generate("Once upon a time", max_new_tokens=40, stop=[], progress=False, stream=True)
    for n, _ in enumerate(s):
        if n == 2:
            break
    assert s.trace is not None
    g = s.trace.generation
    assert g["stop_reason"] == ["stopped by the caller"] and 3 <= g["steps"] < 40


def test_empty_stop_list_never_stops_early(default):
    q = "What is the capital of France? Answer in one word."  # the model answers in 8 tokens
    t = default.generate(q, chat=True, max_new_tokens=24, progress=False)
    assert t.generation["stop_reason"] == ["stop token"] and t.generation["steps"] < 24
    t = default.generate(q, chat=True, max_new_tokens=24, stop=[], progress=False)
    assert t.generation["stop_reason"] == ["max_new_tokens"] and t.generation["steps"] == 24
    assert t.generation["stop_ids"] == []


@pytest.mark.parametrize("stop,message", [
    ("2", r"stop '2': expected a list of token ids, \[\] \(never stop early\) or None"),
    (5, "stop 5: expected a list of token ids"),
    ([1, -1], r"stop: -1 is not a token id of this model"),
    ([1.5], r"stop: 1.5 is not a token id of this model"),
])
def test_bad_stop_lists(toy, stop, message):
    with pytest.raises(ValueError, match=message):
        toy.generate(torch.tensor([3, 5]), max_new_tokens=2, stop=stop, progress=False)


def test_cli_view_and_progress(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "attnscope", "generate", "--prompt", "Hi", "--max-new-tokens", "6",
                        "--out", str(tmp_path), "--dpi", "40", "--view"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "generating" in r.stderr  # the bar
    page = (tmp_path / "view.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "attnscope-view" in page
    assert (tmp_path / "entropy.png").stat().st_size > 5000
