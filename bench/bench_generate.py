"""Generation benchmark: tokens/s of attnscope's Model.generate on the default model against
transformers' generate on the same GGUF weights (greedy, a 64-token prompt, 256 new tokens, CPU,
no stop token), both with their KV cache, for each load route: the GGUF file, and the same
weights saved as a Hugging Face folder (transformers' save_pretrained) and loaded from it, and
the same model exported through transformers' route (export_hf: the model's own attention code
and its traced DynamicCache — the route every other family's folder takes); plus
attnscope without its cache (a full forward per step) and the one capture run that follows. Prints numbers measured in this run (best of
--repeat, interleaved); asserts nothing.

usage: python bench/bench_generate.py [--prompt-tokens 64] [--new-tokens 256] [--repeat 3] [--threads 2]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import torch  # noqa: E402

import attnscope  # noqa: E402
from attnscope.models import default_gguf  # noqa: E402

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based inks and a wooden press adapted from wine making. "
        "Within fifty years presses were working in more than two hundred cities across Europe, and "
        "the number of books in circulation grew from thousands to millions.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers
    d, f = os.path.split(default_gguf())
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    model = attnscope.load(device="cpu")
    import tempfile
    tmp = tempfile.mkdtemp(prefix="attnscope-bench-")
    os.environ["ATTNSCOPE_CACHE"] = os.path.join(tmp, "cache")  # the folder's export stays out of the real cache
    cfg = ref.config.to_dict()
    cfg.pop("quantization_config", None)  # transformers will not save a GGUF-loaded model: a plain copy
    plain = type(ref)(type(ref.config).from_dict(cfg)).eval()
    plain.load_state_dict(ref.state_dict())
    plain.save_pretrained(os.path.join(tmp, "folder"))
    tok.save_pretrained(os.path.join(tmp, "folder"))
    folder = attnscope.load(os.path.join(tmp, "folder"), device="cpu", progress=False)
    attnscope.export_hf(plain, None, os.path.join(tmp, "hf.pt"))  # transformers route, traced cache
    hf = attnscope.load(os.path.join(tmp, "hf.pt"), device="cpu")
    assert hf.has_decode
    ids = torch.tensor([tok(TEXT * 4, add_special_tokens=False)["input_ids"][: a.prompt_tokens]])
    assert ids.shape[1] == a.prompt_tokens
    n = a.new_tokens

    def ours(cache, m=model):
        t0 = time.perf_counter()
        t = m._core.generate(ids, _opts(n, cache), attnscope.capture_spec({"top_k": 0}), None)
        return time.perf_counter() - t0, t.input_ids[0, a.prompt_tokens:]

    def theirs():
        t0 = time.perf_counter()
        with torch.no_grad():
            out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=2)
        return time.perf_counter() - t0, out[0, a.prompt_tokens:]

    def capture_only(seq):
        t0 = time.perf_counter()
        model._core.run(seq, attnscope.capture_spec("all"), None)
        return time.perf_counter() - t0

    ours(True), ours(True, folder), ours(True, hf), theirs()  # warm-up (TorchScript profiling runs, allocator)
    gguf_row, folder_row = "attnscope, GGUF load (KV cache)", f"attnscope, folder load (KV cache; route {folder.metadata['route']})"
    hf_row = "attnscope, export_hf transformers route (traced transformers cache)"
    best = {gguf_row: 1e9, folder_row: 1e9, hf_row: 1e9, "transformers (KV cache)": 1e9, "attnscope (no cache)": 1e9}
    same = None
    for _ in range(a.repeat):
        t_o, tok_o = ours(True)
        t_f, tok_f = ours(True, folder)
        t_h, tok_h = ours(True, hf)
        t_t, tok_t = theirs()
        best[gguf_row] = min(best[gguf_row], t_o)
        best[folder_row] = min(best[folder_row], t_f)
        best[hf_row] = min(best[hf_row], t_h)
        best["transformers (KV cache)"] = min(best["transformers (KV cache)"], t_t)
        same = torch.equal(tok_o, tok_t) and torch.equal(tok_f, tok_t) and torch.equal(tok_h, tok_t)
    best["attnscope (no cache)"] = ours(False)[0]
    seq = torch.cat([ids, tok_o[None]], 1)
    cap = min(capture_only(seq) for _ in range(2))
    print(f"default model (SmolLM2-135M-Instruct), CPU, {a.threads} threads, greedy, prompt {a.prompt_tokens} "
          f"tokens, {n} new tokens, best of {a.repeat}; torch {torch.__version__}, transformers {transformers.__version__}")
    print("| generator | time | tokens/s | vs transformers |")
    print("|---|---|---|---|")
    base = n / best["transformers (KV cache)"]
    for k, v in best.items():
        print(f"| {k} | {v:.2f} s | {n / v:.1f} | {n / v / base:.2f}x |")
    print(f"the capture run over the {seq.shape[1]} tokens afterwards (every aggregate): {cap:.2f} s")
    print(f"greedy tokens identical to transformers' (all three routes): {same}")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


def _opts(n, cache):
    o = attnscope._core.GenerateOptions()
    o.max_new_tokens, o.stop_ids, o.use_cache = n, [-1], cache
    return o


if __name__ == "__main__":
    main()
