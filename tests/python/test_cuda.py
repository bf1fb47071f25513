"""The core on CUDA: CPU and CUDA traces agree, archives traced on the CPU run on the GPU
(device constants retargeted), export_hf on the GPU in fp32 and bf16 against transformers'
eager attentions, dataset sums on the device. Skipped, with the reason printed (-rs), where no
CUDA device exists; bench/device_check.sh runs them on a GPU machine."""
import os
import warnings

import pytest
import torch
from conftest import BUILD

import attnscope

FIX = os.path.join(BUILD, "fixtures")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason=f"no CUDA device (torch {torch.__version__}, "
                                       f"CUDA build: {torch.version.cuda or 'no'}): CUDA tests skipped")
ALL = {"received": True, "attn_entropy": True, "sink_tokens": 1, "from_tokens": [-1],
       "layer_maps": [0, 1], "heads": [(0, 0), (1, 3)]}


def _fixture(name):
    path = os.path.join(FIX, name)
    if not os.path.exists(path):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    return path


def _ids(vocab, b=2, t=12, pad=3):
    ids = torch.randint(1, vocab, (b, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("name", ["hf_llama_sdpa.pt", "hf_llama_eager.pt", "hf_qwen2_sdpa.pt",
                                  "hf_gpt2_sdpa.pt", "hf_gpt2_eager.pt"])
@pytest.mark.parametrize("route", ["auto", "softmax"])
def test_cpu_and_cuda_agree(monkeypatch, name, route):
    # auto: SDPA sites on the GPU take the kernel's log-sum-exp; softmax: a softmax per block
    monkeypatch.setenv("ATTNSCOPE_SDPA_ROUTE", route)
    path = _fixture(name)
    cpu, gpu = attnscope.load(path, device="cpu"), attnscope.load(path, device="cuda")
    ids, mask = _ids(cpu.vocab_size if cpu.vocab_size > 0 else 64)
    a = cpu.run(ids, capture=ALL, attention_mask=mask)
    b = gpu.run(ids, capture=ALL, attention_mask=mask)
    assert sorted(a.captures) == sorted(b.captures)
    for k in a.captures:
        assert b.captures[k].device.type == "cpu"  # to_cpu (default) brings results back
        assert torch.allclose(a.captures[k].float(), b.captures[k].float(), atol=1e-5, rtol=0, equal_nan=True), k
    assert torch.allclose(a.entropy, b.entropy, atol=1e-4, equal_nan=True)


def test_results_stay_on_the_device_until_asked():
    gpu = attnscope.load(_fixture("hf_llama_sdpa.pt"), device="cuda")
    ids, mask = _ids(64)
    t = gpu.run(ids, capture=dict(ALL, to_cpu=False), attention_mask=mask)
    assert all(v.device.type == "cuda" for k, v in t.captures.items() if k != "aggregate_layers")


def _hf(family, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    small = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[family]
    return cls(cfg(**small)).to(device="cuda", dtype=dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_export_hf_on_cuda_matches_eager(tmp_path, family, attention, dtype):
    pytest.importorskip("transformers")
    model = _hf(family, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(model, None, tmp_path / "m.pt", attention=attention, fallback=False)
    assert r["route"] == "transformers"
    m = attnscope.load(str(tmp_path / "m.pt"), device="cuda")
    ids, mask = _ids(128, t=40, pad=5)
    t = m.run(ids, capture={"heads": [(l, h) for l in range(2) for h in range(8)]}, attention_mask=mask)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), output_attentions=True).attentions
    for l in range(2):
        got = torch.stack([t.get(f"head_map/L{l}H{h}") for h in range(8)], 1).float()
        want = ref[l].float().cpu()
        ok = mask.bool()[:, None, :, None]
        diff = (got - want).abs().masked_fill(~ok, 0)
        if dtype == torch.float32:
            assert diff.max() <= 1e-5, (l, float(diff.max()))
        else:  # the reference is rounded to bf16 (8 bits): allow that rounding on top of 1e-3
            assert (diff - want.abs() * 2 ** -8).max() <= 1e-3, (l, float(diff.max()))


def test_dataset_sums_on_cuda_equal_cpu():
    path = _fixture("hf_llama_sdpa.pt")
    ids = torch.randint(1, 64, (9, 10), generator=torch.Generator().manual_seed(4))
    a = attnscope.aggregate_dataset(attnscope.load(path, device="cpu"), ids, length=10, num=9,
                                    batch_size=4, progress=False)
    b = attnscope.aggregate_dataset(attnscope.load(path, device="cuda"), ids, length=10, num=9,
                                    batch_size=4, progress=False)
    assert b.stats.state["layer_map_sum"].device.type == "cuda"
    for name in ("layer_map/L1", "received_mean", "received_max", "attn_entropy"):
        assert torch.allclose(a.get(name), b.get(name), atol=1e-5), name
    assert abs(a.sink1 - b.sink1) < 1e-9


def test_generate_on_cuda_matches_cpu():
    """Greedy and seeded sampling give the same tokens on CUDA as on the CPU (the sampler's
    generator is a CPU one), with the KV-cache decode method running on the GPU."""
    cpu, gpu = attnscope.load(device="cpu"), attnscope.load(device="cuda")
    for kw in (dict(), dict(temperature=0.8, top_p=0.9, seed=3)):
        a = cpu.generate("The capital of France is", max_new_tokens=12, stop=[], capture={}, **kw)
        b = gpu.generate("The capital of France is", max_new_tokens=12, stop=[], capture={}, **kw)
        assert b.generation["kv_cache"] is True
        assert a.input_ids.tolist() == b.input_ids.tolist(), kw
