"""The default model's plain forward against transformers' SDPA forward on the same weights
(the SmolLM2 GGUF, fp32, CPU, batch 1, no padding): minima of interleaved repetitions in one run,
and the largest logit difference. Prints the archive path, so bench_capture can take the same
archive. Asserts nothing.

usage: python bench/bench_forward.py [T ...] [--repeat 4] [--threads 2]   (default T = 512 2048 4096)
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import torch  # noqa: E402

from attnscope.models import default_gguf  # noqa: E402
from attnscope.models import default_model_path  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lengths", nargs="*", type=int, default=[512, 2048, 4096])
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers
    d, f = os.path.split(default_gguf())
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                            attn_implementation="sdpa").eval()
    path = default_model_path()
    archive = torch.jit.load(path).eval()
    print(f"archive {path}\ntorch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| T | transformers SDPA forward | attnscope archive, plain forward | ratio | max abs logit diff |")
    print("|---|---|---|---|---|")
    for t in a.lengths:
        ids = torch.randint(0, ref.config.vocab_size, (1, t), generator=torch.Generator().manual_seed(t))
        mask = torch.ones_like(ids)
        fns = {"hf": lambda: ref(input_ids=ids, attention_mask=mask).logits, "ours": lambda: archive(ids, mask)}
        best = {k: float("inf") for k in fns}
        with torch.no_grad():
            diff = (fns["hf"]() - fns["ours"]()).abs().max().item()
            for _ in range(a.repeat):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    best[k] = min(best[k], time.perf_counter() - t0)
        print(f"| {t} | {best['hf'] * 1e3:.0f} ms | {best['ours'] * 1e3:.0f} ms | "
              f"**{best['ours'] / best['hf']:.3f}x** | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
