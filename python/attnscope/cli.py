"""attnscope command line: `attnscope demo | plot | run` (also `python -m attnscope`)."""
import argparse
import os
import sys

DEMO_PROMPT = ("<|im_start|>user\nWhy do large language models put so much attention on the first "
               "token of a sentence?<|im_end|>\n<|im_start|>assistant\nThe first token acts as")
# The seed's examples were written for a 28-layer, 28-head model; these are the equivalents
# for the default model's 30 layers x 9 heads.
DEMO_HEADS = [(0, 0), (14, 0), (29, 8)]
DEMO_PATTERN_HEADS = [(0, 0), (14, 0), (29, 0)]
DEMO_LAYERS = [0, 1, 2, 9, 14, 18, 23, 29]


def _pairs(text):
    try:
        return [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p]
    except ValueError:
        raise SystemExit(f"attnscope: {text!r} is not a list of LAYER:HEAD pairs (e.g. 0:0,14:2)")


def _ints(text):
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise SystemExit(f"attnscope: {text!r} is not a comma-separated list of integers")


def entropy_table(trace, model=None, k=10, batch=0):
    """Markdown table of the k highest-entropy positions: position, token, next token, nats."""
    ent = trace.entropy[batch]
    labels = trace.labels[batch]
    order = ent.nan_to_num(-1).argsort(descending=True)[:k].tolist()
    rows = ["| position | token | next token | entropy (nats) |", "|---|---|---|---|"]
    for p in order:
        nxt = labels[p + 1] if p + 1 < len(labels) else "(beyond input)"
        rows.append(f"| {p} | {labels[p]} | {nxt} | {ent[p]:.3f} |")
    return "\n".join(rows)


def demo(args):
    import attnscope
    model = attnscope.load(args.model, device=args.device)
    heads = DEMO_HEADS if args.model is None else [(0, 0), (model.n_layers // 2, 0), (model.n_layers - 1, model.n_heads - 1)]
    pheads = DEMO_PATTERN_HEADS if args.model is None else [(l, 0) for l, _ in heads]
    layers = DEMO_LAYERS if args.model is None else sorted({0, 1, 2, model.n_layers // 2, model.n_layers - 1})
    trace = model.run(args.text or DEMO_PROMPT, capture={
        "heads": heads, "layer_maps": layers, "received": True, "attn_entropy": True,
        "sink_tokens": 1, "from_tokens": [-1]})
    os.makedirs(args.out, exist_ok=True)
    figs = {
        "attention_heads.png": attnscope.visualize_attention(trace, heads),
        "attention_patterns.png": attnscope.visualize_attention_patterns(trace, pheads, "mean"),
        "attention_layers.png": attnscope.visualize_attention_layers(trace, layers),
    }
    for name, fig in figs.items():
        fig.savefig(os.path.join(args.out, name), dpi=args.dpi)
    trace.save(os.path.join(args.out, "trace.safetensors"))
    table = entropy_table(trace)
    with open(os.path.join(args.out, "high_entropy_tokens.md"), "w") as f:
        f.write(table + "\n")
    print(f"{trace.input_ids.shape[1]} tokens, {trace.n_layers} layers x {trace.n_heads} heads")
    print("highest predictive entropy (entropy at i is that of the distribution predicting token i+1):")
    print(table)
    print("wrote " + ", ".join(sorted(figs)) + ", trace.safetensors, high_entropy_tokens.md to " + args.out)


def plot(args):
    import attnscope
    model = attnscope.load(args.model, device=args.device)
    opts = dict(entropy_threshold=False if args.no_entropy else args.entropy_threshold,
                entropy_quantile=args.entropy_quantile)
    if args.kind == "heads":
        pairs = _pairs(args.layers_heads or "0:0")
        trace = model.run(args.text, capture={"heads": pairs})
        fig = attnscope.visualize_attention(trace, pairs, **opts)
    elif args.kind == "patterns":
        pairs = _pairs(args.layers_heads or "0:0")
        cap = {"received": True, "heads": pairs}
        trace = model.run(args.text, capture=cap)
        fig = attnscope.visualize_attention_patterns(trace, pairs, args.pattern, args.token_idx, **opts)
    else:
        layers = _ints(args.layers or "0")
        cap = {"layer_maps": layers} if args.head is None else {"heads": [(l, args.head) for l in layers]}
        trace = model.run(args.text, capture=cap)
        fig = attnscope.visualize_attention_layers(trace, layers, head_idx=args.head, **opts)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


def run(args):
    import attnscope
    model = attnscope.load(args.model, device=args.device)
    cap = {"received": True, "attn_entropy": True, "sink_tokens": 1}
    if args.layers_heads:
        cap["heads"] = _pairs(args.layers_heads)
    if args.layer_maps:
        cap["layer_maps"] = _ints(args.layer_maps)
    trace = model.run(args.text, capture=cap)
    trace.save(args.save)
    print(f"wrote {args.save}: {sorted(trace.captures)}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="attnscope", description="Attention capture and figures for language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="TorchScript archive (default: SmolLM2-135M-Instruct)")
    common.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    common.add_argument("--dpi", type=int, default=150)
    d = sub.add_parser("demo", parents=[common], help="the three figures + high-entropy table on a built-in prompt")
    d.add_argument("--out", default="out", help="output folder (default: out)")
    d.add_argument("--text", help="prompt instead of the built-in one")
    d.set_defaults(fn=demo)
    q = sub.add_parser("plot", parents=[common], help="one figure for a text")
    q.add_argument("--text", required=True)
    q.add_argument("--kind", choices=("heads", "patterns", "layers"), required=True)
    q.add_argument("--layers-heads", help="LAYER:HEAD,... for heads/patterns (default 0:0)")
    q.add_argument("--layers", help="LAYER,... for layers (default 0)")
    q.add_argument("--head", type=int, help="one head instead of the head mean (layers)")
    q.add_argument("--pattern", default="mean", help="mean | max | specific_token (patterns)")
    q.add_argument("--token-idx", type=int, help="query position for specific_token")
    q.add_argument("--entropy-threshold", type=float, default=0.672)
    q.add_argument("--entropy-quantile", type=float)
    q.add_argument("--no-entropy", action="store_true", help="no high-entropy marks")
    q.add_argument("--out", required=True, help="figure file (.png, .svg, .pdf)")
    q.set_defaults(fn=plot)
    r = sub.add_parser("run", parents=[common], help="run with capture, save the trace")
    r.add_argument("--text", required=True)
    r.add_argument("--layers-heads", help="LAYER:HEAD,... full maps to keep")
    r.add_argument("--layer-maps", help="LAYER,... head-mean maps to keep")
    r.add_argument("--save", required=True, help="trace file (safetensors)")
    r.set_defaults(fn=run)
    args = p.parse_args(argv)
    import matplotlib
    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # files only; never a window
    try:
        args.fn(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"attnscope {args.cmd}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
