"""attnscope command line: `attnscope demo | generate | plot | run | dataset | export` (also `python -m attnscope`)."""
import argparse
import os
import sys

DEMO_QUESTION = "Is 3599 a prime number? Think step by step."
# Text of the model card's layers figure (tools/model_card.py).
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
    """Markdown table of the k highest-entropy positions (of a generated trace: in the response):
    position, token, the token that followed, entropy (nats) and the top-5 alternatives with
    their probabilities (the distribution at i predicts token i+1)."""
    import numpy as np
    ent = trace.entropy[batch].double().numpy()
    labels = trace.labels[batch]
    T = len(labels)
    ok = np.isfinite(ent) & trace.attention_mask[batch].bool().numpy()
    if trace.is_generated:
        ok[: max(trace.prompt_len - 1, 0)] = False
        ok[T - 1:] = False
    order = [int(p) for p in np.argsort(-np.where(ok, ent, -np.inf), kind="stable")[:k] if ok[p]]
    rows = ["| position | token | next token | entropy (nats) | top-5 alternatives |", "|---|---|---|---|---|"]
    label = (lambda i: model.label(i)) if model is not None and model.tokenizer is not None else (lambda i: f"<{i}>")
    has_topk = trace.topk_ids is not None and trace.topk_ids.numel() > 0
    for p in order:
        nxt = labels[p + 1] if p + 1 < T else "(beyond input)"
        alts = ""
        if has_topk:
            alts = ", ".join(f"{label(int(i))} {float(q):.2f}" for i, q in
                             zip(trace.topk_ids[batch, p].tolist(), trace.topk_probs[batch, p].tolist()))
        rows.append(f"| {p} | {labels[p]} | {nxt} | {ent[p]:.3f} | {alts} |".replace("|  |", "| |"))
    return "\n".join(rows)


def _write_figures(trace, model, out, dpi, heads, pheads, layers, opts=None):
    import attnscope
    opts = opts or {}
    os.makedirs(out, exist_ok=True)
    figs = {
        "attention_heads.png": attnscope.visualize_attention(trace, heads, **opts),
        "attention_patterns.png": attnscope.visualize_attention_patterns(trace, pheads, "mean", **opts),
        "attention_layers.png": attnscope.visualize_attention_layers(trace, layers, **opts),
    }
    for name, fig in figs.items():
        save_figure(fig, os.path.join(out, name), dpi)
    trace.save(os.path.join(out, "trace.safetensors"))
    table = entropy_table(trace, model)
    with open(os.path.join(out, "high_entropy_tokens.md"), "w") as f:
        f.write(table + "\n")
    written = sorted(figs) + ["trace.safetensors", "high_entropy_tokens.md"]
    if trace.is_generated:
        with open(os.path.join(out, "response.txt"), "w") as f:
            f.write(trace.response if isinstance(trace.response, str) else "\n---\n".join(trace.response))
        written.append("response.txt")
    return table, written


