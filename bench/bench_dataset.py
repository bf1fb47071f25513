"""Dataset aggregation benchmark: sequences/s with 1 vs 2 processes (torch.distributed, gloo on
CPU), and peak memory as the dataset grows 10x. Prints numbers measured in this run; asserts
nothing.

usage: python bench/bench_dataset.py [--model ARCHIVE] [--num 256] [--length 16]
Needs the corpus of Debian's fortunes-min (apt-get install fortunes-min) for the text runs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), MPLBACKEND="Agg")
CORPUS = "/usr/share/games/fortunes"


def corpus(path):
    texts = []
    for name in ("fortunes", "literature", "riddles"):
        with open(os.path.join(CORPUS, name), encoding="utf-8", errors="replace") as f:
            texts += [" ".join(q.split()) for q in f.read().split("\n%\n") if q.strip()]
    with open(path, "w") as f:
        f.write("\n".join(texts) + "\n")


def throughput(args, texts, nproc, threads, tmp):
    out = os.path.join(tmp, f"p{nproc}")
    cmd = [sys.executable, "-m", "attnscope", "dataset", "--device", "cpu", "--input", texts,
           "--length", str(args.length), "--num", str(args.num), "--skip-short", "--no-progress",
           "--nproc", str(nproc), "--dpi", "40", "--out", out]
    if args.model:
        cmd += ["--model", args.model]
    subprocess.run(cmd, env=dict(ENV, OMP_NUM_THREADS=str(threads)), check=True, capture_output=True)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    return s["n_sequences"] / s["elapsed_s"]


def peak_rss(args, num):
    """Peak RSS (MiB) of a fresh process that aggregates `num` random sequences."""
    code = ("import sys, torch, attnscope\n"
            "m = attnscope.load(sys.argv[1] if sys.argv[1] != '-' else None, device='cpu')\n"
            "ids = torch.randint(1, m.vocab_size, (int(sys.argv[2]), int(sys.argv[3])),"
            " generator=torch.Generator().manual_seed(0))\n"
            "attnscope.aggregate_dataset(m, ids, length=int(sys.argv[3]), num=None, progress=False)\n")
    p = subprocess.Popen([sys.executable, "-c", code, args.model or "-", str(num), str(args.length)], env=ENV)
    _, status, usage = os.wait4(p.pid, 0)
    if status:
        raise SystemExit(f"memory run with {num} sequences failed (status {status})")
    return usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="TorchScript archive (default: the default model)")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--length", type=int, default=16)
    args = ap.parse_args()
    cores = os.cpu_count()
    print(f"# attnscope dataset benchmark: {args.num} sequences x {args.length} tokens, {cores} cores")
    with tempfile.TemporaryDirectory() as tmp:
        texts = os.path.join(tmp, "texts.txt")
        corpus(texts)
        one = throughput(args, texts, 1, cores, tmp)
        two = throughput(args, texts, 2, max(1, cores // 2), tmp)
    print(f"1 process  x {cores} threads: {one:7.1f} sequences/s")
    print(f"2 processes x {max(1, cores // 2)} threads: {two:7.1f} sequences/s  ({two / one:.2f}x)")
    small, big = peak_rss(args, args.num), peak_rss(args, 10 * args.num)
    print(f"peak RSS, {args.num} sequences: {small:.0f} MiB; {10 * args.num} sequences: {big:.0f} MiB "
          f"({big / small:.3f}x)")


if __name__ == "__main__":
    main()
