"""GPU check, run by bench/device_check.sh after it builds attnscope: captured attention vs
transformers' eager output_attentions (max abs difference per layer), then time and peak GPU
memory of a plain SDPA forward vs a forward with every aggregate captured vs HF eager with
output_attentions=True, then the test suite on CUDA. Most important numbers first; summary.md
and results.json in --out are rewritten after every step, so a time-out keeps what was measured.

--quick runs the same steps with small shapes (and on the CPU when there is no GPU) to check
this script itself.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
warnings.simplefilter("ignore")
START = time.time()

import torch  # noqa: E402

QWEN7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
              rope_theta=1e6, tie_word_embeddings=False)
QUICK7B = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)


class Report:
    def __init__(self, out, deadline):
        self.out, self.deadline, self.parts, self.data = out, deadline, [], {}
        os.makedirs(out, exist_ok=True)

    def left(self):
        return self.deadline - time.time()

    def add(self, text, key=None, value=None):
        self.parts.append(text)
        if key:
            self.data[key] = value
        self.write()

    def write(self):
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write("\n".join(self.parts) + "\n")
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def inputs(vocab, t, device, pad=0, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, t), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[0, :pad] = 0
    return ids.to(device), mask.to(device)


def attention_diffs(am, model, ids, mask):
    from attnscope.models.hf_export import attention_diffs as diffs
    out = diffs(am, model, ids, mask)
    free()
    return out


def fmt(xs):
    return " ".join(f"{x:.1e}" for x in xs)


def hf_model(kind, dtype, device, quick):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        if kind == "qwen2-gqa":
            m = Qwen2ForCausalLM(Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512,
                                             num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2))
        elif kind == "gpt2":
            m = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_embd=256, n_layer=4, n_head=8, n_positions=1024))
        else:  # the Qwen2.5-7B shape, random weights
            m = Qwen2ForCausalLM._from_config(Qwen2Config(**(QUICK7B if quick else QWEN7B)), dtype=dtype)
    return m.to(dtype).eval()


def step_env(rep, args):
    import transformers
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "CPU (no CUDA device)"
    mem = torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if dev == "cuda" else 0
    rep.add(f"# attnscope device check\n\n- device: {name}, {mem:.0f} GiB\n- torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}, Python "
            f"{sys.version.split()[0]}\n- build: {args.route} in {args.build_seconds} s"
            + ("\n- **quick mode: small shapes, not the real check**" if args.quick else ""),
            "env", {"device": name, "memory_gib": mem, "torch": torch.__version__,
                    "cuda": torch.version.cuda, "transformers": transformers.__version__,
                    "route": args.route, "quick": args.quick})
    return dev


def step_small(rep, dev, quick):
    import attnscope
    from attnscope.models.hf_export import trace_hf
    rows = ["\n## Captured attention vs transformers eager `output_attentions` (max abs diff per layer)\n",
            "| model | dtype | attnscope path | per layer | max | beyond ref. rounding |", "|---|---|---|---|---|---|"]
    rep.add("\n".join(rows))
    cases = [("qwen2-gqa", torch.float32), ("gpt2", torch.float32), ("qwen2-gqa", torch.bfloat16)]
    res = {}
    for kind, dtype in cases:
        model = hf_model(kind, dtype, dev, quick)
        for att in ("sdpa", "eager"):
            traced, facts = trace_hf(model, attention=att)
            am = attnscope.from_module(traced, device=dev, info=facts)
            for pad in (0, 5):
                ids, mask = inputs(1024, 96, dev, pad=pad, batch=2)
                raw, beyond = attention_diffs(am, model, ids, mask)
                name = f"{kind} {str(dtype)[6:]} {att} pad={pad}"
                res[name] = raw
                rep.add(f"| {kind}{' (left-padded)' if pad else ''} | {str(dtype)[6:]} | {att} | {fmt(raw)} | "
                        f"{max(raw):.1e} | {max(beyond):.1e} |", "small", res)
        del model
        free()


def step_smollm2(rep, dev):
    import attnscope
    from attnscope.models import default_gguf, default_model_path
    try:
        src = default_gguf()
    except FileNotFoundError as e:
        rep.add(f"\nSmolLM2-135M-Instruct: not checked: {e} (its 94 MB wheel exceeds the 64 MiB "
                "that can be carried to this machine, which has no internet).", "smollm2", "skipped")
        return
    from transformers import AutoModelForCausalLM
    path = default_model_path()  # traced on the CPU: loading on the GPU retargets its device constants
    am = attnscope.load(path, device=dev)
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(src), gguf_file=os.path.basename(src),
                                               dtype=torch.float32).to(dev).eval()
    ids = torch.tensor([am.encode("The first token of a sentence soaks up attention; why does "
                                  "that happen in nearly every large language model?")]).to(dev)
    raw, _ = attention_diffs(am, ref, ids, torch.ones_like(ids))
    rep.add("\n## SmolLM2-135M-Instruct: default archive (traced on the CPU, fp32) vs transformers "
            "loading the same GGUF, eager\n\n| layers | per layer max abs diff | max |\n|---|---|---|\n"
            f"| 30 | {fmt(raw)} | {max(raw):.1e} |", "smollm2", raw)
    del ref, am
    free()


def step_interventions(rep, dev, quick):
    """Knockout sweep, head ablation and rollout on the device against the same on the CPU."""
    import copy

    import attnscope
    from attnscope.models.hf_export import trace_hf
    model = hf_model("qwen2-gqa", torch.float32, "cpu", quick)
    ids, _ = inputs(1024, 64, "cpu")
    got = {}
    for where, m in (("cpu", model), (dev, copy.deepcopy(model))):
        traced, facts = trace_hf(m, attention="sdpa")
        am = attnscope.from_module(traced, device=where, info=facts)
        t = am.run(ids.to(where), capture={"rollout": True})
        t0 = time.time()
        sweep = attnscope.knockout_sweep(t, 63, bands=2)
        heads = attnscope.head_effects(t, position=63, progress=False)
        got[where] = (sweep.logp_after, heads.delta_logp, t.captures["rollout"].double(), time.time() - t0)
    d = [float((a - b).abs().nan_to_num().max()) for a, b in zip(got["cpu"][:3], got[dev][:3])]
    rep.add("\n## Interventions on the device vs the CPU (Qwen2 GQA, 4 layers x 8 heads, 64 tokens, fp32)\n\n"
            "| key sweep log p | head ablation Δ log p | rollout | time cpu / device |\n|---|---|---|---|\n"
            f"| {d[0]:.1e} | {d[1]:.1e} | {d[2]:.1e} | {got['cpu'][3]:.2f} s / {got[dev][3]:.2f} s |",
            "interventions", d)
    free()


def timed(fn, reps):
    best, out = float("inf"), None
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del out
    return best


def measure(fn, reps):
    """(seconds, peak GiB) or ("OOM", None); a warm-up run first."""
    try:
        free()
        fn()
        free()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        s = timed(fn, reps)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else float("nan")
        return s, peak
    except Exception as e:  # noqa: BLE001
        free()
        if is_oom(e):
            return "OOM", None
        return f"error: {str(e).splitlines()[0][:80]}", None


def step_7b(rep, dev, quick, lengths):
    import attnscope
    from attnscope.models.hf_export import trace_hf
    model = hf_model("qwen7b", torch.bfloat16, dev, quick)
    traced, facts = trace_hf(model, attention="sdpa")
    am = attnscope.from_module(traced, device=dev, info=facts)
    vocab = model.config.vocab_size
    ids, mask = inputs(vocab, 256, dev, pad=0)
    raw, beyond = attention_diffs(am, model, ids, mask)
    rep.add("\n## Qwen2.5-7B shape (28 layers, 28 heads, 4 KV heads, hidden 3584, random weights, bf16), "
            "T = 256: captured (SDPA path, fp32 recompute) vs transformers eager attentions (bf16)\n\n"
            f"| per layer max abs diff | max | beyond bf16 rounding of the reference |\n|---|---|---|\n"
            f"| {fmt(raw)} | {max(raw):.1e} | {max(beyond):.1e} |", "qwen7b_diff", {"raw": raw, "beyond_rounding": beyond})
    rep.add("\n## Time and peak GPU memory, Qwen2.5-7B shape, bf16, batch 1\n\n"
            "plain = transformers SDPA forward; attnscope = traced SDPA forward with every aggregate "
            "(received mean/max, attention entropy, sink mass, predictive entropy, top-5); "
            "HF eager = transformers eager with output_attentions=True. attnscope takes each site's "
            "log-sum-exp from the memory-efficient kernel; \"softmax route\" is the same run with "
            "ATTNSCOPE_SDPA_ROUTE=softmax (a softmax per block, the route before).\n\n"
            "| T | plain s | plain GiB | attnscope s | attnscope GiB | ratio | softmax route s | softmax route ratio "
            "| HF eager s | HF eager GiB |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    res = {}
    for t in lengths:
        if rep.left() < (30 if t <= 4096 else 60):
            rep.add(f"| {t} | not run: time budget spent |||||||")
            continue
        ids, _ = inputs(vocab, t, dev)
        reps = 3 if t <= 4096 else 1

        def plain():
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False).logits

        def ours():
            return am.run(ids.cpu(), capture="all")

        def ours_softmax():
            os.environ["ATTNSCOPE_SDPA_ROUTE"] = "softmax"
            try:
                return am.run(ids.cpu(), capture="all")
            finally:
                os.environ.pop("ATTNSCOPE_SDPA_ROUTE", None)

        def eager():
            model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    return model(input_ids=ids, use_cache=False, output_attentions=True).attentions
            finally:
                model.set_attn_implementation("sdpa")

        p, o = measure(plain, reps), measure(ours, reps)
        sm = measure(ours_softmax, reps) if rep.left() > 60 else ("not run: time", None)
        e = measure(eager, 1) if rep.left() > 40 else ("not run: time", None)
        ratio = lambda r: f"{r[0] / p[0]:.2f}" if isinstance(p[0], float) and isinstance(r[0], float) else "-"  # noqa: E731
        cell = lambda r: (f"{r[0]:.3f}", f"{r[1]:.1f}") if isinstance(r[0], float) else (r[0], "-")  # noqa: E731
        sm_s = f"{sm[0]:.3f}" if isinstance(sm[0], float) else sm[0]
        res[t] = {"plain": p, "attnscope": o, "softmax_route": sm, "hf_eager": e}
        rep.add(f"| {t} | {' | '.join(cell(p))} | {' | '.join(cell(o))} | {ratio(o)} | {sm_s} | {ratio(sm)} "
                f"| {' | '.join(cell(e))} |", "bench_7b", res)
    am = traced = model = None  # frees them (the closures above are done); `del` reads as undefined to linters
    free()


def step_tests(rep, args):
    env = dict(os.environ, ATTNSCOPE_BUILD=args.build, MPLBACKEND="Agg",
               ATTNSCOPE_LIB=os.path.join(args.build, "libattnscope.so"), PYTHONPATH=os.path.join(ROOT, "python"))
    flag = os.path.join(args.out, ".tests_built")  # written by device_check.sh's background build
    while args.wait_tests and not os.path.exists(flag) and rep.left() > 60:
        time.sleep(2)
    if args.wait_tests and (not os.path.exists(flag) or open(flag).read().strip() != "0"):
        rep.add("\n## Tests\n\nnot run: the test build did not finish (see build_tests.txt)", "tests", "not built")
        return
    rep.add("\n## Tests on this machine")
    runs = [("ctest fixtures + Catch2", ["ctest", "--test-dir", args.build, "-R", "fixtures|catch2",
                                        "--output-on-failure"]),
            ("pytest CUDA + export + dataset", [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                                "tests/python/test_cuda.py", "tests/python/test_export_hf.py",
                                                "tests/python/test_dataset.py"])]
    out = {}
    for name, cmd in runs:
        budget = rep.left() - 10
        if budget < 30:
            rep.add(f"- {name}: not run (time budget spent)")
            continue
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget)
            tail = (r.stdout + r.stderr).strip().splitlines()[-6:]
            out[name] = {"rc": r.returncode, "tail": tail}
            with open(os.path.join(args.out, name.split()[0] + "_tests.txt"), "w") as f:
                f.write(r.stdout + r.stderr)
            rep.add(f"- {name}: exit {r.returncode}\n  ```\n  " + "\n  ".join(tail) + "\n  ```", "tests", out)
        except subprocess.TimeoutExpired:
            rep.add(f"- {name}: stopped at the time budget", "tests", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--route", default="?")
    ap.add_argument("--build-seconds", default="?")
    ap.add_argument("--deadline", type=float, default=time.time() + 480)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wait-tests", action="store_true", help="wait for device_check.sh's test build")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    rep = Report(args.out, args.deadline)
    dev = step_env(rep, args)
    lengths = [256, 1024] if args.quick else [4096, 32768, 1024, 16384]
    for name, fn in [("captured vs eager", lambda: step_small(rep, dev, args.quick)),
                     ("Qwen2.5-7B shape", lambda: step_7b(rep, dev, args.quick, lengths)),
                     ("SmolLM2", lambda: step_smollm2(rep, dev)),
                     ("interventions", lambda: step_interventions(rep, dev, args.quick)),
                     ("tests", lambda: step_tests(rep, args))]:
        if rep.left() < 20:
            rep.add(f"\n{name}: not run (time budget spent)")
            continue
        t0 = time.time()
        try:
            fn()
        except Exception:  # noqa: BLE001 - reported; the next steps still run
            rep.add(f"\n**{name} failed:**\n```\n{traceback.format_exc()[-2000:]}\n```")
        rep.data.setdefault("step_seconds", {})[name] = round(time.time() - t0, 1)
        rep.write()
    rep.add(f"\n(measurements and tests took {time.time() - START:.0f} s)")


if __name__ == "__main__":
    main()
