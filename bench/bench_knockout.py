"""Does-the-attention-matter benchmark on the default model (CPU): the key sweep at the last
position (every earlier key removed alone, one batched decode step over the cached prefix)
against a plain forward of the same T tokens; the rollout and value-weighted captures against
every aggregate alone; the head sweep (all L x H heads zero-ablated, batched forwards) against the same number
of plain one-row forwards. Prints times measured in this run and their ratios; asserts nothing.

usage: python bench/bench_knockout.py [--lengths 512 2048] [--head-tokens 150] [--threads 2]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import torch  # noqa: E402

import attnscope  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--head-tokens", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = attnscope.load(device="cpu", progress=False)
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read() * 4
    ids = torch.tensor(model.encode(text))
    print(f"model {model.model_name}: {model.n_layers} layers x {model.n_heads} heads; "
          f"decode intervenes: {model.decode_intervenes}; {a.threads} threads")
    for T in a.lengths:
        row = ids[None, :T]
        trace = model.run(row, capture={})
        model.logits(row)  # warm
        fwd, _ = timed(lambda: model.logits(row))
        sweep_s, sweep = timed(lambda: attnscope.knockout_sweep(trace, T - 1, progress=False))
        print(f"key sweep at position {T - 1} ({len(sweep.keys)} keys): {sweep_s:.2f} s; plain forward of {T} "
              f"tokens {fwd:.2f} s; ratio {sweep_s / fwd:.1f}x ({sweep.method})")
        agg, _ = timed(lambda: model.run(row, capture="all"))
        roll, _ = timed(lambda: model.run(row, capture={**{f: True for f in ("received", "attn_entropy", "row_stats")},
                                                       "sink_tokens": 1, "rollout": True}))
        print(f"  rollout with every aggregate at {T} tokens: {roll:.2f} s; every aggregate alone {agg:.2f} s; "
              f"ratio {roll / agg:.2f}x")
        vw, _ = timed(lambda: model.run(row, capture={**{f: True for f in ("received", "attn_entropy", "row_stats")},
                                                     "sink_tokens": 1, "value_weighted": True}))
        print(f"  value-weighted aggregates with every aggregate at {T} tokens: {vw:.2f} s; every aggregate alone "
              f"{agg:.2f} s; ratio {vw / agg:.2f}x")
    row = ids[None, :a.head_tokens]
    trace = model.run(row, capture={})
    n = model.n_layers * model.n_heads
    model.logits(row)
    plain, _ = timed(lambda: [model.logits(row) for _ in range(n)])
    swept, eff = timed(lambda: attnscope.head_effects(trace, position=-1, progress=False))
    print(f"head sweep at {a.head_tokens} tokens ({n} heads, zero ablation): {swept:.2f} s; {n} plain forwards "
          f"{plain:.2f} s; ratio {swept / plain:.2f}x")


if __name__ == "__main__":
    main()
