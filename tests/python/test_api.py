"""attnscope.load / Model.run / Trace over the compiled core (attnscope._core)."""
import os

import pytest
import torch
from conftest import BUILD

import attnscope
import attnscope.models
from attnscope import readable

FIX = os.path.join(BUILD, "fixtures")


@pytest.fixture(scope="module")
def toy():
    path = os.path.join(FIX, "toy_hf_eager.pt")  # 3 layers, 4 heads, vocab 64, has tokenizer.json
    if not os.path.exists(path):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    return attnscope.load(path, device="cpu")


def test_run_ids_and_captures(toy):
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    t = toy.run(ids, capture={"heads": [(2, 1)], "received": True, "layer_maps": [0], "top_k": 2})
    assert (t.n_layers, t.n_heads) == (3, 4)
    assert t.get("head_map/L2H1").shape == (1, 5, 5)
    assert t.get("received_mean").shape == (3, 1, 4, 5)
    assert t.topk_ids.shape == (1, 5, 2)
    assert t.labels[0][0] == "café␣😀" and t.labels[0][1] == "␣hello"  # ids 1 and 5 of the toy vocab
    assert t.spec["heads"] == [[2, 1]]
    # missing maps are computed on demand (one re-run), equal to capturing them in the first run
    direct = toy.run(ids, capture={"layer_maps": [1]}).get("layer_map/L1")
    assert torch.allclose(t.get("layer_map/L1"), direct)
    assert "layer_map/L1" in t.captures and "held" not in repr(t) and "model kept" in repr(t)
    t.release()
    with pytest.raises(ValueError, match=r"trace has no capture 'layer_map/L2'"):
        t.get("layer_map/L2")


def test_text_batches_and_repr(toy):
    from tokenizers import Tokenizer
    assert toy.tokenizer is None or isinstance(toy.tokenizer, Tokenizer)
    t = toy.run(torch.tensor([[1, 5, 9]]))
    assert "tokens=3" in repr(t) and "input_ids" in dir(t) and "entropy" in dir(t)


def test_trace_round_trip(toy, tmp_path):
    t = toy.run([1, 2, 3, 4], capture="all")
    t.save(tmp_path / "t.safetensors")
    u = attnscope.Trace.load(tmp_path / "t.safetensors")
    assert torch.equal(u.entropy, t.entropy)
    assert sorted(u.captures) == sorted(t.captures)
    assert u.tokens == t.tokens


def test_errors(toy):
    with pytest.raises(ValueError, match="capture: unknown field 'bogus'"):
        toy.run([1, 2], capture={"bogus": 1})
    with pytest.raises(ValueError, match="expected 'all', a dict"):
        toy.run([1, 2], capture=3)
    with pytest.raises(RuntimeError, match="layer 7 out of range: model has 3 layers"):
        toy.run([1, 2], capture={"heads": [(7, 0)]})
    with pytest.raises(ValueError, match="empty text"):
        toy.run("")
    with pytest.raises(FileNotFoundError, match="model '/nonexistent.pt' not found: expected a TorchScript archive"):
        attnscope.load("/nonexistent.pt", device="cpu")


def test_readable_labels():
    assert readable("\u0120hello") == "␣hello"
    assert readable("a\nb\tc\x01") == "a↵b⇥c\\x01"
    assert readable("") == "∅"


