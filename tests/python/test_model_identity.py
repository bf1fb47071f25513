"""Every trace, dataset, atlas and profile knows which model made it (Model.model_id: the
archive's weight records, or a module's tensors), files keep it, and whatever combines two of
them refuses two models of the same shape by name unless allow_different_models=True (then the
figure's title says so). Before, two same-shaped models were summed and differenced silently."""
import os
import zipfile

import matplotlib
import pytest
import torch
from conftest import BUILD

import attnscope

matplotlib.use("Agg")
FIX = os.path.join(BUILD, "fixtures")
SRC = os.path.join(FIX, "toy_hf_eager.pt")  # 3 layers, 4 heads, word-level tokenizer
TEXT = "the cat sat on the mat"


def copy_with(dst, change_weight):
    """The toy archive rewritten (valid CRCs); change_weight flips one byte of one weight."""
    with zipfile.ZipFile(SRC) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            b = zin.read(info.filename)
            if change_weight and info.filename.endswith("/data/3"):
                b = bytes([b[0] ^ 0x40]) + b[1:]
            if info.filename.endswith(".data/serialization_id"):
                b = b"another-save-of-the-same-weights"
            zout.writestr(info, b)
    return str(dst)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not os.path.exists(SRC):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    d = tmp_path_factory.mktemp("models")
    return (attnscope.load(SRC, device="cpu"), attnscope.load(copy_with(d / "same.pt", False), device="cpu"),
            attnscope.load(copy_with(d / "other.pt", True), device="cpu"))


def test_the_id_follows_the_weights(models, tmp_path):
    a, same, other = models
    assert a.model_id.startswith("w:") and len(a.model_id) == 18
    assert same.model_id == a.model_id and other.model_id != a.model_id
    assert a.model_name == "toy_hf_eager.pt" and other.model_name == "other.pt"
    m = attnscope.from_module(torch.jit.load(SRC), device="cpu")
    assert m.model_id.startswith("m:") and m.model_id == attnscope.from_module(torch.jit.load(SRC)).model_id
    t = a.run(TEXT)
    assert (t.model_id, t.model_name) == (a.model_id, "toy_hf_eager.pt")
    t.save(tmp_path / "t.safetensors")
    back = attnscope.Trace.load(tmp_path / "t.safetensors")
    assert (back.model_id, back.model_name) == (a.model_id, "toy_hf_eager.pt")


def test_datasets_of_two_models_are_refused_by_name(models, tmp_path):
    a, same, other = models
    ta, ts, to = (m.run(TEXT, capture="all") for m in models)
    assert attnscope.DatasetTrace.from_traces([ta, ts]).n_sequences == 2
    with pytest.raises(ValueError, match=r"DatasetStats.add: these sums come from 'toy_hf_eager.pt' \(w:[0-9a-f]{16}\), "
                                         r"the trace from 'other.pt' \(w:[0-9a-f]{16}\): same shape is not the same model"):
        attnscope.DatasetTrace.from_traces([ta, to])
    mixed = attnscope.DatasetTrace.from_traces([ta, to], allow_different_models=True)
    assert mixed.model_id == "mixed" and mixed.n_sequences == 2
    da = attnscope.aggregate_dataset(a, [[1, 2, 3, 4]], length=4, num=None, progress=False)
    do = attnscope.aggregate_dataset(other, [[1, 2, 3, 4]], length=4, num=None, progress=False)
    assert da.model_id == a.model_id
    do.save(tmp_path / "o.safetensors")  # the model travels with the file
    back = attnscope.DatasetTrace.load(tmp_path / "o.safetensors")
    assert (back.model_id, back.model_name) == (other.model_id, "other.pt")
    with pytest.raises(ValueError, match=r"DatasetStats.merge: these sums come from 'toy_hf_eager.pt'.*the other dataset "
                                         r"from 'other.pt'"):
        da.merge(back)
    assert da.merge(back, allow_different_models=True).model_id == "mixed"
    mixed.save(tmp_path / "m.safetensors")
    pooled = attnscope.DatasetTrace.load(tmp_path / "m.safetensors")
    assert pooled.model_id == "mixed"
    with pytest.raises(ValueError, match=r"these sums come from 'toy_hf_eager.pt' \(mixed\), the other dataset from "
                                         r"'toy_hf_eager.pt' \(w:"):  # pooled once is not a licence to pool again
        pooled.merge(da)


def test_figures_refuse_two_models_unless_asked(models):
    import matplotlib.pyplot as plt
    a, same, other = models
    ta, ts, to = (m.run(TEXT, capture="all") for m in models)
    msg = r"the first comes from 'toy_hf_eager.pt' \(w:[0-9a-f]{16}\), the second from 'other.pt'"
    with pytest.raises(ValueError, match="visualize_attention_diff: " + msg):
        attnscope.visualize_attention_diff(ta, to, [0])
    with pytest.raises(ValueError, match="compare: " + msg):
        attnscope.visualize_token_profile(ta, 2, compare=to)
    with pytest.raises(ValueError, match="compare: " + msg):
        attnscope.visualize_head_atlas(ta, compare=to)
    attnscope.visualize_attention_diff(ta, ts, [0])  # the same weights saved twice: one model
    fig = attnscope.visualize_attention_diff(ta, to, [0], allow_different_models=True)
    assert "different models: toy_hf_eager.pt vs other.pt" in fig._suptitle.get_text()
    fig = attnscope.visualize_token_profile(ta, 2, compare=to, allow_different_models=True)
    assert "different models" in fig.axes[0].get_title()
    fig = attnscope.visualize_head_atlas(ta, compare=to, allow_different_models=True)
    assert "different models: toy_hf_eager.pt vs other.pt" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="allow_different_models 'yes': expected True or False"):
        attnscope.visualize_attention_diff(ta, to, [0], allow_different_models="yes")
    plt.close("all")


