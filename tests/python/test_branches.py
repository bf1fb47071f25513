"""Turning points on the default model: a branch keeps the answer up to the fork, takes the
forced token there, and continues exactly as transformers' greedy generate does from that
prefix; the fork's probabilities equal a softmax of transformers' logits; turning_points
tabulates the branches and whether the final answer changed; every bad argument is refused
by message."""
import pytest
import torch
from conftest import gguf_reference

import attnscope
from attnscope import final_answer, turning_points
from attnscope.branches import branch

transformers = pytest.importorskip("transformers")
from attnscope.models import default_gguf  # noqa: E402

QUESTION = "What is 7 times 8?"


@pytest.fixture(scope="module")
def model():
    return attnscope.load(device="cpu", progress=False)


@pytest.fixture(scope="module")
def answer(model):
    return model.generate(QUESTION, chat=True, max_new_tokens=24, progress=False)


@pytest.fixture(scope="module")
def reference():
    return gguf_reference(default_gguf())[1]


def test_final_answer():
    assert final_answer("so 3,599 = 59 x 61, it is 3599.") == "3599"
    assert final_answer("no digits") is None
    assert final_answer("Answer: yes. Later: Answer: no", r"Answer: (\w+)") == "no"
    assert final_answer("a b c", lambda t: t.split()[-1]) == "c"
    with pytest.raises(ValueError, match=r"answer_of '\(' is not a regular expression"):
        final_answer("x", "(")
    with pytest.raises(ValueError, match="answer_of 3: expected None"):
        final_answer("x", 3)


def test_branch_continues_like_transformers(answer, reference):
    p0 = answer.prompt_len
    p = p0 + 2
    t = answer.branch(p, rank=2)
    ids, new = answer.input_ids[0].tolist(), t.input_ids[0].tolist()
    assert new[: p + 1] == ids[: p + 1]
    forced = answer.topk_ids[0, p, 1].item()
    assert new[p + 1] == forced != ids[p + 1]
    assert t.prompt_len == p0 and t.is_generated
    f = t.fork
    assert (f["position"], f["forced_id"], f["chosen_id"], f["rank"]) == (p, forced, ids[p + 1], 2)
    with torch.no_grad():
        logits = reference(torch.tensor([ids[: p + 1]])).logits[0, -1].double()
    probs = torch.softmax(logits, -1)
    assert f["forced_p"] == pytest.approx(float(probs[forced]), abs=1e-5)
    assert f["chosen_p"] == pytest.approx(float(probs[ids[p + 1]]), abs=1e-5)
    # the continuation: transformers' greedy generate from the same prefix
    real = [i for i, m in zip(new, t.attention_mask[0].tolist()) if m]
    n = len(real) - (p + 2)
    with torch.no_grad():
        want = reference.generate(torch.tensor([new[: p + 2]]), max_new_tokens=n, do_sample=False,
                                  attention_mask=torch.ones(1, p + 2, dtype=torch.long))[0].tolist()
    assert real == want[: len(real)]


def test_fork_survives_a_file(answer, tmp_path):
    t = answer.branch(answer.prompt_len, rank=2, max_new_tokens=3)
    t.save(tmp_path / "b.safetensors")
    back = attnscope.Trace.load(tmp_path / "b.safetensors")
    assert back.fork == t.fork and back.prompt_len == answer.prompt_len
    assert back.generation == t.generation and t.generation["steps"] <= 3
    info = back.generation_info  # the same facts, typed (generation_info.h)
    assert isinstance(info, attnscope.GenerationInfo) and info.fork.position == answer.prompt_len
    assert info.fork.rank == 2 and info.fork.forced_id == t.fork["forced_id"] and info.steps == t.generation["steps"]
    with pytest.raises(ValueError, match="generation: unknown key 'temprature'"):
        back.set_generation(answer.prompt_len, {**t.generation, "temprature": 1.0})


def test_branch_by_token_text(model, answer):
    t = answer.branch(answer.prompt_len, token=" Seven", max_new_tokens=4)
    assert t.input_ids[0, answer.prompt_len + 1].item() == model.encode(" Seven")[0]  # position i forces token i+1
    assert t.fork["forced"] == model.label(model.encode(" Seven")[0])


def test_turning_points_table(answer):
    tp = turning_points(answer, k=2, alternatives=2, max_new_tokens=6, progress=False)
    assert len(tp) == 4 and len(tp.branches) == 4
    original = final_answer(answer.response)
    for row, t in zip(tp.rows, tp.branches):
        assert row["original_answer"] == original
        assert row["answer"] == final_answer(t.response)
        assert row["changed"] == (row["answer"] != original)
        assert t.fork["position"] == row["position"] and t.fork["rank"] == row["rank"]
    assert str(tp).splitlines()[0].startswith("| position | entropy | chosen |")
    assert "<table>" in tp._repr_html_()


