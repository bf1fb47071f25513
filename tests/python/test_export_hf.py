"""export_hf: transformers 5.17 models (random small configs) traced with attnscope's attention
functions; captured maps equal transformers' own eager output_attentions to 1e-5 in fp32, at
another length than the traced one and with padding; the fallback to the project's module; the
archive's facts; `attnscope export`."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ROOT
from reference_stats import rows_alone

import attnscope
from attnscope.models import hf_export, read_extra_file

transformers = pytest.importorskip("transformers")
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,  # noqa: E402
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

V = 64
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **SMALL)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=1, **SMALL)),       # GQA 4:1, q/k/v bias
    "mistral": lambda: MistralForCausalLM(MistralConfig(num_key_value_heads=2, sliding_window=4, **SMALL)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                               bos_token_id=1, eos_token_id=2)),
}


def make(family):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


def captured_vs_eager(model, archive, t=11, pad=3):
    """Max |captured - eager output_attentions| over layers (real query rows), at length t
    (the export traced 16), left padding of `pad` tokens in row 0 (0: the exact-causal path)."""
    m = attnscope.load(archive, device="cpu")
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (2, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    L, H = m.n_layers, m.n_heads
    trace = m.run(ids, capture={"heads": [(l, h) for l in range(L) for h in range(H)]}, attention_mask=mask)
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    ref = rows_alone(model, ids, mask)[0]  # a padded row's reference: its tokens alone
    model.set_attn_implementation(impl)
    worst, maps = 0.0, []
    for l in range(L):
        got = torch.stack([trace.get(f"head_map/L{l}H{h}") for h in range(H)], 1)
        maps.append(got)
        worst = max(worst, float((got - ref[l]).abs().masked_fill(~mask.bool()[:, None, :, None], 0).max()))
    return worst, maps


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_captured_equals_transformers_eager(tmp_path, family, attention):
    model = make(family)
    path = tmp_path / f"{family}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(model, None, path, attention=attention, fallback=False)
    assert r["route"] == "transformers" and r["max_abs_diff"] <= 1e-5 and r["attention"] == attention
    worst, maps = captured_vs_eager(model, path)
    assert worst <= 1e-5, worst
    worst, _ = captured_vs_eager(model, path, t=13, pad=0)  # unpadded: causal SDPA, no mask
    assert worst <= 1e-5, worst
    if family == "mistral":  # sliding window 4: keys 4 or more behind the query get nothing
        i, j = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
        assert maps[0][1][:, i - j >= 4].abs().max() == 0
    meta = json.loads(read_extra_file(str(path), "attnscope.json"))
    n_kv = {"llama": 2, "qwen2": 1, "mistral": 2, "gpt2": 4}[family]
    # num_kv_heads is stated only where the config names fewer KV heads; else the first run's keys say
    assert (meta["num_layers"], meta["num_heads"], meta.get("num_kv_heads", 4), meta["head_dim"]) == (2, 4, n_kv, 8)
    assert (meta["vocab_size"], meta["bos_token_id"], meta["eos_token_id"]) == (V, 1, 2)
    assert meta["family"] == family and meta["attention"] == attention
    assert meta["transformers"] == transformers.__version__ and meta["torch"] == torch.__version__
    m = attnscope.load(str(path), device="cpu")
    assert m.n_kv_heads == n_kv and m.run([[1, 2, 3]]).n_kv_heads == n_kv
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.family) == (2, 4, n_kv, family)
    assert not m.instrumented  # the archive carries its own capture operators


def test_tokenizer_is_stored(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    # settings saved in a tokenizer.json must not leak into run(text): pads as tokens, silent cuts
    tok.enable_padding(pad_id=0, pad_token="w0", length=32)
    tok.enable_truncation(max_length=2)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    path = tmp_path / "m.pt"
    attnscope.export_hf(make("llama"), fast, path)
    m = attnscope.load(str(path), device="cpu")
    t = m.run("w5 w9 w12")
    assert t.input_ids.tolist() == [[5, 9, 12]] and t.labels[0] == ["w5", "w9", "w12"]
    with pytest.raises(ValueError, match="input of 65 tokens is longer than the model's context of 64 tokens"):
        m.run(" ".join(["w3"] * 65))


def test_fallback_routes(tmp_path, monkeypatch):
    from attnscope.models import hf_attention

    def broken(*a, **k):
        raise NotImplementedError("simulated: this transformers version cannot be traced")
    monkeypatch.setattr(hf_attention, "attnscope_sdpa", broken)
    model = make("qwen2")
    # 1. attnscope's functions fail -> the graph route (the model's own SDPA, instrumented at load)
    with pytest.warns(UserWarning, match=r"route transformers \(positions from the mask\): NotImplementedError: simulated.*trying the graph route"):
        r = attnscope.export_hf(model, None, tmp_path / "q.pt")
    assert r["route"] == "graph" and "simulated" in r["reason"] and r["attention"] == "sdpa (the model's own)"
    assert r["max_abs_diff"] <= 1e-5
    worst, _ = captured_vs_eager(model, tmp_path / "q.pt")
    assert worst <= 1e-5
    meta = json.loads(read_extra_file(str(tmp_path / "q.pt"), "attnscope.json"))
    assert meta["route"] == "graph" and "simulated" in meta["fallback_reason"]
    assert attnscope.load(str(tmp_path / "q.pt"), device="cpu").instrumented
    # 2. the graph route fails too -> attnscope's own Llama-family module (Llama, Qwen2, Mistral)
    def no_graph(model, facts, ids, mask, call):  # tracing a transformers model (with or without decode) fails
        raise RuntimeError("\nsimulated graph failure\nsecond line")
    monkeypatch.setattr(hf_export, "_trace_forward", no_graph)
    with pytest.warns(UserWarning, match="trying the attnscope-module route"):
        r = attnscope.export_hf(model, None, tmp_path / "o.pt")
    assert r["route"] == "attnscope-module" and "RuntimeError: simulated graph failure" in r["reason"]
    worst, _ = captured_vs_eager(model, tmp_path / "o.pt")
    assert worst <= 1e-5
    # a family the module does not cover: every route's gist (a repeated one reads "the same"), the
    # whole errors in __cause__, and no workaround offered (tracing it yourself is what the graph route did)
    with pytest.raises(ValueError, match=r"cannot export this gpt2 model \(GPT2LMHeadModel, transformers "
                                         r"5\.\d+\.\d+, attention='sdpa'\): route transformers \(positions from the mask\): "
                                         r"RuntimeError: simulated graph failure; route graph \(positions from the mask\): "
                                         r"the same\. The graph route is what tracing the model yourself .* would give, so "
                                         r"that is no workaround") as e:
        attnscope.export_hf(make("gpt2"), None, tmp_path / "g.pt")
    assert "simulated graph failure second line" in " ".join(str(e.value.__cause__).split())
    # the advice given with fallback=False works when followed
    with pytest.raises(ValueError, match=r"cannot export this llama model .* Retry with fallback=True"):
        attnscope.export_hf(make("llama"), None, tmp_path / "l.pt", fallback=False)
    with pytest.warns(UserWarning):
        assert attnscope.export_hf(make("llama"), None, tmp_path / "l.pt", fallback=True)["route"] == "attnscope-module"


def test_describe_error_keeps_whole_message_and_causes():
    try:
        try:
            raise ValueError("inner cause\nwith detail")
        except ValueError as inner:
            raise RuntimeError("\nCould not export Python function call 'GeLUFunction'\nline 2") from inner
    except RuntimeError as e:
        text = hf_export.describe_error(e)
    assert text == ("RuntimeError: Could not export Python function call 'GeLUFunction' line 2 "
                    "<- ValueError: inner cause with detail")


def test_autograd_functions_are_inlined_while_tracing():
    class Double(torch.autograd.Function):  # old style: forward(ctx, x)
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2

    class M(torch.nn.Module):
        def forward(self, ids, mask):
            return Double.apply(ids.float()) + mask

    ids = torch.ones(1, 3, dtype=torch.long)
    traced = hf_export._trace_module(M(), ids, ids)
    assert hf_export._python_calls(traced) == []
    assert traced(ids, ids).tolist() == [[3.0, 3.0, 3.0]]
    with torch.no_grad():  # without the inlining the trace holds a Python call that cannot be saved
        assert hf_export._python_calls(torch.jit.trace(M(), (ids, ids))) == ["Double"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"attention 'flash': expected one of \('sdpa', 'eager'\)"):
        attnscope.export_hf(make("llama"), None, tmp_path / "x.pt", attention="flash")
    with pytest.raises(ValueError, match=r"model: expected a transformers PreTrainedModel or a checkpoint folder, got Linear"):
        attnscope.export_hf(torch.nn.Linear(2, 2), None, tmp_path / "x.pt")


def test_cli_export_hf_folder(tmp_path):
    model = make("qwen2")
    model.save_pretrained(tmp_path / "ckpt")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, "-m", "attnscope", "export", "--hf", str(tmp_path / "ckpt"),
                        "--out", str(tmp_path / "q.pt"), "--device", "cpu"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "route: transformers, sdpa, fp32, traced on cpu; checked on " in r.stdout
    assert "kinds of input (other ids, lengths, padding) against eager attentions of each row alone: max diff" in r.stdout
    worst, _ = captured_vs_eager(model, tmp_path / "q.pt")
    assert worst <= 1e-5
    r = subprocess.run([sys.executable, "-m", "attnscope", "export", "--hf", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "n.pt")], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "expected a Hugging Face checkpoint folder or a .gguf file" in r.stderr


def test_trace_hf_runs_in_memory_sharing_weights():
    model = make("qwen2")
    traced, facts = hf_export.trace_hf(model, attention="sdpa")
    shared = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in shared for p in traced.parameters())  # no copy of the weights
    assert facts["causal"] is True  # observed from the model's eager attentions
    m = attnscope.from_module(traced, device="cpu", info=facts)
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.family) == (2, 4, 1, "qwen2") and m.causal
    assert "dry run" not in m.describe()  # every fact given: no dry run
    ids = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(2))
    t = m.run(ids, capture={"heads": [(1, 2)]})
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=ids, output_attentions=True).attentions[1][0, 2]
    assert (t.get("head_map/L1H2")[0] - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="script_module: expected a torch.jit.ScriptModule, got Linear"):
        attnscope.from_module(torch.nn.Linear(2, 2))


def test_exact_causal_mask_detection():
    tril = torch.ones(5, 5, dtype=torch.bool).tril()
    assert hf_export.exact_causal(tril.expand(2, 1, 5, 5), 5, 5)
    padded = tril.expand(2, 1, 5, 5).clone()
    padded[0, 0, :, 0] = False          # left padding in sequence 0
    assert not hf_export.exact_causal(padded, 5, 5)
    window = tril & ~torch.ones(5, 5, dtype=torch.bool).tril(-3)   # sliding window 3
    assert not hf_export.exact_causal(window[None, None], 5, 5)
    assert not hf_export.exact_causal(torch.ones(1, 1, 5, 5, dtype=torch.bool), 5, 5)
    assert not hf_export.exact_causal(tril.float()[None, None], 5, 5)


def test_cli_export_gguf_refuses_a_dtype_it_would_not_write(tmp_path, capsys):
    from attnscope.cli import main
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")  # refused before the file is read
    assert main(["export", "--hf", str(src), "--out", str(tmp_path / "m.pt"), "--dtype", "bf16"]) == 1
    err = capsys.readouterr().err
    assert "--dtype bf16: a GGUF file is exported in fp32" in err and not (tmp_path / "m.pt").exists()


def test_cli_export_gguf(tmp_path):
    from attnscope.models import default_gguf
    try:
        src = default_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    out = tmp_path / "smol.pt"
    r = subprocess.run([sys.executable, "-m", "attnscope", "export", "--hf", src, "--out", str(out),
                        "--attention", "eager"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "attnscope's Llama-family module, eager" in r.stdout
    m = attnscope.load(str(out), device="cpu")
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.vocab_size) == (30, 9, 3, 49152)
    t = m.run("Hello world", capture={"layer_maps": [0]})
    assert t.get("layer_map/L0").shape == (1, t.input_ids.shape[1], t.input_ids.shape[1])


def test_tokenizer_without_tokenizer_json_gives_token_strings(tmp_path):
    class Slow:  # what a slow (pure Python) transformers tokenizer offers
        def __len__(self):
            return V

        def convert_ids_to_tokens(self, ids):
            return [f"piece{i}" for i in ids]

    path = tmp_path / "m.pt"
    attnscope.export_hf(make("llama"), Slow(), path)
    assert json.loads(read_extra_file(str(path), "tokens.json"))[:2] == ["piece0", "piece1"]
    assert json.loads(read_extra_file(str(path), "attnscope.json"))["tokenizer"] == "tokens.json"
    m = attnscope.load(str(path), device="cpu")
    t = m.run([[3, 9, 12]], capture={})
    assert t.labels[0] == ["piece3", "piece9", "piece12"]
    with pytest.raises(ValueError, match="has no tokenizer.json: pass token ids"):
        m.run("some text")
    with pytest.raises(ValueError, match=r"tokenizer int: expected a transformers tokenizer or a tokenizers.Tokenizer"):
        attnscope.export_hf(make("llama"), 3, tmp_path / "x.pt")
