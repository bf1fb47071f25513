"""attnscope.load(path) on what people have: a Hugging Face checkpoint folder and a GGUF file are
exported once into the cache (keyed by a hash of their bytes, checked against transformers'
eager attentions) and reused; anything else is a clear error."""
import json
import os
import time
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import attnscope
from attnscope.models import checkpoints, default_gguf, default_model_path

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

WORDS = ["<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


def make_folder(path, seed=0):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(path)
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(d))
    return d


def archives(cache):
    return sorted(p.name for p in cache.glob("*.pt"))


def test_hf_folder_loads_in_one_call_exact_and_cached(tmp_path, cache, capsys, monkeypatch):
    ref = make_folder(tmp_path / "ckpt")
    m = attnscope.load(str(tmp_path / "ckpt"), device="cpu")
    assert "exporting" in capsys.readouterr().err
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.family) == (2, 4, 2, "llama")
    [name] = archives(cache)
    assert name.startswith("ckpt-") and name.endswith("-sdpa.pt")
    t = m.run("the cat sat on the mat", capture={"heads": [(0, 1), (1, 3)]})
    assert t.tokens[0] == ["the", "cat", "sat", "on", "the", "mat"]
    ref.set_attn_implementation("eager")
    with torch.no_grad():
        want = ref(input_ids=t.input_ids, output_attentions=True).attentions
    for l, h in [(0, 1), (1, 3)]:
        assert (t.get(f"head_map/L{l}H{h}")[0] - want[l][0, h]).abs().max() < 1e-5

    # Second load: the cached archive, no export (export_hf would fail loudly if called).
    monkeypatch.setattr("attnscope.models.hf_export.export_hf",
                        lambda *a, **k: pytest.fail("exported again although the cache holds it"))
    attnscope.load(str(tmp_path / "ckpt"), device="cpu")
    assert "exporting" not in capsys.readouterr().err
    assert archives(cache) == [name]


def test_changed_checkpoint_gets_a_new_export(tmp_path, cache):
    make_folder(tmp_path / "ckpt", seed=0)
    attnscope.load(str(tmp_path / "ckpt"), device="cpu", progress=False)
    make_folder(tmp_path / "ckpt", seed=1)  # new weights under the same path
    attnscope.load(str(tmp_path / "ckpt"), device="cpu", progress=False, attention="eager")
    attnscope.load(str(tmp_path / "ckpt"), device="cpu", progress=False)
    names = archives(cache)
    assert len(names) == 3 and sum(n.endswith("-eager.pt") for n in names) == 1


def test_damaged_cached_export_is_redone(tmp_path, cache):
    make_folder(tmp_path / "ckpt")
    first = checkpoints.archive_for(tmp_path / "ckpt", progress=False)
    with open(first, "r+b") as f:  # flip bytes inside the archive: its CRCs no longer match
        f.seek(os.path.getsize(first) // 2)
        f.write(b"\0" * 64)
    assert not checkpoints._intact(first)
    assert checkpoints.archive_for(tmp_path / "ckpt", progress=False) == first
    assert checkpoints._intact(first)


def test_gguf_file_is_the_default_models_cache_entry():
    # load("<file>.gguf") and load() share one cache entry (the session's cache: no new export).
    path = default_model_path()
    assert checkpoints.archive_for(default_gguf(), progress=False) == path
    m = attnscope.load(default_gguf(), device="cpu", progress=False)
    assert (m.n_layers, m.n_heads, m.family) == (30, 9, "llama")


def test_cli_model_takes_a_folder(tmp_path, cache):
    make_folder(tmp_path / "ckpt")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "attnscope", "demo", "--model", str(tmp_path / "ckpt"),
                        "--text", "the cat sat on the mat", "--out", str(tmp_path / "out"), "--device", "cpu"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "attention_layers.png").is_file()


