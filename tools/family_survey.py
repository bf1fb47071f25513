"""Every model family transformers ships with a causal-LM or masked-LM head, tried with export_hf
on a tiny random config derived automatically from the family's default config; writes a
Markdown table (docs/families.md) of what each family gives: exported and checked (export_hf's
own check: maps and predictive entropy against eager attentions of each row alone, on other
ids, lengths and paddings), refused (the gist of the refusal), or not tried (no tiny config
could be derived automatically, or the model is multimodal).

    .venv/bin/python tools/family_survey.py [--out docs/families.md] [--only gpt2,llama]

Each family runs in its own process (a crash or a hang of one costs only its row), two at a
time, with a time limit. The families of tests/python/test_hf_matrix.py are tested in CI; this
survey is what a newcomer would get from export_hf on each other family, re-run on demand.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_S = 240
MAX_PARAMS = 20_000_000  # a derived config this big did not shrink: not tried

# Standard config names (transformers maps them to each family's own through attribute_map).
SMALL = {"vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
         "head_dim": 16, "num_local_experts": 2, "num_experts": 2, "n_routed_experts": 2, "num_experts_per_tok": 1,
         "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "bos_token_id": 1, "eos_token_id": 2,
         "pad_token_id": 0, "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
         "v_head_dim": 16, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "embedding_size": 64,
         "ffn_dim": 128, "d_ff": 128, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_layers": 2}

ONE = r'''
import json, sys, tempfile, warnings, os
import torch, transformers
from transformers import CONFIG_MAPPING
from transformers.models.auto import modeling_auto as ma
import attnscope
family, small, max_params = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
out = {"family": family}
try:
    cfg = CONFIG_MAPPING[family]()
    if any(hasattr(cfg, k) for k in ("vision_config", "audio_config", "text_config")) and family not in ("gemma3_text",):
        sub = [k for k in ("vision_config", "audio_config") if getattr(cfg, k, None) is not None]
        if sub:
            raise LookupError("multimodal (" + ", ".join(sub) + "): export its text model")
    for k, v in small.items():
        if hasattr(cfg, k) and not isinstance(getattr(cfg, k), bool):
            try:
                setattr(cfg, k, v)
            except Exception:
                pass
    name = ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family) or ma.MODEL_MAPPING_NAMES.get(family)
    cls = getattr(transformers, name)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    if n > max_params:
        raise LookupError(f"the derived config has {n / 1e6:.0f}M parameters: no tiny config derived")
    out["class"] = name
except Exception as e:  # noqa: BLE001
    out["status"] = "not tried"
    out["detail"] = (str(e).splitlines() or [type(e).__name__])[0][:240] if isinstance(e, LookupError) else \
        "no tiny config derived automatically: " + f"{type(e).__name__}: " + ((str(e).splitlines() or [""])[0])[:200]
    print(json.dumps(out)); sys.exit(0)
with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        r = attnscope.export_hf(model, None, os.path.join(d, "m.pt"))
        meta = attnscope.models.read_extra_file(os.path.join(d, "m.pt"), "attnscope.json")
        meta = json.loads(meta)
        out.update(status="exported, checked", route=r["route"], attention=r["attention"],
                   detail=(f"max diff {r['max_abs_diff']:.1g}; positions {r['positions']}; "
                           f"decode: {meta.get('decode', '')[:60]}"
                           + (f"; attention layers {meta['attention_layers']}" if meta.get("attention_layers") else "")
                           + (f"; {meta['padding']}" if meta.get("padding") else "")))
    except ValueError as e:
        msg = str(e)
        msg = msg.split("): ", 1)[1] if "): " in msg else msg
        out.update(status="refused", detail=msg[:400])
    except Exception as e:  # noqa: BLE001
        out.update(status="error", detail=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
print(json.dumps(out))
'''


def run_one(family):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), OMP_NUM_THREADS="1",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-c", ONE, family, json.dumps(SMALL), str(MAX_PARAMS)], env=env,
                           capture_output=True, text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        return {"family": family, "status": "not tried", "detail": f"took over {LIMIT_S} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if not lines and p.returncode == -9:  # the kernel's OOM killer: a derived config too big to build here
        return {"family": family, "status": "not tried", "detail": "killed while building or exporting the derived "
                "config (out of memory): no tiny config derived automatically"}
    if not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1][:240]
        return {"family": family, "status": "error", "detail": f"the process ended ({p.returncode}): {tail}"}
    row = json.loads(lines[-1])
    row["seconds"] = round(time.time() - t0, 1)
    return row


def families():
    from transformers.models.auto import modeling_auto as ma
    return sorted(set(ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES))


def classify(row):
    """A refusal because the derived config does not run in transformers itself says nothing of
    the family: not tried. An OOM kill while building is the same."""
    d = row.get("detail", "")
    if row["status"] == "refused" and "fails in its own eager forward" in d:
        row.update(status="not tried", detail="the derived tiny config does not run in transformers itself: "
                   + d.split("before anything is traced: ", 1)[-1])
    if row["status"] == "error" and "ended (-9)" in d:
        row.update(status="not tried", detail="killed while building or exporting the derived config (out of "
                   "memory): no tiny config derived automatically")
    return row


def matrix_families():
    """model_type of every family of tests/python/test_hf_matrix.py (tested on every captured
    quantity in CI, with configs written for it)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    from hf_families import FAMILIES
    return {build().config.model_type for build in FAMILIES.values()}


def table(rows, version):
    rows = [classify(dict(r)) for r in rows]
    matrix = matrix_families()
    order = {"exported, checked": 0, "refused": 1, "error": 2, "not tried": 3}
    counts = {k: sum(r["status"] == k for r in rows) for k in order}
    lines = [
        "# Every transformers family, tried", "",
        "[← export](export.md)", "",
        f"Generated by `tools/family_survey.py` with transformers {version}: each family that has a causal-LM "
        "or masked-LM head, built from its default config shrunk automatically (2 layers, 4 heads, hidden 64, "
        "2 experts where it has experts) with random weights, then `export_hf(model, None, path)`. "
        "**exported, checked** means the archive passed export_hf's own check (maps and predictive entropy "
        "against eager attentions of each row alone, on the traced example and other ids, lengths and "
        "paddings; 1e-5 in fp32). **refused** gives the gist of the refusal. **not tried** means no tiny "
        "config could be derived automatically (or the model is multimodal, or an encoder–decoder); "
        "**error** is an export that failed without a refusal (a defect to fix). The families of "
        "`tests/python/test_hf_matrix.py` (column *CI matrix*) are tested on every captured quantity in CI with "
        "configs written for them: where the automatic config says otherwise (a hybrid whose first two layers "
        "are not attention, a latent-attention config whose derived sizes do not fit), the matrix is what holds.", "",
        " · ".join(f"{k}: {v}" for k, v in counts.items()), "",
        "| family | CI matrix | class | status | route | detail |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (order.get(r["status"], 9), r["family"])):
        detail = r.get("detail", "").replace("|", "\\|").replace("\n", " ")
        ci = "✓" if r["family"] in matrix else ""
        lines.append(f"| {r['family']} | {ci} | {r.get('class', '')} | {r['status']} | {r.get('route', '')} | {detail} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "families.md"))
    ap.add_argument("--only", default="", help="comma-separated families (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    import transformers
    names = [f for f in args.only.split(",") if f] or families()
    rows = []
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(run_one, names):
            rows.append(row)
            print(f"{row['family']:28s} {row['status']:18s} {row.get('detail', '')[:110]}", flush=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        f.write(table(rows, transformers.__version__))
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
