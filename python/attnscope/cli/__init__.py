"""attnscope command line: `attnscope demo | generate | branch | plot | run | dataset | export` (also
`python -m attnscope`). One module per family of subcommands: answer.py (demo, generate, plot,
run), branch.py, dataset.py, export.py; common.py holds what they share."""
import argparse
import os
import sys

from . import answer, branch, dataset, export
from .answer import DEMO_HEADS, DEMO_LAYERS, DEMO_PATTERN_HEADS, DEMO_PROMPT, DEMO_QUESTION, entropy_table  # noqa: F401
from .common import save_figure  # noqa: F401


def _int_in(lo, hi):
    """An argparse type: an int in lo..hi, else a message naming the value and the range."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} out of range: expected {lo}..{hi}")
        return v
    return parse


def main(argv=None):
    p = argparse.ArgumentParser(prog="attnscope", description="Attention capture and figures for language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="TorchScript archive, Hugging Face checkpoint folder or GGUF file (exported once into the cache; default: SmolLM2-135M-Instruct)")
    common.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    common.add_argument("--dpi", type=_int_in(10, 1200), default=150, help="figure resolution (10..1200)")
    d = sub.add_parser("demo", parents=[common], help="the three figures + high-entropy table on a built-in prompt")
    d.add_argument("--out", default="out", help="output folder (default: out)")
    d.add_argument("--text", help="capture this text instead of letting the model answer the built-in question")
    d.add_argument("--view", action="store_true", help="also write the interactive view (view.html)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar while generating")
    d.set_defaults(fn=answer.demo)
    gen = argparse.ArgumentParser(add_help=False)  # how the model answers: generate and branch
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", help="system message (with --chat)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = sub.add_parser("generate", parents=[common, gen], help="let the model answer, then the three figures, "
                       "the trace and its most uncertain tokens with their alternatives")
    g.add_argument("--layers-heads", help="LAYER:HEAD,... for the heads and patterns figures")
    g.add_argument("--layers", help="LAYER,... for the layers grid")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--view", action="store_true", help="also write the interactive view (view.html)")
    g.set_defaults(fn=answer.generate)
    b = sub.add_parser("branch", parents=[common, gen], help="let the model answer, then take other tokens where "
                       "it hesitated: which turning points change the final answer")
    b.add_argument("--k", type=int, default=5, help="turning points: the k most uncertain positions")
    b.add_argument("--alternatives", type=int, default=3, help="other tokens tried at each")
    b.add_argument("--branch-tokens", type=int, help="tokens per branch (default: the answer's remaining budget)")
    b.add_argument("--answer-regex", help="what counts as the final answer: the regex's last match "
                   "(group 1 if any); default the last number")
    b.add_argument("--out", required=True, help="output folder")
    b.set_defaults(fn=branch.branch)
    q = sub.add_parser("plot", parents=[common], help="one figure for a text")
    q.add_argument("--text", required=True)
    q.add_argument("--kind", choices=("heads", "patterns", "layers", "entropy"), required=True)
    q.add_argument("--layers-heads", help="LAYER:HEAD,... for heads/patterns (default 0:0)")
    q.add_argument("--layers", help="LAYER,... for layers (default 0)")
    q.add_argument("--head", type=int, help="one head instead of the head mean (layers)")
    q.add_argument("--pattern", default="mean", help="mean | max | specific_token (patterns)")
    q.add_argument("--token-idx", type=int, help="query position for specific_token")
    q.add_argument("--entropy-threshold", type=float, help="mark entropies above this many nats "
                   "(default: the --entropy-quantile of the sequence)")
    q.add_argument("--entropy-quantile", type=float, default=0.8)
    q.add_argument("--max-marks", type=int, default=8, help="at most this many marks (the highest)")
    q.add_argument("--no-entropy", action="store_true", help="no high-entropy marks")
    q.add_argument("--out", required=True, help="figure file (.png, .svg, .pdf)")
    q.set_defaults(fn=answer.plot)
    r = sub.add_parser("run", parents=[common], help="run with capture, save the trace")
    r.add_argument("--text", required=True)
    r.add_argument("--layers-heads", help="LAYER:HEAD,... full maps to keep")
    r.add_argument("--layer-maps", help="LAYER,... head-mean maps to keep")
    r.add_argument("--save", required=True, help="trace file (safetensors)")
    r.set_defaults(fn=answer.run)
    e = sub.add_parser("export", parents=[common], help="Hugging Face folder or GGUF -> TorchScript archive with capture ops")
    e.add_argument("--hf", required=True, help="checkpoint folder (config.json + weights) or .gguf file")
    e.add_argument("--out", required=True, help="archive to write (.pt)")
    e.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    e.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    e.add_argument("--no-verify", action="store_true", help="skip the check against eager attentions")
    e.set_defaults(fn=export.export)
    s = sub.add_parser("dataset", parents=[common], help="attention statistics over many texts "
                       "(runs data-parallel under torchrun)")
    s.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl (\"text\" field)")
    s.add_argument("--length", type=int, default=16, help="tokens per sequence (0: whole texts, padded)")
    s.add_argument("--num", "--num-sequences", type=int, default=256, dest="num",
                   help="sequences (0: every text); spell it --num-sequences after torchrun, whose "
                        "parser takes --num for its --numa-binding")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--epsilon", type=float, default=0.3, help="Sink threshold on alpha_1")
    s.add_argument("--skip-short", action="store_true", help="drop texts shorter than --length")
    s.add_argument("--bos", action="store_true", help="prepend the model's BOS token")
    s.add_argument("--head-maps", action="store_true", help="also average every head's map")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--nproc", type=_int_in(1, 1024), default=1, help="data-parallel processes (torch.distributed; "
                   "or launch with torchrun)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(fn=dataset.dataset)
    args = p.parse_args(argv)
    if getattr(args, "system", None) is not None and not getattr(args, "chat", False):
        p.error("--system needs --chat: the system message goes into the model's chat template")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    import matplotlib
    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # files only; never a window
    try:
        args.fn(args)
    except (ValueError, RuntimeError, OSError) as e:  # OSError: missing files, full disk, permissions
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"attnscope {args.cmd}: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
