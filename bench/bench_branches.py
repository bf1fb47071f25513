"""Branch benchmark: turning_points on the default model's answer (the answer's KV cache reused
for every branch's shared prefix, branches captured only when read) against regenerating each
branch from its whole prompt, with and without its capture pass, and against the branches' new
tokens alone (their decode steps from a 1-token prompt). Prints times measured in this run (best
of --repeat, interleaved); asserts nothing.

usage: python bench/bench_branches.py [--answer-tokens 160] [--k 3] [--alternatives 2] [--new-tokens 32]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import torch  # noqa: E402

import attnscope  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--answer-tokens", type=int, default=160)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--alternatives", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = attnscope.load(device="cpu", progress=False)
    answer = model.generate("Is 3599 a prime number? Think step by step.", chat=True,
                            max_new_tokens=a.answer_tokens, stop=[], progress=False)
    kw = dict(k=a.k, alternatives=a.alternatives, max_new_tokens=a.new_tokens, progress=False)
    tp = attnscope.turning_points(answer, **kw)
    forks = [(t.fork["position"], t.fork["rank"]) for t in tp.branches.forks]
    n = len(forks)

    def eager():  # each branch regenerated from its whole prompt and captured: the old way
        for p, r in forks:
            answer.branch(p, rank=r, max_new_tokens=a.new_tokens)

    def new_tokens_only():  # the branches' decode steps alone: a 1-token prompt, no capture pass
        for _ in forks:
            model.generate(answer.input_ids[:, :1], max_new_tokens=a.new_tokens, stop=[], progress=False,
                           _capture=False)
    runs = {
        "regenerated from the whole prompt and captured (branch() per row)": eager,
        "regenerated from the whole prompt (reuse_prefix=False)":
            lambda: attnscope.turning_points(answer, reuse_prefix=False, **kw),
        "from the answer's KV cache (default)": lambda: attnscope.turning_points(answer, **kw),
        "the same new tokens alone (decode steps, nothing else)": new_tokens_only,
    }
    best = {name: float("inf") for name in runs}
    for _ in range(a.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    pos = [p for p, _ in forks]
    print(f"default model, CPU, {a.threads} threads: {n} branches (k={a.k} x {a.alternatives}) of {a.new_tokens} new "
          f"tokens from an answer of {answer.input_ids.shape[1]} tokens (forks at {min(pos)}..{max(pos)})")
    print("| branches | time | per branch | / new tokens alone |")
    print("|---|---|---|---|")
    alone = best["the same new tokens alone (decode steps, nothing else)"]
    for name, t in best.items():
        print(f"| {name} | {t:.2f} s | {t / n:.2f} s | {t / alone:.2f}x |")


if __name__ == "__main__":
    main()