def test_default_model_load_and_run():
    try:
        attnscope.models.default_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    m = attnscope.load()
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.vocab_size) == (30, 9, 3, 49152)
    t = m.run("The cat sat on the mat.", capture={"heads": [(14, 0)], "attn_entropy": True})
    assert t.labels[0][:3] == ["The", "␣cat", "␣sat"]
    rows = t.get("head_map/L14H0")[0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_overwriting_a_trace_keeps_memory_mapped_readers_intact(toy, tmp_path):
    """safetensors' safe_open memory-maps the file: a save() over it must not change tensors a
    reader still holds (tools/model_card.py once read garbage that way, or died of SIGBUS)."""
    from safetensors import safe_open
    path = tmp_path / "t.safetensors"
    toy.run([1, 2, 3, 4], capture="all").save(path)
    with safe_open(str(path), framework="pt") as f:
        held = f.get_tensor("captures/received_mean")
    before = held.clone()
    toy.run([[5, 6, 7, 8, 9, 10, 11]] * 3, capture="all").save(path)  # different size and data
    assert torch.equal(held, before)
    assert attnscope.Trace.load(path).input_ids.shape == (3, 7)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary left behind


def test_predictive_entropy_optional_and_reruns_skip_it(toy):
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    full = toy.run(ids, capture={"heads": [(0, 1)], "top_k": 3})
    lean = toy.run(ids, capture={"heads": [(0, 1)], "predictive_entropy": False, "top_k": 0})
    assert torch.isnan(lean.entropy).all() and (lean.topk_ids is None or lean.topk_ids.numel() == 0)
    assert torch.equal(lean.captures["head_map/L0H1"], full.captures["head_map/L0H1"])
    only_k = toy.run(ids, capture={"predictive_entropy": False, "top_k": 3})
    assert torch.equal(only_k.topk_ids, full.topk_ids) and torch.equal(only_k.topk_probs, full.topk_probs)
    # A map asked for later is computed by a re-run that skips the logits passes; the first
    # run's entropy and top-k stay.
    before = full.entropy.clone()
    full.get("head_map/L2H3")
    assert torch.equal(full.entropy, before) and full.topk_ids.shape[-1] == 3
    assert attnscope._core.CaptureSpec.from_json('{"predictive_entropy": false}').predictive_entropy is False


def test_the_capture_vocabulary_is_what_runs_produce(toy):
    """CaptureSpec.capture_names() (C++'s one description) names exactly what a run keeps: each
    capture's spec (for_captures) produces it and its siblings, nothing else, and "all" too."""
    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    names = attnscope.CaptureSpec.capture_names()
    derivable = [c["name"] for c in names if c["value"] > 0 and c["field"] and "{" not in c["name"]]
    assert {"received_mean", "attn_entropy", "sink_mass", "row_induction"} <= set(derivable)
    sdpa = attnscope.load(os.path.join(FIX, "toy_sdpa_causal.pt"), device="cpu")  # value-weighted: SDPA sites
    for name in derivable + ["head_map/L2H3", "layer_map/L1"]:
        spec = attnscope.CaptureSpec.for_captures([name])
        got = set((sdpa if name.startswith("vw_") else toy).run(ids, capture=spec).captures)
        want = set(spec.produces())
        assert name in want
        assert got == want, f"{name}: a run kept {sorted(got)}, the vocabulary says {sorted(want)}"
    spec = attnscope.capture_spec({"from_tokens": [-1], "pooled_maps": 3, "sink_tokens": 2})
    assert set(toy.run(ids, capture=spec).captures) == set(spec.produces()) == {
        "from", "pooled_map", "pooled_uniform", "sink_mass", "sink_mass_rows", "aggregate_layers"}
    assert set(toy.run(ids).captures) == set(attnscope.CaptureSpec.all_aggregates().produces())
    fields = {f["name"]: f for f in attnscope.CaptureSpec.fields()}
    assert {c["field"] for c in names} - {""} <= set(fields)
    assert fields["top_k"]["default"] == 5 and fields["heads"]["type"] == "pairs"
    for c in names:  # docs/capture.md's table names every capture
        doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "capture.md"), encoding="utf-8").read()
        assert f"`{c['name']}`" in doc or c["name"] == "aggregate_layers", c["name"]


def test_capture_spec_fields_are_checked_by_the_table(toy):
    s = attnscope.CaptureSpec()
    s.pooled_maps = 70000
    with pytest.raises(ValueError, match=r"pooled_maps'?:? 70000 out of range: expected 0\.\.65536"):
        toy.run([1, 2, 3], capture=s)
    with pytest.raises(ValueError, match="capture: unknown field 'nope'; expected one of heads, layer_maps"):
        attnscope.capture_spec({"nope": 1})
    assert attnscope.capture_spec("all").to_dict() == attnscope.CaptureSpec.all_aggregates().to_dict()