def test_bad_paths(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match=r"model '.*nope' not found: expected a TorchScript archive"):
        attnscope.load(str(tmp_path / "nope"))
    (tmp_path / "x.bin").write_bytes(b"\x80\x02junk")
    with pytest.raises(ValueError, match=r"x.bin' starts with b'\\x80\\x02ju': expected a TorchScript archive"):
        attnscope.load(str(tmp_path / "x.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty' is a folder without config.json"):
        attnscope.load(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"attention 'flash': expected 'sdpa' or 'eager'"):
        attnscope.load(str(tmp_path / "empty"), attention="flash")
    with pytest.raises(ValueError, match=r"path: expected a file or folder path, got int"):
        attnscope.load(3)
    assert archives(cache) == []


def test_readme_ten_lines_run_as_written(tmp_path, monkeypatch):
    # README's example is examples/python/ten_lines.py, character for character, and it runs.
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = readme.split("## Ten lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = os.path.join(ROOT, "examples", "python", "ten_lines.py")
    assert open(script).read() == block
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("heads.png", "received.png", "layers.pdf", "answer_layers.png"):
        assert (tmp_path / f).stat().st_size > 10_000, f
    assert len(r.stdout.strip()) > 100  # the model's answer


def test_damaged_compressed_member_is_a_clear_error(tmp_path):
    # A deflated member whose bytes were overwritten fails in zlib before its CRC is checked:
    # still a ValueError naming the archive (and the member), and the cache treats it as damaged.
    import zipfile

    from attnscope.models.export import read_extra_file
    path = tmp_path / "a.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/extra/attnscope.json", "{}")
        z.writestr("a/code.py", "".join(f"x{i} = {i * i}\n" for i in range(20000)))
    info = zipfile.ZipFile(path).getinfo("a/code.py")
    with open(path, "r+b") as f:  # the member's compressed data start after its local header
        f.seek(info.header_offset + 30 + len(info.filename) + 200)
        f.write(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"a\.pt: damaged TorchScript archive: member 'a/code\.py'"):
        checkpoints.verify_archive(str(path))
    with pytest.raises(ValueError, match=r"a\.pt: damaged archive"):
        read_extra_file(str(path), "attnscope.json", verify=True)
    assert not checkpoints._intact(str(path))


@pytest.mark.parametrize("edit, message", [
    ("drop q_proj", r"the checkpoint lacks 1 weight\(s\) the model needs \(model.layers.0.self_attn.q_proj.weight\)"),
    ("drop layer 1", r"config.json says 2 layers, but the weights hold layers 0..0 only"),
    ("drop a middle layer", r"the checkpoint lacks 9 weight\(s\) the model needs \(model.layers.0."),
    ("config of 100000 layers", r"config.json says 100000 layers, but the weights hold layers 0..1 only"),
    ("no attention heads", r"config.json is not a config transformers can build \(ZeroDivisionError: integer modulo "
                           r"by zero\): num_attention_heads is 0 \(expected >= 1\)"),
    ("vocabulary of 5e7", r"config.json's vocabulary of 50000000 x hidden size 32 is more than all \d+ numbers"),
    ("drop embeddings", r"lacks 1 weight\(s\) the model needs \(model.embed_tokens.weight\)"),
    ("extra layer", r"holds 1 weight\(s\) the model does not use \(model.layers.7.mlp.up_proj.weight\)"),
    ("wrong shape", r"1 weight\(s\) have shapes that do not match config.json \(model.layers.0.mlp.up_proj.weight"),
])
def test_folder_whose_weights_do_not_make_the_model_is_refused(tmp_path, cache, edit, message):
    """A folder's weights must be the model's: transformers would fill what is missing or of the
    wrong shape with random numbers (a 'newly initialized' log line) and attention of random
    weights would be drawn; every such folder is refused, naming the weights."""
    from safetensors.torch import load_file, save_file
    make_folder(tmp_path / "ckpt")
    f = tmp_path / "ckpt" / "model.safetensors"
    w = load_file(str(f))
    if edit == "drop q_proj":
        del w["model.layers.0.self_attn.q_proj.weight"]
    elif edit == "drop layer 1":
        w = {k: v for k, v in w.items() if not k.startswith("model.layers.1.")}
    elif edit == "drop a middle layer":  # layer 1 is still there: the count fits, layer 0's weights are missing
        w = {k: v for k, v in w.items() if not k.startswith("model.layers.0.")}
    elif edit in ("config of 100000 layers", "vocabulary of 5e7", "no attention heads"):
        c = json.loads((tmp_path / "ckpt" / "config.json").read_text())
        c.update({"config of 100000 layers": {"num_hidden_layers": 100000}, "vocabulary of 5e7": {"vocab_size": 50_000_000},
                  "no attention heads": {"num_attention_heads": 0}}[edit])
        (tmp_path / "ckpt" / "config.json").write_text(json.dumps(c))
    elif edit == "drop embeddings":
        del w["model.embed_tokens.weight"]
        w["lm_head.weight"] = torch.zeros(len(WORDS), 32)
    elif edit == "extra layer":
        w["model.layers.7.mlp.up_proj.weight"] = torch.zeros(64, 32)
    elif edit == "wrong shape":
        w["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(w, str(f), metadata={"format": "pt"})
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=message):
        attnscope.load(str(tmp_path / "ckpt"), device="cpu")
    assert time.monotonic() - t0 < 30  # refused before a model of the config's sizes is built
    assert archives(cache) == []  # nothing exported


def test_folder_load_generates_with_the_kv_cache(tmp_path, cache):
    """A Llama-family folder loads through attnscope's own module with the decode method (checked
    against transformers' eager attentions at export like any route): generation takes a token
    per step from the KV cache, and greedy ids equal transformers' generate."""
    hf = make_folder(tmp_path / "ckpt")
    m = attnscope.load(str(tmp_path / "ckpt"), device="cpu", progress=False)
    assert m.has_decode and m.metadata["route"] == "attnscope-module"
    prompt = torch.tensor([[2, 5, 7, 3]])
    t = m.generate(prompt, max_new_tokens=6, stop=[], progress=False)
    assert t.generation["kv_cache"] is True
    with torch.no_grad():
        want = hf.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=1)
    assert t.input_ids.tolist() == want.tolist()
    slow = m.generate(prompt, max_new_tokens=6, stop=[], progress=False, use_cache=False)
    assert slow.input_ids.tolist() == want.tolist() and slow.generation["kv_cache"] is False


def test_folder_of_another_family_generates_with_the_kv_cache(tmp_path, cache):
    """A GPT-2 folder (no own-module route) exports through transformers' route with its own
    cache traced into the archive: a token per step, greedy ids equal transformers' generate."""
    import transformers
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                                              n_positions=64, bos_token_id=1, eos_token_id=2)).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    m = attnscope.load(str(tmp_path / "gpt2"), device="cpu", progress=False)
    assert m.has_decode and m.metadata["route"] == "transformers"
    assert m.metadata["decode"] == "transformers DynamicCache"
    prompt = torch.tensor([[3, 5, 7, 9]])
    t = m.generate(prompt, max_new_tokens=6, stop=[], progress=False)
    assert t.generation["kv_cache"] is True
    with torch.no_grad():
        want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert t.input_ids.tolist() == want.tolist()