def test_branches_reuse_the_answers_prefix_cache(model, answer):
    """turning_points computes the answer's KV cache once and starts each branch from its prefix:
    the same tokens and the same captured numbers as regenerating each branch from its whole
    prompt, with only the branch's own positions computed (generation["prefix_cached"])."""
    fast = turning_points(answer, k=2, alternatives=1, max_new_tokens=5, progress=False)
    slow = turning_points(answer, k=2, alternatives=1, max_new_tokens=5, progress=False, reuse_prefix=False)
    for f, s_ in zip(fast.branches, slow.branches):
        assert f.input_ids.tolist() == s_.input_ids.tolist()
        assert f.generation["prefix_cached"] == f.fork["position"] + 1 and s_.generation["prefix_cached"] == 0
        assert torch.allclose(f.entropy, s_.entropy, atol=1e-5, equal_nan=True)
    # the cache a branch starts from must fit its prompt
    k, v = model._core.prefill(answer.input_ids[:, :5])
    with pytest.raises(ValueError, match=r"past_k/past_v must be \[30, 1 or 1, 3, P0 < 4, 64\] and \[..., 64\], got \[30, 1, 3, 5, 64\]"):
        model.generate(answer.input_ids[:, :4], max_new_tokens=2, progress=False, _past=(k, v))
    with pytest.raises(ValueError, match="a prefix KV cache .* needs use_cache"):
        model.generate(answer.input_ids[:, :8], max_new_tokens=2, progress=False, use_cache=False, _past=(k, v))


@pytest.mark.parametrize("kw,message", [
    ({}, "give exactly one of rank= .* or token="),
    ({"rank": 2, "token": "x"}, "give exactly one of"),
    ({"position": 0, "rank": 2}, r"position 0 out of range: the answer's choices are at"),
    ({"rank": 99}, r"rank 99 out of range: the trace keeps the top 5 tokens"),
    ({"token": " seventy eight hundred"}, r"token ' seventy eight hundred' is \d+ tokens"),
    ({"token": -3}, "token -3 is not a token id"),
])
def test_bad_branches(answer, kw, message):
    kw = {"position": answer.prompt_len, **kw}
    with pytest.raises(ValueError, match=message):
        answer.branch(kw.pop("position"), **kw)


def test_branch_needs_the_answer_and_its_model(model, answer, tmp_path):
    chosen = answer.input_ids[0, answer.prompt_len].item()
    with pytest.raises(ValueError, match="the answer already chose"):
        answer.branch(answer.prompt_len - 1, token=chosen)
    answer.save(tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="branch needs a generated trace that keeps its model"):
        attnscope.Trace.load(tmp_path / "a.safetensors").branch(answer.prompt_len, rank=2)
    with pytest.raises(ValueError, match="branch needs a generated trace"):
        model.run("plain text").branch(1, rank=2)


def test_turning_points_figure(answer):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tp = turning_points(answer, k=1, alternatives=2, max_new_tokens=4, answer_of=lambda t: t[-3:], progress=False)
    fig = attnscope.visualize_turning_points(tp)
    ax = fig.axes[0]
    changed = sum(r["changed"] for r in tp.rows)
    assert ax.get_title() == f"Turning points: {changed} of 2 branches change the answer"
    notes = [t for t in ax.texts if t.get_text().startswith("at ")]
    assert len(notes) == 2
    for t, r in zip(notes, tp.rows):
        assert t.get_text().startswith(f"at {r['position']}: {r['alternative']}")
        assert (t.get_color() == "#c44e52") == r["changed"]
    for bad, msg in (("x", "table: expected the TurningPoints"), ):
        with pytest.raises(ValueError, match=msg):
            attnscope.visualize_turning_points(bad)
    with pytest.raises(ValueError, match="wrap 5 must be an int >= 20"):
        attnscope.visualize_turning_points(tp, wrap=5)
    plt.close("all")


def test_cli_branch(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "attnscope", "branch", "--prompt", QUESTION, "--chat",
                        "--max-new-tokens", "16", "--k", "1", "--alternatives", "2", "--branch-tokens", "4",
                        "--out", str(tmp_path), "--dpi", "40", "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "turning_points.md").read_text().splitlines()
    assert table[0].startswith("| position | entropy | chosen |") and len(table) == 4
    for f in ("turning_points.png", "entropy.png", "response.txt", "trace.safetensors"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert "branches change it" in r.stdout
    r = subprocess.run([sys.executable, "-m", "attnscope", "branch", "--prompt", "x", "--k", "0", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "--k 0 must be >= 1" in r.stderr


def test_turning_points_capture_a_branch_when_it_is_looked_at(answer):
    """The table needs only each branch's tokens: turning_points generates them without the capture
    pass (forks: entropy NaN, nothing captured), and branches[i] captures branch i when first read,
    with what the answer captured, equal to branch() run eagerly."""
    tp = turning_points(answer, k=1, alternatives=1, max_new_tokens=4, progress=False)
    bare = tp.branches.forks[0]
    assert not bare.captures and bool(bare.entropy.isnan().all())
    t = tp.branches[0]
    assert tp.branches[0] is t and tp.branches[-1] is t  # captured once, kept
    eager = branch(answer, t.fork["position"], rank=t.fork["rank"], max_new_tokens=4)
    assert t.input_ids.tolist() == eager.input_ids.tolist() and t.prompt_len == eager.prompt_len
    assert t.fork == eager.fork and sorted(t.captures) == sorted(eager.captures)
    assert torch.allclose(t.entropy, eager.entropy, atol=1e-6, equal_nan=True)
    for n in ("received_mean", "attn_entropy", "row_induction"):
        assert torch.allclose(t.get(n), eager.get(n), atol=1e-6, equal_nan=True), n
    with pytest.raises(IndexError):
        tp.branches[5]
