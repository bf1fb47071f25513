"""Writes the benchmark models: d=512, 8 layers, 8 heads, vocab 4096, traced at T=512.

usage: python make_bench_model.py OUTDIR
bench_eager.pt: HF-eager style attention (softmax materialised -> attnscope::capture)
bench_sdpa.pt:  F.scaled_dot_product_attention(is_causal=True) (-> attnscope::capture_sdpa)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
import toy_models as tm  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
ids = torch.randint(0, 4096, (1, 512))
for name, style in (("bench_eager", "hf_eager"), ("bench_sdpa", "sdpa_causal")):
    torch.manual_seed(0)
    lm = tm.ToyLM(style, vocab=4096, d=512, n_layers=8, n_heads=8).eval()
    traced = torch.jit.trace(tm.IdsOnly(lm), (ids,), check_trace=False)
    torch.jit.save(traced, os.path.join(out, name + ".pt"))
print("bench models written to", out)