def _picks(model, default_model):
    if default_model:
        return DEMO_HEADS, DEMO_PATTERN_HEADS, DEMO_LAYERS
    heads = [(0, 0), (model.n_layers // 2, 0), (model.n_layers - 1, model.n_heads - 1)]
    return heads, [(l, 0) for l, _ in heads], _layer_picks(model.n_layers)


def demo(args):
    import attnscope
    model = attnscope.load(args.model, device=args.device)
    heads, pheads, layers = _picks(model, args.model is None)
    if args.text:
        trace = model.run(args.text)
    else:  # the model answers a question that takes a few steps; the figures show where it hesitated
        trace = model.generate(DEMO_QUESTION, chat=model.chat_template is not None, max_new_tokens=96)
        print(f"Q: {DEMO_QUESTION}\nA: {trace.response}\n")
    table, written = _write_figures(trace, model, args.out, args.dpi, heads, pheads, layers)
    print(f"{trace.input_ids.shape[1]} tokens, {trace.n_layers} layers x {trace.n_heads} heads")
    print("highest predictive entropy (entropy at i is that of the distribution predicting token i+1):")
    print(table)
    print("wrote " + ", ".join(written) + " to " + args.out)


def generate(args):
    import attnscope
    _check_out_dir(args.out)
    model = attnscope.load(args.model, device=args.device)
    heads, pheads, layers = _picks(model, args.model is None)
    if args.layers_heads:
        heads = pheads = _pairs(args.layers_heads)
    if args.layers:
        layers = _ints(args.layers)
    trace = model.generate(args.prompt, chat=args.chat, system=args.system, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(f"{trace.response}\n")
    table, written = _write_figures(trace, model, args.out, args.dpi, heads, pheads, layers)
    g = trace.generation
    print(f"{g['steps']} tokens generated ({g['stop_reason'][0]}; temperature {g['temperature']:g}, "
          f"{'KV cache' if g['kv_cache'] else 'full forward per step'})")
    print("the response's highest predictive entropy (at i: the distribution that drew token i+1):")
    print(table)
    print("wrote " + ", ".join(written) + " to " + args.out)


def save_figure(fig, path, dpi):
    """Saves next to `path` and renames over it: a full disk or a kill leaves no truncated figure
    under the final name (the error names the file)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, dpi=dpi, format=ext)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path!r}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    import matplotlib.pyplot as plt
    plt.close(fig)


def _check_writable_file(out, exts):
    """Before the model loads: the extension, and a folder that exists and can be written."""
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a folder: expected a file path ending in {', '.join(exts)}")
    ext = os.path.splitext(out)[1].lower()
    if ext not in exts:
        raise ValueError(f"--out {out!r}: expected a {', '.join(exts[:-1])} or {exts[-1]} file")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ValueError(f"--out {out!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {out!r}: folder {folder!r} is not writable")


def _check_out_dir(out):
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} exists and is not a folder")


def plot(args):
    import attnscope
    _check_writable_file(args.out, (".png", ".svg", ".pdf"))
    if args.pattern not in ("mean", "max", "specific_token"):
        raise ValueError(f"--pattern {args.pattern!r}: expected mean, max or specific_token")
    if args.kind == "patterns" and args.pattern == "specific_token" and args.token_idx is None:
        raise ValueError("--pattern specific_token needs --token-idx")
    model = attnscope.load(args.model, device=args.device)
    opts = dict(entropy_threshold=False if args.no_entropy else args.entropy_threshold,
                entropy_quantile=args.entropy_quantile, max_marks=args.max_marks)
    trace = model.run(args.text)  # what the figure lacks is computed when it asks
    if args.kind == "heads":
        fig = attnscope.visualize_attention(trace, _pairs(args.layers_heads or "0:0"), **opts)
    elif args.kind == "patterns":
        fig = attnscope.visualize_attention_patterns(trace, _pairs(args.layers_heads or "0:0"), args.pattern,
                                                     args.token_idx, **opts)
    else:
        fig = attnscope.visualize_attention_layers(trace, _ints(args.layers or "0"), head_idx=args.head, **opts)
    save_figure(fig, args.out, args.dpi)
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


def export(args):
    import attnscope
    src = args.hf
    if os.path.isfile(src) and src.endswith(".gguf"):
        from attnscope.models import export as export_module, load_gguf
        model, tok = load_gguf(src, attention=args.attention, progress=True)
        export_module(model, args.out, tokenizer=tok, source=os.path.basename(src))
        print(f"wrote {args.out} (attnscope's Llama-family module, {args.attention}) from {src}")
        return
    if not os.path.isdir(src):
        raise FileNotFoundError(f"--hf {src!r}: expected a Hugging Face checkpoint folder or a .gguf file")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device)
    tok = AutoTokenizer.from_pretrained(src) if os.path.isfile(os.path.join(src, "tokenizer.json")) else None
    r = attnscope.export_hf(model, tok, args.out, attention=args.attention, verify=not args.no_verify)
    check = "" if r["max_abs_diff"] is None else f"; captured vs eager attentions: max diff {r['max_abs_diff']:.2g}"
    print(f"wrote {args.out} (route: {r['route']}, {args.attention}, {args.dtype}, traced on {device}{check})")
    if r["reason"]:
        print(f"fallback because: {r['reason']}")


def _distributed():
    """Joins the torch.distributed group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _layer_picks(n):
    """Up to 8 layers spread over the model, first and last included (the paper's layout)."""
    return sorted({round(i * (n - 1) / 7) for i in range(8)}) if n > 8 else list(range(n))


def _launch(nproc, argv):
    """Runs `python -m attnscope <argv>` in `nproc` processes with torchrun's engine
    (torch.distributed.elastic, standalone rendezvous on a free local port)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                       start_method="spawn")
    try:
        elastic_launch(cfg, entrypoint=sys.executable)("-m", "attnscope", *argv)
    except ChildFailedError as e:
        raise RuntimeError(f"a worker failed ({e.get_first_failure()[1].message})") from None


def dataset(args):
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv, skip = [], False
        for a in args.argv:  # the workers get the same command without --nproc
            if skip or a.startswith("--nproc="):
                skip = False
            elif a == "--nproc":
                skip = True
            else:
                argv.append(a)
        return _launch(args.nproc, argv)
    dist = _distributed()
    if dist:
        import torch.distributed as tdist
        rank = tdist.get_rank()
    else:
        rank = 0
    device = args.device
    if dist and device == "auto":
        import torch
        device = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    try:
        _dataset(args, device, rank, dist)
    finally:
        if dist:
            tdist.destroy_process_group()


def _dataset(args, device, rank, dist):
    import json

    import attnscope
    model = attnscope.load(args.model, device=device)
    texts = attnscope.read_texts(args.input)
    capture = {"layer_maps": True, "received": True, "attn_entropy": True, "head_maps": args.head_maps}
    d = attnscope.aggregate_dataset(
        model, texts, length=None if args.length == 0 else args.length,
        num=None if args.num == 0 else args.num, capture=capture, batch_size=args.batch_size,
        epsilon=args.epsilon, skip_short=args.skip_short, bos=args.bos,
        progress=not args.no_progress)
    if rank != 0:
        return
    os.makedirs(args.out, exist_ok=True)
    d.save(os.path.join(args.out, "dataset.safetensors"))
    summary = d.summary()
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    layers = _layer_picks(d.n_layers)
    figs = {
        "attention_layers.png": attnscope.visualize_attention_layers(d, layers),
        "head_summary_sink.png": attnscope.visualize_head_summary(d, "sink").figure,
        "head_summary_entropy.png": attnscope.visualize_head_summary(d, "entropy").figure,
        "attention_patterns.png": attnscope.visualize_attention_patterns(
            d, [(l, 0) for l in layers[:4]], "mean"),
    }
    for name, fig in figs.items():
        save_figure(fig, os.path.join(args.out, name), args.dpi)
    print(f"{d.n_sequences} sequences of {d.length} tokens, {d.n_layers} layers x {d.n_heads} heads"
          + (f", {summary['world_size']} processes" if dist else ""))
    print(f"Sink1 (eps={d.epsilon:g}): {d.sink1:.1%} of heads; per layer: "
          + " ".join(f"{x:.0%}" for x in summary["sink1_per_layer"]))
    print("wrote dataset.safetensors, summary.json, " + ", ".join(sorted(figs)) + " to " + args.out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="attnscope", description="Attention capture and figures for language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="TorchScript archive, Hugging Face checkpoint folder or GGUF file (exported once into the cache; default: SmolLM2-135M-Instruct)")
    common.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    common.add_argument("--dpi", type=int, default=150)
    d = sub.add_parser("demo", parents=[common], help="the three figures + high-entropy table on a built-in prompt")
    d.add_argument("--out", default="out", help="output folder (default: out)")
    d.add_argument("--text", help="capture this text instead of letting the model answer the built-in question")
    d.set_defaults(fn=demo)
    g = sub.add_parser("generate", parents=[common], help="let the model answer, then the three figures, "
                       "the trace and its most uncertain tokens with their alternatives")
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--system", help="system message (with --chat)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--layers-heads", help="LAYER:HEAD,... for the heads and patterns figures")
    g.add_argument("--layers", help="LAYER,... for the layers grid")
    g.add_argument("--out", required=True, help="output folder")
    g.set_defaults(fn=generate)
    q = sub.add_parser("plot", parents=[common], help="one figure for a text")
    q.add_argument("--text", required=True)
    q.add_argument("--kind", choices=("heads", "patterns", "layers"), required=True)
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
    q.set_defaults(fn=plot)
    r = sub.add_parser("run", parents=[common], help="run with capture, save the trace")
    r.add_argument("--text", required=True)
    r.add_argument("--layers-heads", help="LAYER:HEAD,... full maps to keep")
    r.add_argument("--layer-maps", help="LAYER,... head-mean maps to keep")
    r.add_argument("--save", required=True, help="trace file (safetensors)")
    r.set_defaults(fn=run)
    e = sub.add_parser("export", parents=[common], help="Hugging Face folder or GGUF -> TorchScript archive with capture ops")
    e.add_argument("--hf", required=True, help="checkpoint folder (config.json + weights) or .gguf file")
    e.add_argument("--out", required=True, help="archive to write (.pt)")
    e.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    e.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    e.add_argument("--no-verify", action="store_true", help="skip the check against eager attentions")
    e.set_defaults(fn=export)
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
    s.add_argument("--nproc", type=int, default=1, help="data-parallel processes (torch.distributed; "
                   "or launch with torchrun)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(fn=dataset)
    args = p.parse_args(argv)
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
