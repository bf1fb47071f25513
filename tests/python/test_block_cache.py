"""Model.run's block cache (csrc/attnscope/block_cache.h: layers reuse freed blocks of 1 MB and
more during a run) changes no number: a 300-token run of the default model, whose MLP outputs,
logits and maps are such blocks, gives the same trace bit for bit with it and without it; an
unknown setting is an error naming the value."""
import pytest
import torch

import attnscope
from attnscope.models import default_model_path


@pytest.fixture(scope="module")
def model():
    return attnscope.load(default_model_path(), device="cpu", progress=False)


def test_same_trace_with_and_without_the_block_cache(model, monkeypatch):
    ids = torch.randint(0, model.vocab_size, (1, 300), generator=torch.Generator().manual_seed(5))
    capture = {"received": True, "attn_entropy": True, "sink_tokens": 1, "row_stats": True,
               "heads": [(3, 1)], "layer_maps": [20], "top_k": 5}
    runs = []
    for setting in ("0", "1", "1"):  # the second cached run starts from a cache the first filled
        monkeypatch.setenv("ATTNSCOPE_BLOCK_CACHE", setting)
        runs.append(model.run(ids, capture=capture))
    off = runs[0]
    names = sorted(off.captures)
    assert "head_map/L3H1" in names and "row_induction" in names
    for on in runs[1:]:
        assert sorted(on.captures) == names
        for n in names:
            assert torch.equal(on.get(n).nan_to_num(-7), off.get(n).nan_to_num(-7)), n
        assert torch.equal(on.entropy, off.entropy)
        assert torch.equal(on.topk_ids, off.topk_ids)


def test_unknown_setting_is_refused(model, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BLOCK_CACHE", "yes")
    with pytest.raises(ValueError, match=r"ATTNSCOPE_BLOCK_CACHE=yes: expected 1 .* or 0"):
        model.run(torch.tensor([[1, 2, 3]]))
