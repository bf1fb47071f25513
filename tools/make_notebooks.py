"""Writes notebooks/*.ipynb from the cell sources below and executes them, so the committed
notebooks show their figures on a repository browser (the tests execute them again and check
that these sources and the committed ones agree). `--no-execute` writes them without outputs.

    .venv/bin/python tools/make_notebooks.py            # needs the build (python/attnscope/_core*.so)
"""
import argparse
import os
import sys
import tempfile

import nbformat as nbf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = ('"<|im_start|>user\\nWhy do large language models put so much attention on the first "\n'
          '          "token of a sentence?<|im_end|>\\n<|im_start|>assistant\\nThe first token acts as"')

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        ("md", "# attnscope quickstart\nLoad the default model (SmolLM2-135M-Instruct), run a prompt, draw the "
               "three figures. No capture spec: the trace computes what a figure needs when it asks."),
        ("code", "import attnscope\nmodel = attnscope.load()          # converted once, then cached\n"
                 "print(model.describe())"),
        ("code", f"text = ({PROMPT})\n"
                 "trace = model.run(text)\n"
                 "print(len(trace.labels[0]), 'tokens:', ' '.join(trace.labels[0]))"),
        ("code", "fig = attnscope.visualize_attention(trace, [(0, 0), (14, 0), (29, 8)])"),
        ("code", "fig = attnscope.visualize_attention_patterns(trace, [(0, 0), (14, 0), (29, 0)], pattern_type=\"mean\")"),
        ("code", "fig = attnscope.visualize_attention_layers(trace, [0, 1, 2, 9, 14, 18, 23, 29])\n"
                 "fig.savefig(\"layers.pdf\")  # paper-ready vector output"),
    ],
    "02_workflow.ipynb": [
        ("md", "# Workflow: layers overview → detailed heads → important tokens\nOne run; every step below "
               "reads the same trace, in any order."),
        ("code", f"import attnscope\nmodel = attnscope.load()\ntext = ({PROMPT})\n"
                 "trace = model.run(text)\nlayers = list(range(model.n_layers))"),
        ("md", "## 1. Overview: which layers are local, which have an attention sink?"),
        ("code", "fig = attnscope.visualize_attention_layers(trace, layers[::4])\n"
                 "sink = trace.get(\"sink_mass\")[:, 0].mean(1)      # [L]: mean attention on token 0\n"
                 "sink_layers = [l for l in layers if sink[l] > 0.5]\n"
                 "print(\"layers with a sink (> 0.5 of attention on the first token):\", sink_layers)"),
        ("md", "## 2. Detailed heads of an interesting layer"),
        ("code", "layer = sink_layers[0] if sink_layers else model.n_layers // 2\n"
                 "fig = attnscope.visualize_attention(trace, [(layer, h) for h in range(4)])"),
        ("md", "## 2b. Which heads do what: the head atlas\nOne call runs the standard probe (random tokens "
               "repeated once) and scores every head: induction (attends to the token after an earlier copy of "
               "the current one), previous token, duplicate token, self, first token (sink), distance, entropy."),
        ("code", "atlas = model.head_atlas(\"induction\")\n"
                 "print(\"induction heads:\", atlas.top(\"induction\", 3), \" previous-token heads:\", atlas.top(\"prev\", 3))\n"
                 "fig = attnscope.visualize_head_atlas(atlas, [\"induction\", \"prev\", \"duplicate\", \"sink\"])"),
        ("code", "fig = attnscope.visualize_attention(trace, atlas.top(\"induction\", 2) + atlas.top(\"prev\", 1))"),
        ("md", "## 3. Important tokens: attention received"),
        ("code", "fig = attnscope.visualize_attention_patterns(trace, [(layer, h) for h in range(3)], \"mean\", top_k=3)\n"
                 "print(trace)  # the maps the figures asked for are kept; trace.release() stops computing more"),
    ],
    "03_high_entropy_tokens.ipynb": [
        ("md", "# High-entropy tokens: what the model does where it is unsure\nThe predictive entropy at position i "
               "is the entropy (nats) of the distribution that predicts token i+1. The model answers a question; "
               "the figures mark the answer's most uncertain positions (the top 20 %, at most 8), and a token "
               "profile says, layer by layer, how each of them attends: broad or narrow, near or far back, on "
               "itself, and on which tokens."),
        ("code", "import attnscope\nmodel = attnscope.load()\n"
                 "answer = model.generate(\"Why is the sky blue? Answer in two sentences.\", chat=True,\n"
                 "                        max_new_tokens=60, progress=False)\n"
                 "print(answer.response)\n"
                 "hi = attnscope.high_entropy_positions(answer)   # only the answer's distributions\n"
                 "for p in hi:\n"
                 "    print(p, repr(answer.labels[0][p]), \"->\", repr(answer.labels[0][p + 1]),\n"
                 "          f\"H = {float(answer.entropy[0, p]):.2f} nats\")"),
        ("md", "## The marked tokens against the answer's other tokens\nIs a marked token's attention unusual, or "
               "what every token of the answer does? One table from the run's row statistics (no run per token): "
               "per mark, each score's mean over layers and heads with its percentile among the answer's other "
               "tokens (0.5 = ordinary), and the strongest single head with its percentile (a spike lives in "
               "single heads, which the mean hides)."),
        ("code", "table = attnscope.profile_table(answer)\n"
                 "cols = [\"position\", \"label\", \"next_entropy\", \"entropy_pct\", \"distance_pct\", \"self\", \"self_pct\",\n"
                 "        \"self_top\", \"self_head\", \"self_top_pct\", \"sink_pct\"]\n"
                 "table.to_pandas()[cols].round(2)"),
        ("md", "## The most uncertain position, layer by layer"),
        ("code", "p = int(max(hi, key=lambda p: float(answer.entropy[0, p])))\n"
                 "fig = attnscope.visualize_token_profile(answer, p)"),
        ("md", "## What it attends to in three layers, and the layers grid over the answer"),
        ("code", "fig = attnscope.visualize_attention_patterns(answer, [(2, 0), (14, 0), (29, 0)], \"specific_token\",\n"
                 "                                             token_idx=p)"),
        ("code", "fig = attnscope.visualize_attention_layers(answer, [2, 14, 29], tokens=\"response\")"),
    ],
    "04_attention_sinks.ipynb": [
        ("md", "# Attention sinks over a dataset\nStreamingLLM (Xiao et al. 2024, Fig. 2) averages the attention maps "
               "of 256 sentences of 16 tokens per layer; Gu et al. (2025) measure Sink\u2081: the share of heads whose "
               "mean attention to the first token, \u03b1\u2081, exceeds \u03b5 = 0.3. `aggregate_dataset` does both "
               "in one pass, keeping running sums (never per-sequence maps)."),
        ("code", "import os\nimport attnscope\nmodel = attnscope.load()\n"
                 "# English corpus: Debian's fortunes-min (apt-get install fortunes-min), one quote per text;\n"
                 "# any list of strings works, or attnscope.read_texts('file.txt' / 'file.jsonl').\n"
                 "CORPUS = \"/usr/share/games/fortunes\"\n"
                 "texts = []\n"
                 "for name in (\"fortunes\", \"literature\", \"riddles\"):\n"
                 "    with open(os.path.join(CORPUS, name), encoding=\"utf-8\", errors=\"replace\") as f:\n"
                 "        texts += [\" \".join(q.split()) for q in f.read().split(\"\\n%\\n\") if q.strip()]\n"
                 "print(len(texts), \"texts\")"),
        ("code", "data = attnscope.aggregate_dataset(model, texts, length=16, num=256, skip_short=True)\n"
                 "print(data.n_sequences, \"sequences of\", data.length, \"tokens\")"),
        ("md", "## StreamingLLM Fig. 2 layout: head-averaged maps, one shared colour bar"),
        ("code", "fig = attnscope.visualize_attention_layers(data, [0, 1, 2, 9, 14, 18, 23, 29])\n"
                 "fig.savefig(\"attention_sinks_layers.pdf\")"),
        ("md", "## Sink\u2081 per layer (Gu et al., \u03b5 = 0.3)"),
        ("code", "for layer, s in enumerate(data.sink1_per_layer.tolist()):\n"
                 "    print(f\"layer {layer:2d}: Sink1 = {s:5.1%}   mean alpha_1 = {data.alpha[layer, :, 0].mean():.3f}\")\n"
                 "print(f\"model: Sink1 = {data.sink1:.1%} of heads\")"),
        ("md", "## Which heads sink, which attend broadly"),
        ("code", "ax = attnscope.visualize_head_summary(data, \"sink\")"),
        ("code", "ax = attnscope.visualize_head_summary(data, \"entropy\")"),
        ("md", "Results save, reload and merge (e.g. shards run on different machines):"),
        ("code", "data.save(\"sinks.safetensors\")\n"
                 "again = attnscope.DatasetTrace.load(\"sinks.safetensors\")\n"
                 "assert again.n_sequences == data.n_sequences and abs(again.sink1 - data.sink1) < 1e-12"),
    ],
    "05_reasoning.ipynb": [
        ("md", "# Where does the model hesitate in its own reasoning?\nThe default model answers a question that "
               "takes a few steps (greedy decoding, its chat template). One capture run over prompt + answer then "
               "shows, for the answer's most uncertain tokens, what they attend to, in which layers, and what the "
               "model almost said instead."),
        ("code", "import attnscope\nmodel = attnscope.load()\n"
                 "trace = model.generate(\"Is 3599 prime? Think step by step.\", chat=True, max_new_tokens=120)\n"
                 "print(trace.response)\nprint(trace.generation)"),
        ("md", "## The turning points: highest predictive entropy in the answer, with the top-5 alternatives"),
        ("code", "hi = attnscope.high_entropy_positions(trace)   # only the response's distributions\n"
                 "for p in sorted(hi, key=lambda p: -float(trace.entropy[0, p])):\n"
                 "    alts = \", \".join(f\"{model.label(int(i))} {float(q):.2f}\"\n"
                 "                     for i, q in zip(trace.topk_ids[0, p], trace.topk_probs[0, p]))\n"
                 "    print(f\"{p:4d} after {trace.labels[0][p]!r:12} -> {trace.labels[0][p + 1]!r:12} \"\n"
                 "          f\"H = {float(trace.entropy[0, p]):.2f} nats   [{alts}]\")"),
        ("md", "## What the most uncertain position attends to (attention FROM it)"),
        ("code", "p = int(max(hi, key=lambda p: float(trace.entropy[0, p])))\n"
                 "fig = attnscope.visualize_attention_patterns(trace, [(2, 0), (14, 0), (29, 0)], \"specific_token\",\n"
                 "                                             token_idx=p)"),
        ("md", "## Which layers: the grid (dashed line = where the answer begins)"),
        ("code", "fig = attnscope.visualize_attention_layers(trace, [0, 1, 2, 9, 14, 18, 23, 29])"),
        ("md", "## Detailed heads around the answer"),
        ("code", "fig = attnscope.visualize_attention(trace, [(14, 0), (29, 8)])"),
        ("md", "## Explore interactively\nHover over a token: what it attends to (or what attends to it), in any "
               "layer and head; click to pin. The yellow underlines are the same hesitations."),
        ("code", "attnscope.show(trace)"),
    ],
    "06_turning_points.ipynb": [
        ("md", "# Turning points: does one hesitation change the answer?\nThe default model is asked whether "
               "3599 is prime. It is not: 3599 = 59 × 61 (= 60² − 1²). Where does the model hesitate, and "
               "does taking another token at one of those places change its verdict?"),
        ("code", "import attnscope\nmodel = attnscope.load()\n"
                 "answer = model.generate(\"Is 3599 a prime number? Think step by step.\", chat=True, max_new_tokens=120,\n"
                 "                        progress=False)\nprint(answer.response)"),
        ("md", "## Where it hesitated\nThe predictive entropy along the answer; the numbered marks are the most "
               "uncertain choices, listed under the axis with the token chosen and the alternatives."),
        ("code", "fig = attnscope.visualize_entropy(answer, show_prob=True)"),
        ("md", "## Branch at the turning points\nAt the 3 most uncertain positions, force each of the 2 next "
               "most likely tokens and let the model continue (greedy, as the answer was). What counts as the "
               "verdict: the last statement \"3599 is (not) (a) prime\" that is not a question (\"if 3599 is "
               "prime\"); None when the text never states one."),
        ("code", "import re\n\n"
                 "def VERDICT(text):\n"
                 "    found = re.findall(r\"(?<!if )3599 is (not |indeed )?(?:a )?prime\", text)\n"
                 "    return None if not found else (\"not prime\" if found[-1] == \"not \" else \"prime\")\n\n"
                 "print(\"original verdict:\", VERDICT(answer.response))\n"
                 "tp = attnscope.turning_points(answer, k=3, alternatives=2, max_new_tokens=60, answer_of=VERDICT,\n"
                 "                              progress=False)\n"
                 "for r in tp.rows:\n"
                 "    print(f\"at {r['position']:3d} chose {r['chosen']!r} ({r['chosen_p']:.2f}) -> forced \"\n"
                 "          f\"{r['alternative']!r} ({r['alternative_p']:.2f}): verdict {r['answer']!r}\"\n"
                 "          f\"{'  <- changed' if r['changed'] else ''}\")\n"
                 "fig = attnscope.visualize_turning_points(tp)"),
        ("md", "## What the attention did differently there\nThe branch whose verdict changed (else the first), "
               "against the original: branch − original of the head-mean maps around the fork (green: the "
               "first different token; rows before it are identical in a causal model)."),
        ("code", "changed = [t for r, t in zip(tp.rows, tp.branches) if r['changed']]\n"
                 "b = changed[0] if changed else tp.branches[0]\n"
                 "p = b.fork['position']\n"
                 "print(b.fork)\nprint(b.response)\n"
                 "fig = attnscope.visualize_attention_diff(answer, b, [2, 14, 29], tokens=(max(p - 20, 0), p + 30))"),
        ("md", "## The token that differs, in both answers\nAt the fork position itself the two rows are the same "
               "(a causal row sees only what precedes it), so the profile is taken at the first token that "
               "differs, in both; the atlas measures both answers on the same rows (the shared prefix and an "
               "equal window after the fork), so a shorter branch does not read as shorter attention."),
        ("code", "fig = attnscope.visualize_token_profile(answer, p, compare=b)"),
        ("code", "fig = attnscope.visualize_head_atlas(answer, [\"distance\", \"self\", \"sink\"], compare=b)"),
    ],
    "07_does_attention_matter.ipynb": [
        ("md", "# Does the attention matter? The verdict on 3599\nThe default model is asked whether 3599 is prime "
               "(it is not: 3599 = 59 × 61). Maps show where its tokens look; here every claim is an intervention: "
               "an attention edge or a head is removed and log p of the model's own choice is measured again "
               "(knockout: Geva et al. 2023; head ablation). Which earlier tokens and which heads does the verdict "
               "depend on, and do the tokens it attends to most matter?"),
        ("code", "import attnscope\nmodel = attnscope.load()\n"
                 "answer = model.generate(\"Is 3599 a prime number? Answer yes or no.\", chat=True, max_new_tokens=30,\n"
                 "                        progress=False)\nprint(answer.response)\n"
                 "labels = answer.labels[0]\n"
                 "p = answer.prompt_len - 1  # the distribution that chose the verdict's first token\n"
                 "print(\"verdict:\", labels[p + 1], \" alternatives:\", [(answer.token_label(int(i)), round(float(q), 3))\n"
                 "       for i, q in zip(answer.topk_ids[0, p, :4], answer.topk_probs[0, p, :4])])"),
        ("md", "## Which prompt tokens does the verdict use?\nFor every earlier token j, the edge from the verdict's "
               "position to j is removed alone, in the early, middle and late third of the layers, and log p of "
               "\"No\" is measured again: one batched decode step over the cached prompt. Above: the attention from "
               "the verdict's position to each token (mean over heads and the band's layers, \"looked at\"); below: "
               "Δ log p (\"used\"; red lowers it)."),
        ("code", "verdict = attnscope.knockout_sweep(answer, p, bands=3, target=[\"No\", \"Yes\"], progress=False)\n"
                 "for b, (name, _) in enumerate(verdict.bands):\n"
                 "    att = verdict.attention_from(b)\n"
                 "    looked = [labels[verdict.keys[int(i)]] for i in att.argsort(descending=True)[:3]]\n"
                 "    used = [(labels[k], round(d, 2)) for k, d in verdict.top(3, band=b)]\n"
                 "    print(f\"{name}: most attended {looked}; most used {used}\")\n"
                 "fig = attnscope.visualize_knockout(verdict)"),
        ("md", "## Is the verdict about the number?\nTwo single interventions in every layer: the verdict's position "
               "cannot see the four tokens of 3599, or cannot see \" no\", the last option of the instruction."),
        ("code", "number = next([i, i + 1, i + 2, i + 3] for i in range(p) if labels[i:i + 4] == [\"3\", \"5\", \"9\", \"9\"])\n"
                 "option = max(i for i in range(p) if labels[i] == \"␣no\")\n"
                 "print(attnscope.knockout(answer, p, keys=number, target=[\"No\", \"Yes\"]))\n"
                 "print(attnscope.knockout(answer, p, keys=[option], target=[\"No\", \"Yes\"]))"),
        ("md", "## Which heads does the verdict need?\nEach of the 270 heads' output zeroed in turn (several heads per "
               "forward); Δ log p of \"No\" beside what the head atlas says each head does."),
        ("code", "heads = attnscope.head_effects(answer, position=p, target=\"No\", progress=False)\n"
                 "print(heads)\n"
                 "fig = attnscope.visualize_head_effects(heads, atlas=answer)"),
        ("md", "## Why is the factorization wrong?\nThe answer calls 3599 \"a composite number with a prime "
               "factorization of 3 * 3 *\": 3 does not divide 3599. Where does its first \"3\" come from? The same "
               "sweep at the position that chose it, \"3\" against \"5\" (59 begins with it)."),
        ("code", "f = next(i for i in range(answer.prompt_len, answer.input_ids.shape[1]) if labels[i - 1] == \"␣of\") + 1\n"
                 "factor = attnscope.knockout_sweep(answer, f - 1, bands=3, target=[\"3\", \"5\"], progress=False)\n"
                 "print(factor)\n"
                 "print(\"removing the 3 of 3599:\", [round(float(d), 3) for d in factor.delta_logp[:, factor.keys.index(number[0]), 0]])\n"
                 "fig = attnscope.visualize_knockout(factor)"),
        ("md", "## Do the most attended tokens matter?\nFor both decisions, the three tokens each band attends to "
               "most, and what removing each costs; Spearman's rank correlation between attention and −Δ log p over "
               "all keys."),
        ("code", "for what, sw in ((\"verdict\", verdict), (\"first factor\", factor)):\n"
                 "    for b, (name, _) in enumerate(sw.bands):\n"
                 "        att, d = sw.attention_from(b), sw.delta_logp[b, :, 0]\n"
                 "        top = att.argsort(descending=True)[:3]\n"
                 "        cost = \", \".join(f\"{labels[sw.keys[int(i)]]} {float(att[i]):.2f} → Δ {float(d[i]):+.3f}\" for i in top)\n"
                 "        print(f\"{what}, {name}: rank corr {sw.rank_correlation(b):+.2f}; most attended: {cost}\")"),
        ("md", "## Reading the results\nOn this model (greedy, fp32 on the CPU) the outputs above say: the verdict "
               "\"No\" is right for a reason that is not the number — hiding 3599 from the verdict's position "
               "*raises* p(No), while hiding the instruction's last option \" no\" cuts it by two thirds and changes "
               "the top-1 token: the model copies the option. The first factor \"3\" does not come from the 3 of "
               "3599 either (removing it costs almost nothing); its largest single dependence is the first token, "
               "through the middle layers. The tokens attended to most are the first token and newlines, whose "
               "removal sometimes helps the prediction: attention and use rank together only weakly (rank "
               "correlations between −0.1 and 0.45), which is why attnscope measures both."),
    ],
}


