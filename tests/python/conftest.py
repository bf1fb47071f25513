import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
BUILD = os.environ.get("ATTNSCOPE_BUILD", os.path.join(ROOT, "build"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: each (and what it starts) computes on one thread;
    # two workers of two OpenMP threads on two cores spin-wait and took twice the CPU time.
    # Tests of the multi-threaded paths ask for threads themselves (test_fused_sdpa.py).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def toy_model():
    """The toy fixture archive (3 layers, 4 heads, word-level tokenizer), or a skip when ctest
    has not built the fixtures."""
    path = os.path.join(BUILD, "fixtures", "toy_hf_eager.pt")
    if not os.path.exists(path):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    import attnscope
    return attnscope.load(path, device="cpu")


def gguf_reference(gguf, attn_implementation="sdpa"):
    """(tokenizer, model): transformers' own load of the default model's GGUF, fp32 (the
    independent reference). Dequantizing the GGUF takes transformers ~15 s, so the first test
    module to ask saves the result under the build folder (keyed by the GGUF's size/mtime and
    transformers' version) and every later module and xdist worker loads that (~1 s)."""
    import fcntl

    import torch
    import transformers

    import json

    st = os.stat(gguf)
    key = f"{os.path.basename(gguf)}-{st.st_size}-{int(st.st_mtime)}-tf{transformers.__version__}"
    folder = os.path.join(BUILD, "test_cache", key)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker converts, the others wait for it
        if not os.path.isfile(os.path.join(folder, "done")):
            d, f = os.path.split(gguf)
            tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
            ref = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
            os.makedirs(folder, exist_ok=True)
            tok.save_pretrained(folder)
            cfg = ref.config.to_dict()
            cfg.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained
            with open(os.path.join(folder, "config.json"), "w") as fh:
                json.dump(cfg, fh)
            torch.save(ref.state_dict(), os.path.join(folder, "weights.pt"))
            open(os.path.join(folder, "done"), "w").close()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    cfg = transformers.AutoConfig.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation,
                                                          dtype=torch.float32)
    model.load_state_dict(torch.load(os.path.join(folder, "weights.pt"), weights_only=True))
    return tok, model.eval()
