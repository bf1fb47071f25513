"""Branch benchmark: turning_points on the default model's answer with the answer's KV cache
reused for every branch's shared prefix, against regenerating each branch from its whole prompt
(the same tokens). Prints times measured in this run (best of --repeat, interleaved) and how
much of a branch is its own new tokens; asserts nothing.

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
    best = {True: float("inf"), False: float("inf")}
    for _ in range(a.repeat):
        for reuse in (True, False):
            t0 = time.perf_counter()
            tp = attnscope.turning_points(answer, reuse_prefix=reuse, **kw)
            best[reuse] = min(best[reuse], time.perf_counter() - t0)
    n = len(tp.branches)
    forks = [t.fork["position"] for t in tp.branches.forks]
    print(f"default model, CPU, {a.threads} threads: {n} branches (k={a.k} x {a.alternatives}) of {a.new_tokens} new "
          f"tokens from an answer of {answer.input_ids.shape[1]} tokens (forks at {min(forks)}..{max(forks)})")
    print("| branches | time | per branch |")
    print("|---|---|---|")
    for reuse, label in ((False, "regenerated from the whole prompt"), (True, "from the answer's KV cache")):
        print(f"| {label} | {best[reuse]:.2f} s | {best[reuse] / n:.2f} s |")
    print(f"reuse: {best[False] / best[True]:.2f}x faster (each branch still pays its capture run over the "
          "whole sequence)")


if __name__ == "__main__":
    main()