HTML_LIMIT = 200_000  # bytes: a larger HTML output (the interactive view) is not committed


def build(name):
    """The notebook `name` from its cell sources, without outputs."""
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
                for kind, src in NOTEBOOKS[name]]
    for i, c in enumerate(nb.cells):  # fixed ids: regenerating changes nothing that did not change
        c.id = f"cell-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb, workdir, timeout=900):
    """Runs `nb` in a kernel (inline figures) with this tree's package, in `workdir`."""
    import nbclient
    env_path = os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = env_path
    os.environ.pop("MPLBACKEND", None)  # the kernel's own inline backend: figures become outputs
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": workdir}}).execute()
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        c.metadata.pop("execution", None)
        for o in c.get("outputs", []):
            html = o.get("data", {}).get("text/html")
            if html is not None and len(html) > HTML_LIMIT:
                del o["data"]["text/html"]  # the interactive view runs in Jupyter, not on a repository page
                o["data"]["text/plain"] = ("(interactive view: run the notebook in Jupyter to see it; "
                                           f"{len(html) / 1e6:.1f} MB of HTML)")
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {}):  # the live view: no state kept
                del o["data"]["application/vnd.jupyter.widget-view+json"]
                o["data"]["text/plain"] = ("(live interactive view: run the notebook in Jupyter to see it; it asks "
                                           "the kernel for each row it shows)")
    return nb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-execute", action="store_true", help="write the notebooks without outputs")
    ap.add_argument("names", nargs="*", help="notebooks to write (default: all)")
    args = ap.parse_args(argv)
    out = os.path.join(ROOT, "notebooks")
    os.makedirs(out, exist_ok=True)
    names = args.names or list(NOTEBOOKS)
    for name in names:
        if name not in NOTEBOOKS:
            sys.exit(f"make_notebooks: unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
        nb = build(name)
        if not args.no_execute:
            with tempfile.TemporaryDirectory() as tmp:
                execute(nb, tmp)
        nbf.write(nb, os.path.join(out, name))
        print("wrote", name, flush=True)


if __name__ == "__main__":
    main()