def test_every_file_kind_reads_back(models, tmp_path):
    """What the project writes, it reads back by the same checks: a run, a generated answer, a
    fork (a turning point's branch before capture; it used to save and then fail to load), a
    captured branch and a dataset."""
    a = models[0]
    answer = a.generate(TEXT, max_new_tokens=4, progress=False, capture={"top_k": 5}, stop=[])
    tp = attnscope.turning_points(answer, k=1, alternatives=1, max_new_tokens=2, progress=False)
    kinds = {"run": a.run(TEXT), "answer": answer, "fork": tp.branches.forks[0], "branch": tp.branches[0]}
    for name, t in kinds.items():
        t.save(tmp_path / f"{name}.safetensors")
        back = attnscope.Trace.load(tmp_path / f"{name}.safetensors")
        assert back.input_ids.tolist() == t.input_ids.tolist() and back.model_id == a.model_id, name
        assert sorted(back.captures) == sorted(t.captures) and back.generation == t.generation, name
    d = attnscope.aggregate_dataset(a, [[1, 2, 3, 4]], length=4, num=None, progress=False)
    d.save(tmp_path / "d.safetensors")
    back = attnscope.DatasetTrace.load(tmp_path / "d.safetensors")
    assert back.n_sequences == 1 and back.model_id == a.model_id


@pytest.fixture
def dataset_file(models, tmp_path):
    d = attnscope.aggregate_dataset(models[0], [[1, 2, 3, 4], [4, 3, 2, 1]], length=4, num=None, progress=False)
    d.save(tmp_path / "d.safetensors")
    return tmp_path / "d.safetensors"


def _edit(path, meta=None, tensors=None, drop=()):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), "pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    m.update(meta or {})
    t.update(tensors or {})
    out = path.with_name("edited.safetensors")
    save_file(t, str(out), metadata=m)
    return out


@pytest.mark.parametrize("change,msg", [
    (dict(meta={"n_layers": "2"}), r"'entropy_sum' is Double \[3, 4, 4\]; n_layers 2, n_heads 4 and length 4 make it "
                                   r"Double \[2, 4, 4\]"),
    (dict(meta={"n_heads": "8"}), r"n_layers 3, n_heads 8 and length 4 make it"),
    (dict(tensors={"n_sequences": torch.tensor([-8.0], dtype=torch.float64)}),
     r"'n_sequences' holds a negative or non-finite value"),
    (dict(tensors={"n_sequences": torch.tensor([1.5], dtype=torch.float64)}),
     r"n_sequences 1.5 must be a whole number >= 1"),
    (dict(tensors={"position_count": torch.full((4,), 3.0, dtype=torch.float64)}),
     r"position_count must hold whole numbers of at most n_sequences \(2\)"),
    (dict(tensors={"entropy_sum": torch.full((3, 4, 4), float("nan"), dtype=torch.float64)}),
     r"'entropy_sum' holds a negative or non-finite value"),
    (dict(tensors={"junk": torch.zeros(1, dtype=torch.float64)}), r"'junk' is not a sum of parts"),
    (dict(drop=("sink_hits",)), r"'sink_hits' is missing \(parts layer_maps,received,attn_entropy,row_stats\)"),
    (dict(meta={"model_id": ""}), r"model_id '' is not an attnscope model id \(it is empty: which model"),
    (dict(meta={"model_id": "llama 3x4"}), r"model_id 'llama 3x4' is not an attnscope model id"),
    (dict(meta={"version": "3"}), r"has format version 3; this attnscope reads up to 2"),
])
def test_a_dataset_file_that_lies_is_refused(dataset_file, change, msg):
    # Before: n_layers 3 over 2-layer sums, n_sequences -8 or an empty model id loaded and merged.
    bad = _edit(dataset_file, **change)
    with pytest.raises(ValueError, match=msg):
        attnscope.DatasetTrace.load(bad)


def test_a_version_1_dataset_is_of_an_unknown_model(models, dataset_file):
    old = _edit(dataset_file, meta={"version": "1", "model": "toy 3x4 toy_hf_eager.pt", "model_id": ""})
    d = attnscope.DatasetTrace.load(old)
    assert d.model_id == "" and d.model_name == "toy 3x4 toy_hf_eager.pt"
    fresh = attnscope.aggregate_dataset(models[0], [[1, 2, 3, 4]], length=4, num=None, progress=False)
    with pytest.raises(ValueError, match=r"the other dataset from an unknown model \(a file written before model ids"):
        fresh.merge(d)
