"""Differential attention (DiffLlama, transformers 5.17): each layer's softmax map captured once,
exact against eager attentions; λ stated per layer; the difference A₁ − λ·A₂ and its received
attention against a computation here from eager maps and λ computed from the parameters; the
figure. fp32, 1e-5."""
import math
import warnings

import matplotlib
import pytest
import torch
from reference_stats import eager_run

import attnscope

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

transformers = pytest.importorskip("transformers")
TOL = 1e-5
IDS = torch.tensor([[5, 9, 12, 7, 30, 41, 9, 12, 7, 22, 3, 17, 50]])


@pytest.fixture(scope="module")
def diffllama(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.DiffLlamaForCausalLM(transformers.DiffLlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        lambda_std_dev=0.5)).eval()
    path = tmp_path_factory.mktemp("diff") / "d.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(model, None, path)
    assert r["route"] == "transformers" and r["max_abs_diff"] <= TOL
    return model, attnscope.load(str(path), device="cpu")


def lam(model, layer):
    """λ of the Differential Transformer: exp(λq1·λk1) − exp(λq2·λk2) + 0.8 − 0.6·exp(−0.3·layer)."""
    a = model.model.layers[layer].self_attn
    dot = lambda x, y: float((x.double() * y.double()).sum())  # noqa: E731
    return math.exp(dot(a.lambda_q1, a.lambda_k1)) - math.exp(dot(a.lambda_q2, a.lambda_k2)) + 0.8 - 0.6 * math.exp(-0.3 * layer)


def test_maps_lambda_and_difference(diffllama):
    model, m = diffllama
    t = m.run(IDS)
    d = attnscope.differential_heads(t)
    assert d["pairs"] == 2 and sorted(d["lambda"]) == [0, 1]
    ref = eager_run(model, IDS).attentions
    for l in (0, 1):
        assert abs(d["lambda"][l] - lam(model, l)) <= 1e-6
        for h in (0, 1):
            a1, a2, diff, got_lam = attnscope.differential_map(t, l, h)
            want1, want2 = ref[l][0, h].double(), ref[l][0, h + 2].double()
            assert (a1 - want1).abs().max().item() <= TOL and (a2 - want2).abs().max().item() <= TOL
            assert (diff - (want1 - lam(model, l) * want2)).abs().max().item() <= TOL
            # rows of the difference sum to 1 − λ: no distribution, hence no entropy of its own
            assert (diff.sum(-1) - (1 - got_lam)).abs().max().item() <= TOL
            recv = attnscope.differential_received(t, l, h)
            T = IDS.shape[1]
            count = torch.arange(T, 0, -1, dtype=torch.double)  # causal: key j is seen by T − j queries
            want = (want1 - lam(model, l) * want2).sum(0) / count
            assert (recv - want).abs().max().item() <= TOL


def test_figure_shows_both_maps_and_the_difference(diffllama):
    _, m = diffllama
    t = m.run(IDS)
    fig = attnscope.visualize_differential_attention(t, [(1, 0)])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[:2] == ["L1 H0: A₁", "L1 H2: A₂"] and titles[2].startswith("L1 A₁ − λ·A₂ (λ = ")
    lo, hi = fig.axes[2].images[0].get_clim()
    assert lo == -hi and hi > 0
    plt.close("all")


def test_errors_name_the_value(diffllama, toy_model):
    _, m = diffllama
    t = m.run(IDS)
    with pytest.raises(ValueError, match=r"head 2: a differential head is 0\.\.1 \(its maps are heads h and h \+ 2\)"):
        attnscope.differential_map(t, 0, 2)
    with pytest.raises(ValueError, match=r"layer 5: the differential layers are \[0, 1\]"):
        attnscope.differential_map(t, 5, 0)
    with pytest.raises(ValueError, match=r"this trace's model has no differential attention"):
        attnscope.differential_map(toy_model.run("w1 w2 w3"), 0, 0)
