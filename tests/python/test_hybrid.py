"""Hybrid models (softmax attention on some layers only): every captured layer keeps the model's
layer index everywhere — capture names, aggregates, traces and their files, figure titles, the
head atlas, the view — and asking for a layer of another kind is refused by name. References:
transformers' eager attentions (fp32, 1e-5)."""
import warnings

import matplotlib
import pytest
import torch
from hf_families import FAMILIES
from reference_stats import eager_run

import attnscope

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory):
    """LFM2 with convolutions on layers 0 and 2, softmax attention on layer 1."""
    torch.manual_seed(0)
    model = FAMILIES["lfm2"]().eval()
    path = tmp_path_factory.mktemp("lfm2") / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, path)
    return model, attnscope.load(str(path), device="cpu")


IDS = torch.arange(3, 16)[None]


def test_layers_keep_the_model_index(lfm2, tmp_path):
    model, m = lfm2
    assert m.n_layers == 3 and m.attention_layers == [1]
    assert "attention layers: 1 (of 3; the others are layers of another kind)" in m.describe()
    t = m.run(IDS, capture={"heads": [(1, 2)], "received": True, "top_k": 0})
    assert t.attention_layers == [1] and t.captures["aggregate_layers"].tolist() == [1]
    want = eager_run(model, IDS).attentions[0][0, 2]
    assert (t.get("head_map/L1H2")[0] - want).abs().max().item() <= TOL
    t.save(str(tmp_path / "t.safetensors"))
    back = attnscope.Trace.load(str(tmp_path / "t.safetensors"))
    assert back.attention_layers == [1] and torch.equal(back.get("head_map/L1H2"), t.get("head_map/L1H2"))


def test_a_layer_of_another_kind_is_refused_by_name(lfm2):
    _, m = lfm2
    with pytest.raises(ValueError, match=r"heads: layer 0 has no softmax attention in this model \(a layer of another "
                                         r"kind\); its attention layers are 1"):
        m.run(IDS, capture={"heads": [(0, 0)]})
    t = m.run(IDS)
    with pytest.raises(ValueError, match=r"layer 2 has no softmax attention in this model .* attention layers are 1"):
        attnscope.visualize_attention_layers(t, [1, 2])


def test_figures_atlas_and_view_name_the_model_layer(lfm2):
    _, m = lfm2
    t = m.run(IDS)
    fig = attnscope.visualize_attention(t, [(1, 0)])
    assert "Layer 1 Head 0" in [a.get_title() for a in fig.axes]
    fig = attnscope.visualize_attention_layers(t, [1])
    assert any(a.get_title().startswith("L1 Avg") for a in fig.axes)
    fig = attnscope.visualize_attention_patterns(t, [(1, 3)], "mean")
    assert any(a.get_title().startswith("L1H3") for a in fig.axes)
    plt.close("all")
    atlas = attnscope.head_atlas(t)
    assert list(atlas.layers) == [1] and all(l == 1 for l, _ in atlas.top("self", 3))
    view = attnscope.show(t)
    assert view is not None


def test_graph_route_numbers_sites_by_the_attention_layers(tmp_path, monkeypatch):
    """On the graph route the capture operators carry site ids; the n-th site is the n-th of the
    attention layers attnscope.json states, so layer 1 is still L1."""
    from attnscope.models import hf_attention

    def broken(*a, **k):
        raise NotImplementedError("simulated")
    monkeypatch.setattr(hf_attention, "attnscope_sdpa", broken)
    torch.manual_seed(0)
    model = FAMILIES["qwen3_next"]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(model, None, tmp_path / "g.pt")
    assert r["route"] == "graph"
    m = attnscope.load(str(tmp_path / "g.pt"), device="cpu")
    assert m.attention_layers == [1]
    t = m.run(IDS, capture={"heads": [(1, h) for h in range(4)], "top_k": 0})
    want = eager_run(model, IDS).attentions[0][0]
    for h in range(4):
        assert (t.get(f"head_map/L1H{h}")[0] - want[h]).abs().max().item() <= TOL


def test_datasets_of_hybrids_are_refused_by_name(lfm2):
    _, m = lfm2
    with pytest.raises(ValueError, match=r"is a hybrid \(attention on layers 1 of 3\): dataset statistics"):
        attnscope.aggregate_dataset(m, [list(range(3, 12))] * 2)


@pytest.mark.parametrize("bad, msg", [
    ([0, 2], r"capture operator called with layer 1, which is not among the attention_layers attnscope.json states"),
    ([2, 1], r"attention_layers must increase, but 1 follows 2"),
    ([5], r"'attention_layers'\[0\]: 5 out of range")])
def test_stated_attention_layers_are_checked(tmp_path, bad, msg):
    """attnscope.json's attention_layers: increasing, within the layers, and what the graph runs."""
    import json
    from attnscope.models import read_extra_file
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(FAMILIES["lfm2"]().eval(), None, tmp_path / "m.pt")
    meta = json.loads(read_extra_file(str(tmp_path / "m.pt"), "attnscope.json"))
    assert meta["attention_layers"] == [1]
    meta["attention_layers"] = bad
    torch.jit.save(torch.jit.load(str(tmp_path / "m.pt")), str(tmp_path / "x.pt"),
                   _extra_files={"attnscope.json": json.dumps(meta)})
    with pytest.raises((ValueError, RuntimeError), match=msg):  # RuntimeError: raised inside the forward
        attnscope.load(str(tmp_path / "x.pt"), device="cpu").run(IDS)
