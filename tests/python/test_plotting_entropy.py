"""visualize_entropy: the curve is the trace's predictive entropy, the marks are the other
figures' marks, each mark's note names the chosen token with its probability and the top-k
alternatives (checked against a softmax of the model's logits computed here), the chosen
token's probability on the right axis, generated traces show their response, and bad options
are refused by message. Toy fixture (3 layers, 4 heads, word-level tokenizer)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import BUILD  # noqa: E402

import attnscope  # noqa: E402
from attnscope import high_entropy_positions, visualize_entropy  # noqa: E402

FIX = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")
IDS = [1, 5, 9, 12, 3, 40, 22, 7, 18, 2, 33, 8]


@pytest.fixture(scope="module")
def trace():
    if not os.path.exists(FIX):
        pytest.skip("fixtures not built")
    return attnscope.load(FIX, device="cpu").run(torch.tensor([IDS]))


@pytest.fixture(scope="module")
def probs():
    """[T, V] next-token probabilities from the archive's own logits (plain TorchScript)."""
    m = torch.jit.load(FIX)
    with torch.no_grad():
        logits = m(torch.tensor([IDS]), torch.ones(1, len(IDS), dtype=torch.long))
    logits = logits[0] if isinstance(logits, torch.Tensor) else logits[0][0]
    return torch.softmax(logits.double(), -1)


@pytest.fixture(autouse=True)
def close():
    yield
    plt.close("all")


def test_curve_marks_and_notes(trace, probs):
    fig = visualize_entropy(trace, entropy_quantile=0.5, max_marks=4)
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert np.allclose(line.get_xdata(), np.arange(len(IDS)))
    assert np.allclose(line.get_ydata(), trace.entropy[0].numpy())
    want_ent = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    assert np.allclose(line.get_ydata(), want_ent.numpy(), atol=1e-5)  # independent reference
    hi = high_entropy_positions(trace, entropy_quantile=0.5, max_marks=4)
    dots = ax.get_lines()[1]
    assert list(dots.get_xdata()) == list(hi)
    ranks = sorted(hi, key=lambda p: -float(trace.entropy[0, p]))
    notes = ax.get_xlabel().split("\n")[1:]
    assert len(notes) == len(hi)
    for r, (p, note) in enumerate(zip(ranks, notes)):
        assert note.startswith(f"{r + 1}  at {p} {trace.labels[0][p]}: ")
        if p + 1 < len(IDS):
            chosen = IDS[p + 1]
            assert f"chose {trace.labels[0][p + 1]}" in note
            top = torch.topk(probs[p], 5)
            if chosen in top.indices.tolist():
                assert f"chose {trace.labels[0][p + 1]} {float(probs[p, chosen]):.2f}" in note
            alts = [i for i in top.indices.tolist() if i != chosen][:3]
            listed = note.split("alternatives ")[1].split(" · ")
            assert [x.rsplit(" ", 1)[0] for x in listed] == [trace.token_label(i) for i in alts]
            assert [float(x.rsplit(" ", 1)[1]) for x in listed] == pytest.approx(
                [float(probs[p, i]) for i in alts], abs=0.006)
    texts = [t.get_text() for t in ax.texts]
    assert sorted(texts) == sorted(str(r + 1) for r in range(len(hi)))


def test_probability_of_the_chosen_token(trace, probs):
    fig = visualize_entropy(trace, show_prob=True)
    twin = fig.axes[1]
    xs, ys = [], []
    for line in twin.get_lines():
        xs += list(line.get_xdata())
        ys += list(line.get_ydata())
    assert sorted(xs) == list(range(len(IDS) - 1))
    exact = twin.get_lines()[0]
    for x, y in zip(exact.get_xdata(), exact.get_ydata()):
        assert y == pytest.approx(float(probs[int(x), IDS[int(x) + 1]]), abs=1e-5)
    if len(twin.get_lines()) > 1:  # chosen outside the top-k: the k-th probability, an upper bound
        for x, y in zip(twin.get_lines()[1].get_xdata(), twin.get_lines()[1].get_ydata()):
            assert float(probs[int(x), IDS[int(x) + 1]]) <= y + 1e-6


def test_generated_trace_shows_its_response(trace):
    class Generated(attnscope.Trace):  # the toy model has no decode method; fake the prompt boundary
        prompt_len = 7
        is_generated = True
    g = Generated(trace._core, model=trace._model)
    fig = visualize_entropy(g)
    ax = fig.axes[0]
    assert list(ax.get_lines()[0].get_xdata()) == list(range(6, len(IDS)))  # 6 drew the first answer token
    assert ax.get_xlim() == (5.5, len(IDS) - 0.5)
    assert "over the response" in ax.get_title()
    dashed = [l for l in ax.get_lines() if l.get_linestyle() not in ("-", "None")]
    assert [round(float(l.get_xdata()[0]), 1) for l in dashed] == [6.5]
    fig = visualize_entropy(g, tokens=(0, 5))
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [0, 1, 2, 3, 4]


def test_ax_and_bad_options(trace):
    fig, ax = plt.subplots()
    assert visualize_entropy(trace, ax=ax) is ax
    for kw, msg in [({"width": 0}, "width 0 must be a size in inches > 0"),
                    ({"height": -1}, "height -1 must be a size in inches > 0"),
                    ({"alternatives": -1}, "top_k -1 must be an int >= 0"),
                    ({"batch": 2}, r"batch 2 out of range"),
                    ({"tokens": (3, 99)}, r"tokens \(3, 99\) out of range")]:
        with pytest.raises(ValueError, match=msg):
            visualize_entropy(trace, **kw)
