"""`attnscope demo | generate | plot | run`: a model reads or answers a text; the three figures,
the trace and the table of its most uncertain tokens are written."""
import os

from ..files import output_folder, write_atomic
from .common import _check_out_dir, _check_writable_file, _ints, _layer_picks, _pairs, save_figure

DEMO_QUESTION = "Is 3599 a prime number? Think step by step."
# Text of the model card's layers figure (tools/model_card.py).
DEMO_PROMPT = ("<|im_start|>user\nWhy do large language models put so much attention on the first "
               "token of a sentence?<|im_end|>\n<|im_start|>assistant\nThe first token acts as")
# The seed's examples were written for a 28-layer, 28-head model; these are the equivalents
# for the default model's 30 layers x 9 heads.
DEMO_HEADS = [(0, 0), (14, 0), (29, 8)]
DEMO_PATTERN_HEADS = [(0, 0), (14, 0), (29, 0)]
DEMO_LAYERS = [0, 1, 2, 9, 14, 18, 23, 29]


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


def _write_figures(trace, model, out, dpi, heads, pheads, layers, opts=None, view=False):
    """Writes the figures, trace, table (and view, response) into `out` all at once: a run that
    fails midway leaves `out` as it was (attnscope.files.output_folder)."""
    with output_folder(out) as stage:
        return _write_outputs(trace, model, stage, dpi, heads, pheads, layers, opts or {}, view)


def _write_outputs(trace, model, out, dpi, heads, pheads, layers, opts, view):
    import attnscope
    figs = {
        "attention_heads.png": attnscope.visualize_attention(trace, heads, **opts),
        "attention_patterns.png": attnscope.visualize_attention_patterns(trace, pheads, "mean", **opts),
        "attention_layers.png": attnscope.visualize_attention_layers(trace, layers, **opts),
        "entropy.png": attnscope.visualize_entropy(trace, show_prob=True, **opts),
    }
    for name, fig in figs.items():
        save_figure(fig, os.path.join(out, name), dpi)
    trace.save(os.path.join(out, "trace.safetensors"))
    table = entropy_table(trace, model)
    write_atomic(os.path.join(out, "high_entropy_tokens.md"), table + "\n")
    written = sorted(figs) + ["trace.safetensors", "high_entropy_tokens.md"]
    if view:
        print("writing the interactive view (view.html) ...", flush=True)
        attnscope.show(trace).save(os.path.join(out, "view.html"))
        written.append("view.html")
    if trace.is_generated:
        write_atomic(os.path.join(out, "response.txt"),
                     trace.response if isinstance(trace.response, str) else "\n---\n".join(trace.response))
        written.append("response.txt")
    return table, written


def _picks(model, default_model):
    if default_model:
        return DEMO_HEADS, DEMO_PATTERN_HEADS, DEMO_LAYERS
    a = model.attention_layers
    heads = [(a[0], 0), (a[len(a) // 2], 0), (a[-1], model.n_heads - 1)]
    return heads, [(l, 0) for l, _ in heads], _layer_picks(a)


def demo(args):
    import attnscope
    model = attnscope.load(args.model, device=args.device)
    heads, pheads, layers = _picks(model, args.model is None)
    if args.text:
        trace = model.run(args.text)
    else:  # the model answers a question that takes a few steps; the figures show where it hesitated
        trace = model.generate(DEMO_QUESTION, chat=model.chat_template is not None, max_new_tokens=96,
                               progress=not args.no_progress)
        print(f"Q: {DEMO_QUESTION}\nA: {trace.response}\n")
    table, written = _write_figures(trace, model, args.out, args.dpi, heads, pheads, layers, view=args.view)
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
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           progress=not args.no_progress)
    print(f"{trace.response}\n")
    table, written = _write_figures(trace, model, args.out, args.dpi, heads, pheads, layers, view=args.view)
    g = trace.generation
    print(f"{g['steps']} tokens generated ({g['stop_reason'][0]}; temperature {g['temperature']:g}, "
          f"{'KV cache' if g['kv_cache'] else 'full forward per step'})")
    print("the response's highest predictive entropy (at i: the distribution that drew token i+1):")
    print(table)
    print("wrote " + ", ".join(written) + " to " + args.out)


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
    if args.kind == "entropy":
        fig = attnscope.visualize_entropy(trace, show_prob=True, **opts)
    elif args.kind == "heads":
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
    cap = {"received": True, "attn_entropy": True, "sink_tokens": 1, "row_stats": True}
    if args.layers_heads:
        cap["heads"] = _pairs(args.layers_heads)
    if args.layer_maps:
        cap["layer_maps"] = _ints(args.layer_maps)
    trace = model.run(args.text, capture=cap)
    trace.save(args.save)
    print(f"wrote {args.save}: {sorted(trace.captures)}")
