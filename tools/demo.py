"""Main job: SmolLM2-135M-Instruct (the default model) through attnscope's C++ core.

Builds/reuses the cached TorchScript export, tokenises a built-in prompt, runs attnscope-cli
with capture of the heads and layers the figures use, writes out/demo_trace.safetensors and
prints the highest-entropy tokens and the attention sink per layer. (The figures themselves
come with the Python package issue.)
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
from safetensors import safe_open  # noqa: E402

from attnscope.models import archive_tokenizer, default_model_path  # noqa: E402

PROMPT = ("<|im_start|>user\nWhy do large language models put so much attention on the first "
          "token of a sentence?<|im_end|>\n<|im_start|>assistant\nThe first token acts as")


def main():
    build = os.environ.get("ATTNSCOPE_BUILD", os.path.join(ROOT, "build"))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "out")
    os.makedirs(out_dir, exist_ok=True)
    model = default_model_path()
    tok = archive_tokenizer(model)
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    trace = os.path.join(out_dir, "demo_trace.safetensors")
    heads = "0:0,14:0,29:8"  # first, middle, last layer (30 layers x 9 heads)
    layers = "0,1,2,9,14,18,23,29"
    subprocess.run([os.path.join(build, "attnscope-cli"), "--model", model, "--describe",
                    "--ids", ",".join(map(str, ids)), "--all", "--heads", heads,
                    "--layer-maps", layers, "--from", "-1", "--out", trace], check=True)
    with safe_open(trace, framework="pt") as f:
        ent = f.get_tensor("entropy")[0]
        sink = f.get_tensor("captures/sink_mass")[:, 0]  # [L, H]
        meta = f.metadata()
    labels = [tok.decode([i]) for i in ids]
    print(f"\n{len(ids)} tokens; predictive entropy (nats) of the next-token distribution:")
    top = ent.argsort(descending=True)[:8].tolist()
    print("  position  token -> next           entropy")
    for p in top:
        nxt = labels[p + 1] if p + 1 < len(labels) else "(beyond input)"
        print(f"  {p:8d}  {labels[p]!r:>14} -> {nxt!r:<14} {ent[p]:.3f}{'  > 0.672' if ent[p] > 0.672 else ''}")
    print(f"  {int((ent > 0.672).sum())} of {len(ids)} positions above 0.672 nats")
    print("\nmean attention on the first token (sink mass), per layer:")
    print("  " + " ".join(f"L{l}:{v:.2f}" for l, v in enumerate(sink.mean(1).tolist())))
    print(f"\ntrace: {trace} ({meta['n_layers']} layers, {meta['n_heads']} heads); "
          f"captures: {sorted(json.loads(meta['spec'])['layer_maps'])} layer maps, heads {heads}")


if __name__ == "__main__":
    main()
