"""Peak RSS of one forward in a fresh process per variant (ru_maxrss): the plain forward of the
archive, Model.run with nothing captured, with every aggregate, with one head's map; under
glibc's default malloc, the same without Model.run's block cache (ATTNSCOPE_BLOCK_CACHE=0), and
with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072, which turns off the
threshold's growth after frees). Asserts nothing.

usage: python bench/bench_memory.py [MODEL.pt] [--lengths 2048 4096] [--threads 2]
       (default model: the default archive)
"""
import argparse
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

VARIANTS = ("plain", "nothing", "every aggregate", "one head's map")


def child(path, variant, t, threads):
    import torch

    import attnscope
    torch.set_num_threads(threads)
    ids = torch.randint(0, 4096, (1, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if variant == "plain":
        m = torch.jit.load(path).eval()
        takes_mask = len(m.forward.schema.arguments) >= 3
        args = (ids, mask) if takes_mask else (ids,)
        with torch.no_grad():
            m(*(a[:, :8] for a in args))  # the same warm-up as attnscope's dry run
            m(*args)
    else:
        m = attnscope.load(path, device="cpu", progress=False)
        n = m.n_layers
        spec = {"nothing": {"top_k": 0},
                "every aggregate": {"received": True, "attn_entropy": True, "sink_tokens": 1, "top_k": 0},
                "one head's map": {"heads": [(max(0, n // 2), 0)], "top_k": 0}}[variant]
        m.run(ids, capture=spec)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.model is None:
        from attnscope.models import default_model_path
        a.model = default_model_path()
    if a.child:
        return child(a.model, a.child[0], int(a.child[1]), a.threads)
    print(f"model {a.model}, {a.threads} threads; peak RSS MiB of one forward, fresh process each")
    print("| T | malloc | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for t in a.lengths:
        for label, extra in (("glibc default", {}),
                             ("glibc default, ATTNSCOPE_BLOCK_CACHE=0", {"ATTNSCOPE_BLOCK_CACHE": "0"}),
                             ("MALLOC_MMAP_THRESHOLD_=131072", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
            env = dict(os.environ, **extra)
            peaks = []
            for v in VARIANTS:
                out = subprocess.run([sys.executable, __file__, a.model, "--threads", str(a.threads), "--child", v, str(t)],
                                     env=env, capture_output=True, text=True, check=True)
                peaks.append(int(out.stdout.strip().splitlines()[-1]))
            cells = [f"{peaks[0]}"] + [f"{p} (**{p / peaks[0]:.3f}x**)" for p in peaks[1:]]
            print(f"| {t} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
