"""The SDPA/eager exactness table of docs/capture.md: the default model's sdpa and eager archives
against transformers' eager forward on the same GGUF weights (400 tokens of README.md). Prints;
asserts nothing (the tests check every quantity to 1e-5).

usage: python bench/exactness.py      (after tools/setup.sh; uses the tests' cached reference)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "python"), os.path.join(ROOT, "python")]

import torch  # noqa: E402
from conftest import gguf_reference  # noqa: E402

import attnscope  # noqa: E402
from attnscope.models import default_gguf, default_model_path  # noqa: E402


def entropy(logits):
    """Predictive entropy (nats) per position, float64."""
    lp = logits.double().log_softmax(-1)
    return -(lp.exp() * lp).sum(-1)


def main():
    _, ref = gguf_reference(default_gguf(), "eager")
    _, ref_sdpa = gguf_reference(default_gguf(), "sdpa")
    sdpa = attnscope.load(default_model_path("sdpa"), device="cpu", progress=False)
    eager = attnscope.load(default_model_path("eager"), device="cpu", progress=False)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        ids = torch.tensor([sdpa.encode(f.read()[:3000])[:400]])
    with torch.no_grad():
        out = ref(input_ids=ids, output_attentions=True)
        out_sdpa = ref_sdpa(input_ids=ids)
    h_ref = entropy(out.logits)[0]
    print("transformers' own sdpa vs eager, predictive entropy:", f"{(entropy(out_sdpa.logits)[0] - h_ref).abs().max():.1e}")
    att_ent = torch.stack([-(a.double() * a.double().clamp_min(1e-300).log()).sum(-1)[0] for a in out.attentions])
    for name, m in (("sdpa", sdpa), ("eager", eager)):
        t = m.run(ids)
        alone = m.run(ids, capture={"heads": [(14, 0)]}).get("head_map/L14H0")
        both = m.run(ids, capture={"heads": [(14, 0)], "received": True}).get("head_map/L14H0")
        print(f"{name} archive: predictive entropy {(t.entropy[0].double() - h_ref).abs().max():.1e}, "
              f"attention entropy {(t.get('attn_entropy')[:, 0].double() - att_ent).abs().max():.1e}, "
              f"head map {(both[0].double() - out.attentions[14][0, 0].double()).abs().max():.1e}, "
              f"head alone vs with aggregates {(alone - both).abs().max():.1e}")


if __name__ == "__main__":
    main()
