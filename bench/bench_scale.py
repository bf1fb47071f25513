"""Real sizes (issue 35): for Llama-shaped checkpoints of 135M and 1.1B parameters in bf16 (random
weights made by this script, saved as safetensors), each step in a fresh process — attnscope's
first load (export + check into an empty cache), a cached load, a 2048-token run with every
aggregate, and transformers' from_pretrained + SDPA forward of the same tokens — with its wall
time and peak resident memory (ru_maxrss), as ratios to the checkpoint's bytes and to
transformers, plus the disk the cache holds. Asserts nothing: it measures where things stand.

usage: python bench/bench_scale.py [--shapes 135m 1b] [--tokens 2048] [--threads 2] [--dtype float32]
                                   [--keep DIR]
(--dtype: attnscope.load's dtype=; default the checkpoint's own, bfloat16)
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

# Llama shapes: SmolLM2-135M and TinyLlama-1.1B (2.2 GB in bf16)
SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
}
STEPS = ("first load", "cached load", "run (every aggregate)", "transformers load + forward")


def make(folder, shape):
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(max_position_embeddings=4096, rope_theta=10000.0, **SHAPES[shape])
    with torch.device("cpu"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def child(step, folder, tokens, threads, dtype=None):
    """One step in this process; prints {"s": seconds} (the parent reads ru_maxrss)."""
    import torch
    torch.set_num_threads(threads)
    ids = torch.randint(3, 30000, (1, tokens), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    if step == "transformers load + forward":
        import transformers
        m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                              attn_implementation="sdpa").eval()
        with torch.no_grad():
            m(input_ids=ids)
    else:
        import attnscope
        m = attnscope.load(folder, device="cpu", progress=False, dtype=dtype)
        if step == "run (every aggregate)":
            t0 = time.perf_counter()  # the run alone (its process also loaded the cached model)
            m.run(ids)
    print(json.dumps({"s": time.perf_counter() - t0}))


def measure(step, folder, tokens, threads, env):
    """The step in a child of this (fresh) process: ru_maxrss of the children is then its own."""
    r = subprocess.run([sys.executable, __file__, "--child", step, folder, str(tokens), str(threads)],
                       capture_output=True, text=True, env=env)  # dtype: ATTNSCOPE_BENCH_DTYPE
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:160]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB -> GiB
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="keep the checkpoints and caches in this folder")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="attnscope.load(dtype=...)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, folder, tokens, threads = args.child
        return child(step, folder, int(tokens), int(threads), os.environ.get("ATTNSCOPE_BENCH_DTYPE") or None)
    if args.one:  # a fresh parent per step, so ru_maxrss is that step's own
        step, folder, tokens, threads = args.one
        print(json.dumps(measure(step, folder, int(tokens), int(threads), os.environ.copy())))
        return
    work = args.keep or tempfile.mkdtemp(prefix="attnscope-scale-")
    print(f"{args.tokens} tokens, {args.threads} threads, bf16 checkpoints in {work}; attnscope in "
          f"{args.dtype or 'the checkpoint dtype'}\n")
    print(f"{'shape':>5} {'step':<30} {'time s':>8} {'peak GB':>8} {'x ckpt':>7} {'x transformers':>15}")
    for shape in args.shapes:
        folder, cache = os.path.join(work, shape), os.path.join(work, f"{shape}-cache")
        shutil.rmtree(cache, ignore_errors=True)
        ckpt = make(folder, shape) if not os.path.isdir(folder) else sum(
            os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
        env = {**os.environ, "ATTNSCOPE_CACHE": cache, "ATTNSCOPE_BENCH_DTYPE": args.dtype or ""}
        res = {}
        for step in STEPS:
            r = subprocess.run([sys.executable, __file__, "--one", step, folder, str(args.tokens), str(args.threads)],
                               capture_output=True, text=True, env=env)
            res[step] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-160:]}
        ref = res[STEPS[-1]]
        for step in STEPS:
            x = res[step]
            if "error" in x:
                print(f"{shape:>5} {step:<30} failed: {x['error']}")
                continue
            gb = x["peak_gb"]
            vs = (f"{x['s'] / ref['s']:.2f}x time, {gb / ref['peak_gb']:.2f}x mem"
                  if "error" not in ref and gb and ref.get("peak_gb") else "")
            print(f"{shape:>5} {step:<30} {x['s']:>8.1f} {gb:>8.2f} {gb * 2 ** 30 / ckpt:>7.2f} {vs:>15}")
        disk = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(cache) for f in fs)
        print(f"{shape:>5} checkpoint {ckpt / 2 ** 30:.2f} GB; cache on disk {disk / 2 ** 30:.2f} GB "
              f"({disk / ckpt:.2f}x the checkpoint)\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
