"""One argument cannot make attnscope allocate without bound: work is estimated before it is
allocated and refused past the memory budget (ATTNSCOPE_MAX_BYTES, else half the machine's
memory) with a ValueError naming the argument; long generation without a KV cache states its
cost before it starts. Before: pooled_maps=65536 allocated [L, B, H, T, T] (5.8 GB at 2048
tokens), head_atlas(batch=10**6) and show(max_cells=10**12) reached the allocator's refusal."""

import pytest
import torch

import attnscope
from attnscope import _core, budget



@pytest.fixture(scope="module")
def toy(toy_model):
    return toy_model  # conftest: the toy archive (3 layers, 4 heads, word-level tokenizer)


def test_python_and_cpp_share_one_budget(monkeypatch):
    assert budget.memory_budget() == _core.memory_budget() > 0
    monkeypatch.setenv("ATTNSCOPE_MAX_BYTES", "123456")
    assert budget.memory_budget() == _core.memory_budget() == 123456
    monkeypatch.setenv("ATTNSCOPE_MAX_BYTES", "-5")
    with pytest.raises(ValueError, match=r"ATTNSCOPE_MAX_BYTES '-5': expected a number of bytes > 0"):
        budget.memory_budget()
    with pytest.raises(ValueError, match=r"ATTNSCOPE_MAX_BYTES '-5': expected a number of bytes > 0"):
        _core.memory_budget()


def test_kept_bytes_is_what_a_run_keeps(toy):
    spec = attnscope.capture_spec({"heads": [(0, 1)], "layer_maps": [2], "pooled_maps": 4})
    t = toy.run(torch.arange(1, 9).view(1, 8), capture=spec)
    kept = sum(x.numel() * 4 for n, x in t.captures.items() if "map" in n)
    assert kept <= spec.kept_bytes(3, 1, 4, 8)  # an upper bound of the maps it keeps
    assert spec.kept_bytes(3, 1, 4, 8) < 4 * kept + 4 * 3 * 4 * 8 * 16 + 1


def test_pooled_maps_beyond_the_budget_are_refused_before_the_run(toy, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_MAX_BYTES", str(1 << 20))
    ids = torch.randint(1, 60, (1, 200))
    with pytest.raises(ValueError, match=r"capturing 1 x 200 tokens with 0 full maps and pooled_maps 200 needs about "
                                         r"0.0 GB, more than the 0.0 GB attnscope may allocate \(ATTNSCOPE_MAX_BYTES\): "
                                         r"ask for fewer maps or layers, a smaller pooled_maps"):
        toy.run(ids, capture={"pooled_maps": 65536})
    monkeypatch.delenv("ATTNSCOPE_MAX_BYTES")
    with pytest.warns(UserWarning, match=r"pooled_maps 65536 is more than the 200 tokens: each map is kept whole "
                                         r"\(200 x 200\)"):
        t = toy.run(ids, capture={"pooled_maps": 65536})
    assert t.get("pooled_map").shape == (3, 1, 4, 200, 200)


def test_head_atlas_and_view_refuse_work_past_the_budget(toy, monkeypatch):
    with pytest.raises(ValueError, match=r"head_atlas\(batch=1000000, length=48\) needs about \d+\.\d GB, more than the "
                                         r"\d+\.\d GB attnscope may allocate \(half of this machine's memory; "
                                         r"ATTNSCOPE_MAX_BYTES sets it\): a smaller batch"):
        toy.head_atlas(batch=10 ** 6)
    t = toy.run(torch.randint(1, 60, (1, 64)))
    monkeypatch.setenv("ATTNSCOPE_MAX_BYTES", str(100_000))
    with pytest.raises(ValueError, match=r"the view's 31,200 cells \(max_cells=1,000,000,000,000\) needs about 0.0 GB"):
        attnscope.show(t, max_cells=10 ** 12)


def test_long_generation_without_a_cache_states_its_cost(toy):
    assert not toy.has_decode
    with pytest.warns(UserWarning, match=r"generate: this archive has no decode method, so each of up to 600 steps "
                                         r"re-runs the whole sequence: about 1.8e\+05 token positions in all, against "
                                         r"600 with a KV cache"):
        toy.generate([5, 6], max_new_tokens=600, progress=False, capture={"top_k": 0}, stop=[1, 2, 3, 4, 5, 6, 7])
