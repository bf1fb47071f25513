"""attnscope.models.LlamaForCausalLM against transformers (same random weights), and its
TorchScript export run through the C++ core (attnscope-cli) against transformers' own eager
output_attentions."""
import json
import os
import subprocess

import pytest
import torch
from conftest import BUILD

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

from attnscope.models import LlamaConfig, LlamaForCausalLM  # noqa: E402

CONFIGS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(num_key_value_heads=2, rope_theta=10000.0)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(num_key_value_heads=1)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(num_key_value_heads=2, sliding_window=4)),
}


def pair(family, attention):
    cfg_cls, model_cls, extra = CONFIGS[family]
    cfg = cfg_cls(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False, **extra)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = model_cls(cfg).eval()
    ours = LlamaForCausalLM(LlamaConfig.from_hf(cfg.to_dict()), attention=attention).eval()
    ours.load_hf_state_dict(ref.state_dict())
    return ref, ours


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False])
def test_logits_match_transformers(family, attention, padded):
    # padded: the explicit-mask branch; unpadded: the is_causal branch of the SDPA module
    # (mistral's window of 4 < 10 tokens keeps the mask there too)
    ref, ours = pair(family, attention)
    ids, mask = inputs()
    if not padded:
        mask = torch.ones_like(mask)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    valid = mask.bool()
    assert (got[valid] - want[valid]).abs().max() < 1e-4


def test_traced_sdpa_archive_keeps_both_branches():
    # The archive is traced once; the causal fast path (no padding) and the masked path must
    # both survive tracing: the same archive, padded and unpadded, equals the eager module.
    _, ours = pair("llama", "sdpa")
    ids, mask = inputs()
    traced = torch.jit.trace(ours, (ids, torch.ones_like(mask)), check_trace=False)
    graph = str(traced.inlined_graph)
    assert graph.count("attnscope::sdpa") == 2 * ours.cfg.num_layers
    with torch.no_grad():
        for m in (mask, torch.ones_like(mask)):
            want, got = ours(ids, m), traced(ids, m)
            valid = m.bool()
            assert (got[valid] - want[valid]).abs().max() < 1e-6
    short = ids[:, :4]
    with torch.no_grad():  # another length than the trace's
        assert (traced(short, torch.ones_like(short)) - ours(short, torch.ones_like(short))).abs().max() < 1e-6


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_export_captured_by_core_equals_transformers_attentions(tmp_path, attention):
    cli = os.path.join(BUILD, "attnscope-cli")
    if not os.path.exists(cli):
        pytest.skip(f"{cli} not built")
    ref, ours = pair("llama", attention)
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(ours, (ids, mask)), str(path),
                   _extra_files={"attnscope.json": json.dumps({"num_layers": 2, "num_heads": 4,
                                                               "num_kv_heads": 2, "vocab_size": 96})})
    heads = ",".join(f"{l}:{h}" for l in range(2) for h in range(4))
    out = tmp_path / "t.safetensors"
    subprocess.run([cli, "--model", str(path), "--ids", ",".join(map(str, ids[0].tolist())),
                    "--heads", heads, "--out", str(out), "--device", "cpu"], check=True,
                   capture_output=True)
    with safe_open(str(out), framework="pt") as f:
        for l in range(2):
            for h in range(4):
                got = f.get_tensor(f"captures/head_map/L{l}H{h}")[0]
                assert (got - want[l][0, h]).abs().max() < 1e-5, (l, h)


def test_config_refusals():
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a Llama-family model"):
        LlamaConfig.from_hf({"model_type": "gpt2"})
    base = dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="rope type 'yarn' unsupported"):
        LlamaConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ValueError, match="hidden_act 'gelu' unsupported"):
        LlamaConfig.from_hf({**base, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="num_heads=3 is not a multiple of num_kv_heads=2"):
        LlamaConfig(vocab_size=8, hidden_size=6, intermediate_size=8, num_layers=1, num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="attention='flash'"):
        LlamaForCausalLM(LlamaConfig.from_hf(base), attention="flash")


def test_hf_checkpoint_folder(tmp_path):
    from attnscope.models import load_hf_folder

    ref, _ = pair("qwen2", "eager")
    ref.save_pretrained(tmp_path)
    model, tok = load_hf_folder(str(tmp_path), attention="sdpa")
    assert tok is None
    ids, mask = inputs()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = model(ids, mask)
    valid = mask.bool()
    assert (got[valid] - want[valid]).abs().max() < 1e-4


def test_hf_checkpoint_folder_errors(tmp_path):
    from attnscope.models import load_hf_folder

    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_hf_folder(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_hf_folder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors weights"):
        load_hf_folder(str(tmp_path))


def _tiny_gguf(path, arch="llama", qtype=None):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    if qtype is None:
        w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    else:  # raw bytes of a quantisation the loader does not accept
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor("token_embd.weight", np.zeros((16, type_size), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_refusals(tmp_path):
    gguf = pytest.importorskip("gguf")
    from attnscope.models import load_gguf

    _tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(ValueError, match="GGUF architecture 'gpt2' unsupported: expected 'llama'"):
        load_gguf(str(tmp_path / "gpt2.gguf"))
    _tiny_gguf(tmp_path / "q2k.gguf", qtype=gguf.GGMLQuantizationType.Q2_K)
    with pytest.raises(ValueError, match="token_embd.weight has quantization Q2_K, unsupported"):
        load_gguf(str(tmp_path / "q2k.gguf"))


def test_gguf_dequantises_f32_f16_q8_0(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from attnscope.models import read_gguf

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((16, 32)).astype(np.float32)
    norm = rng.standard_normal(32).astype(np.float32)
    out = rng.standard_normal((16, 32)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    for k, v in dict(block_count=0, embedding_length=32, feed_forward_length=8, head_count=2,
                     head_count_kv=2).items():
        getattr(w, f"add_{k}")(v)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", norm)                       # F32
    w.add_tensor("output.weight", out.astype(np.float16))          # F16
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    config, sd, _ = read_gguf(str(tmp_path / "m.gguf"))
    assert torch.equal(sd["model.norm.weight"], torch.from_numpy(norm))
    assert torch.equal(sd["lm_head.weight"], torch.from_numpy(out.astype(np.float16).astype(np.float32)))
    assert (sd["model.embed_tokens.weight"] - torch.from_numpy(emb)).abs().max() < 0.02  # Q8_0 step
    assert sd["model.embed_tokens.weight"].shape == (16, 32) and config["tie_word_embeddings"] is False


def test_hf_checkpoint_folder_with_tokenizer(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from attnscope.models import load_hf_folder

    ref, _ = pair("llama", "eager")
    ref.save_pretrained(tmp_path)
    Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "tokenizer.json"))
    _, tok = load_hf_folder(str(tmp_path))
    assert tok.token_to_id("b") == 1
